"""TorchTitan's op-level selective activation checkpointing (``RecomputeModule.OP_SAC``,
``selective_ac_option = "op"``), as the cost model prices it: which Linears of a dense block
it recomputes (:func:`op_sac_linears`), their share of each fused GEMM of
:mod:`planner.costmodel.ops` (:func:`op_sac_gemm_shares`), the elementwise ops it does not
rebuild, and where it is not modelled (:func:`op_sac_refusal`).
:func:`planner.costmodel.ops.piece_ops` marks the ops; :mod:`planner.costmodel.memory` keeps
what the policy saves.

The policy (torchtitan ``_apply_ac_to_transformer_block``, ``_get_custom_policy``: in
torchtitan/parallelisms/parallelize_llama.py in its 2024 versions, later in
torchtitan/distributed/activation_checkpoint.py): per checkpointed transformer block, save
the outputs of the ops on a save list (``aten.mm``, SDPA's flash and efficient kernels,
``reduce_scatter_tensor``, ``abs`` and ``max``) except every second ``aten.mm``, and
recompute everything else in backward.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.specs.model import FFNActivation, ModelSpec
from planner.specs.plan import AttentionKernel, Plan


@dataclass(frozen=True)
class SacLinear:
    """One Linear of a block as TorchTitan's op-level SAC meets it: one ``aten.mm``."""

    name: str
    op: str
    """The (fused) GEMM :class:`~planner.costmodel.ops.Op` of this module that computes it."""
    in_width: float
    """Input features (whole, before tensor parallelism)."""
    out_width: float
    """Output features (whole)."""
    row_parallel: bool
    """Split on its input under TP (wo, w2): its per-GPU output is whole, a partial sum."""
    recomputed: bool
    """An even ``aten.mm`` of the block: recomputed in backward, its output not kept."""


def op_sac_linears(model: ModelSpec) -> tuple[SacLinear, ...]:
    """The Linears of a dense block in TorchTitan's forward order, each a separate
    ``aten.mm``: attention wq, wk, wv, then wo (torchtitan/models/llama/model.py
    ``Attention.forward``), then the FFN's w1, w3, w2 (``FeedForward.forward``:
    ``w2(silu(w1(x)) * w3(x))``; a GELU FFN: fc1, fc2). Op-level SAC counts the block's mm
    calls afresh in every checkpointed block and recomputes the even ones (``not
    (func == aten.mm and meta[mm_count_key] % 2 == 0)`` saves the rest, torchtitan
    ``_get_custom_policy``): wk, wo, w3 of a Llama block. Under torchao float8 the Linears
    still reach the policy as ``aten.mm`` on Float8Tensor operands (PyTorch runs the
    checkpoint's TorchDispatchMode before the subclass's ``__torch_dispatch__`` turns them
    into ``_scaled_mm``), so the count is the same in FP8."""
    d, h, g, c = model.hidden_size, model.num_attention_heads, model.kv_heads, model.kv_channels
    f = model.ffn_hidden_size
    widths = [("wq", "qkv", d, h * c, False), ("wk", "qkv", d, g * c, False), ("wv", "qkv", d, g * c, False),
              ("wo", "out_proj", h * c, d, True)]
    if model.ffn_activation is FFNActivation.SWIGLU:
        widths += [("w1", "ffn_up_gate", d, f, False), ("w3", "ffn_up_gate", d, f, False),
                   ("w2", "ffn_down", f, d, True)]
    else:
        widths += [("fc1", "ffn_up", d, f, False), ("fc2", "ffn_down", f, d, True)]
    return tuple(SacLinear(*w, recomputed=k % 2 == 1) for k, w in enumerate(widths))


def op_sac_gemm_shares(model: ModelSpec) -> dict[str, float]:
    """Per fused GEMM op of a dense block, the share of its FLOPs that op-level SAC
    recomputes: its recomputed Linears' ``in * out`` over all of its Linears' (tensor
    parallelism splits them alike), e.g. for GQA's qkv ``kv_heads / (heads + 2 kv_heads)``
    (wk), 1 for out_proj (wo), 1/2 for SwiGLU's up_gate (w3), 0 for the down projection."""
    total: dict[str, float] = {}
    recomputed: dict[str, float] = {}
    for lin in op_sac_linears(model):
        flops = lin.in_width * lin.out_width
        total[lin.op] = total.get(lin.op, 0.0) + flops
        recomputed[lin.op] = recomputed.get(lin.op, 0.0) + (flops if lin.recomputed else 0.0)
    return {op: recomputed[op] / total[op] for op in total}


OP_SAC_UNREAD = frozenset({"ffn_residual"})
"""Elementwise ops of a dense block whose output no backward kernel reads, so op-level SAC
does not rebuild them: the closing residual add (the non-reentrant checkpoint stops
recomputing once the tensors backward needs are rebuilt, ``early_stop`` by default, and
torch.compile's partitioner recomputes only what backward reads)."""


def op_sac_refusal(model: ModelSpec, plan: Plan) -> str | None:
    """Why op-level SAC (``op_sac``) is not priced for ``model`` under ``plan``; None when it is.
    Its Linear order (:func:`op_sac_linears`) is TorchTitan's dense Llama block's: MoE blocks
    add a router mm and grouped expert GEMMs outside the save list, MLA has other Linears,
    MTP modules are not TorchTitan's, and unfused attention's bmm/softmax are not saved like
    SDPA, none of which this model prices."""
    if model.moe is not None or model.mla is not None or model.mtp_depth:
        return ("recompute module op_sac (TorchTitan's op-level SAC) is modelled for dense, non-MLA "
                f"blocks without MTP only ({model.name})")
    if plan.attention_kernel is AttentionKernel.UNFUSED:
        return "recompute module op_sac needs fused (flash/SDPA) attention, whose output it keeps"
    return None


__all__ = ["OP_SAC_UNREAD", "SacLinear", "op_sac_gemm_shares", "op_sac_linears", "op_sac_refusal"]
