"""Tensor parallelism (Megatron-LM, Shoeybi et al. 2019, arXiv 1909.08053 §3) applied to a
built :class:`~planner.model.deepseek.Transformer`, beside it: the model file is unchanged.

:func:`apply_tensor_parallel` replaces, in place, the linears of each attention, dense FFN
and shared expert with wrappers that keep this rank's slice of the *existing* weight, so a
parallel run starts from exactly the single-process parameters:

- column-parallel (output features split; q/k/v, FFN w1/w3): the input enters through
  ``copy_to_tp`` (identity forward, all-reduce of the input gradient backward, Megatron's
  ``f``) and the output stays sharded;
- row-parallel (input features split; attention wo, FFN w2): the partial products are
  summed by ``reduce_from_tp`` (all-reduce forward, identity backward, Megatron's ``g``),
  then the bias, held whole, is added once.

Heads are split contiguously, so rank r keeps query heads [r*H/tp, (r+1)*H/tp) and the
key/value heads they share under GQA; per-head q/k norms (Qwen3) are replicated, with
``f`` on their weights since a rank's heads give part of the gradient. Norms, embedding
and head stay replicated; the gradient of every replicated activation is whole on every
tp rank (``f`` all-reduces it where it enters sharded work), so replicated weights get
whole gradients with no extra reduction.

MLA (V3 §2.1.1) under tp: the low-rank down-projections ``wq_a``, ``wkv_a`` and their norms
are replicated; the up-projections ``wq_b`` (or ``wq``) and ``wkv_b`` are column-parallel
over heads (their outputs are [H, per-head] row-major, so a contiguous row slice is a set of
whole heads) and ``wo`` is row-parallel. The decoupled RoPE key k_R (the last R outputs of
``wkv_a``) is shared by all H heads, and a rank's heads give only part of its gradient:
:class:`LatentDownProjection` puts ``f`` on those R columns only (the latent columns
already get a whole gradient through ``kv_norm`` and ``wkv_b``'s ``f``).

MoE layers under tp (etp = 1): the gate is replicated and the shared experts are split like
the dense FFN here; the routed experts are not split: each tp rank runs them on its
1/tp of the tokens (see :mod:`.expert`, which uses :class:`_ScatterRows` and
:class:`_GatherRows` below), so a token's routed work is done once per tp group.

Not implemented: expert tensor parallelism (etp > 1), sequence parallelism,
vocabulary-parallel embedding and head.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from planner.model.deepseek import MLA, MLP, Attention, Block, MoE, Transformer
from planner.model.parallel.groups import Group


class _CopyToTP(torch.autograd.Function):
    """Megatron ``f``: identity forward; backward sums the input gradients of the tp ranks."""

    @staticmethod
    def forward(ctx, x: Tensor, group: dist.ProcessGroup) -> Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTP(torch.autograd.Function):
    """Megatron ``g``: forward sums the partial outputs of the tp ranks; identity backward."""

    @staticmethod
    def forward(ctx, x: Tensor, group: dist.ProcessGroup) -> Tensor:
        x = x.contiguous().clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


def _shard(t: Tensor, dim: int, tp: Group) -> nn.Parameter:
    """This rank's contiguous slice of ``t`` along ``dim``, as a new parameter."""
    if t.size(dim) % tp.size:
        raise ValueError(f"tp = {tp.size} must divide dimension {dim} of size {t.size(dim)}")
    return nn.Parameter(t.detach().chunk(tp.size, dim=dim)[tp.rank].clone())


class ColumnParallelLinear(nn.Module):
    """y_local = x W_r^T + b_r with W_r the rank's rows of W ([out/tp, in])."""

    shard_dim = 0

    def __init__(self, linear: nn.Linear, tp: Group):
        super().__init__()
        self.tp = tp
        self.weight = _shard(linear.weight, 0, tp)
        self.bias = _shard(linear.bias, 0, tp) if linear.bias is not None else None

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(_CopyToTP.apply(x, self.tp.group), self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """y = sum_r x_r W_r^T + b, with W_r the rank's columns of W ([out, in/tp]), b whole."""

    shard_dim = 1

    def __init__(self, linear: nn.Linear, tp: Group):
        super().__init__()
        self.tp = tp
        self.weight = _shard(linear.weight, 1, tp)
        self.bias = nn.Parameter(linear.bias.detach().clone()) if linear.bias is not None else None

    def forward(self, x_local: Tensor) -> Tensor:
        y = _ReduceFromTP.apply(nn.functional.linear(x_local, self.weight), self.tp.group)
        return y if self.bias is None else y + self.bias


class HeadNorm(nn.Module):
    """Qwen3's per-head q/k norm, replicated, applied to this rank's heads only: its weight
    (and bias) enter through ``f``, so their gradients are summed over the tp heads."""

    def __init__(self, norm: nn.RMSNorm | nn.LayerNorm, tp: Group):
        super().__init__()
        self.tp, self.norm_type = tp, type(norm)
        self.shape, self.eps = norm.normalized_shape, norm.eps
        self.weight = norm.weight
        self.bias = getattr(norm, "bias", None)

    def forward(self, x: Tensor) -> Tensor:
        weight = _CopyToTP.apply(self.weight, self.tp.group)
        if self.norm_type is nn.RMSNorm:
            return nn.functional.rms_norm(x, self.shape, weight, self.eps)
        bias = None if self.bias is None else _CopyToTP.apply(self.bias, self.tp.group)
        return nn.functional.layer_norm(x, self.shape, weight, bias, self.eps)


def _parallelize_attention(attn: Attention, tp: Group) -> None:
    if attn.num_heads % tp.size or attn.num_kv_heads % tp.size:
        raise ValueError(
            f"tp = {tp.size} must divide the query heads ({attn.num_heads}) "
            f"and the key/value heads ({attn.num_kv_heads})"
        )
    attn.wq, attn.wk, attn.wv = (ColumnParallelLinear(m, tp) for m in (attn.wq, attn.wk, attn.wv))
    attn.wo = RowParallelLinear(attn.wo, tp)
    if not isinstance(attn.q_norm, nn.Identity):
        attn.q_norm, attn.k_norm = HeadNorm(attn.q_norm, tp), HeadNorm(attn.k_norm, tp)
    attn.num_heads //= tp.size  # forward views the projections as [B, S, heads, C]
    attn.num_kv_heads //= tp.size


class LatentDownProjection(nn.Module):
    """MLA's replicated ``wkv_a`` ([latent | k_R] = x W^T) with ``f`` on the k_R columns."""

    def __init__(self, linear: nn.Linear, rope_dim: int, tp: Group):
        super().__init__()
        self.tp, self.rope_dim = tp, rope_dim
        self.weight = linear.weight

    def forward(self, x: Tensor) -> Tensor:
        latent, k_rope = nn.functional.linear(x, self.weight).split(
            [self.weight.size(0) - self.rope_dim, self.rope_dim], dim=-1
        )
        return torch.cat([latent, _CopyToTP.apply(k_rope, self.tp.group)], dim=-1)


def _parallelize_mla(attn: MLA, tp: Group) -> None:
    if attn.num_heads % tp.size:
        raise ValueError(f"tp = {tp.size} must divide the attention heads ({attn.num_heads})")
    if attn.q_lora_rank:
        attn.wq_b = ColumnParallelLinear(attn.wq_b, tp)
    else:
        attn.wq = ColumnParallelLinear(attn.wq, tp)
    attn.wkv_a = LatentDownProjection(attn.wkv_a, attn.qk_rope_head_dim, tp)
    attn.wkv_b = ColumnParallelLinear(attn.wkv_b, tp)
    attn.wo = RowParallelLinear(attn.wo, tp)
    attn.num_heads //= tp.size


def _parallelize_mlp(mlp: MLP, tp: Group) -> None:
    mlp.w1 = ColumnParallelLinear(mlp.w1, tp)
    if mlp.w3 is not None:
        mlp.w3 = ColumnParallelLinear(mlp.w3, tp)
    mlp.w2 = RowParallelLinear(mlp.w2, tp)


def apply_tensor_parallel(model: Transformer, tp: Group) -> Transformer:
    """Shard every attention, dense FFN and shared expert of ``model`` (whole or one
    pipeline stage of it) over ``tp``, in place. The routed experts of a MoE layer still
    need :func:`~planner.model.parallel.expert.apply_expert_parallel` with this tp group."""
    if tp.size == 1:
        return model
    for block in [m for m in model.modules() if isinstance(m, Block)]:
        if isinstance(block.attn, MLA):
            _parallelize_mla(block.attn, tp)
        else:
            _parallelize_attention(block.attn, tp)
        if isinstance(block.ffn, MoE):
            for shared in block.ffn.shared_experts:
                _parallelize_mlp(shared, tp)
        else:
            _parallelize_mlp(block.ffn, tp)
    return model


def tp_shard_dims(model: nn.Module) -> dict[str, int]:
    """Parameter name -> the dimension it is split along over tp, for sharded parameters."""
    dims = {}
    for prefix, module in model.named_modules():
        if isinstance(module, (ColumnParallelLinear, RowParallelLinear)):
            dims[f"{prefix}.weight"] = module.shard_dim
            if isinstance(module, ColumnParallelLinear) and module.bias is not None:
                dims[f"{prefix}.bias"] = 0
    return dims


def row_range(rows: int, tp: Group) -> tuple[int, int]:
    """Rows [lo, hi) of ``rows`` that tp rank ``tp.rank`` takes: contiguous slices of
    ceil(rows / tp), the last ones shorter (possibly empty)."""
    per = -(-rows // tp.size)
    return min(tp.rank * per, rows), min((tp.rank + 1) * per, rows)


def _all_gather_rows(x_local: Tensor, rows: int, tp: Group) -> Tensor:
    """The ``rows`` rows of the tp group, each rank contributing its :func:`row_range`
    (gloo's all_gather wants equal sizes: pad to ceil(rows / tp) and trim)."""
    per = -(-rows // tp.size)
    padded = nn.functional.pad(x_local, (0, 0) * (x_local.dim() - 1) + (0, per - x_local.size(0)))
    parts = [torch.empty_like(padded) for _ in range(tp.size)]
    dist.all_gather(parts, padded.contiguous(), group=tp.group)
    return torch.cat(parts)[:rows]


class _ScatterRows(torch.autograd.Function):
    """Forward: this rank's rows of a tensor replicated over tp. Backward: each rank's rows
    of the gradient, gathered, so the replicated input gets a whole gradient everywhere."""

    @staticmethod
    def forward(ctx, x: Tensor, tp: Group) -> Tensor:
        ctx.tp, ctx.rows = tp, x.size(0)
        lo, hi = row_range(x.size(0), tp)
        return x[lo:hi].clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _all_gather_rows(grad, ctx.rows, ctx.tp), None


class _GatherRows(torch.autograd.Function):
    """Forward: the whole tensor from each rank's rows. Backward: this rank's rows of the
    (replicated, whole) output gradient."""

    @staticmethod
    def forward(ctx, x_local: Tensor, rows: int, tp: Group) -> Tensor:
        ctx.tp = tp
        return _all_gather_rows(x_local, rows, tp)

    @staticmethod
    def backward(ctx, grad: Tensor):
        lo, hi = row_range(grad.size(0), ctx.tp)
        return grad[lo:hi].contiguous(), None, None


def scatter_rows(x: Tensor, tp: Group) -> Tensor:
    return x if tp.size == 1 else _ScatterRows.apply(x, tp)


def gather_rows(x_local: Tensor, rows: int, tp: Group) -> Tensor:
    return x_local if tp.size == 1 else _GatherRows.apply(x_local, rows, tp)
