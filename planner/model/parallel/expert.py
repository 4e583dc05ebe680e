"""Expert parallelism for DeepSeekMoE layers (GShard, Lepikhin et al. 2020; DeepSeek-V3
§3.2.2), beside the model: :func:`apply_expert_parallel` swaps each
:class:`~planner.model.deepseek.MoE` of a built model for an :class:`ExpertParallelMoE`
that keeps the same gate, shared experts and buffers, and only this rank's routed experts
(the same module objects, so the parameters are the single-process ones).

With E experts over an ep group of size P, rank r owns experts [r*E/P, (r+1)*E/P). Each
rank routes its own tokens with the (replicated) gate, then

1. dispatch: the N = T*K (token, slot) pairs are sorted by expert, hence by owner rank;
   counts are exchanged, and the token rows go to their owners with ``all_to_all_single``;
2. the owner runs each local expert on the rows addressed to it;
3. combine: the outputs come back by the inverse ``all_to_all_single`` (same splits,
   swapped) and are weighted by the gate and summed per token on the token's own rank.

The gate weights are applied on the token's rank, so the gate's gradient never crosses
ranks; the expert rows' gradients travel back through the transposed all-to-alls
(:class:`_AllToAll`, an autograd Function). Gloo implements ``all_to_all_single`` with
uneven splits on CPU, so no all-gather fallback is needed.

Under tensor parallelism with etp = 1 (routed experts not split by tp) the tp ranks hold
the same tokens, and the expert view re-folds them into ep * edp ranks that must each
bring *different* tokens (Megatron gets that from sequence parallelism). So every tp rank
runs the replicated gate on all its tokens, then keeps rows [r*T/tp, (r+1)*T/tp) of the
tokens and of their gate weights (:func:`~.tensor.scatter_rows`: the backward all-gathers
the row gradients, so the gate and the input get whole gradients on every tp rank),
dispatches those rows as above, and all-gathers the routed outputs back over tp
(:func:`~.tensor.gather_rows`). Shared experts stay on all tokens, tp-sharded like the
dense FFN (:mod:`.tensor`). The routed load is counted from all T tokens on every tp
rank, so summing it over dp gives the global load as before.

Gradient scale: an expert's gradient on its owner sums the contributions of every token
rank in its ep group; the training loop sums it further over ``edp`` and divides by the
dense dp size (see :mod:`planner.model.parallel.data`). With tp > 1 the edp replicas of an
expert saw disjoint tokens, so that sum covers each token of the global batch once.

Not implemented: expert tensor parallelism (etp > 1), capacity limits and token dropping
(none in the reference model either), overlap of communication and compute.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from planner.model.deepseek import Block, MoE, Transformer
from planner.model.parallel.groups import Group
from planner.model.parallel.tensor import gather_rows, row_range, scatter_rows


class _AllToAll(torch.autograd.Function):
    """Rows split by ``send`` counts go to each rank; ``recv`` counts arrive. Backward is
    the same exchange with the counts swapped."""

    @staticmethod
    def forward(ctx, x: Tensor, send: list[int], recv: list[int], group: dist.ProcessGroup) -> Tensor:
        ctx.send, ctx.recv, ctx.group = send, recv, group
        return _all_to_all(x, send, recv, group)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _all_to_all(grad, ctx.recv, ctx.send, ctx.group), None, None, None


def _all_to_all(x: Tensor, send: list[int], recv: list[int], group: dist.ProcessGroup) -> Tensor:
    out = x.new_empty((sum(recv), *x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), recv, send, group=group)
    return out


class ExpertParallelMoE(nn.Module):
    """A DeepSeekMoE layer whose routed experts are split over an ep group and whose
    routed tokens are split over a tp group (either may have size 1).

    ``experts`` is a ModuleDict keyed by the global expert index, so parameter names
    (``...ffn.experts.5.w1.weight``) are those of the single-process model.
    """

    def __init__(self, moe: MoE, ep: Group, tp: Group | None = None):
        super().__init__()
        num_experts = len(moe.experts)
        if num_experts % ep.size:
            raise ValueError(f"ep = {ep.size} must divide the number of routed experts ({num_experts})")
        self.ep, self.tp, self.num_experts = ep, tp, num_experts
        self.experts_per_rank = num_experts // ep.size
        first = ep.rank * self.experts_per_rank
        self.gate = moe.gate
        self.experts = nn.ModuleDict(
            {str(e): moe.experts[e] for e in range(first, first + self.experts_per_rank)}
        )
        self.shared_experts = moe.shared_experts
        self.register_buffer("tokens_per_expert", moe.tokens_per_expert, persistent=False)

    def forward(self, x_BSD: Tensor) -> Tensor:
        x_TD = x_BSD.flatten(0, 1)
        weights_TK, indices_TK = self.gate(x_TD)
        with torch.no_grad():
            self.tokens_per_expert += torch.bincount(indices_TK.flatten(), minlength=self.num_experts)
        if self.tp is not None and self.tp.size > 1:  # this tp rank's rows only (etp = 1)
            T = x_TD.size(0)
            lo, hi = row_range(T, self.tp)
            x_tD, weights_tK = scatter_rows(x_TD, self.tp), scatter_rows(weights_TK, self.tp)
            routed = self._routed(x_tD, weights_tK, indices_TK[lo:hi])
            out_TD = gather_rows(routed, T, self.tp)
        else:
            out_TD = self._routed(x_TD, weights_TK, indices_TK)
        for shared in self.shared_experts:
            out_TD = out_TD + shared(x_TD)
        return out_TD.view_as(x_BSD)

    def _routed(self, x_TD: Tensor, weights_TK: Tensor, indices_TK: Tensor) -> Tensor:
        """sum_k weight_k * expert_{index_k}(x) per token, the experts wherever they live."""
        K = indices_TK.size(1)
        # 1. dispatch: sort the N = T*K routed copies by expert, i.e. by owner rank
        expert_N = indices_TK.flatten()
        order_N = torch.argsort(expert_N, stable=True)
        token_N, expert_N = order_N // K, expert_N[order_N]
        x_recv, expert_recv = x_TD[token_N], expert_N
        if self.ep.size > 1:
            send_P = torch.bincount(expert_N // self.experts_per_rank, minlength=self.ep.size)
            recv_P = torch.empty_like(send_P)
            dist.all_to_all_single(recv_P, send_P, group=self.ep.group)
            send, recv = send_P.tolist(), recv_P.tolist()
            x_recv = _AllToAll.apply(x_recv, send, recv, self.ep.group)
            expert_recv = _all_to_all(expert_N, send, recv, self.ep.group)
        # 2. the local experts on the rows addressed to them. y_recv starts as x_recv * 0,
        # not a fresh zeros tensor: on a rank whose experts got no rows, both all-to-alls
        # must stay in the autograd graph, since their backward is collective too.
        y_recv = x_recv * 0
        for e, expert in self.experts.items():
            rows = torch.where(expert_recv == int(e))[0]
            if rows.numel():
                y_recv = y_recv.index_copy(0, rows, expert(x_recv[rows]))
        # 3. combine: back to the token's rank, gate-weighted sum per token
        y_N = _AllToAll.apply(y_recv, recv, send, self.ep.group) if self.ep.size > 1 else y_recv
        y_N = y_N * weights_TK.flatten()[order_N, None]
        return torch.zeros_like(x_TD).index_add(0, token_N, y_N)


def apply_expert_parallel(model: Transformer, ep: Group, tp: Group | None = None) -> Transformer:
    """Split the routed experts of every MoE layer of ``model`` (whole or one pipeline
    stage of it) over ``ep`` and their tokens over ``tp``, in place."""
    if ep.size == 1 and (tp is None or tp.size == 1):
        return model
    for block in [m for m in model.modules() if isinstance(m, Block)]:
        if isinstance(block.ffn, MoE):
            block.ffn = ExpertParallelMoE(block.ffn, ep, tp)
    return model


def routed_expert_parameters(model: nn.Module) -> set[str]:
    """Names of routed-expert parameters (replicated over edp, not dp), parallel or not."""
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, (MoE, ExpertParallelMoE)):
            names.update(f"{prefix}.experts.{n}" for n, _ in module.experts.named_parameters())
    return names
