"""Data parallelism and ZeRO-1 (Rajbhandari et al. 2020, arXiv 1910.02054 §5.1, "P_os").

Gradient synchronisation, after backward and before the optimizer:

- dense parameters (attention, dense FFN, gate, shared experts, norms, embedding, head) are
  replicated over the dense ``dp`` group: all-reduce, divide by dp;
- routed-expert parameters are replicated over ``edp`` only; each copy already sums the
  gradients of the ep ranks whose tokens it served, so all-reduce over edp and divide by
  the dense dp size as well. Both give the gradient of the mean loss over the global batch.

Each group's gradients travel as one flat bucket (one all-reduce per group per step).

:class:`ZeroAdam` is ZeRO stage 1: the parameters a group replicates are viewed as one flat
float32 vector cut into ``group.size`` equal shards (the last padded with zeros); rank i
keeps the Adam moments and the master copy of shard i only, steps it with
``torch.optim.Adam``, and all-gathers the updated shards into every replica. Gradients are
all-reduced in full before (ZeRO-1 keeps whole gradients; ZeRO-2 would reduce-scatter them).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

from planner.model.parallel.groups import Group


def all_reduce_mean(tensors: list[Tensor], group: Group, divisor: int) -> None:
    """tensors <- sum over ``group`` / divisor, in place, as one flat bucket."""
    if not tensors or (group.size == 1 and divisor == 1):
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    if group.size > 1:
        dist.all_reduce(flat, group=group.group)
    flat /= divisor
    for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(part.view_as(t))


def synchronize_gradients(
    named_params: list[tuple[str, nn.Parameter]], expert_names: set[str], dp: Group, edp: Group
) -> None:
    """Average gradients over the global batch: dense over dp, routed experts over edp
    (both divided by the dense dp size). A missing gradient (an expert that got no token)
    counts as zero."""
    for _, p in named_params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    dense = [p.grad for n, p in named_params if n not in expert_names]
    experts = [p.grad for n, p in named_params if n in expert_names]
    all_reduce_mean(dense, dp, dp.size)
    all_reduce_mean(experts, edp, dp.size)


class ZeroAdam:
    """Adam over ``params`` with its state sharded over ``group`` (ZeRO-1).

    ``state_numel`` is the number of parameter elements whose Adam state this rank holds:
    ceil(total / group.size).
    """

    def __init__(self, params: list[nn.Parameter], group: Group, **adam_kwargs):
        self.params, self.group = list(params), group
        self.numel = sum(p.numel() for p in self.params)
        self.state_numel = math.ceil(self.numel / group.size) if self.params else 0
        lo = group.rank * self.state_numel
        with torch.no_grad():
            flat = self._flat([p.detach() for p in self.params])
        self.lo = lo
        self.shard = nn.Parameter(flat[lo : lo + self.state_numel].clone())
        self.optimizer = torch.optim.Adam([self.shard], **adam_kwargs)

    def _flat(self, tensors: list[Tensor]) -> Tensor:
        """Concatenated and zero-padded to group.size * state_numel."""
        flat = torch.cat([t.reshape(-1) for t in tensors]) if tensors else torch.zeros(0)
        return nn.functional.pad(flat, (0, self.group.size * self.state_numel - self.numel))

    @torch.no_grad()
    def step(self) -> None:
        if not self.params:
            return
        grad = self._flat([p.grad for p in self.params])
        self.shard.grad = grad[self.lo : self.lo + self.state_numel].clone()
        self.optimizer.step()
        shards = [torch.empty_like(self.shard) for _ in range(self.group.size)]
        dist.all_gather(shards, self.shard.detach(), group=self.group.group)
        flat = torch.cat(shards)[: self.numel]
        for p, part in zip(self.params, flat.split([p.numel() for p in self.params])):
            p.copy_(part.view_as(p))

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None
