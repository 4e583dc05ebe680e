"""What ``planner launch --emit DIR`` writes: pure functions of (model, plan, workload).

- :func:`megatron_args`: the Megatron-LM arguments (``pretrain_gpt.py``) equivalent to
  the plan, one argument per line (``--flag value`` or ``--flag``), with ``#`` comment
  lines where Megatron-LM has no equivalent (DualPipe, zero-bubble, ZeRO-3 ...);
  :func:`megatron_argv` turns those lines into an argv list.
- :func:`torchrun_command`: the torchrun line that starts the job (Megatron-LM's
  ``pretrain_gpt.py`` with those arguments) on ``nnodes`` x ``nproc_per_node`` ranks.
- :func:`run_config`: the run description (model, plan in Megatron long names, workload,
  steps, seed) written as ``run_config.yaml``.
- :func:`write_emit`: writes ``torchrun.sh``, ``run_config.yaml``, ``megatron_args.txt``.

Nothing here imports torch.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from planner.costmodel import ep_overlap
from planner.costmodel.tp_overlap import applies as tp_overlap_applies
from planner.errors import SpecError
from planner.specs.model import FFNActivation, ModelSpec, Normalization, PositionEmbedding, RouterScore
from planner.specs.plan import (
    DEFAULT_RANK_ORDER,
    DUAL_SCHEDULES,
    AttentionKernel,
    CrossEntropyKernel,
    FP8Implementation,
    GradReduceDtype,
    MoEDispatcher,
    PipelineP2P,
    PipelineSchedule,
    Plan,
    Precision,
    Recompute,
    RecomputeModule,
    Workload,
    ZeroStage,
)

MEGATRON_ENTRY = "${MEGATRON_LM:-Megatron-LM}/pretrain_gpt.py"
"""Megatron-LM's GPT pre-training script (a script, not a module: torchrun runs it by path)."""

PLAN_LONG_NAMES = {
    "tp": "tensor_model_parallel_size",
    "pp": "pipeline_model_parallel_size",
    "vpp": "virtual_pipeline_model_parallel_size",
    "cp": "context_parallel_size",
    "ep": "expert_model_parallel_size",
    "etp": "expert_tensor_parallel_size",
    "dp": "data_parallel_size",
}


def _model_args(model: ModelSpec) -> list[str]:
    lines = [
        f"--num-layers {model.num_layers}",
        f"--hidden-size {model.hidden_size}",
        f"--num-attention-heads {model.num_attention_heads}",
    ]
    if model.ffn_hidden_size:
        lines.append(f"--ffn-hidden-size {model.ffn_hidden_size}")
    if model.mla is not None:
        mla = model.mla
        lines.append("--multi-latent-attention")
        if mla.q_lora_rank:
            lines.append(f"--q-lora-rank {mla.q_lora_rank}")
        lines += [
            f"--kv-lora-rank {mla.kv_lora_rank}",
            f"--qk-head-dim {mla.qk_nope_head_dim}",
            f"--qk-pos-emb-head-dim {mla.qk_rope_head_dim}",
            f"--v-head-dim {mla.v_head_dim}",
        ]
    else:
        if model.kv_heads < model.num_attention_heads:
            lines += ["--group-query-attention", f"--num-query-groups {model.kv_heads}"]
        if model.head_dim:
            lines.append(f"--kv-channels {model.head_dim}")
    if model.ffn_activation is FFNActivation.SWIGLU:
        lines.append("--swiglu")
    lines.append(
        "--normalization " + ("RMSNorm" if model.normalization is Normalization.RMSNORM else "LayerNorm")
    )
    position = {
        PositionEmbedding.ROPE: "rope",
        PositionEmbedding.LEARNED: "learned_absolute",
        PositionEmbedding.NONE: "none",
    }
    if model.position_embedding in position:
        lines.append(f"--position-embedding-type {position[model.position_embedding]}")
    else:
        lines.append(
            f"# position embedding {model.position_embedding.value}: "
            "Megatron-LM GPT has no such --position-embedding-type"
        )
    if not model.add_bias_linear:
        lines.append("--disable-bias-linear")
    if model.add_qkv_bias:
        lines.append("--add-qkv-bias")
    if model.qk_norm:
        lines.append("--qk-layernorm")
    if not model.tie_word_embeddings:
        lines.append("--untie-embeddings-and-output-weights")
    lines += ["--tokenizer-type NullTokenizer", f"--vocab-size {model.vocab_size}"]
    if model.moe is not None:
        moe = model.moe
        lines += [
            f"--num-experts {moe.num_experts}",
            f"--moe-router-topk {moe.top_k}",
            f"--moe-ffn-hidden-size {moe.expert_ffn_hidden_size}",
        ]
        if moe.num_shared_experts:
            lines.append(
                f"--moe-shared-expert-intermediate-size {moe.num_shared_experts * moe.shared_ffn_hidden_size}"
            )
        if moe.num_dense_layers:
            dense, sparse = moe.num_dense_layers, model.num_layers - moe.num_dense_layers
            lines.append(f"--moe-layer-freq ([0]*{dense}+[1]*{sparse})")
        if moe.router_score is RouterScore.SIGMOID:
            # V3 §2.1.2: sigmoid affinities and the auxiliary-loss-free bias.
            lines += ["--moe-router-score-function sigmoid", "--moe-router-enable-expert-bias"]
        else:
            lines.append("--moe-router-score-function softmax")
        if moe.num_expert_groups > 1:
            lines += [
                f"--moe-router-num-groups {moe.num_expert_groups}",
                f"--moe-router-group-topk {moe.limited_groups}",
            ]
    if model.mtp_depth:
        lines.append(f"--mtp-num-layers {model.mtp_depth}")
    return lines


def pipeline_layout(model: ModelSpec, plan: Plan) -> str:
    """The plan's ``pipeline_layers`` as Megatron-Core's ``--pipeline-model-parallel-layout``
    string: stages split by ``|`` in model-chunk order (every PP rank of virtual stage 0,
    then of virtual stage 1, ..., which is our chunk order), ``E`` embedding, ``t`` decoder
    block, ``m`` MTP module, ``L`` loss; ``t*N`` repeats, commas are cosmetic
    (docs.nvidia.com/megatron-core, "Custom Pipeline Model Parallel Layout")."""
    if plan.pipeline_layers is None:
        raise ValueError("the plan has no pipeline_layers")
    stages = [[f"t*{n}"] if n > 1 else ["t"] * n for n in plan.pipeline_layers]
    stages[0].insert(0, "E")
    stages[-1] += ["m"] * model.mtp_depth + ["L"]
    return "|".join(",".join(stage) for stage in stages)


def _plan_args(model: ModelSpec, plan: Plan) -> list[str]:
    lines = [
        f"--tensor-model-parallel-size {plan.tp}",
        f"--pipeline-model-parallel-size {plan.pp}",
    ]
    if plan.pipeline_layers is not None:
        lines.append(f'--pipeline-model-parallel-layout "{pipeline_layout(model, plan)}"')
    elif plan.vpp > 1:
        chunks = plan.pp * plan.vpp
        if model.num_layers % chunks == 0:
            lines.append(f"--num-layers-per-virtual-pipeline-stage {model.num_layers // chunks}")
        else:
            lines.append(f"--virtual-pipeline-model-parallel-size {plan.vpp}")
    lines.append(f"--context-parallel-size {plan.cp}")
    if model.moe is not None:
        lines += [
            f"--expert-model-parallel-size {plan.ep}",
            f"--expert-tensor-parallel-size {plan.expert_tp}",
        ]
    if plan.sequence_parallel and plan.tp > 1:
        lines.append("--sequence-parallel")
    if plan.zero_stage == ZeroStage.OPTIMIZER:
        lines.append("--use-distributed-optimizer")
    elif plan.zero_stage == ZeroStage.GRADIENTS:
        lines += [
            "# ZeRO-2: Megatron's distributed optimizer shards optimizer state and reduce-scatters gradients",
            "--use-distributed-optimizer",
        ]
    elif plan.zero_stage == ZeroStage.PARAMETERS:
        lines += [
            "# ZeRO-3: parameters sharded too; Megatron runs this as PyTorch FSDP2",
            "--use-torch-fsdp2",
        ]
    if plan.recompute is Recompute.SELECTIVE and RecomputeModule.OP_SAC in (plan.recompute_modules or ()):
        lines += [
            "# recompute op_sac: TorchTitan's op-level selective checkpointing (selective_ac_option = 'op'); "
            "Megatron-LM has none; these arguments run its default selective recompute (core_attn)",
            "--recompute-granularity selective",
        ]
    elif plan.recompute is Recompute.SELECTIVE:
        lines.append("--recompute-granularity selective")
        if plan.recompute_modules is not None:
            lines.append("--recompute-modules " + " ".join(plan.recompute_modules))
    elif plan.recompute is Recompute.FULL:
        lines += ["--recompute-granularity full", "--recompute-method uniform", "--recompute-num-layers 1"]
    if plan.cpu_offloading_num_layers:
        lines += ["--cpu-offloading", f"--cpu-offloading-num-layers {plan.cpu_offloading_num_layers}"]
    schedule = plan.pipeline_schedule
    if plan.pp > 1 and schedule in DUAL_SCHEDULES:
        lines.append(
            f"# pipeline_schedule {schedule.value}: Megatron-LM has no DualPipe; "
            "these arguments run its 1F1B schedule instead (DualPipe: github.com/deepseek-ai/DualPipe)"
        )
    elif plan.pp > 1 and schedule is PipelineSchedule.ZERO_BUBBLE:
        lines.append(
            "# pipeline_schedule zero-bubble: Megatron-LM has no zero-bubble schedule; these run 1F1B"
        )
    if plan.attention_kernel is AttentionKernel.UNFUSED:
        lines.append("--attention-backend unfused")
    else:
        lines.append("--attention-backend flash")
    if plan.rank_order != DEFAULT_RANK_ORDER:
        lines.append(
            f"# rank order {plan.rank_order}: Megatron's default is tp-cp-ep-dp-pp; no CLI argument sets it"
        )
    return lines


def _workload_args(plan: Plan, workload: Workload) -> list[str]:
    lines = [
        f"--micro-batch-size {plan.micro_batch_size}",
        f"--global-batch-size {workload.global_batch_size}",
        f"--seq-length {workload.seq_length}",
        f"--max-position-embeddings {workload.seq_length}",
    ]
    if workload.precision is Precision.BF16:
        lines.append("--bf16")
    elif workload.precision is Precision.FP16:
        lines.append("--fp16")
    else:
        lines += [
            "# fp8: FP8 GEMMs, BF16 elsewhere (V3 §3.3 uses E4M3 for every GEMM tensor)",
            "--bf16",
            "--fp8-format e4m3",
        ]
    # The overlap the cost model assumes (planner.costmodel.dp_overlap).
    lines.append("--overlap-grad-reduce")
    if plan.zero_stage in (ZeroStage.OPTIMIZER, ZeroStage.GRADIENTS) and workload.overlap_param_gather:
        lines.append("--overlap-param-gather")
    if workload.grad_reduce_dtype is GradReduceDtype.BF16 and workload.precision is not Precision.FP16:
        lines.append("--grad-reduce-in-bf16")
    if tp_overlap_applies(plan, workload):
        lines.append("--tp-comm-overlap")  # Transformer Engine userbuffers (planner.costmodel.tp_overlap)
    if workload.pipeline_p2p is PipelineP2P.DEEPSPEED and plan.pp > 1:
        lines.append("# priced with DeepSpeed's blocking pipeline p2p; Megatron-LM batches its exchanges")
    if workload.precision is Precision.FP8 and workload.fp8_implementation is FP8Implementation.TORCHAO:
        lines.append("# priced with torchao float8 (TorchTitan's quantisation); Megatron-LM quantises with "
                     "Transformer Engine")
    if workload.cross_entropy is CrossEntropyKernel.FUSED:  # TE's kernel keeps the BF16 logits
        lines += ["--cross-entropy-loss-fusion", "--cross-entropy-fusion-impl te"]
    return lines


def megatron_args(
    model: ModelSpec, plan: Plan, workload: Workload, *, steps: int | None = None, seed: int | None = None
) -> list[str]:
    """Megatron-LM arguments for ``plan``: one per line (``--flag value``), ``#`` comments
    where Megatron-LM has no equivalent. Data-parallel size is implied by the world size."""
    lines = _model_args(model) + _plan_args(model, plan) + _workload_args(plan, workload)
    if model.moe is not None:  # the dispatcher the cost model priced (Workload.moe_dispatcher)
        if workload.moe_dispatcher is MoEDispatcher.DEEPEP:
            lines += ["--moe-token-dispatcher-type flex", "--moe-enable-deepep"]
        else:
            lines.append("--moe-token-dispatcher-type alltoall")
    if ep_overlap.applies(model, plan, workload):  # combined 1F1B (planner.costmodel.ep_overlap)
        lines += ["# combined 1F1B needs CUDA_DEVICE_MAX_CONNECTIONS > 1 (Megatron-MoE-ModelZoo sets 32)",
                  "--overlap-moe-expert-parallel-comm", "--delay-wgrad-compute"]
    if steps is not None:
        lines.append(f"--train-iters {steps}")
    if seed is not None:
        lines.append(f"--seed {seed}")
    return lines


def megatron_argv(lines: list[str]) -> list[str]:
    """The argv tokens of :func:`megatron_args` lines (comments dropped)."""
    return [tok for line in lines if not line.lstrip().startswith("#") for tok in shlex.split(line)]


def torchrun_command(
    plan: Plan,
    nproc_per_node: int,
    nnodes: int = 1,
    entry: str = MEGATRON_ENTRY,
    args_file: str = "megatron_args.txt",
) -> str:
    """The torchrun line that starts ``plan`` on ``nnodes`` x ``nproc_per_node`` ranks."""
    if nproc_per_node * nnodes != plan.world_size:
        raise SpecError(
            "--nproc",
            nproc_per_node * nnodes,
            f"nnodes * nproc_per_node must equal the plan's world size tp * cp * dp * pp ({plan.world_size})",
        )
    parts = [
        "torchrun",
        f"--nnodes {nnodes}",
        f"--nproc-per-node {nproc_per_node}",
    ]
    if nnodes > 1:
        parts += [
            "--node-rank ${NODE_RANK:?set NODE_RANK}",
            "--rdzv-backend c10d",
            "--rdzv-endpoint ${MASTER_ADDR:?set MASTER_ADDR}:${MASTER_PORT:-29500}",
        ]
    parts += [entry, f"$(grep -v '^#' {args_file})"]
    return " ".join(parts)


def run_config(
    model_ref: str, model: ModelSpec, plan: Plan, workload: Workload, *, steps: int, seed: int, backend: str
) -> dict:
    """The run description: model, plan (Megatron long names), workload, steps, seed."""
    data = plan.model_dump(mode="json")
    data["etp"] = plan.expert_tp
    plan_long = {PLAN_LONG_NAMES.get(k, k): v for k, v in data.items()}
    return {
        "model": {"ref": model_ref, "name": model.name},
        "plan": plan_long,
        "world_size": plan.world_size,
        "workload": workload.model_dump(mode="json"),
        "steps": steps,
        "seed": seed,
        "backend": backend,
    }


def write_emit(
    directory: str | Path,
    model_ref: str,
    model: ModelSpec,
    plan: Plan,
    workload: Workload,
    *,
    steps: int,
    seed: int = 0,
    backend: str = "nccl",
    nnodes: int = 1,
    local_command: str | None = None,
) -> list[Path]:
    """Write ``torchrun.sh``, ``run_config.yaml`` and ``megatron_args.txt`` into ``directory``."""
    if plan.world_size % nnodes:
        raise SpecError("--nnodes", nnodes, f"must divide the plan's world size ({plan.world_size})")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    args = megatron_args(model, plan, workload, steps=steps, seed=seed)
    script = [
        "#!/usr/bin/env bash",
        (
            f"# {model.name}: tp={plan.tp} pp={plan.pp} vpp={plan.vpp} cp={plan.cp} ep={plan.ep} "
            f"etp={plan.expert_tp} dp={plan.dp} ({plan.world_size} ranks), written by planner launch --emit"
        ),
        "# Megatron-LM job: set MEGATRON_LM to the Megatron-LM checkout",
        "# (and NODE_RANK, MASTER_ADDR on several nodes).",
        "set -euo pipefail",
        "set -f  # no globbing of the arguments read from megatron_args.txt (e.g. --moe-layer-freq)",
        'cd "$(dirname "$0")"',
        torchrun_command(plan, plan.world_size // nnodes, nnodes),
    ]
    if local_command:
        script += [
            "",
            "# The planner's reference runtime (CPU, gloo) starts its own ranks; run it instead with:",
            f"#   {local_command}",
        ]
    files = {
        "torchrun.sh": "\n".join(script) + "\n",
        "run_config.yaml": yaml.safe_dump(
            run_config(model_ref, model, plan, workload, steps=steps, seed=seed, backend=backend),
            sort_keys=False,
        ),
        "megatron_args.txt": "\n".join(args) + "\n",
    }
    paths = []
    for name, text in files.items():
        path = out / name
        path.write_text(text)
        paths.append(path)
    (out / "torchrun.sh").chmod(0o755)
    return paths
