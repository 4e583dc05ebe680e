"""Tensor parallelism (Megatron-LM, Shoeybi et al. 2019, arXiv 1909.08053 §3) applied to a
built :class:`~planner.model.deepseek.Transformer`, beside it: the model file is unchanged.

:func:`apply_tensor_parallel` replaces, in place, the linears of each attention and dense
FFN with wrappers that keep this rank's slice of the *existing* weight, so a parallel run
starts from exactly the single-process parameters:

- column-parallel (output features split; q/k/v, FFN w1/w3): the input enters through
  ``copy_to_tp`` (identity forward, all-reduce of the input gradient backward, Megatron's
  ``f``) and the output stays sharded;
- row-parallel (input features split; attention wo, FFN w2): the partial products are
  summed by ``reduce_from_tp`` (all-reduce forward, identity backward, Megatron's ``g``),
  then the bias, held whole, is added once.

One all-reduce forward and one backward per attention and per FFN. Heads are split
contiguously, so rank r keeps query heads [r*H/tp, (r+1)*H/tp) and the key/value heads
they share under GQA. Norms, embedding and head stay replicated; their gradients come out
whole on every tp rank because ``f`` all-reduces the activation gradient.

Not implemented: MLA (its latent down-projections are replicated, wq_b/wkv_b column and wo
row, but it is not written yet), MoE layers under tp (expert TP), sequence parallelism,
vocabulary-parallel embedding and head.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from planner.model.deepseek import MLA, MLP, Attention, MoE, Transformer
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


def _parallelize_attention(attn: Attention, tp: Group) -> None:
    if attn.num_heads % tp.size or attn.num_kv_heads % tp.size:
        raise ValueError(
            f"tp = {tp.size} must divide the query heads ({attn.num_heads}) "
            f"and the key/value heads ({attn.num_kv_heads})"
        )
    attn.wq, attn.wk, attn.wv = (ColumnParallelLinear(m, tp) for m in (attn.wq, attn.wk, attn.wv))
    attn.wo = RowParallelLinear(attn.wo, tp)
    attn.num_heads //= tp.size  # forward views the projections as [B, S, heads, C]
    attn.num_kv_heads //= tp.size


def _parallelize_mlp(mlp: MLP, tp: Group) -> None:
    mlp.w1 = ColumnParallelLinear(mlp.w1, tp)
    if mlp.w3 is not None:
        mlp.w3 = ColumnParallelLinear(mlp.w3, tp)
    mlp.w2 = RowParallelLinear(mlp.w2, tp)


def apply_tensor_parallel(model: Transformer, tp: Group) -> Transformer:
    """Shard every attention and dense FFN of ``model`` over ``tp`` (in place)."""
    if tp.size == 1:
        return model
    blocks = [*model.layers, *(m.block for m in model.mtp)]
    for block in blocks:
        if isinstance(block.attn, MLA):
            raise NotImplementedError(f"tensor parallelism (tp = {tp.size}) of MLA attention")
        if isinstance(block.ffn, MoE):
            raise NotImplementedError(f"tensor parallelism (tp = {tp.size}) of MoE layers (expert TP)")
    for block in blocks:
        _parallelize_attention(block.attn, tp)
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
