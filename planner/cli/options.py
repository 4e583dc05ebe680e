"""The typer options the commands share, so that ``--model``, ``--cluster``, ``--gpus``,
``--global-batch``, ``--seq-len``, ``--precision``, the plan knobs (short names with
Megatron-LM's long names as aliases), ``--format``, ``--out``, ``--tokens`` and
``--price-per-gpu-hour`` read the same, with units, in every command's ``--help``.

Each function returns a fresh ``typer.Option`` for one parameter default, e.g.
``model: str = options.model()``.
"""

from __future__ import annotations

from typing import Any

import typer

from planner.budget import DEFAULT_PRICE_PER_GPU_HOUR
from planner.cli.output import Format

# Megatron-LM's argument names of the plan knobs (arguments.py), as option aliases.
MEGATRON = {
    "tp": "--tensor-model-parallel-size",
    "pp": "--pipeline-model-parallel-size",
    "vpp": "--virtual-pipeline-model-parallel-size",
    "cp": "--context-parallel-size",
    "ep": "--expert-model-parallel-size",
    "etp": "--expert-tensor-parallel-size",
}
KNOB_HELP = {
    "tp": "Tensor-parallel degree (GPUs splitting each layer's matmuls)",
    "pp": "Pipeline-parallel stages",
    "vpp": "Virtual pipeline stages: model chunks per rank (interleaved schedule)",
    "cp": "Context-parallel degree (GPUs splitting each sequence)",
    "ep": "Expert-parallel degree (GPUs sharing the routed experts of a layer)",
    "etp": "Expert tensor-parallel degree \\[default: tp]",
}


def model(required: bool = True) -> Any:
    return typer.Option(... if required else None, "--model", "-m",
                        help="Model: preset name (planner describe --list) or ModelSpec YAML file.")


def cluster(required: bool = True) -> Any:
    return typer.Option(... if required else None, "--cluster", "-c",
                        help="Cluster: preset name (planner describe --list) or ClusterSpec YAML file.")


def gpus() -> Any:
    return typer.Option(None, "--gpus",
                        help="Resize the cluster to this many GPUs (whole nodes) \\[default: the preset's].")


def global_batch(required: bool = True, budget: bool = False) -> Any:
    extra = " Or give --tokens to derive it from a token budget." if budget else ""
    return typer.Option(... if required else None, "--global-batch", "--global-batch-size",
                        help=f"Global batch: sequences per optimizer step.{extra}")


def seq_len() -> Any:
    return typer.Option(None, "--seq-len", "--seq-length", min=1,
                        help="Sequence length in tokens \\[default: the model's].")


def precision() -> Any:
    return typer.Option("bf16", "--precision",
                        help="GEMM precision: bf16, fp16 or fp8 (FP8 GEMMs, BF16 elsewhere).")


def adam_moments() -> Any:
    return typer.Option("fp32", "--adam-moments",
                        help="Format of Adam's moments: fp32 (Megatron-Core's default), bf16 (DeepSeek-V3), "
                             "fp16 or fp8.")


def moe_dispatch() -> Any:
    return typer.Option("bf16", "--moe-dispatch",
                        help="Format of the MoE dispatch all-to-all: bf16 (Megatron-Core) or fp8 (DeepSeek-V3, "
                             "DeepEP); the combine is BF16.")


def moe_dispatcher() -> Any:
    return typer.Option("deepep", "--moe-dispatcher",
                        help="MoE token dispatcher: deepep (each token sent once per destination "
                             "node/GPU; Megatron-Core flex) or alltoall (one copy per chosen expert, "
                             "Megatron-Core's NCCL all-to-all).")


def moe_routing() -> Any:
    return typer.Option("balanced", "--moe-routing",
                        help="MoE routing: balanced (every EP rank gets its mean share) or real (the busiest "
                             "rank gets a measured imbalance more; data/costmodel/compute.yaml).")


def pipeline_p2p() -> Any:
    return typer.Option("megatron", "--pipeline-p2p",
                        help="How pipeline stages exchange activations: megatron (batched exchanges, the "
                             "schedule hides them where it has slack) or deepspeed (DeepSpeed's PipelineEngine: "
                             "blocking send/recv of the whole activation inside each forward and backward; "
                             "1f1b only).")


def cross_entropy() -> Any:
    return typer.Option("unfused", "--cross-entropy",
                        help="What the loss keeps for backward per logit: unfused (the FP32 softmax, 4 bytes: "
                             "Megatron-LM, torchtitan) or fused (the BF16 logits, 2 bytes: flash-attn's Triton "
                             "kernel as in llm-foundry, Transformer Engine's).")


def fp8_implementation() -> Any:
    return typer.Option("te", "--fp8-impl",
                        help="Whose kernels quantise FP8 Linears (with --precision fp8): te (Transformer Engine: "
                             "fused cast-transpose, Megatron-LM / NeMo) or torchao (float8 tensorwise dynamic "
                             "scaling under torch.compile, TorchTitan: amax and casts per Linear, weights every "
                             "micro-batch).")


def tp_comm_overlap() -> Any:
    return typer.Option(False, "--tp-comm-overlap/--no-tp-comm-overlap",
                        help="Transformer Engine's TP communication overlap (Megatron-LM --tp-comm-overlap, "
                             "NeMo and Megatron-Bridge performance recipes): a block's sequence-parallel "
                             "all-gathers and reduce-scatters run under its Linear GEMMs (with sequence "
                             "parallelism and tp > 1).")


def ep_comm_overlap() -> Any:
    return typer.Option(False, "--ep-comm-overlap/--no-ep-comm-overlap",
                        help="Megatron-Core's combined 1F1B (--overlap-moe-expert-parallel-comm): the "
                             "steady state's forward and backward run as pairs, each one's EP all-to-all "
                             "under the other's compute (EP > 1; interleaved when pp > 1; not with full "
                             "recompute).")


def grad_reduce() -> Any:
    return typer.Option("fp32", "--grad-reduce",
                        help="Format of the gradient buffer and its data-parallel reduction: fp32 (Megatron-LM's "
                             "default under BF16) or bf16 (NeMo and Megatron-Bridge FP8 recipes, "
                             "--grad-reduce-in-bf16).")


def overlap_param_gather() -> Any:
    return typer.Option(True, "--overlap-param-gather/--no-overlap-param-gather",
                        help="ZeRO-1/2: gather the updated parameters under the next step's forwards (Megatron-Core "
                             "--overlap-param-gather, NeMo's default) or at the end of the step.")


def knob(name: str, *, many: bool = False) -> Any:
    """``--tp`` (and ``--tensor-model-parallel-size``) ...; ``many``: a comma-separated list
    of allowed values (search commands), else one degree."""
    names = [f"--{name}"] + ([MEGATRON[name]] if name in MEGATRON else [])
    text = KNOB_HELP[name]
    text += ": allowed values, comma-separated, e.g. 1,2,4 \\[default: the search's range]." if many else "."
    return typer.Option(None, *names, help=text)


def fmt(what: str = "the result") -> Any:
    return typer.Option(Format.TABLE, "--format", "-f",
                        help=f"Output format of {what}: table (people), json or yaml (scripts), csv (tables).")


def out(what: str = "the result") -> Any:
    return typer.Option(None, "--out", "-o", metavar="FILE",
                        help=f"Write {what} to FILE (in --format) instead of stdout.")


def tokens(budget: bool = False) -> Any:
    text = "Token budget to price, e.g. 1e12 \\[default: costs per trillion tokens]."
    if budget:
        text += (" Without --global-batch it also sets the global batch (DeepSeek LLM's B_opt law, rounded "
                 "to a multiple of the GPU count) and reports the peak learning rate.")
    return typer.Option(None, "--tokens", help=text)


def price() -> Any:
    return typer.Option(
        None, "--price-per-gpu-hour",
        help=f"US dollars per GPU-hour for the cost \\[default: {DEFAULT_PRICE_PER_GPU_HOUR:g}, the rental price "
             "DeepSeek-V3 assumes, arXiv 2412.19437 §1].",
    )


# Search constraints shared by ``plan`` and ``report`` (each a comma-separated allowed set).


def allowed_micro_batch() -> Any:
    return typer.Option(None, "--micro-batch", "--micro-batch-size",
                        help="Allowed micro-batch sizes (sequences) [1,2,4,8].")


def allowed_zero() -> Any:
    return typer.Option(None, "--zero", help="Allowed ZeRO stages, e.g. 1 or 0,1,2,3.")


def allowed_sequence_parallel() -> Any:
    return typer.Option(None, "--sequence-parallel", help="on, off or on,off.")


def allowed_recompute() -> Any:
    return typer.Option(None, "--recompute", help="Allowed: none, selective, full.")


def allowed_schedule() -> Any:
    return typer.Option(None, "--schedule", help="Allowed: 1f1b, interleaved, zero-bubble, dualpipe, dualpipev.")


def max_memory_fraction() -> Any:
    return typer.Option(1.0, "--max-memory-frac", help="Largest fraction of HBM a plan may use (0-1].")


def exhaustive() -> Any:
    return typer.Option(False, "--exhaustive", help="Simulate every valid candidate (no pruning).")


def workers() -> Any:
    return typer.Option(None, "--workers", min=1, max=2,
                        help="Processes for the search's best-first stage, 1 or 2 \\[default: 2 on Linux with 2+ CPUs "
                             "for 20,000+ candidates]. Same ranking either way; with 2 the pruning counts vary "
                             "from run to run.")


# One plan's remaining knobs, shared by ``simulate``, ``sweep`` and ``launch``.


def zero() -> Any:
    return typer.Option(None, "--zero", help="ZeRO stage 0-3 (1 = distributed optimizer).")


def sequence_parallel() -> Any:
    return typer.Option(None, "--sequence-parallel/--no-sequence-parallel", help="Megatron SP.")


def recompute() -> Any:
    return typer.Option(None, "--recompute", help="none, selective or full.")


def recompute_modules() -> Any:
    return typer.Option(
        None, "--recompute-modules", metavar="LIST",
        help="What selective recompute rebuilds (Megatron --recompute-modules), comma-separated: core_attn, "
             "layernorm, mla_up_proj, moe_act, mlp, moe, shared_experts, or alone op_sac (TorchTitan's "
             "op-level SAC) \\[default: core_attn, + moe_act in fp8; "
             "MLA models: layernorm, mla_up_proj, moe_act].",
    )


def cpu_offloading_num_layers() -> Any:
    return typer.Option(
        None, "--cpu-offloading-num-layers", metavar="N",
        help="Offload the activations of the first N transformer blocks to host memory and back "
             "(Megatron-Core cpu_offloading_num_layers; pp 1, no recompute, N < layers) \\[default: 0].",
    )


def micro_batch() -> Any:
    return typer.Option(None, "--micro-batch", "--micro-batch-size", help="Sequences per micro-batch.")


def schedule() -> Any:
    return typer.Option(None, "--schedule", help="1f1b, interleaved, zero-bubble, dualpipe, dualpipev.")


def pipeline_layers() -> Any:
    return typer.Option(
        None, "--pipeline-layers", metavar="N,N,...",
        help="Transformer blocks per model chunk in model order (pp * vpp of them; 2 * pp for "
             "dualpipev), e.g. 8,9,11,10,11,11,11,9. Default: the simulator's split.",
    )
