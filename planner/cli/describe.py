"""``planner describe``: what a model, GPU or cluster preset (or YAML file) holds.

For a model: parameters by component (total and per-token active), training FLOPs per
token in both attention conventions, and KV-cache bytes per token. For hardware: the
spec in friendly units. ``--list`` prints the preset names.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from planner.cli import options
from planner.cli.main import app, reports_errors
from planner.cli.output import Format, write_result
from planner.costmodel.accounting import ModelAccount, describe_model
from planner.errors import SpecError
from planner.presets import load_cluster, load_gpu, load_model, preset_names
from planner.specs import ClusterSpec, GPUSpec

_PARAM_ROWS = (
    ("embedding", "Embedding"),
    ("head", "Output head"),
    ("attention", "Attention"),
    ("dense_ffn", "Dense FFN"),
    ("shared_experts", "Shared experts"),
    ("routed_experts", "Routed experts"),
    ("router", "Router"),
    ("norms", "Norms"),
)


def _b(n: float) -> str:
    return f"{n / 1e9:,.3f} B"


def _model_table(acc: ModelAccount, console: Console) -> None:
    p, model = acc.params, acc.model
    table = Table(title=f"{model.name}: parameters", title_justify="left")
    table.add_column("component")
    table.add_column("total", justify="right")
    table.add_column("active / token", justify="right")
    for key, label in _PARAM_ROWS:
        total = getattr(p, key)
        if not total and key not in ("embedding", "attention"):
            continue
        active = p.routed_experts_active if key == "routed_experts" else total
        table.add_row(label, _b(total), _b(active))
    table.add_row("[bold]Model[/bold]", f"[bold]{_b(p.total)}[/bold]", f"[bold]{_b(p.active)}[/bold]")
    if p.mtp:
        table.add_row(f"MTP modules ({model.mtp_depth}, not in the total)", _b(p.mtp), "")
    console.print(table)
    console.print(
        f"Training FLOPs per token at seq {acc.seq_length}: "
        f"{acc.flops_per_token_train / 1e9:,.1f} GFLOPs causal, "
        f"{acc.flops_per_token_train_noncausal / 1e9:,.1f} GFLOPs non-causal"
        + (f" (+{acc.flops_per_token_train_mtp / 1e9:,.1f} GFLOPs for MTP)" if p.mtp else "")
    )
    console.print(
        f"Non-embedding FLOPs per token (DeepSeek LLM's M): {acc.flops_per_token_nonembedding / 1e9:,.1f} GFLOPs"
    )
    console.print(
        f"KV cache per token ({model.attention_kind.value.upper()}, BF16): "
        f"{acc.kv_cache_bytes_per_token:,} bytes"
    )
    console.print(
        "[dim]6 FLOPs per matmul weight a token uses (LM head included, input embedding "
        "excluded) plus attention scores and values; causal counts half the attention "
        "matrix (FlashAttention), non-causal all of it (Megatron).[/dim]"
    )


def _gpu_rows(gpu: GPUSpec) -> list[tuple[str, str]]:
    peaks = ", ".join(f"{k.value} {v / 1e12:,.1f}" for k, v in gpu.peak_flops_per_s.items())
    return [
        ("GPU", gpu.name),
        ("dense peak (TFLOPS)", peaks),
        ("HBM", f"{gpu.hbm_capacity_bytes / 2**30:,.1f} GiB at {gpu.hbm_bandwidth_bytes_per_s / 1e9:,.0f} GB/s"),
        ("SMs", str(gpu.num_sms)),
    ]


def _segment(c: ClusterSpec) -> str:
    """How this many GPUs share the multi-node domains (:attr:`ClusterSpec.job_domain_gpus`)."""
    if c.job_domain_gpus == c.node.scale_up.domain_gpus:
        return ""
    return f" (this job: segments of {c.job_domain_gpus})"


def _cluster_rows(c: ClusterSpec) -> list[tuple[str, str]]:
    node, fabric, up = c.node, c.fabric, c.node.scale_up
    return [
        ("cluster", c.name),
        ("GPUs", f"{c.num_gpus:,} ({c.num_nodes:,} nodes x {node.gpus_per_node})"),
        *_gpu_rows(c.gpu)[1:],
        (
            "scale-up",
            f"{up.kind.value}, {up.domain_gpus} GPUs per domain{_segment(c)}, {up.bandwidth_bytes_per_s / 1e9:,.0f} GB/s "
            f"per GPU per direction ({up.achievable_fraction:.0%} achievable), {up.latency_s * 1e6:.2f} us",
        ),
        (
            "scale-out",
            f"{node.nics_per_node} x {node.nic_bandwidth_bytes_per_s * 8 / 1e9:,.0f} Gbit/s NICs per node "
            f"({node.nic_achievable_fraction:.0%} achievable)",
        ),
        (
            "fabric",
            f"{fabric.kind.value}, {fabric.planes} plane(s), {fabric.tiers} tiers of {fabric.switch_radix}-port "
            f"switches, {fabric.zones} zone(s), latency {fabric.latency_same_leaf_s * 1e6:.1f} / "
            f"{fabric.latency_cross_leaf_s * 1e6:.1f} us (same / cross leaf)",
        ),
    ]


def _print_rows(rows: list[tuple[str, str]], console: Console, source: str) -> None:
    table = Table(show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    if source:
        console.print(f"[dim]source: {source}[/dim]")


@app.command(epilog="Examples: planner describe --model deepseek-v3;  planner describe --model my-model.yaml "
                     "--seq-len 8192 --format json;  planner describe --cluster fire-flyer-2 --gpus 640.")
@reports_errors
def describe(
    model: str = options.model(required=False),
    gpu: str = typer.Option(None, "--gpu", help="GPU: preset name or GPUSpec YAML file."),
    cluster: str = options.cluster(required=False),
    gpus: int = options.gpus(),
    seq_len: int = typer.Option(
        None, "--seq-len", "--seq-length", min=1,
        help="Sequence length in tokens for attention FLOPs \\[default: the model's]."
    ),
    fmt: Format = options.fmt(),
    out: Path = options.out(),
    list_presets: bool = typer.Option(False, "--list", help="List the shipped presets and exit."),
) -> None:
    """Parameters (B), FLOPs per token (GFLOPs) and KV cache (bytes/token) of a model; or a
    GPU or cluster spec in friendly units (TFLOPS, GiB, GB/s)."""
    if list_presets:
        names = {kind: preset_names(kind) for kind in ("model", "gpu", "cluster")}

        def listing(console: Console) -> None:
            for kind, items in names.items():
                console.print(f"[bold]{kind}s[/bold]: {', '.join(items)}")

        write_result(names, fmt, out, table=listing)
        return
    chosen = [name for name, value in (("--model", model), ("--gpu", gpu), ("--cluster", cluster)) if value]
    if len(chosen) != 1:
        raise SpecError("describe", " ".join(chosen) or None, "give exactly one of --model, --gpu, --cluster (or --list)")
    if gpus is not None and not cluster:
        raise SpecError("gpus", gpus, "only resizes a --cluster")
    if model:
        acc = describe_model(load_model(model), seq_len)
        write_result(acc.as_dict(), fmt, out, table=lambda console: _model_table(acc, console))
        return
    spec = load_gpu(gpu) if gpu else load_cluster(cluster, gpus)
    rows = _gpu_rows(spec) if isinstance(spec, GPUSpec) else _cluster_rows(spec)
    write_result(spec.model_dump(mode="json"), fmt, out, table=lambda console: _print_rows(rows, console, spec.source))
