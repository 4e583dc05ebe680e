"""The kernels of one micro-batch through one model piece on one GPU (forward, in order),
for :mod:`planner.costmodel.compute` to price.

Every piece (:class:`~planner.costmodel.partition.Piece`) is a list of :class:`Op`: GEMMs
with their (m, n, k) shape, the flash-attention core, and memory-bound kernels (norms,
activations, RoPE, residuals, MoE permutes, FP8 casts, the loss) with the HBM bytes they
move. Shapes are per GPU after sharding:

- tokens per GPU ``T = micro_batch * seq / cp``; tensor parallelism splits GEMM widths by
  ``tp`` (Megatron column/row-parallel linears), sequence parallelism splits the
  memory-bound ops' tokens by ``tp``;
- MLA's down-projections (W_DQ, W_DKV+W_KR) are replicated over tp, as Megatron-LM's MLA
  does; the up-projections and W_O are split;
- routed experts: the stage's tp*cp*dp GPUs hold num_experts/ep experts each (etp-split);
  with balanced routing each GPU's experts see ``T_tp * top_k * etp / tp`` token rows in
  all (``T_tp = micro_batch * seq / cp`` tokens of its tp group), i.e. for DeepSeek-V3
  (EP64, top-8 of 256, 4096 tokens) 8192 rows per expert GEMM; with real (not
  force-balanced) routing the busiest EP rank, which paces the layer, gets
  :func:`expert_load_factor` times that.

FP8 Linears add Transformer Engine's quantisation kernels (:func:`_cast`: the input in
forward, :func:`_grad_cast`: the output gradient in backward, each into row-wise and
transposed copies). Each op states the selective-recompute modules it belongs to
(:attr:`Op.modules`, Megatron-Core ``recompute_modules``); :func:`piece_ops` marks the ops
that :func:`selective_modules` recomputes. TorchTitan's op-level selective checkpointing
(``RecomputeModule.OP_SAC``, :mod:`planner.costmodel.op_sac`) is a policy over kernels
instead: it recomputes every second Linear of a block, so a fused GEMM here may be
recomputed in part (:attr:`Op.recompute_share`).

MoE routed experts (:func:`moe_ops`): the permutes move the rows of Megatron-Core's
all-to-all dispatcher (:func:`permute_rows`); the expert GEMMs are issued one per local
expert (:attr:`Op.per_expert`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import StrEnum

import yaml

from planner.costmodel.op_sac import OP_SAC_UNREAD, op_sac_gemm_shares, op_sac_refusal
from planner.costmodel.partition import Piece
from planner.errors import UnsupportedError
from planner.presets import data_root
from planner.specs.model import FFNActivation, ModelSpec, PositionEmbedding
from planner.specs.plan import (
    AttentionKernel,
    FP8Implementation,
    MoERouting,
    Plan,
    Precision,
    RecomputeModule,
    Workload,
)

BF16_BYTES = 2.0
FP32_BYTES = 4.0
ATTENTION_TILE_ROWS = 128
"""Query rows per thread block of the flash-attention kernels (FA2, FA3 and cuDNN's
``64x128`` / ``128x128`` tiles on Hopper)."""


@functools.cache
def compute_constants() -> dict:
    """Framework constants of the compute model (data/costmodel/compute.yaml)."""
    return yaml.safe_load((data_root() / "costmodel" / "compute.yaml").read_text())


class OpKind(StrEnum):
    GEMM = "gemm"
    ATTENTION = "attention"
    """Flash-attention core: QK^T, softmax, PV."""
    MEMORY = "memory"
    """Bandwidth-bound kernel, priced by the bytes it moves."""


@dataclass(frozen=True)
class Op:
    """One kernel of a piece's forward pass on one GPU, for one micro-batch."""

    name: str
    kind: OpKind
    flops: float = 0.0
    """Forward FLOPs (GEMMs: 2*m*n*k*count)."""
    shape: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """GEMM (m, n, k)."""
    count: float = 1.0
    """How many GEMMs of this shape (e.g. local experts)."""
    bytes: float = 0.0
    """Forward HBM traffic of a memory-bound kernel."""
    fp8: bool = False
    """A Linear GEMM that runs in FP8 when the workload's precision is fp8."""
    modules: frozenset[RecomputeModule] = frozenset()
    """The selective-recompute modules any one of which repeats it in backward."""
    recompute_selective: bool = False
    """Repeated in backward under selective recomputation: set by :func:`piece_ops` from
    :attr:`modules` and :func:`selective_modules`."""
    recompute_share: float = 1.0
    """Of the op's forward, the share selective recomputation repeats when
    :attr:`recompute_selective`: 1, but for a fused GEMM of which op-level SAC recomputes
    only some Linears (:func:`op_sac_gemm_shares`)."""
    weight_grad: bool = True
    """A GEMM against a weight (backward = input grad + weight grad); False for the
    activation-by-activation GEMMs of unfused attention (backward = two input grads)."""
    per_expert: bool = False
    """Routed-expert GEMMs issued one per local expert (``count``) after the MoE layer's
    tokens-per-expert sync: their host calls floor each phase (:func:`expert_host_s`)."""
    backward_bytes: float | None = None
    """Backward HBM traffic of a memory-bound kernel; None: twice :attr:`bytes` (the
    gradient kernel reads the saved input and the incoming gradient, writes one gradient)."""
    attention_shape: tuple[float, float] = (0.0, 0.0)
    """The attention core's (query tiles of 128 rows per launch, sequence length): what its
    rate depends on (:func:`planner.costmodel.compute.attention_rates`)."""
    fp8_cast: bool = False
    """A Transformer Engine quantisation kernel (:func:`_cast`, :func:`_grad_cast`), which
    torchao's float8 replaces with its own (:func:`torchao_casts`)."""

    def backward_traffic(self) -> float:
        return 2 * self.bytes if self.backward_bytes is None else self.backward_bytes


_NO_MODULE: frozenset[RecomputeModule] = frozenset()
_LN = frozenset({RecomputeModule.LAYERNORM})
_ACT = frozenset({RecomputeModule.MOE_ACT})
_CORE = frozenset({RecomputeModule.CORE_ATTN})
_MLA_UP = frozenset({RecomputeModule.MLA_UP_PROJ})


def _gemm(name: str, m: float, n: float, k: float, count: float = 1.0, fp8: bool = True,
          mods: frozenset[RecomputeModule] = _NO_MODULE, per_expert: bool = False) -> Op:
    return Op(name, OpKind.GEMM, 2.0 * m * n * k * count, (m, n, k), count, fp8=fp8, modules=mods,
              per_expert=per_expert)


def _mem(name: str, nbytes: float, mods: frozenset[RecomputeModule] = _NO_MODULE,
         backward_bytes: float | None = None) -> Op:
    return Op(name, OpKind.MEMORY, bytes=nbytes, modules=mods, backward_bytes=backward_bytes)


def _within(ops: list[Op], module: RecomputeModule) -> list[Op]:
    """``ops`` as parts of ``module`` (recomputing it repeats them all)."""
    for op in ops:  # fresh ops of this call's builders: tagged in place (replace() is slow here)
        object.__setattr__(op, "modules", op.modules | {module})
    return ops


def selective_modules(model: ModelSpec, plan: Plan, precision: Precision) -> frozenset[RecomputeModule]:
    """What ``selective`` recomputes: the plan's ``recompute_modules``, or by default the
    attention core (Megatron-Core's default, Korthikanti et al. 2022 §4.2) and, under FP8,
    the FFN activation rebuilt from its cached FP8 input (V3 §3.3.3; Megatron's
    ``activation_func_fp8_input_store``); for MLA models DeepSeek-V3's set instead: all
    norms and the MLA up-projections (§3.2.3) and the SwiGLU output (§3.3.3)."""
    if plan.recompute_modules is not None:
        if RecomputeModule.OP_SAC in plan.recompute_modules and (why := op_sac_refusal(model, plan)):
            raise UnsupportedError(why)
        return frozenset(plan.recompute_modules)
    if model.mla is not None:
        return frozenset({RecomputeModule.LAYERNORM, RecomputeModule.MLA_UP_PROJ, RecomputeModule.MOE_ACT})
    if precision is Precision.FP8:
        return frozenset({RecomputeModule.CORE_ATTN, RecomputeModule.MOE_ACT})
    return frozenset({RecomputeModule.CORE_ATTN})


def _mark_op_sac(model: ModelSpec, ops: list[Op]) -> None:
    """Marks a dense block's ops as op-level SAC recomputes them: every elementwise kernel
    whose output backward reads (norms, RoPE, SwiGLU/GELU, the attention residual, FP8
    casts), the recomputed Linears' share of each GEMM, never the attention core."""
    shares = op_sac_gemm_shares(model)
    for op in ops:  # fresh ops, marked in place
        share = 0.0
        if op.kind is OpKind.MEMORY and op.bytes > 0 and op.name not in OP_SAC_UNREAD:
            share = 1.0
        elif op.kind is OpKind.GEMM:
            share = shares.get(op.name, 0.0)
        if share > 0:
            object.__setattr__(op, "recompute_selective", True)
            object.__setattr__(op, "recompute_share", share)


@dataclass(frozen=True)
class Shard:
    """Token and width sharding of one GPU under a plan."""

    tokens: float
    """Tokens per GPU entering GEMMs (micro_batch * seq / cp)."""
    elementwise_tokens: float
    """Tokens per GPU for norms/residuals (further / tp with sequence parallelism)."""
    tp: int
    seq_length: int
    expert_load: float = 1.0
    """Routed rows of the busiest EP rank over the mean (:func:`expert_load_factor`)."""

    @classmethod
    def of(cls, plan: Plan, workload: Workload) -> Shard:
        tokens = plan.micro_batch_size * workload.seq_length / plan.cp
        sp = plan.sequence_parallel and plan.tp > 1
        return cls(tokens, tokens / plan.tp if sp else tokens, plan.tp, workload.seq_length,
                   expert_load_factor(plan, workload))


def expert_load_factor(plan: Plan, workload: Workload) -> float:
    """Routed rows the busiest EP rank receives over the mean, which sets the pace of every
    MoE layer (its expert GEMMs, and the all-to-all into and out of it: comm.StageComm):
    1 without expert parallelism (one rank holds every expert and gets every row), else
    :func:`ep_rank_imbalance`."""
    return 1.0 if plan.ep == 1 else ep_rank_imbalance(workload)


def ep_rank_imbalance(workload: Workload) -> float:
    """The busiest EP rank's routed rows over the mean when ep > 1: 1 under forced balance,
    else ``moe_real_routing_rank_load_imbalance`` (compute.yaml, measured)."""
    if workload.moe_routing is MoERouting.BALANCED:
        return 1.0
    return float(compute_constants()["moe_real_routing_rank_load_imbalance"])


def _norm_ops(model: ModelSpec, s: Shard, name: str) -> list[Op]:
    # RMSNorm/LayerNorm reads and writes T x d in BF16.
    return [_mem(name, 2 * s.elementwise_tokens * model.hidden_size * BF16_BYTES, _LN)]


# FP8 Linear operands on Hopper (Transformer Engine; data/costmodel/compute.yaml, fp8_*):
# forward and dgrad read row-wise FP8 copies, wgrad column-wise (physically transposed)
# ones of the input and of the output gradient, so each is quantised into both layouts.
def _cast(name: str, elements: float, precision: Precision, norm_fused: bool = False) -> list[Op]:
    """Quantisation of a Linear's input (``elements`` per GPU) in forward; none in
    backward (the column-wise copy is saved for wgrad). ``norm_fused``: the input is a
    norm's output (TE LayerNormLinear): the norm writes FP8 itself and only the column-wise
    copy costs extra."""
    if precision is not Precision.FP8:
        return []
    c = compute_constants()
    per_element = c["fp8_norm_fused_quantise_bytes"] if norm_fused else c["fp8_cast_transpose_bytes"]
    return [Op(name, OpKind.MEMORY, bytes=elements * per_element, backward_bytes=0.0, fp8_cast=True)]


def _grad_cast(name: str, elements: float, precision: Precision) -> list[Op]:
    """Quantisation of a Linear's output gradient (``elements`` per GPU) into both layouts
    (dgrad row-wise, wgrad column-wise), in backward only."""
    if precision is not Precision.FP8:
        return []
    return [Op(name, OpKind.MEMORY, backward_bytes=elements * compute_constants()["fp8_cast_transpose_bytes"],
               fp8_cast=True)]


TP_INPUT_GATHERED = frozenset({"qkv", "ffn_up_gate", "ffn_up"})
"""Column-parallel Linears, whose input is all-gathered from the sequence-parallel shards."""
TP_GRAD_GATHERED = frozenset({"out_proj", "ffn_down"})
"""Row-parallel Linears, whose output gradient is all-gathered from the sequence-parallel shards."""


def torchao_casts(ops: list[Op], sp_rows_share: float = 1.0) -> list[Op]:
    """``ops`` with torchao's float8 quantisation (tensorwise dynamic scaling; data/costmodel/
    compute.yaml ``fp8_torchao_*``) in place of Transformer Engine's: after every FP8 Linear
    GEMM (m, n, k) x count, its input's (m x k) and weight's (n x k) amax and casts in forward,
    the weight's transposed cast and the output gradient's (m x n) amax and casts in backward.
    Under sequence parallelism (``sp_rows_share`` = 1 / tp) torchao casts a column-parallel
    Linear's input and a row-parallel Linear's output gradient on the sequence shard, before
    their FP8 all-gather (torchao/float8/float8_tensor_parallel.py: Float8ColwiseParallel's
    ``_prepare_input_fn`` casts, then redistributes; Float8RowwiseParallel's
    ``_prepare_output_fn`` redistributes, then casts the gradient in backward). Every byte
    count is over the measured share of the HBM rate these compiled kernels reach."""
    c = compute_constants()
    scale = 1.0 / c["fp8_torchao_cast_hbm_share"]
    out: list[Op] = []
    for op in ops:
        if op.fp8_cast:
            continue
        out.append(op)
        if op.kind is OpKind.GEMM and op.fp8 and op.weight_grad:
            m, n, k = op.shape
            m_in = m * sp_rows_share if op.name in TP_INPUT_GATHERED else m
            m_grad = m * sp_rows_share if op.name in TP_GRAD_GATHERED else m
            mk, nk, mn = m_in * k * op.count, n * k * op.count, m_grad * n * op.count
            out += [
                Op(f"{op.name}_f8_input", OpKind.MEMORY, bytes=mk * c["fp8_torchao_input_bytes"] * scale,
                   backward_bytes=0.0, modules=op.modules),
                Op(f"{op.name}_f8_weight", OpKind.MEMORY, bytes=nk * c["fp8_torchao_weight_forward_bytes"] * scale,
                   backward_bytes=nk * c["fp8_torchao_weight_backward_bytes"] * scale, modules=op.modules),
                Op(f"{op.name}_f8_grad", OpKind.MEMORY, backward_bytes=mn * c["fp8_torchao_grad_output_bytes"] * scale),
            ]
    return out


def attention_ops(model: ModelSpec, plan: Plan, s: Shard, precision: Precision) -> list[Op]:
    """Input norm, projections, core attention, output projection, residual."""
    d, h, t, T = model.hidden_size, model.num_attention_heads, s.tp, s.tokens
    mla = model.mla
    ops = _norm_ops(model, s, "attn_norm")
    if mla is not None:
        # Megatron-Core's MLA: separate input norm, TELinear down-projections sharing one
        # quantised input; q/kv norms fused into the TELayerNormColumnParallelLinear up-projections.
        ops += _cast("attn_in_cast", T * d, precision)
        qk = mla.qk_nope_head_dim + mla.qk_rope_head_dim
        if mla.q_lora_rank:
            ops.append(_gemm("q_down", T, mla.q_lora_rank, d))
            ops += _grad_cast("q_down_grad_cast", T * mla.q_lora_rank, precision)
            ops += _norm_ops(model.model_copy(update={"hidden_size": mla.q_lora_rank}), s, "q_norm")
            ops += _cast("q_up_in_cast", T * mla.q_lora_rank, precision, norm_fused=True)
            ops.append(_gemm("q_up", T, h * qk / t, mla.q_lora_rank, mods=_MLA_UP))
            ops += _grad_cast("q_up_grad_cast", T * h * qk / t, precision)
        else:
            ops.append(_gemm("q_proj", T, h * qk / t, d))
            ops += _grad_cast("q_proj_grad_cast", T * h * qk / t, precision)
        kv_down = mla.kv_lora_rank + mla.qk_rope_head_dim
        ops.append(_gemm("kv_down", T, kv_down, d))
        ops += _grad_cast("kv_down_grad_cast", T * kv_down, precision)
        ops += _norm_ops(model.model_copy(update={"hidden_size": mla.kv_lora_rank}), s, "kv_norm")
        ops += _cast("kv_up_in_cast", T * mla.kv_lora_rank, precision, norm_fused=True)
        kv_up = h * (mla.qk_nope_head_dim + mla.v_head_dim) / t
        ops.append(_gemm("kv_up", T, kv_up, mla.kv_lora_rank, mods=_MLA_UP))
        ops += _grad_cast("kv_up_grad_cast", T * kv_up, precision)
        rope_elems = T * (h / t + 1) * mla.qk_rope_head_dim
        out_in = h * mla.v_head_dim / t
    else:
        # TELayerNormColumnParallelLinear: the input norm emits the FP8 QKV input.
        ops += _cast("attn_in_cast", T * d, precision, norm_fused=True)
        c, g = model.kv_channels, model.kv_heads
        ops.append(_gemm("qkv", T, (h + 2 * g) * c / t, d))
        ops += _grad_cast("qkv_grad_cast", T * (h + 2 * g) * c / t, precision)
        rope_elems = T * (h + g) * c / t
        out_in = h * c / t
    if mla is not None or model.position_embedding is PositionEmbedding.ROPE:  # MLA's decoupled key is rotary
        ops.append(_mem("rope", 2 * rope_elems * BF16_BYTES))
    if plan.attention_kernel is AttentionKernel.FLASH:
        core = 2.0 * T * (h / t) * (model.qk_head_dim + model.v_head_dim) * (s.seq_length / 2)
        # The kernel's shape: T query rows per GPU in tiles of 128, each head its own; the sequence.
        tiles = T * (h / t) / ATTENTION_TILE_ROWS
        ops.append(Op("core_attention", OpKind.ATTENTION, flops=core, modules=_CORE,
                      attention_shape=(tiles, s.seq_length)))
    else:
        ops += _unfused_core(model, plan, s)
    ops += _cast("out_in_cast", T * out_in, precision)
    ops.append(_gemm("out_proj", T, d, out_in))
    ops += _grad_cast("out_proj_grad_cast", T * d, precision)
    ops.append(_mem("attn_residual", 3 * s.elementwise_tokens * d * BF16_BYTES))
    return ops


def _unfused_core(model: ModelSpec, plan: Plan, s: Shard) -> list[Op]:
    """Attention with the s x s scores in HBM (Megatron-LM before FlashAttention): batched
    QK^T and PV over the full matrix (the causal mask does not skip work), fused
    scale-mask-softmax (read and write 2-byte scores) and attention dropout (read and write
    the probabilities, write a 1-byte mask; Korthikanti et al. 2022 §4.1 count the same
    tensors as 5as^2b bytes of activations)."""
    sequences = plan.micro_batch_size
    heads = model.num_attention_heads / s.tp
    queries, keys = s.seq_length / plan.cp, s.seq_length
    count = sequences * heads
    scores = count * queries * keys
    gemm = functools.partial(Op, kind=OpKind.GEMM, count=count, modules=_CORE, weight_grad=False)
    return [
        gemm("attn_scores", flops=2.0 * scores * model.qk_head_dim, shape=(queries, keys, model.qk_head_dim)),
        _mem("attn_softmax", scores * 2 * BF16_BYTES, _CORE),
        _mem("attn_dropout", scores * (2 * BF16_BYTES + 1), _CORE),
        gemm("attn_values", flops=2.0 * scores * model.v_head_dim, shape=(queries, model.v_head_dim, keys)),
    ]


def _ffn_ops(model: ModelSpec, name: str, rows: float, width: float, count: float, precision: Precision,
             per_expert: bool = False, norm_fused: bool = False) -> list[Op]:
    """One (or ``count``) FFN of intermediate ``width`` per GPU on ``rows`` tokens each;
    ``per_expert``: the routed experts, one GEMM per expert (:attr:`Op.per_expert`);
    ``norm_fused``: the up-projection is a TELayerNormColumnParallelLinear (dense FFN)."""
    d = model.hidden_size
    ops = _cast(f"{name}_in_cast", rows * d * count, precision, norm_fused)
    if model.ffn_activation is FFNActivation.SWIGLU:
        ops.append(_gemm(f"{name}_up_gate", rows, 2 * width, d, count, per_expert=per_expert))
        ops += _grad_cast(f"{name}_up_gate_grad_cast", rows * 2 * width * count, precision)
        # SwiGLU reads gate and up, writes the product (DeepSeek-V3 recomputes it, §3.3.3).
        ops.append(_mem(f"{name}_swiglu", 3 * rows * width * count * BF16_BYTES, _ACT))
    else:
        ops.append(_gemm(f"{name}_up", rows, width, d, count, per_expert=per_expert))
        ops += _grad_cast(f"{name}_up_grad_cast", rows * width * count, precision)
        ops.append(_mem(f"{name}_gelu", 2 * rows * width * count * BF16_BYTES, _ACT))
    ops += _cast(f"{name}_down_cast", rows * width * count, precision)
    ops.append(_gemm(f"{name}_down", rows, d, width, count, per_expert=per_expert))
    ops += _grad_cast(f"{name}_down_grad_cast", rows * d * count, precision)
    return ops


def dense_ffn_ops(model: ModelSpec, plan: Plan, s: Shard, precision: Precision) -> list[Op]:
    ops = _norm_ops(model, s, "ffn_norm")
    ops += _within(_ffn_ops(model, "ffn", s.tokens, model.ffn_hidden_size / s.tp, 1, precision, norm_fused=True),
                   RecomputeModule.MLP)
    ops.append(_mem("ffn_residual", 3 * s.elementwise_tokens * model.hidden_size * BF16_BYTES))
    return ops


def moe_ops(model: ModelSpec, plan: Plan, s: Shard, precision: Precision) -> list[Op]:
    """Router, shared experts, routed experts (on the busiest EP rank: ``s.expert_load``
    times the balanced rows), permutes."""
    moe, d = model.moe, model.hidden_size
    # Router: affinities in BF16/FP32 (V3 keeps gating in higher precision, §3.3.1).
    block = [_gemm("router", s.tokens, moe.num_experts, d, fp8=False),
             _mem("router_topk", 4 * s.tokens * moe.num_experts * FP32_BYTES)]
    if moe.num_shared_experts:
        width = moe.shared_ffn_hidden_size * moe.num_shared_experts / s.tp
        block += _within(_ffn_ops(model, "shared", s.tokens, width, 1, precision), RecomputeModule.SHARED_EXPERTS)
    etp = plan.expert_tp
    rows_per_gpu = s.tokens * moe.top_k * etp / s.tp * s.expert_load
    local_experts = moe.num_experts / plan.ep
    block += _ffn_ops(model, "experts", rows_per_gpu / local_experts, moe.expert_ffn_hidden_size / etp,
                      local_experts, precision, per_expert=True)
    block.append(_mem("moe_permute", permute_rows(plan, s, moe.top_k, local_experts) * d * BF16_BYTES))
    ops = _norm_ops(model, s, "ffn_norm") + _within(block, RecomputeModule.MOE)
    ops.append(_mem("ffn_residual", 3 * s.elementwise_tokens * d * BF16_BYTES))
    return ops


def permute_rows(plan: Plan, s: Shard, top_k: int, local_experts: float) -> float:
    """Hidden-state rows one GPU's permutes read and write per MoE layer in forward, as
    Megatron-Core's all-to-all dispatcher moves them ("one global and one local permute
    before and after EP communication", NVIDIA's DeepSeek-V3 GB200 guide, Megatron-LM
    docs/discussions/deepseek-v3-gb200-optimization §2.1.1): the global permute gathers the
    GPU's ``T_l = T/tp`` tokens into ``T_l*top_k`` expert-ordered rows (read and write); after
    the dispatch, with ep > 1 and several local experts, a local permute sorts the received
    ``R = T*top_k*etp/tp`` rows by expert (read and write), and sorts them back before the
    combine (read and write); the unpermute reads the ``T_l*top_k`` returned rows and writes
    the ``T_l`` weighted sums. The received rows are the busiest EP rank's (``s.expert_load``
    times the mean); what a GPU sends is its own tokens' and balanced."""
    own_tokens = s.tokens / s.tp
    sent = own_tokens * top_k
    received = sent * plan.expert_tp * s.expert_load
    local = 4 * received if plan.ep > 1 and local_experts > 1 else 0.0
    return 2 * sent + local + sent + own_tokens


def head_ops(model: ModelSpec, plan: Plan, s: Shard) -> list[Op]:
    """Final norm, LM head (BF16, V3 §3.3.1) and the vocab-parallel cross-entropy."""
    v = model.vocab_size / s.tp
    ops = _norm_ops(model, s, "final_norm")
    ops.append(_gemm("lm_head", s.tokens, v, model.hidden_size, fp8=False))
    # Fused cross-entropy: read the BF16 logits, write FP32 softmax/grad in place.
    ops.append(_mem("cross_entropy", s.tokens * v * (BF16_BYTES + 2 * FP32_BYTES)))
    return ops


def embedding_ops(model: ModelSpec, plan: Plan, s: Shard) -> list[Op]:
    # Gather one row per token and write it (plus the tp all-reduce, priced in comm).
    return [_mem("embedding", 2 * s.tokens * model.hidden_size * BF16_BYTES)]


def piece_ops(model: ModelSpec, plan: Plan, workload: Workload, piece: Piece) -> tuple[Op, ...]:
    """Forward kernels of one piece for one micro-batch on one GPU."""
    s = Shard.of(plan, workload)
    precision = workload.precision
    selected = selective_modules(model, plan, precision)
    if piece is Piece.EMBEDDING:
        ops = embedding_ops(model, plan, s)
    elif piece is Piece.HEAD:
        ops = head_ops(model, plan, s)
    else:
        ops = _block_ops(model, plan, s, piece, precision)
    if precision is Precision.FP8 and workload.fp8_implementation is FP8Implementation.TORCHAO:
        ops = torchao_casts(ops, s.elementwise_tokens / s.tokens)
    if RecomputeModule.OP_SAC in selected:  # TorchTitan checkpoints the transformer blocks only
        if piece is Piece.DENSE:
            _mark_op_sac(model, ops)
        return tuple(ops)
    for op in ops:  # fresh ops, marked in place
        if op.modules & selected:
            object.__setattr__(op, "recompute_selective", True)
    return tuple(ops)


def _block_ops(model: ModelSpec, plan: Plan, s: Shard, piece: Piece, precision: Precision) -> list[Op]:
    """Kernels of a transformer block (or an MTP module) in forward order."""
    ops: list[Op] = []
    if piece is Piece.MTP:
        # V3 §2.2: norms of the hidden state and the next token's embedding, then M_k
        # (2d -> d); the block and the shared head follow.
        d = model.hidden_size
        ops += _norm_ops(model, s, "mtp_norms") * 2
        ops.append(_gemm("mtp_proj", s.tokens, d, 2 * d, fp8=False))
    ops += attention_ops(model, plan, s, precision)
    if piece is Piece.DENSE or (piece is Piece.MTP and model.moe is None):
        ops += dense_ffn_ops(model, plan, s, precision)
    else:
        ops += moe_ops(model, plan, s, precision)
    if piece is Piece.MTP:
        ops += head_ops(model, plan, s)
    return ops
