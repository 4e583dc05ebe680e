"""Pipeline parallelism: the model's layers split over pp stages, run with the 1F1B schedule
(PipeDream-flush, Narayanan et al. 2021, arXiv 2104.04473 §2.2) over torch.distributed
point-to-point messages.

Layer split: the simulator's, :func:`planner.costmodel.partition.partition` without piece
costs, i.e. Megatron's even split of the blocks when pp divides ``num_layers``, otherwise
the blocks as equal units cut to minimise the largest stage (a stage may then hold only
the head and MTP). The input embedding (and learned positions) sit on the first stage; the
final norm, the head and the MTP modules on the last (V3 §3.2.3).

Shared weights: an MTP module embeds the token k ahead with the main model's embedding and
predicts with its head (V3 §2.2), and a tied head *is* the embedding. So when the model has
MTP or a tied head, the last stage keeps its own copy of ``embed`` (same initial values,
same name). Each copy gets a partial gradient (first stage: the input embedding; last stage:
head and MTP lookups); :func:`sync_embedding_gradients` sums the two over the embedding
group before the data-parallel reduction, so both copies take the same optimizer step and
stay equal, as Megatron does with its embedding group.

Schedule, stage s of P with m micro-batches: min(P-1-s, m) warm-up forwards, then
alternately one forward and one backward, then the remaining backwards. A stage receives
activations [micro_batch, S, D] from s-1 and sends them to s+1; gradients flow back the same
way. Each exchange posts its ``isend``/``irecv`` pair before waiting on either (Megatron's
``send_forward_recv_backward``), which keeps the schedule deadlock-free even if a send
completes only once the peer receives. Messages between two ranks go one way per kind
(activations down, gradients up), so gloo's in-order matching on tag 0 pairs them right.

The last stage returns each micro-batch's loss divided by m: micro-batches are equal in
size, so the summed gradients are those of the mean loss over the replica's batch.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from planner.costmodel.partition import partition
from planner.model.deepseek import Transformer
from planner.model.parallel.groups import Group, ProcessGroups
from planner.specs.model import ModelSpec
from planner.specs.plan import Plan


def stage_layers(spec: ModelSpec, plan: Plan) -> list[range]:
    """Indices of the blocks each pipeline stage runs, in stage order."""
    chunks = partition(spec, plan).chunks
    ranges, start = [], 0
    for chunk in chunks:
        ranges.append(range(start, start + chunk.num_blocks))
        start += chunk.num_blocks
    return ranges


def last_stage_needs_embedding(spec: ModelSpec) -> bool:
    return spec.mtp_depth > 0 or spec.tie_word_embeddings


def split_model(model: Transformer, plan: Plan, stage: int) -> Transformer:
    """Keep (in place) only what ``stage`` runs; parameter names stay the single model's
    (``layers`` becomes a ModuleDict keyed by the global block index)."""
    spec = model.spec
    first, last = stage == 0, stage == plan.pp - 1
    layers = stage_layers(spec, plan)[stage]
    model.layers = nn.ModuleDict({str(i): model.layers[i] for i in layers})
    if not (first or (last and last_stage_needs_embedding(spec))):
        model.embed = None
    if not first:
        model.pos_embed = None
    if not last:
        model.norm, model.head, model.mtp = None, None, nn.ModuleList()
    return model


def sync_embedding_gradients(model: Transformer, embed: Group | None) -> None:
    """Sum the embedding's gradient over the first and the last stage (both copies)."""
    if embed is None or not last_stage_needs_embedding(model.spec):
        return
    grad = model.embed.weight.grad
    if grad is None:
        grad = model.embed.weight.grad = torch.zeros_like(model.embed.weight)
    dist.all_reduce(grad, group=embed.group)


@dataclass
class _Peers:
    """Global ranks of the previous and next stage of this pipeline (None at the ends)."""

    prev: int | None
    next: int | None

    @classmethod
    def of(cls, pp: Group) -> _Peers:
        s = pp.rank
        return cls(pp.ranks[s - 1] if s > 0 else None, pp.ranks[s + 1] if s < pp.size - 1 else None)


def _exchange(send: list[tuple[Tensor, int]], recv: list[tuple[Tensor, int]]) -> None:
    """Post every send and receive, then wait for all of them."""
    works = [dist.isend(t.contiguous(), peer) for t, peer in send]
    works += [dist.irecv(t, peer) for t, peer in recv]
    for work in works:
        work.wait()


class PipelineStage:
    """One stage of one pipeline: runs micro-batches through its part of the model under
    1F1B and returns the loss on the last stage."""

    def __init__(self, model: Transformer, groups: ProcessGroups, micro_batch: int, seq_len: int):
        self.model, self.groups = model, groups
        self.stage, self.num_stages = groups.stage, groups.num_stages
        self.first, self.last = self.stage == 0, self.stage == self.num_stages - 1
        self.peers = _Peers.of(groups.pp) if groups.pp is not None else _Peers(None, None)
        self.activation_shape = (micro_batch, seq_len, model.spec.hidden_size)

    # -- point-to-point: each returns what it received (None at a pipeline end) --

    def _buffer(self) -> Tensor:
        return torch.empty(self.activation_shape)

    def _send_recv(self, send: Tensor | None, to: int | None, recv_from: int | None) -> Tensor | None:
        buffer = self._buffer() if recv_from is not None else None
        _exchange(
            [(send, to)] if send is not None and to is not None else [],
            [(buffer, recv_from)] if buffer is not None else [],
        )
        return buffer

    def recv_forward(self) -> Tensor | None:
        return self._send_recv(None, None, self.peers.prev)

    def send_forward(self, y: Tensor | None) -> None:
        self._send_recv(y, self.peers.next, None)

    def send_forward_recv_backward(self, y: Tensor | None) -> Tensor | None:
        return self._send_recv(y, self.peers.next, self.peers.next)

    def send_backward_recv_forward(self, dx: Tensor | None) -> Tensor | None:
        return self._send_recv(dx, self.peers.prev, self.peers.prev)

    def recv_backward(self) -> Tensor | None:
        return self._send_recv(None, None, self.peers.next)

    def send_backward(self, dx: Tensor | None) -> None:
        self._send_recv(dx, self.peers.prev, None)

    # -- compute --

    def forward(self, x: Tensor | None, tokens_BS: Tensor, targets_BS: Tensor, scale: float) -> Tensor:
        """This stage's blocks on one micro-batch: the activation to send on, or (last
        stage) the micro-batch's loss times ``scale``."""
        model = self.model
        h_BSD = model.embed_tokens(tokens_BS) if self.first else x
        rope = model.rope(tokens_BS.size(1), tokens_BS.device)
        for layer in model.layers.values():
            h_BSD = layer(h_BSD, rope)
        if self.last:
            return model.output_loss(h_BSD, rope, tokens_BS, targets_BS) * scale
        return h_BSD

    def backward(self, x: Tensor | None, y: Tensor, dy: Tensor | None) -> Tensor | None:
        """Gradient of the stage's input, from the output's gradient (the loss on the last
        stage needs none)."""
        torch.autograd.backward(y, None if self.last else dy)
        return None if self.first else x.grad

    def train_step(self, micro_batches: list[tuple[Tensor, Tensor]]) -> Tensor | None:
        """Forward and backward of every micro-batch (gradients accumulate in ``.grad``);
        the sum of the scaled losses on the last stage, else None."""
        m = len(micro_batches)
        warmup = min(self.num_stages - 1 - self.stage, m)
        in_flight: deque[tuple[Tensor | None, Tensor]] = deque()
        loss = torch.zeros(()) if self.last else None
        pending = iter(micro_batches)

        def run_forward(x: Tensor | None) -> Tensor:
            nonlocal loss
            if x is not None:
                x.requires_grad_(True)
            y = self.forward(x, *next(pending), scale=1.0 / m)
            in_flight.append((x, y))
            if self.last:
                loss = loss + y.detach()
            return y.detach() if not self.last else None

        def run_backward(dy: Tensor | None) -> Tensor | None:
            x, y = in_flight.popleft()
            return self.backward(x, y, dy)

        for _ in range(warmup):
            self.send_forward(run_forward(self.recv_forward()))
        steady = m - warmup
        x = self.recv_forward() if steady else None
        for i in range(steady):
            dy = self.send_forward_recv_backward(run_forward(x))
            dx = run_backward(dy)
            if i == steady - 1:
                self.send_backward(dx)
            else:
                x = self.send_backward_recv_forward(dx)
        for _ in range(warmup):
            self.send_backward(run_backward(self.recv_backward()))
        return loss
