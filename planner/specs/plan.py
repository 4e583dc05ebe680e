"""Workload (what is trained per step) and Plan (how it is parallelised).

Plan degrees use Megatron-LM's short forms in code (``tp pp vpp cp ep etp dp``) and accept
Megatron's long argument names in files (``tensor_model_parallel_size`` ...). The expert
fold follows Megatron: the ranks of one pipeline stage, tp * cp * dp of them, are
re-partitioned for MoE layers as etp * ep * edp, so ep * etp must divide tp * cp * dp.

Rules that need the model (tp divides heads, ep divides experts) live in
:mod:`planner.specs.compat`.
"""

from __future__ import annotations

import math
from enum import IntEnum, StrEnum

from pydantic import AliasChoices, Field, NonNegativeInt, PositiveInt, field_validator, model_validator

from planner.specs._base import Spec, rule_error


class Precision(StrEnum):
    """Numeric format of the GEMMs. Everything else runs in BF16/FP32 as the papers say."""

    BF16 = "bf16"
    FP16 = "fp16"
    FP8 = "fp8"
    """FP8 GEMMs (Fprop, Dgrad, Wgrad) with BF16 attention, norms, embedding and head,
    as in DeepSeek-V3 §3.3.1."""


class MomentDtype(StrEnum):
    """Storage format of Adam's first and second moments (Megatron-Core
    ``--exp-avg-dtype`` / ``--exp-avg-sq-dtype``, honoured with
    ``--use-precision-aware-optimizer``; both default to fp32)."""

    FP32 = "fp32"
    """What PyTorch's Adam, Megatron-Core (without the precision-aware optimizer),
    Transformer Engine FP8 recipes, torchao FP8 (torchtitan) and DeepSpeed keep."""
    BF16 = "bf16"
    """DeepSeek-V3 §3.3.3: "BF16 for the first and second moments"."""
    FP16 = "fp16"
    FP8 = "fp8"


class DispatchDtype(StrEnum):
    """Format of the tokens the MoE dispatch all-to-all sends (the combine is always BF16)."""

    BF16 = "bf16"
    """Megatron-Core's all-to-all dispatcher, even in FP8 runs: FP8 "EP Dispatch (which are
    not yet supported)" (NVIDIA, "Optimizing DeepSeek-V3 Training Performance on GB200
    NVL72", Megatron-LM docs/discussions, §2.1.3)."""
    FP8 = "fp8"
    """DeepSeek-V3's recipe (V3 report §3.3.3: activations quantised to FP8 before the MoE
    up-projections are dispatched in FP8; the combine stays BF16), as DeepEP does."""


class MoEDispatcher(StrEnum):
    """How the MoE layer's tokens reach their experts' ranks (Megatron-Core
    ``moe_token_dispatcher_type``; :func:`planner.hwmodels.alltoall.moe_all_to_all`)."""

    DEEPEP = "deepep"
    """DeepEP (Megatron-Core ``flex`` dispatcher, DeepSeek-V3 §3.2.2): each token goes once
    to every distinct destination node over IB and once to every distinct destination GPU
    over NVLink, hierarchically."""
    ALLTOALL = "alltoall"
    """Megatron-Core's ``MoEAlltoAllTokenDispatcher``: the tokens are permuted into one row
    per (token, chosen expert) and the rows exchanged by one NCCL all-to-all over the EP
    group (``token_dispatcher.py``: ``permute`` then ``all_to_all(ep_group, ...)``), so a
    token routed to several experts of one rank or node is sent once per expert."""


class MoERouting(StrEnum):
    """How evenly the router spreads the routed rows over the EP ranks. The slowest EP rank
    paces every MoE layer (its expert GEMMs and the all-to-all into and out of it), so what
    matters is the busiest rank's rows over the mean
    (:func:`planner.costmodel.ops.expert_load_factor`)."""

    BALANCED = "balanced"
    """Every EP rank gets the mean, ``tokens * top_k / ep`` rows: forced balance
    (Megatron-Core ``--moe-router-force-load-balancing``, which benchmark tables state)."""
    REAL = "real"
    """The router's own dropless choices: the busiest EP rank gets
    ``moe_real_routing_rank_load_imbalance`` x the mean (data/costmodel/compute.yaml)."""


class CrossEntropyKernel(StrEnum):
    """What the loss keeps for backward, per logit."""

    UNFUSED = "unfused"
    """The logits cast to FP32 and the FP32 softmax saved for backward, which turns it into
    the gradient in place: Megatron's ``vocab_parallel_cross_entropy`` (also its fused
    ``native`` implementation), PyTorch's ``F.cross_entropy`` on ``logits.float()``
    (torchtitan)."""
    FUSED = "fused"
    """A fused kernel that keeps the 16-bit logits and one FP32 log-sum-exp per row and
    writes a 16-bit gradient: flash-attn's Triton ``cross_entropy`` (``ctx.save_for_backward
    (logits, lse, labels)``, ``dlogits = torch.empty_like(logits)``; llm-foundry's default
    ``loss_fn: fused_crossentropy``), Transformer Engine's (``cross_entropy_fusion_impl: te``)."""


class FP8Implementation(StrEnum):
    """Whose kernels quantise an FP8 Linear's operands (``Workload.fp8_implementation``)."""

    TRANSFORMER_ENGINE = "te"
    """Transformer Engine (Megatron-LM, NeMo, Megatron-Bridge): a fused cast-transpose per
    input and output gradient, the norm writing the FP8 input itself, weights cast once per
    step (data/costmodel/compute.yaml ``fp8_cast_transpose_bytes``)."""
    TORCHAO = "torchao"
    """torchao's float8 training with tensorwise dynamic scaling under torch.compile
    (TorchTitan): every Float8Linear computes its input's, weight's and output gradient's
    amax and casts each into both layouts, the weight in every micro-batch (data/costmodel/
    compute.yaml ``fp8_torchao_*``)."""


class PipelineP2P(StrEnum):
    """How the pipeline runtime moves activations and gradients between stages."""

    MEGATRON = "megatron"
    """Megatron-LM / Megatron-Core (and the runtimes built on their schedules): each stage's
    send and receive are batched into one exchange per neighbour, and with sequence parallelism
    each TP rank sends its 1/tp of the activation. Priced as a delay between dependent chunks
    on different ranks, which the schedule hides where it has slack."""
    DEEPSPEED = "deepspeed"
    """DeepSpeed's ``PipelineEngine`` (Megatron-DeepSpeed, BLOOM, MT-NLG): every receive and
    send is its own blocking instruction between the compute (``deepspeed/runtime/pipe/p2p.py``
    asserts ``async_op == False``; ``schedule.py``'s ``TrainSchedule`` issues ``RecvActivation``
    / ``SendActivation`` around each ``ForwardPass`` and ``RecvGrad`` / ``SendGrad`` around each
    ``BackwardPass``), and each TP rank sends the whole activation. So a stage's forward and
    backward each wait out one transfer per neighbour (two in the middle of the pipeline, one at
    either end). Only with the ``1f1b`` schedule, the engine's only training schedule."""


class GradReduceDtype(StrEnum):
    """Format of the gradient buffer and of its data-parallel reduction (Megatron-Core
    ``DistributedDataParallelConfig.grad_reduce_in_fp32``)."""

    FP32 = "fp32"
    """Megatron-LM's default under BF16 (``accumulate_allreduce_grads_in_fp32`` is forced on
    for bf16 in megatron/training/arguments.py); FP16 runs reduce in FP16 regardless."""
    BF16 = "bf16"
    """``grad_reduce_in_fp32=False``: NeMo's performance recipes (``performance_mode``, and
    every FP8 run of NeMo's scripts/performance/llm, which set
    ``recipe.trainer.plugins.grad_reduce_in_fp32 = False``) and Megatron-Bridge's
    performance configs (``cfg.ddp.grad_reduce_in_fp32 = False``)."""


class ZeroStage(IntEnum):
    """What data-parallel ranks shard (Rajbhandari et al. 2020, arXiv 1910.02054)."""

    NONE = 0
    OPTIMIZER = 1
    """Optimizer states sharded (Megatron distributed optimizer)."""
    GRADIENTS = 2
    """Optimizer states and gradients sharded."""
    PARAMETERS = 3
    """Optimizer states, gradients and parameters sharded (FSDP full shard)."""


class Recompute(StrEnum):
    """Activation recomputation (Korthikanti et al. 2022, arXiv 2205.05198)."""

    NONE = "none"
    SELECTIVE = "selective"
    """Recompute the cheap, memory-heavy parts (attention core; DeepSeek-V3: norms and
    MLA up-projections)."""
    FULL = "full"
    """Store only each layer's input; recompute the whole forward in backward."""


RECOMPUTE_ORDER = (Recompute.NONE, Recompute.SELECTIVE, Recompute.FULL)
"""Least to most recomputation: least to most memory saved and time spent."""


class RecomputeModule(StrEnum):
    """A part of a block that selective recomputation rebuilds in backward (Megatron-Core
    ``--recompute-modules`` names, with ``--recompute-granularity selective``)."""

    CORE_ATTN = "core_attn"
    """The attention core (softmax statistics; Korthikanti et al. 2022 §4.2)."""
    LAYERNORM = "layernorm"
    """Every norm's output (input norms, MLA's q/kv latent norms, the final norm)."""
    MLA_UP_PROJ = "mla_up_proj"
    """MLA's q and kv up-projections (DeepSeek-V3 §3.2.3)."""
    MOE_ACT = "moe_act"
    """The FFN activation output (SwiGLU/GELU), rebuilt from the cached fc1 output (V3
    §3.3.3); applied to every FFN, dense ones included."""
    MLP = "mlp"
    """A dense FFN from its input: fc1 output and activation."""
    MOE = "moe"
    """A whole MoE block from its input: router, dispatch (its all-to-all runs again),
    routed and shared experts, combine."""
    SHARED_EXPERTS = "shared_experts"
    """The shared experts of a MoE block."""
    OP_SAC = "op_sac"
    """Not a Megatron module: TorchTitan's op-level selective activation checkpointing
    (``selective_ac_option = "op"``, its Llama 3 8B default; torchtitan
    ``_get_custom_policy``, :mod:`planner.costmodel.op_sac`). Per transformer block it
    saves the outputs of every ``aten.mm`` but every second one and of SDPA, and recomputes
    the rest: the 2nd, 4th, 6th Linear of the block (wk, wo, w3 of a Llama block) and every
    elementwise op (norms, RoPE, SiLU and product, residual adds, FP8 casts), never the
    attention core (:func:`planner.costmodel.op_sac.op_sac_linears`). A whole policy: it
    combines with no other module. Dense, non-MLA blocks with fused attention only."""


class PipelineSchedule(StrEnum):
    """Pipeline-parallel schedule; irrelevant when pp == 1."""

    ONE_F_ONE_B = "1f1b"
    """PipeDream-flush 1F1B (Narayanan et al. 2021)."""
    INTERLEAVED = "interleaved"
    """Interleaved 1F1B with vpp model chunks per rank (Narayanan et al. 2021)."""
    ZERO_BUBBLE = "zero-bubble"
    """ZB1P (Qi et al. 2023): weight-gradient work fills the bubble."""
    DUALPIPE = "dualpipe"
    """Bidirectional DualPipe (DeepSeek-V3 §3.2.1): pp even, micro-batches even, >= 2 pp."""
    DUALPIPEV = "dualpipev"
    """DualPipeV, the "cut-in-half" DualPipe: two stages per rank (DualPipe repository)."""


DUAL_SCHEDULES = (PipelineSchedule.DUALPIPE, PipelineSchedule.DUALPIPEV)
"""The bidirectional schedules: every rank runs two chunks and overlaps F&B pairs."""


class AttentionKernel(StrEnum):
    """How the attention core is computed."""

    FLASH = "flash"
    """Fused, IO-aware kernel (FlashAttention, Dao et al. 2022): scores never reach HBM,
    causal masking skips the upper triangle."""
    UNFUSED = "unfused"
    """Scores materialised in HBM: batched QK^T and PV GEMMs over the full s x s matrix with
    Megatron's fused scale-mask-softmax and dropout between them (Megatron-LM before
    FlashAttention; Korthikanti et al. 2022 §4.1 store these 5as^2b bytes)."""


DEFAULT_RANK_ORDER = "tp-cp-ep-dp-pp"
_ORDER_DIMS = frozenset(DEFAULT_RANK_ORDER.split("-"))


class Workload(Spec):
    """What one optimizer step processes."""

    global_batch_size: PositiveInt
    """Sequences per optimizer step (Megatron ``global_batch_size``)."""
    seq_length: PositiveInt
    """Tokens per sequence (Megatron ``seq_length``)."""
    precision: Precision = Precision.BF16
    """GEMM precision."""
    adam_moment_dtype: MomentDtype = MomentDtype.FP32
    """Format of the optimizer's moments, independent of ``precision``: an FP8 run keeps
    FP32 moments unless it says otherwise (DeepSeek-V3's recipe: ``bf16``)."""
    moe_dispatch_dtype: DispatchDtype = DispatchDtype.BF16
    """Format of the MoE dispatch all-to-all, independent of ``precision``: BF16 unless the
    run says otherwise (DeepSeek-V3's recipe: ``fp8``)."""
    moe_dispatcher: MoEDispatcher = MoEDispatcher.DEEPEP
    """MoE token dispatcher (see the enum): DeepEP's deduplicating hierarchical all-to-all
    unless the run says otherwise."""
    moe_routing: MoERouting = MoERouting.BALANCED
    """Routed-row balance over the EP ranks (see the enum): balanced unless the run says
    otherwise."""
    grad_reduce_dtype: GradReduceDtype = GradReduceDtype.FP32
    """Format of the gradient buffer and its data-parallel reduction (see the enum)."""
    pipeline_p2p: PipelineP2P = PipelineP2P.MEGATRON
    """How stages exchange activations and gradients (see the enum): Megatron's unless the
    run says otherwise."""
    cross_entropy: CrossEntropyKernel = CrossEntropyKernel.UNFUSED
    """What the loss saves for backward (see the enum): Megatron's FP32 softmax unless the run
    says otherwise."""
    fp8_implementation: FP8Implementation = FP8Implementation.TRANSFORMER_ENGINE
    """Whose kernels quantise FP8 Linears (see the enum; only with ``precision`` fp8):
    Transformer Engine's unless the run says otherwise."""
    overlap_param_gather: bool = True
    """ZeRO-1/2: the parameter all-gather after the optimizer step runs under the next
    step's forward passes, bucket by bucket, instead of before the step ends (Megatron-Core
    ``overlap_param_gather``: on in NeMo 2.0's ``MegatronStrategy`` and Megatron-Bridge's
    distributed-optimizer configs; Megatron-LM's ``--overlap-param-gather``). False: the
    gather follows the gradient reduction at the end of the step (DeepSpeed ZeRO-1,
    DeepSeek's HAI-LLM as DeepSeek LLM §2.4 describes it)."""
    tp_comm_overlap: bool = False
    """Transformer Engine's TP communication overlap (Megatron-LM ``--tp-comm-overlap``,
    default off; NeMo's ``ub_tp_comm_overlap`` / ``MegatronCommOverlapCallback(tp_comm_overlap=
    True)`` and Megatron-Bridge's ``CommOverlapConfig(tp_comm_overlap=True)``, on in their
    performance recipes): the sequence-parallel all-gathers and reduce-scatters of a
    transformer block's attention and dense-MLP Linear layers run through userbuffers
    concurrently with the GEMM next to them (:mod:`planner.costmodel.tp_overlap`). Effective
    only with ``sequence_parallel`` and tp > 1 (Megatron-Core turns it off otherwise);
    elsewhere it has no effect."""
    ep_comm_overlap: bool = False
    """Megatron-Core's combined 1F1B (``--overlap-moe-expert-parallel-comm``, default off;
    Megatron-Bridge's ``CommOverlapConfig(overlap_moe_expert_parallel_comm=True)``,
    Megatron-MoE-ModelZoo's ``A2A_OVERLAP=1``): in the 1F1B steady state each forward is
    merged with the backward of an earlier micro-batch, and the EP dispatch and combine of
    one hide behind the computation of the other, as in DualPipe's F&B pairs
    (:func:`planner.costmodel.ep_overlap.applies`). Megatron requires EP > 1, a virtual
    pipeline when PP > 1 (the interleaved schedule), and no full recomputation (Megatron-Core
    user guide, "Combined 1F1B: Expert-Parallel All-to-All Overlap"); elsewhere it has no
    effect."""

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_length


def _degree(long_name: str, short: str, doc: str, default: int | None = 1):
    kwargs = {"default": default} if default is not None else {}
    return Field(
        validation_alias=AliasChoices(short, long_name),
        description=doc,
        ge=1,
        **kwargs,
    )


class Plan(Spec):
    """A parallel configuration; world size = tp * cp * dp * pp."""

    tp: int = _degree("tensor_model_parallel_size", "tp", "Tensor-parallel degree.")
    pp: int = _degree("pipeline_model_parallel_size", "pp", "Pipeline-parallel stages.")
    vpp: int = _degree(
        "virtual_pipeline_model_parallel_size",
        "vpp",
        "Model chunks per pipeline rank (interleaved schedule); 1 = not interleaved.",
    )
    cp: int = _degree("context_parallel_size", "cp", "Context-parallel degree (sequence split).")
    ep: int = _degree("expert_model_parallel_size", "ep", "Expert-parallel degree.")
    etp: int | None = Field(
        default=None,
        validation_alias=AliasChoices("etp", "expert_tensor_parallel_size"),
        ge=1,
        description="Tensor-parallel degree inside experts; None = same as tp (Megatron default).",
    )
    dp: int = _degree("data_parallel_size", "dp", "Data-parallel degree.")
    zero_stage: ZeroStage = ZeroStage.NONE
    """ZeRO stage over the data-parallel group."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism: TP all-reduce becomes reduce-scatter + all-gather
    and norm/dropout activations are split over tp (no effect when tp == 1)."""
    recompute: Recompute = Recompute.NONE
    recompute_modules: tuple[RecomputeModule, ...] | None = None
    """What ``selective`` recomputes (Megatron ``--recompute-modules``); None = the
    default: ``core_attn``, plus ``moe_act`` under FP8; for MLA models DeepSeek-V3's norms,
    up-projections and SwiGLU (``layernorm mla_up_proj moe_act``). Only with
    ``recompute = selective``."""
    cpu_offloading_num_layers: NonNegativeInt = 0
    """Transformer blocks, the first in model order, whose activations go to host memory
    after their forward and come back for their backward (Megatron-Core
    ``cpu_offloading_num_layers`` with ``cpu_offloading_activations``, Transformer Engine's
    CPU offload; weights stay on the GPU). Megatron-Core allows it only with pp 1, no
    recompute and fewer blocks than the model has (TransformerConfig.__post_init__)."""
    micro_batch_size: PositiveInt = 1
    """Sequences per micro-batch (Megatron ``micro_batch_size``)."""
    pipeline_schedule: PipelineSchedule = PipelineSchedule.ONE_F_ONE_B
    attention_kernel: AttentionKernel = AttentionKernel.FLASH
    """Attention implementation; ``unfused`` for runs before FlashAttention."""
    rank_order: str = DEFAULT_RANK_ORDER
    """Order in which dimensions are laid over consecutive ranks, fastest first
    (Megatron ``order``): with the default, TP groups are adjacent GPUs."""
    pipeline_layers: tuple[NonNegativeInt, ...] | None = None
    """Transformer blocks in each model chunk, in model order (pp * vpp chunks; 2 * pp for
    DualPipeV); the embedding sits on the first chunk, the head and MTP on the last, which
    alone may hold no block (a loss-only stage). None =
    the simulator's choice (even, balanced, or fitted to memory), reported in the result.
    Megatron-LM expresses uneven splits as ``--decoder-first/last-pipeline-num-layers``."""

    @field_validator("rank_order")
    @classmethod
    def _check_order(cls, value: str) -> str:
        dims = value.split("-")
        if len(dims) != len(_ORDER_DIMS) or set(dims) != _ORDER_DIMS:
            raise ValueError(
                f"must be a '-'-separated permutation of tp, cp, ep, dp, pp (e.g. {DEFAULT_RANK_ORDER})"
            )
        return value

    @field_validator("recompute_modules")
    @classmethod
    def _canonical_modules(cls, value: tuple[RecomputeModule, ...] | None) -> tuple[RecomputeModule, ...] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("must name at least one module (leave it unset for the default)")
        return tuple(m for m in RecomputeModule if m in value)  # declaration order, no repeats

    @model_validator(mode="after")
    def _check(self) -> Plan:
        schedule = self.pipeline_schedule
        if self.recompute_modules is not None and self.recompute is not Recompute.SELECTIVE:
            raise rule_error("recompute_modules", ",".join(self.recompute_modules),
                             "recompute_modules needs recompute 'selective'")
        if RecomputeModule.OP_SAC in (self.recompute_modules or ()) and len(self.recompute_modules) > 1:
            raise rule_error("recompute_modules", ",".join(self.recompute_modules),
                             "op_sac (TorchTitan's whole op-level policy) combines with no other module")
        if self.cpu_offloading_num_layers:
            if self.pp > 1:
                raise rule_error("cpu_offloading_num_layers", self.cpu_offloading_num_layers,
                                 "activation offloading needs pp 1 (Megatron-Core supports no pipeline with it)")
            if self.recompute is not Recompute.NONE:
                raise rule_error("cpu_offloading_num_layers", self.cpu_offloading_num_layers,
                                 "activation offloading needs recompute 'none' (Megatron-Core: they do not combine)")
        if self.vpp > 1 and schedule is not PipelineSchedule.INTERLEAVED:
            raise rule_error("vpp", self.vpp, "vpp > 1 needs pipeline_schedule 'interleaved'")
        if schedule is PipelineSchedule.INTERLEAVED and self.vpp < 2:
            raise rule_error("vpp", self.vpp, "pipeline_schedule 'interleaved' needs vpp >= 2")
        if schedule in DUAL_SCHEDULES and self.pp < 2:
            raise rule_error("pp", self.pp, f"pipeline_schedule '{schedule}' needs pp >= 2")
        if schedule is PipelineSchedule.DUALPIPE and self.pp % 2:
            raise rule_error("pp", self.pp, "DualPipe needs an even number of stages (V3 §3.2.1)")
        if self.pipeline_layers is not None:
            layers = list(self.pipeline_layers)
            if len(layers) != self.num_chunks:
                raise rule_error(
                    "pipeline_layers", layers,
                    f"needs one block count per model chunk ({self.num_chunks} for this schedule, pp and vpp)",
                )
            if min(layers[:-1], default=1) < 1:
                raise rule_error("pipeline_layers", layers, "every chunk but the last needs at least one block")
        dense_ranks = self.tp * self.cp * self.dp
        if dense_ranks % (self.ep * self.expert_tp):
            raise rule_error(
                "ep",
                self.ep,
                f"ep * etp ({self.ep * self.expert_tp}) must divide tp * cp * dp ({dense_ranks})",
            )
        return self

    def expert_fold_keeps_stages(self) -> bool:
        """Whether the expert view puts every rank in the same pipeline stage as the dense
        view: the dimensions laid out before pp must cover as many ranks in both
        (Megatron asserts the two views' pp groups are equal). Checked for MoE models."""
        order = self.rank_order.split("-")
        before = order[: order.index("pp")]
        dense = {"tp": self.tp, "cp": self.cp, "ep": 1, "dp": self.dp}
        expert = {"tp": self.expert_tp, "cp": 1, "ep": self.ep, "dp": self.edp}
        return self.pp == 1 or math.prod(dense[d] for d in before) == math.prod(expert[d] for d in before)

    @property
    def num_chunks(self) -> int:
        """Model chunks the layers are cut into: pp * vpp, or 2 * pp for DualPipeV."""
        if self.pipeline_schedule is PipelineSchedule.DUALPIPEV:
            return 2 * self.pp
        return self.pp * self.vpp

    @property
    def expert_tp(self) -> int:
        """Resolved expert tensor-parallel degree."""
        return self.etp if self.etp is not None else self.tp

    @property
    def edp(self) -> int:
        """Expert data-parallel degree: replicas of each expert within a pipeline stage."""
        return self.tp * self.cp * self.dp // (self.ep * self.expert_tp)

    @property
    def world_size(self) -> int:
        return self.tp * self.cp * self.dp * self.pp

    def num_microbatches(self, workload: Workload) -> int:
        """Micro-batches per pipeline per step (exact division checked in compat)."""
        return workload.global_batch_size // (self.dp * self.micro_batch_size)
