"""``planner launch``: run a plan locally, print its losses and measured vs predicted step time,
or emit its launch configs.

Every rule is checked before any process starts (exit 2, one line naming the rule): the
plan against the model and workload (:func:`~planner.specs.compat.check_plan`: ep divides
the experts, pp * vpp <= layers, ...), ``--nproc`` against the plan's world size, then, for
a run, the backend, that torch is installed (else the ``model`` extra's install line) and
that the runtime supports the plan (:func:`~planner.model.parallel.check_supported`; the
CLI keeps no support matrix of its own).

A run (:mod:`planner.launch.local`) starts one process per rank with torchrun (default) or
by fork, gloo, float32, on the generated corpus (``--data corpus``, :mod:`planner.launch.corpus`)
or random tokens. It prints one JSON line per optimizer step as the step ends (``step``,
``loss``, ``step_time_s``: the slowest rank's time from a barrier to its training step
done, ``peak_memory_bytes``: the largest rank's max RSS so far, CPU memory), then a summary
line: the mean step time without the first (warm-up) step beside the simulator's
prediction for the same plan and workload on ``--cluster`` (default ``local-cpu-8``, whose
one node is fitted to the run's process count), and ``relative_error`` = (predicted -
measured) / measured. The simulator prices the workload's ``--precision`` (bf16) GEMMs at
the device's bf16 peak; on the local CPU presets that is the measured float32 rate.

``--emit DIR`` runs nothing: it writes ``torchrun.sh``, ``run_config.yaml`` and
``megatron_args.txt`` (:mod:`planner.launch.emit`).
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import typer

from planner.cli import options
from planner.cli.main import app, reports_errors
from planner.errors import SpecError, UnsupportedError
from planner.cli.inputs import build_workload
from planner.launch.corpus import DataSource
from planner.launch.local import Launcher
from planner.presets import load_cluster, load_model, load_plan, validate_spec
from planner.specs import Plan
from planner.specs.compat import check_plan

TORCH_MISSING = 'torch is not installed; install the model extra: pip install "planner[model]"'
DEFAULT_BATCH = 4
"""Global batch when --global-batch is not given: 4 sequences (the runtime's default),
rounded up to a multiple of dp * micro_batch_size."""
DEFAULT_CLUSTER = "local-cpu-8"
MEASURED_NOTE = "mean of step_time_s over steps 2..S (step 1 is warm-up)"
PEAK_MEMORY_SOURCE = "resource.getrusage ru_maxrss, the largest rank process, bytes, CPU"


def _build_plan(plan_file: Path | None, knobs: dict) -> Plan:
    """The plan file with the knobs over it; unlike ``simulate``, dp is not derived: 1 unless given."""
    data = load_plan(str(plan_file)).model_dump(exclude_unset=True) if plan_file else {}
    data.update({k: v for k, v in knobs.items() if v is not None})
    return validate_spec(Plan, data, "plan")


def _local_command(
    model: str, plan_file: Path | None, plan: Plan, steps: int, batch: int, seq: int, seed: int
) -> str:
    """The ``planner launch`` line that runs this plan on the reference runtime."""
    args = ["planner", "launch", "--model", model, *(["--plan", str(plan_file)] if plan_file else [])]
    args += [
        "--steps",
        str(steps),
        "--nproc",
        str(plan.world_size),
        "--global-batch",
        str(batch),
        "--seq-len",
        str(seq),
        "--seed",
        str(seed),
    ]
    knobs = {
        "tp": plan.tp,
        "pp": plan.pp,
        "vpp": plan.vpp,
        "cp": plan.cp,
        "ep": plan.ep,
        "etp": plan.expert_tp,
        "dp": plan.dp,
        "zero": int(plan.zero_stage),
        "recompute": plan.recompute.value,
        "micro-batch": plan.micro_batch_size,
        "schedule": plan.pipeline_schedule.value,
    }
    args += [f"--{k}={v}" for k, v in knobs.items()]
    args.append("--sequence-parallel" if plan.sequence_parallel else "--no-sequence-parallel")
    return shlex.join(args)


def _import_runtime():
    """The runtime's train and check_supported; a missing torch is a user error."""
    try:
        import torch  # noqa: F401

        from planner.model.parallel import TrainConfig, check_supported, train
    except ImportError:
        raise UnsupportedError(TORCH_MISSING) from None
    return TrainConfig, check_supported, train


def _check_before_torch(backend: str) -> None:
    """Runtime limits that need no torch import (fast)."""
    if backend != "gloo":
        raise SpecError(
            "--backend", backend, "the reference runtime runs gloo only (CPU, float32); use --emit for NCCL"
        )


def _check_runtime(check_supported, config, plan: Plan, spec) -> None:
    try:
        check_supported(plan, spec, config)
    except SpecError:
        raise
    except NotImplementedError as exc:
        what = str(exc).split(": not implemented")[0]
        raise UnsupportedError(f"{what} is not implemented in the runtime yet ({spec.name})") from None
    except ValueError as exc:
        raise UnsupportedError(str(exc)) from None


@app.command("launch")
@reports_errors
def launch_command(
    model: str = typer.Option(..., "--model", "-m", help="Model preset name or YAML file."),
    plan_file: Path = typer.Option(None, "--plan", help="Plan YAML (Megatron names or tp/pp/...)."),
    steps: int = typer.Option(..., "--steps", min=1, help="Optimizer steps."),
    nproc: int = typer.Option(
        None, "--nproc", help="Processes; must equal the plan's world size \\[default: it]."
    ),
    nnodes: int = typer.Option(1, "--nnodes", min=1, help="Nodes of the emitted torchrun command (--emit)."),
    backend: str = typer.Option(
        None, "--backend", help="gloo (runs; the default) or nccl (--emit's default)."
    ),
    global_batch: int = typer.Option(
        None, "--global-batch", help="Sequences per optimizer step \\[default: 4]."
    ),
    seq_len: int = typer.Option(None, "--seq-len", help="Tokens per sequence \\[default: the model's]."),
    seed: int = typer.Option(0, "--seed", help="Seed of the model initialisation and the synthetic data."),
    precision: str = typer.Option(
        "bf16", "--precision", help="bf16, fp16 or fp8 (emitted configs; runs are float32)."
    ),
    emit: Path = typer.Option(
        None,
        "--emit",
        metavar="DIR",
        help="Write torchrun.sh, run_config.yaml and megatron_args.txt; run nothing.",
    ),
    tp: int = typer.Option(None, "--tp", "--tensor-model-parallel-size", help="Tensor-parallel degree."),
    pp: int = typer.Option(None, "--pp", "--pipeline-model-parallel-size", help="Pipeline stages."),
    vpp: int = typer.Option(None, "--vpp", "--virtual-pipeline-model-parallel-size", help="Chunks per rank."),
    cp: int = typer.Option(None, "--cp", "--context-parallel-size", help="Context-parallel degree."),
    ep: int = typer.Option(None, "--ep", "--expert-model-parallel-size", help="Expert-parallel degree."),
    etp: int = typer.Option(None, "--etp", "--expert-tensor-parallel-size", help="Expert TP degree."),
    dp: int = typer.Option(None, "--dp", help="Data-parallel degree \\[default: 1]."),
    zero: int = options.zero(),
    sp: bool = options.sequence_parallel(),
    cluster: str = typer.Option(
        DEFAULT_CLUSTER, "--cluster", "-c",
        help="Cluster preset or file the prediction is made for (planner calibrate --device writes one).",
    ),
    data: DataSource = typer.Option(
        DataSource.CORPUS, "--data", help="corpus (generated text, bytewise) or random tokens."
    ),
    launcher: Launcher = typer.Option(
        Launcher.TORCHRUN, "--launcher", help="torchrun (fresh processes) or fork (fast start)."
    ),
    recompute: str = options.recompute(),
    micro_batch: int = options.micro_batch(),
    schedule: str = options.schedule(),
) -> None:
    """Run a plan locally (JSON lines per step; measured vs predicted step time), or --emit its configs.

    Example: planner launch -m tiny-dense --tp 2 --steps 50
    """
    spec = load_model(model)
    knobs = {
        "tp": tp,
        "pp": pp,
        "vpp": vpp,
        "cp": cp,
        "ep": ep,
        "etp": etp,
        "dp": dp,
        "zero_stage": zero,
        "sequence_parallel": sp,
        "recompute": recompute,
        "micro_batch_size": micro_batch,
        "pipeline_schedule": schedule,
    }
    plan = _build_plan(plan_file, knobs)
    if global_batch is None:
        step = plan.dp * plan.micro_batch_size
        global_batch = math.ceil(DEFAULT_BATCH / step) * step
    workload = build_workload(spec, global_batch, seq_len, precision)
    check_plan(spec, workload, plan)
    if nproc is not None and nproc != plan.world_size:
        raise SpecError(
            "--nproc",
            nproc,
            f"must equal the plan's world size tp * cp * dp * pp = "
            f"{plan.tp} * {plan.cp} * {plan.dp} * {plan.pp} = {plan.world_size}",
        )
    if emit is not None:
        backend = backend or "nccl"
        if backend not in ("gloo", "nccl"):
            raise SpecError("--backend", backend, "must be gloo or nccl")
        local = _local_command(model, plan_file, plan, steps, global_batch, workload.seq_length, seed)
        from planner.launch.emit import write_emit

        try:
            paths = write_emit(
                emit,
                model,
                spec,
                plan,
                workload,
                steps=steps,
                seed=seed,
                backend=backend,
                nnodes=nnodes,
                local_command=local,
            )
        except OSError as exc:
            raise SpecError("--emit", str(emit), f"cannot write there: {exc.strerror or exc}") from None
        for path in paths:
            print(path)
        return
    backend = backend or "gloo"
    _check_before_torch(backend)
    hardware = load_cluster(cluster)
    TrainConfig, check_supported, _ = _import_runtime()
    config = TrainConfig(steps=steps, seed=seed, batch=global_batch, seq_len=workload.seq_length)
    _check_runtime(check_supported, config, plan, spec)
    from planner.launch.local import mean_after_warmup, predict_step_s, run_local

    predicted, status = predict_step_s(spec, hardware, plan, workload)
    run = run_local(spec, plan, steps=steps, seed=seed, batch=global_batch, seq_len=workload.seq_length,
                    data=data, launcher=launcher, on_line=lambda line: print(json.dumps(line), flush=True))
    losses = [line["loss"] for line in run.steps]
    measured = mean_after_warmup([line["step_time_s"] for line in run.steps])
    error = (predicted - measured) / measured if predicted is not None and measured > 0 else None
    print(json.dumps({
        "summary": True, "model": spec.name, "world_size": plan.world_size, "backend": backend,
        "launcher": run.launcher, "data": run.data.value,
        "tp": plan.tp, "pp": plan.pp, "cp": plan.cp, "ep": plan.ep, "dp": plan.dp,
        "zero_stage": int(plan.zero_stage), "micro_batch": plan.micro_batch_size, "steps": steps,
        "global_batch": global_batch, "seq_len": workload.seq_length, "dtype": "float32",
        "first_loss": losses[0], "final_loss": losses[-1], "loss_fell": losses[-1] < losses[0],
        "all_losses_finite": all(math.isfinite(x) for x in losses),
        "wall_time_s": run.wall_time_s,
        "measured_step_time_s": measured,
        "measured_note": MEASURED_NOTE,
        "cluster": hardware.name, "predicted_step_time_s": predicted, "prediction_status": status,
        "relative_error": error,
        "peak_memory_bytes": max(line["peak_memory_bytes"] for line in run.steps),
        "peak_memory_source": PEAK_MEMORY_SOURCE,
    }))
