"""Documented defaults of ``planner validate`` for rows whose cells leave a knob open or
disagree: the pipeline schedule and vpp, the expert tensor parallelism, a global batch
that dp * micro_batch does not divide, and the training recipe the schema has no column for
(optimizer-state and gradient formats, MoE dispatch format and dispatcher, parameter-gather
overlap), and the defaults of TorchTitan rows (SDPA's attention kernel, pipeline stages per
rank and micro-batches). Each returns the value taken and appends to
``notes`` what it took and why (the row's ``message``); :mod:`planner.validation.cases`
lists every default in its docstring."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from planner.costmodel import ep_overlap
from planner.costmodel.offload import host_unknown
from planner.costmodel.op_sac import op_sac_refusal
from planner.costmodel.ops import compute_constants
from planner.errors import SpecError
from planner.presets import revalidate
from planner.specs import (
    ClusterSpec, CrossEntropyKernel, FP8Implementation, ModelSpec, MoEDispatcher, MoERouting, PipelineP2P,
    PipelineSchedule, Plan, Precision, Recompute, RecomputeModule, Workload,
)

if TYPE_CHECKING:
    from planner.validation.cases import Row


PARAM_GATHER_OVERLAP_YEAR = 2024
"""First year in which a sharded optimizer's parameter all-gather is assumed overlapped with
the next step's forward (Megatron-Core ``overlap_param_gather``, on in NeMo 2.0's
``MegatronStrategy`` and Megatron-Bridge's configs). Earlier sharded-optimizer runs (DeepSpeed
ZeRO-1, Megatron-LM of 2021-2023) gathered after the optimizer step, inside the step."""


def recipe(cells: Row, precision: Precision, year: int | None, notes: list[str]) -> dict:
    """Workload fields of the training recipe, which no column states.

    - A ``dualpipe`` row in fp8 is DeepSeek-V3's recipe (DualPipe is DeepSeek's schedule;
      Megatron-Core has none): BF16 Adam moments and FP8 dispatch (V3 report §3.3.3), FP32
      gradients, and only the reduce-scatter overlapped, with the last backward (DeepSeek
      LLM §2.4; the all-gather is not said to be). Its routing is the row's, like any
      other's: the auxiliary-loss-free balancing (V3 §2.1.2) steers a bias between steps and
      forces nothing within one, which is the setting the real-routing imbalance was
      measured in (FEPLB on GLM-5, bias-balanced without auxiliary loss; compute.yaml), and
      DeepSeek's own kernel profile of this training had to simulate balance ("MoE routing
      is simulated as perfectly balanced", profile-data README).
    - Otherwise, a sharded optimizer's all-gather (zero 1 or 2, or empty: 1) overlaps the
      next forward from :data:`PARAM_GATHER_OVERLAP_YEAR` (the Workload default) and not
      before.
    - An fp8 row that is neither DeepSeek's nor FSDP (zero 3) reduces gradients in BF16:
      NeMo's performance scripts set ``grad_reduce_in_fp32 = False`` for every FP8 run
      (scripts/performance/llm/*: ``if args.compute_dtype == "fp8"``) and Megatron-Bridge's
      performance configs set ``cfg.ddp.grad_reduce_in_fp32 = False``; FSDP2 recipes
      (torchtitan's ``mixed_precision_reduce = "float32"``) keep FP32.
    - ``moe_routing`` ``balanced`` (forced) prices every EP rank at the mean; ``real`` and
      empty price the router's own imbalance (:class:`~planner.specs.MoERouting`): forcing
      balance is an explicit benchmark option that the tables which use it state
      (Megatron-Core ``moe_router_force_load_balancing`` defaults to False)."""
    if cells.text("pp_schedule") == PipelineSchedule.DUALPIPE.value and precision is Precision.FP8:
        fields: dict = dict(adam_moment_dtype="bf16", moe_dispatch_dtype="fp8", overlap_param_gather=False,
                            moe_routing=routing(cells, notes))
        notes.append("dualpipe + fp8: DeepSeek-V3's recipe (BF16 Adam moments, FP8 MoE dispatch, FP32 gradients, "
                     "reduce-scatter overlapped with the last backward only)")
        return fields
    fields = {"moe_routing": routing(cells, notes)}
    zero = cells.int("zero")
    if year is not None and year < PARAM_GATHER_OVERLAP_YEAR and zero in (None, 1, 2):
        fields["overlap_param_gather"] = False
        notes.append(f"parameter all-gather not overlapped (source year {year} < {PARAM_GATHER_OVERLAP_YEAR})")
    if precision is Precision.FP8 and zero != 3:
        fields["grad_reduce_dtype"] = "bf16"
        notes.append("fp8: gradients reduced in bf16 (Megatron-Core FP8 recipes, grad_reduce_in_fp32=False)")
    return fields


def routing(cells: Row, notes: list[str]) -> MoERouting:
    """The row's ``moe_routing``; empty: ``real``, the frameworks' default (see :func:`recipe`)."""
    value = cells.choice("moe_routing", MoERouting)
    if value is None:
        value = MoERouting.REAL
        if cells.int("moe_experts"):
            notes.append("moe_routing empty: real (forced balance is an explicit benchmark option)")
    return value


def selective_ladder(model: ModelSpec, plan: Plan | None = None,
                     torchtitan: bool = False) -> tuple[tuple[RecomputeModule, ...] | None, ...]:
    """The module sets a ``selective`` row may have recomputed, least first: the schema
    names no modules, and a published run fitted, so ``planner validate`` takes the first
    that fits. None: the default (:func:`planner.costmodel.ops.selective_modules`);
    for MoE models then the norms and expert activations (Megatron-MoE-ModelZoo's
    Qwen3-235B-A22B H100 and GB200 runs: ``--recompute-modules layernorm moe_act``), then
    the norms and whole MoE blocks (its long-context runs: ``--recompute-modules layernorm
    moe``); for dense models the norms and whole MLPs (``layernorm mlp``). Megatron-Core's
    ``recompute_modules`` replace the default ``core_attn`` when given, as here.

    A TorchTitan row (``torchtitan``, :func:`torchtitan_row`) first tries TorchTitan's own
    ``selective`` policy, op-level SAC (``op_sac``: ``selective_ac_option = "op"``, the
    option of its train configs' selective mode, torchtitan/models/llama3/train_configs/
    llama3_8b.toml), where the cost model prices it for ``plan``
    (:func:`~planner.costmodel.op_sac.op_sac_refusal`), then the sets above."""
    if model.moe is None:
        megatron: tuple = (None, (RecomputeModule.LAYERNORM, RecomputeModule.MLP))
    else:
        megatron = (
            None,
            (RecomputeModule.LAYERNORM, RecomputeModule.MOE_ACT),
            (RecomputeModule.LAYERNORM, RecomputeModule.MOE),
        )
    if torchtitan and plan is not None and op_sac_refusal(model, plan) is None:
        return ((RecomputeModule.OP_SAC,), *megatron)
    return megatron


_DEDUPLICATING_DISPATCHERS = re.compile(r"deepep|hybridep", re.IGNORECASE)
_TORCHTITAN = re.compile(r"torchtitan", re.IGNORECASE)

SDPA_FLASH_ATTENTION_2_LAST_YEAR = 2025
"""Last year in which PyTorch's SDPA ran FlashAttention-2 by default on Hopper: cuDNN
attention was made opt-in by pytorch/pytorch PR #138522 (Oct 2024, in 2.5.1) and made the
Hopper default again by PR #162073 (Sept 2025, gated on a cuDNN newer than 9.15, which
PyTorch wheels bundled from 2026)."""


def free_text(cells: Row) -> str:
    """The row's ``source`` and ``notes``: the free text the framework rules below read (no
    column names the framework)."""
    return f"{cells.text('source') or ''} {cells.text('notes') or ''}"


def torchtitan_row(cells: Row) -> bool:
    """The row's ``source`` or ``notes`` name TorchTitan (no column names the framework;
    its defaults below differ from Megatron's, which the other defaults follow)."""
    return bool(_TORCHTITAN.search(free_text(cells)))


NEMO_FLASH_ATTENTION_2_LAST_RELEASE = (24, 7)
"""Last NeMo container whose launcher disabled cuDNN attention: NeMo-Framework-Launcher's
launcher_scripts/conf/config.yaml set ``NVTE_FUSED_ATTN: 0`` ("Disable cudnn FA until we've
tested it more", shipped with container nemo:24.03.01) until PR #422 "enable fused attention"
(merged 2024-08-29), so Transformer Engine ran the flash-attn (FlashAttention-2) backend; the
next container was 24.09."""

_NEMO_RELEASE = re.compile(r"\bNeMo\s+(\d\d)\.(\d\d)\b")
_NEMO = re.compile(r"\bNeMo\b")


_TRITON_FLASH_ATTENTION = re.compile(r"attn_impl:?\s*triton|triton flash-?attention|flash-?attention triton",
                                     re.IGNORECASE)


def _flash_attention_2_runtime(cells: Row, year: int | None) -> str | None:
    """Why the row's attention ran FlashAttention-2 kernels, or None:

    - TorchTitan: its models call ``F.scaled_dot_product_attention``
      (torchtitan/models/llama/model.py), whose default on Hopper was the FlashAttention-2
      ``flash`` backend through :data:`SDPA_FLASH_ATTENTION_2_LAST_YEAR`;
    - a NeMo container up to :data:`NEMO_FLASH_ATTENTION_2_LAST_RELEASE` (the release named as
      ``NeMo YY.MM`` in ``source`` or ``notes``; with none named, a NeMo row from 2024 or
      earlier): its launcher turned cuDNN attention off."""
    text = free_text(cells)
    if torchtitan_row(cells):
        if year is None or year <= SDPA_FLASH_ATTENTION_2_LAST_YEAR:
            return "TorchTitan: PyTorch SDPA's default flash backend"
        return None
    release = _NEMO_RELEASE.search(text)
    if release is not None:
        if (int(release[1]), int(release[2])) <= NEMO_FLASH_ATTENTION_2_LAST_RELEASE:
            return f"NeMo {release[1]}.{release[2]}: the launcher set NVTE_FUSED_ATTN=0"
        return None
    if _NEMO.search(text) and year is not None and year <= NEMO_FLASH_ATTENTION_2_LAST_RELEASE[0] + 2000:
        return f"NeMo {year}: the launcher set NVTE_FUSED_ATTN=0 until its 24.09 container"
    return None


def attention_rates(cells: Row, cluster: ClusterSpec, year: int | None, notes: list[str]) -> ClusterSpec:
    """The row's GPU with the attention rates of the kernel its runtime ran:

    - FlashAttention's Triton implementation when the notes say so (MosaicML's MPT,
      ``attn_impl: triton``): the GPU's FlashAttention-2 rates times
      ``flash_attention_triton_{forward,backward}_over_fa2`` (data/costmodel/compute.yaml, FA2
      paper §4.1);
    - FlashAttention-2 (:func:`_flash_attention_2_runtime`) on GPUs whose presets carry a faster
      kernel's rates (:attr:`~planner.specs.hardware.GPUEfficiency.flash_attention_2_fractions`);
      the others keep theirs, which are FlashAttention-2's."""
    eff = cluster.gpu.efficiency
    if eff is None:
        return cluster
    if _TRITON_FLASH_ATTENTION.search(cells.text("notes") or ""):
        constants = compute_constants()
        forward = constants["flash_attention_triton_forward_over_fa2"]
        backward = constants["flash_attention_triton_backward_over_fa2"]
        fa2 = eff.with_flash_attention_2()
        eff = fa2.model_copy(update={"attention_forward_fraction": fa2.attention_forward_fraction * forward,
                                     "attention_backward_fraction": fa2.attention_backward_fraction * backward})
        notes.append("attention: FlashAttention's Triton kernel (notes: attn_impl triton), FA2 paper §4.1 ratios")
    else:
        why = _flash_attention_2_runtime(cells, year)
        if why is None or eff.flash_attention_2_fractions is None:
            return cluster
        eff = eff.with_flash_attention_2()
        notes.append(f"attention: FlashAttention-2 rates ({why})")
    return cluster.model_copy(update={"gpu": cluster.gpu.model_copy(update={"efficiency": eff})})


TORCHTITAN_INTERLEAVED_STAGES_PER_RANK = 2
"""TorchTitan's pipeline stages per rank when no split points are given
(torchtitan/parallelisms/pipeline_llama.py ``generate_split_points``: 1 for single-stage
schedules such as 1F1B, 2 for multi-stage ones such as Interleaved1F1B)."""


def torchtitan_microbatch(local_batch: int, pp: int, vpp: int, notes: list[str]) -> int | None:
    """Micro-batch size of a TorchTitan pipeline row that leaves it empty: TorchTitan splits
    each data-parallel rank's batch into ``pipeline_parallel_microbatches`` micro-batches,
    by default "the number of pipeline stages" (``n_microbatches = num_total_stages = pp *
    stages per rank``, build_pipeline_schedule). None when that does not divide the batch
    (TorchTitan refuses such a run)."""
    stages = pp * vpp
    if local_batch % stages:
        return None
    notes.append(f"micro_batch empty: {local_batch // stages} (TorchTitan's default of one micro-batch per "
                 f"pipeline stage: local batch {local_batch} / {stages} stages)")
    return local_batch // stages


_DEEPSPEED = re.compile(r"deepspeed", re.IGNORECASE)


def pipeline_p2p(cells: Row, plan: Plan, notes: list[str]) -> PipelineP2P:
    """How a pipelined row's stages exchange activations (no column states the runtime):
    DeepSpeed's blocking ``PipelineEngine`` when the row's ``source`` or ``notes`` name
    DeepSpeed (Megatron-DeepSpeed trains every pipelined model with that engine and its 1F1B
    ``TrainSchedule``), else Megatron's. A row whose schedule is not 1F1B keeps Megatron's:
    the engine has no other training schedule."""
    text = free_text(cells)
    if plan.pp > 1 and plan.pipeline_schedule is PipelineSchedule.ONE_F_ONE_B and _DEEPSPEED.search(text):
        notes.append("pipeline p2p: deepspeed (blocking send/recv of the whole activation; DeepSpeed named)")
        return PipelineP2P.DEEPSPEED
    return PipelineP2P.MEGATRON


_FUSED_CE = re.compile(r"llm-foundry|llmfoundry|Megatron-MoE-ModelZoo|NeMo AutoModel", re.IGNORECASE)
_TORCH_CE = re.compile(r"torch_crossentropy", re.IGNORECASE)


def cross_entropy(cells: Row, notes: list[str]) -> CrossEntropyKernel:
    """Loss kernel of a row (no column states it): a fused kernel that keeps the BF16 logits
    when the row's ``source`` or ``notes`` name

    - MosaicML's llm-foundry, whose MPT model defaults to flash-attn's Triton kernel
      (llmfoundry/models/mpt/modeling_mpt.py, v0.2.0: ``loss_fn`` defaults to
      ``fused_crossentropy``), unless the notes say ``torch_crossentropy``;
    - Megatron-MoE-ModelZoo, whose benchmarking configs run Transformer Engine's
      (model_configs/benchmarking/*.yaml: ``--cross-entropy-loss-fusion: true``,
      ``--cross-entropy-fusion-impl: te``);
    - NeMo AutoModel, whose benchmark configs (examples/benchmark/configs/*_te_deepep.yaml)
      take ``MaskedCrossEntropy`` with ``fp32_upcast: false``: PyTorch's cross entropy on the
      BF16 logits, which keeps a 16-bit log-softmax and returns a 16-bit gradient, the same
      bytes as a fused kernel's;

    else Megatron's unfused FP32 softmax."""
    text = free_text(cells)
    if _FUSED_CE.search(text) and not _TORCH_CE.search(text):
        notes.append("cross entropy: fused (the framework's default loss kernel keeps the BF16 logits)")
        return CrossEntropyKernel.FUSED
    return CrossEntropyKernel.UNFUSED


def fp8_implementation(cells: Row, workload: Workload, notes: list[str]) -> FP8Implementation:
    """Whose kernels quantise a row's FP8 Linears (no column states it): torchao's float8 with
    tensorwise dynamic scaling for a TorchTitan row (:func:`torchtitan_row`; TorchTitan's
    ``float8`` converter runs torchao's ``convert_to_float8_training``, tensorwise by default),
    else Transformer Engine's (Megatron-LM, NeMo, Megatron-Bridge)."""
    if workload.precision is Precision.FP8 and torchtitan_row(cells):
        notes.append("fp8: torchao float8, tensorwise dynamic scaling (TorchTitan's float8 converter)")
        return FP8Implementation.TORCHAO
    return FP8Implementation.TRANSFORMER_ENGINE


_TP_OVERLAP_FRAMEWORKS = re.compile(r"\bNeMo\b(?!\s+AutoModel)|\bMegatron-Bridge\b")


def tp_comm_overlap(cells: Row, plan: Plan, notes: list[str]) -> bool:
    """Whether the row ran Transformer Engine's TP communication overlap
    (:attr:`~planner.specs.Workload.tp_comm_overlap`): on for a row whose ``source`` names
    NeMo (not NeMo AutoModel, a PyTorch-native trainer) or Megatron-Bridge, with tp > 1 and
    sequence parallelism. Their performance recipes turn it on: NeMo-Framework-Launcher
    (NeMo 24.07) launcher_scripts/conf/training/llama/llama3_70b.yaml and
    nemotron/nemotron_340b.yaml ``ub_tp_comm_overlap: true`` with the userbuffers
    configurations of conf/training/tp_overlap/ub_cfg_h100_*; NeMo 2.0's recipes
    (nemo/collections/llm/recipes/gpt3_175b.py ``pretrain_performance_optimizations``:
    ``MegatronCommOverlapCallback(tp_comm_overlap=True, tp_comm_overlap_cfg=userbuffers_bf16_
    h100_h12288_tp4_mbs1_seqlen2048)``); Megatron-Bridge's scripts/performance/configs/llama/
    llama3_llm_pretrain.py (``CommOverlapConfig(tp_comm_overlap=bool(tensor_model_parallel_size
    > 1))``; the 70B configs set ``tp_comm_overlap_cfg = userbuffers_fp8_h100_h8192_tp4_mbs1_
    seqlen8192``) and its Qwen3 MoE configs (``CommOverlapConfig(tp_comm_overlap=True)``).
    Megatron-LM's ``--tp-comm-overlap`` defaults to off and Megatron-MoE-ModelZoo's Qwen3 H100
    script (best_practice/qwen3/run_h100_235b.sh) passes none, so other sources keep it off.
    Megatron-Core turns the overlap off without sequence parallelism or with tp 1, as the
    cost model does."""
    if plan.tp > 1 and plan.sequence_parallel and _TP_OVERLAP_FRAMEWORKS.search(cells.text("source") or ""):
        notes.append("tp_comm_overlap: on (NeMo / Megatron-Bridge performance recipes: Transformer Engine "
                     "userbuffers overlap of the sequence-parallel collectives)")
        return True
    return False


def offload_candidate(cells: Row, plan: Plan, candidates: tuple[Recompute, ...], cluster: ClusterSpec) -> bool:
    """Whether a row with an empty ``recompute`` cell may have offloaded activations to host
    memory instead of recomputing (``Plan.cpu_offloading_num_layers``): a NeMo (not NeMo
    AutoModel) or Megatron-Bridge row at pp 1, whose Megatron-Core allows offloading there
    only. Megatron-Bridge's performance recipes fit their Megatron-FSDP Llama 3 70B runs that
    way instead of recomputing (scripts/performance/configs/llama/
    llama3_workload_base_configs.py: ``cpu_offloading_num_layers`` 40 on GB200 FP8-CS, 20 on
    GB200 BF16, 5 on B200 FP8-CS). :func:`planner.validation.run.run_cases` then takes the
    fewest offloaded blocks that fit when that is faster than the recompute that fits. Not on
    a cluster whose host link or host memory capacity is unknown (offloading is unsupported
    there, :mod:`planner.costmodel.offload`)."""
    return (host_unknown(cluster) is None and plan.pp == 1
            and Recompute.NONE in candidates and len(candidates) > 1
            and bool(_TP_OVERLAP_FRAMEWORKS.search(cells.text("source") or "")))


_EP_OVERLAP_NOTE = re.compile(r"A2A_OVERLAP=1\b|--overlap-moe-expert-parallel-comm|overlap_moe_expert_parallel_comm"
                              r"\s*=\s*True|moe_a2a_overlap\s*=\s*True")


def ep_comm_overlap(cells: Row, model: ModelSpec, plan: Plan, workload: Workload, notes: list[str]) -> bool:
    """Whether the row ran Megatron-Core's combined 1F1B
    (:attr:`~planner.specs.Workload.ep_comm_overlap`): on when its notes say so, by the
    flag (``--overlap-moe-expert-parallel-comm``), Megatron-Bridge's config field
    (``overlap_moe_expert_parallel_comm=True``, its perf configs' ``moe_a2a_overlap=True``) or
    Megatron-MoE-ModelZoo's launcher variable (``A2A_OVERLAP=1``). It is off by default in
    all of them."""
    if not _EP_OVERLAP_NOTE.search(cells.text("notes") or ""):
        return False
    on = workload.model_copy(update={"ep_comm_overlap": True})
    if ep_overlap.applies(model, plan, on):
        notes.append("ep_comm_overlap: on (the row's notes: Megatron-Core combined 1F1B, EP all-to-all hidden "
                     "behind another micro-batch's computation)")
    else:
        notes.append("ep_comm_overlap named in the notes, but it needs EP > 1, VPP with PP > 1 and no full "
                     "recompute: no effect")
    return True


def moe_dispatcher(cells: Row, model: ModelSpec, cluster: ClusterSpec, notes: list[str]) -> MoEDispatcher:
    """Token dispatcher of a MoE row (no column states it):

    - DeepEP when the row's ``notes`` name DeepEP or HybridEP (Megatron-Core's ``flex``
      dispatcher with either backend; both send a token once per destination GPU/node);
    - DeepEP for node-limited routing (DeepSeek-V3's recipe, V3 §3.2.2, which DeepEP
      implements; NeMo's DeepSeek-V3 performance scripts, scripts/performance/llm/
      *_deepseek_v3.py: "For H100 we use deepEP", ``moe_token_dispatcher_type = "flex"``,
      ``moe_enable_deepep = True``);
    - HybridEP on a multi-node NVLink domain (NVL72): Megatron-Bridge's GB200/GB300 MoE
      performance configs set ``moe_flex_dispatcher_backend="hybridep"``
      (scripts/performance/configs/qwen/qwen3_workload_base_configs.py), priced as DeepEP;
    - otherwise Megatron-Core's ``alltoall`` dispatcher: Megatron-Bridge's Qwen3-MoE provider
      sets ``moe_token_dispatcher_type = "alltoall"`` (src/megatron/bridge/models/qwen/
      qwen3_moe_bridge.py ``provider_bridge``), and its Qwen3 performance configs name it
      for H100 and B200 (same qwen3_workload_base_configs.py)."""
    text = cells.text("notes") or ""
    if _DEDUPLICATING_DISPATCHERS.search(text):
        notes.append("moe dispatcher: deepep (named in the row's notes)")
        return MoEDispatcher.DEEPEP
    if model.moe is not None and model.moe.num_limited_groups is not None:
        notes.append("moe dispatcher: deepep (node-limited routing, DeepSeek-V3's recipe)")
        return MoEDispatcher.DEEPEP
    if cluster.node.scale_up.domain_gpus > cluster.node.gpus_per_node:
        notes.append("moe dispatcher: deepep-style (HybridEP on a multi-node NVLink domain)")
        return MoEDispatcher.DEEPEP
    notes.append("moe dispatcher: alltoall (Megatron-Core's NCCL all-to-all dispatcher)")
    return MoEDispatcher.ALLTOALL


def whole_micro_batches(workload: Workload, plan: Plan, notes: list[str]) -> Workload:
    """A global batch that is not a multiple of dp * micro_batch: every framework runs whole
    micro-batches on every replica (Megatron asserts the multiple; DeepSpeed and torchtitan
    define the global batch as micro * accumulation * dp), so the step ends when the replica
    with the most, ceil(global / (dp * micro)), is done: that many are simulated."""
    per_step = plan.dp * plan.micro_batch_size
    batch = workload.global_batch_size
    if batch % per_step == 0:
        return workload
    padded = -(-batch // per_step) * per_step
    notes.append(
        f"global_batch {batch} is not a multiple of dp * micro_batch ({per_step}): simulated "
        f"{padded // per_step} micro-batches per replica ({padded} sequences), the slowest replica's"
    )
    return revalidate(workload, global_batch_size=padded)


def default_etp(tp: int, cp_dp: int, ep: int, notes: list[str]) -> int | None:
    """etp of a MoE row that leaves it empty: None (= tp, Megatron's default) when ep * tp
    divides the dense ranks tp * cp * dp of a stage (``Plan``'s rule); otherwise the run
    cannot have used it, and the largest divisor of tp that fits is taken (Megatron-Bridge's
    Qwen3-235B-A22B H100 configuration runs tp 2, ep 32 with etp 1). None fits: None, and
    ``Plan`` names the rule."""
    ranks = tp * cp_dp
    if ranks % (ep * tp) == 0:
        notes.append(f"etp empty: = tp ({tp}), Megatron's default")
        return None
    fits = [d for d in range(tp, 0, -1) if tp % d == 0 and ranks % (ep * d) == 0]
    if not fits:
        return None
    notes.append(f"etp empty: {fits[0]}, the largest divisor of tp ({tp}) with ep * etp | tp * cp * dp")
    return fits[0]


def schedule_of(cells: Row, model: ModelSpec, pp: int, notes: list[str]) -> tuple[PipelineSchedule, int]:
    text = (cells.text("pp_schedule") or "").lower() or None
    vpp = cells.int("vpp")
    if pp == 1:
        if text not in (None, "none"):
            notes.append(f"pp_schedule {text} ignored: pp = 1")
        return PipelineSchedule.ONE_F_ONE_B, 1
    if text is None:
        schedule = PipelineSchedule.INTERLEAVED if (vpp or 1) > 1 else PipelineSchedule.ONE_F_ONE_B
        notes.append(f"pp_schedule empty: {schedule.value}")
    elif text == "none":
        schedule = PipelineSchedule.INTERLEAVED if (vpp or 1) > 1 else PipelineSchedule.ONE_F_ONE_B
        notes.append(f"pp_schedule none with pp = {pp}: taken as empty, {schedule.value}")
    else:
        schedule = cells.choice("pp_schedule", PipelineSchedule)
        schedule, vpp = reconciled_schedule(schedule, vpp, notes)
    if vpp is None:
        vpp = 1
        if schedule is PipelineSchedule.INTERLEAVED and torchtitan_row(cells):
            vpp = TORCHTITAN_INTERLEAVED_STAGES_PER_RANK
            notes.append(f"vpp empty: {vpp}, TorchTitan's default stages per rank for Interleaved1F1B")
        elif schedule is PipelineSchedule.INTERLEAVED:
            per_stage = model.num_layers // pp
            vpp = next((d for d in range(2, per_stage + 1) if per_stage % d == 0), 0)
            if not vpp:
                raise SpecError("vpp", None, f"interleaving needs >= 2 layers per stage ({per_stage})")
            notes.append(f"vpp empty: {vpp}, the smallest even split of the {per_stage} layers per stage")
    return schedule, vpp


def reconciled_schedule(
    schedule: PipelineSchedule, vpp: int | None, notes: list[str]
) -> tuple[PipelineSchedule, int | None]:
    """A published schedule and vpp that disagree (vpp > 1 means interleaving, vpp 1 none):
    Megatron names its interleaved schedule "1F1B with virtual stages", so 1f1b with
    vpp > 1 is interleaved; ``interleaved`` with vpp 1 keeps the published vpp (1f1b); the
    DualPipe family and zero-bubble keep their own chunking and ignore a vpp."""
    if vpp is None or (vpp > 1) == (schedule is PipelineSchedule.INTERLEAVED):
        return schedule, vpp
    if schedule is PipelineSchedule.ONE_F_ONE_B:
        notes.append(f"pp_schedule 1f1b with vpp {vpp}: interleaved (1F1B with virtual stages)")
        return PipelineSchedule.INTERLEAVED, vpp
    if schedule is PipelineSchedule.INTERLEAVED:
        notes.append("pp_schedule interleaved with vpp 1: 1f1b (vpp 1 = no interleaving)")
        return PipelineSchedule.ONE_F_ONE_B, vpp
    notes.append(f"vpp {vpp} ignored: pp_schedule {schedule.value} has its own chunking")
    return schedule, 1


__all__ = ["attention_rates", "cross_entropy", "default_etp", "fp8_implementation", "moe_dispatcher", "pipeline_p2p",
           "reconciled_schedule", "schedule_of", "selective_ladder", "torchtitan_microbatch", "torchtitan_row",
           "tp_comm_overlap", "whole_micro_batches"]
