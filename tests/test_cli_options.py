"""The CLI's option set, frozen: a change here is a deliberate change of the public
interface (issue #8: "a test freezes the option set so changes are deliberate"). Update
FROZEN in the same commit as the option, and say so in the commit message."""

from __future__ import annotations

import pytest
import typer.main

from planner.cli.main import app

FROZEN = {
    "calibrate": (
        "--device", "--format", "--from-cases", "--gpu", "--grid", "--name", "--nproc", "--out", "-f",
    ),
    "collective": (
        "--algorithm", "--bytes", "--cluster", "--first-node", "--format", "--gpus",
        "--group-size", "--job-gpus", "--layout", "--op", "--out", "--zone-spread",
        "-a", "-b", "-c", "-f", "-n", "-o",
    ),
    "describe": (
        "--cluster", "--format", "--gpu", "--gpus", "--list", "--model",
        "--out", "--seq-len", "--seq-length", "-c", "-f", "-m",
        "-o",
    ),
    "explain": (
        "--adam-moments", "--moe-dispatch", "--moe-dispatcher", "--moe-routing", "--pipeline-p2p", "--cross-entropy", "--fp8-impl",
        "--grad-reduce", "--overlap-param-gather", "--no-overlap-param-gather", "--tp-comm-overlap", "--no-tp-comm-overlap",
        "--ep-comm-overlap", "--no-ep-comm-overlap",
        "--cluster", "--format", "--global-batch", "--global-batch-size", "--gpus", "--model",
        "--out", "--plan-a", "--plan-b", "--precision", "--sensitivity", "--seq-len",
        "--seq-length", "-c", "-f", "-m", "-o",
    ),
    "launch": (
        "--backend", "--cluster", "--context-parallel-size", "--cp", "--data", "--dp", "--emit", "--ep",
        "--etp", "--expert-model-parallel-size", "--expert-tensor-parallel-size", "--global-batch", "--launcher",
        "--micro-batch", "--micro-batch-size", "--model", "--nnodes", "--no-sequence-parallel", "--nproc", "--pipeline-model-parallel-size", "--plan",
        "--pp", "--precision", "--recompute", "--schedule", "--seed", "--seq-len",
        "--sequence-parallel", "--steps", "--tensor-model-parallel-size", "--tp", "--virtual-pipeline-model-parallel-size", "--vpp",
        "--zero", "-c", "-m",
    ),
    "plan": (
        "--adam-moments", "--moe-dispatch", "--moe-dispatcher", "--moe-routing", "--pipeline-p2p", "--cross-entropy", "--fp8-impl",
        "--grad-reduce", "--overlap-param-gather", "--no-overlap-param-gather", "--tp-comm-overlap", "--no-tp-comm-overlap",
        "--ep-comm-overlap", "--no-ep-comm-overlap",
        "--workers", "--etp", "--expert-tensor-parallel-size", "--rank-order",
        "--cluster", "--context-parallel-size", "--cp", "--emit", "--ep", "--exhaustive",
        "--expert-model-parallel-size", "--format", "--global-batch", "--global-batch-size", "--gpus", "--max-memory-frac",
        "--micro-batch", "--micro-batch-size", "--model", "--out", "--pipeline-model-parallel-size", "--pp",
        "--precision", "--price-per-gpu-hour", "--recompute", "--schedule", "--seq-len", "--seq-length",
        "--sequence-parallel", "--tensor-model-parallel-size", "--tokens", "--top-k", "--tp", "--virtual-pipeline-model-parallel-size",
        "--vpp", "--zero", "-c", "-f", "-m", "-o",
    ),
    "report": (
        "--adam-moments", "--moe-dispatch", "--moe-dispatcher", "--moe-routing", "--pipeline-p2p", "--cross-entropy", "--fp8-impl",
        "--grad-reduce", "--overlap-param-gather", "--no-overlap-param-gather", "--tp-comm-overlap", "--no-tp-comm-overlap",
        "--ep-comm-overlap", "--no-ep-comm-overlap",
        "--workers", "--etp", "--expert-tensor-parallel-size", "--rank-order",
        "--cluster", "--context-parallel-size", "--cp", "--ep", "--exhaustive", "--expert-model-parallel-size",
        "--format", "--from", "--global-batch", "--global-batch-size", "--gpus", "--max-memory-frac",
        "--micro-batch", "--micro-batch-size", "--model", "--no-what-if", "--out", "--pipeline-model-parallel-size",
        "--pp", "--precision", "--price-per-gpu-hour", "--recompute", "--schedule", "--seq-len",
        "--seq-length", "--sequence-parallel", "--tensor-model-parallel-size", "--tokens", "--top-k", "--tp",
        "--virtual-pipeline-model-parallel-size", "--vpp", "--what-if", "--zero", "-c", "-f",
        "-m", "-o",
    ),
    "simulate": (
        "--adam-moments", "--moe-dispatch", "--moe-dispatcher", "--moe-routing", "--pipeline-p2p", "--cross-entropy", "--fp8-impl",
        "--grad-reduce", "--overlap-param-gather", "--no-overlap-param-gather", "--tp-comm-overlap", "--no-tp-comm-overlap",
        "--ep-comm-overlap", "--no-ep-comm-overlap",
        "--cluster", "--context-parallel-size", "--cp", "--cpu-offloading-num-layers", "--data-parallel-size", "--dp", "--ep",
        "--etp", "--expert-model-parallel-size", "--expert-tensor-parallel-size", "--format", "--global-batch", "--global-batch-size",
        "--gpus", "--micro-batch", "--micro-batch-size", "--model", "--no-sequence-parallel", "--out",
        "--pipeline-layers", "--pipeline-model-parallel-size", "--plan", "--plot-dir", "--pp", "--precision",
        "--price-per-gpu-hour", "--recompute", "--recompute-modules", "--schedule", "--seq-len", "--seq-length", "--sequence-parallel",
        "--tensor-model-parallel-size", "--tokens", "--tp", "--trace", "--virtual-pipeline-model-parallel-size",
        "--vpp", "--zero",
        "-c", "-f", "-m", "-o",
    ),
    "sweep": (
        "--adam-moments", "--moe-dispatch", "--moe-dispatcher", "--moe-routing", "--pipeline-p2p", "--cross-entropy", "--fp8-impl",
        "--grad-reduce", "--overlap-param-gather", "--no-overlap-param-gather", "--tp-comm-overlap", "--no-tp-comm-overlap",
        "--ep-comm-overlap", "--no-ep-comm-overlap",
        "--cluster", "--context-parallel-size", "--cp", "--data-parallel-size", "--dp", "--ep",
        "--etp", "--expert-model-parallel-size", "--expert-tensor-parallel-size", "--format", "--global-batch", "--global-batch-size",
        "--gpus", "--grid", "--micro-batch", "--micro-batch-size", "--model", "--no-sequence-parallel",
        "--out", "--pipeline-model-parallel-size", "--plan", "--plot", "--pp", "--precision",
        "--recompute", "--schedule", "--seq-len", "--seq-length", "--sequence-parallel", "--tensor-model-parallel-size",
        "--tokens", "--tp", "--virtual-pipeline-model-parallel-size", "--vpp", "--zero", "-c",
        "-f", "-g", "-m", "-o",
    ),
    "topology": (
        "--cluster", "--format", "--gpus", "--out", "--route", "-c",
        "-f", "-o",
    ),
    "validate": (
        "--cases", "--format", "--out", "--plot", "--report", "-f",
        "-o",
    ),
}


def _options() -> dict[str, list[str]]:
    group = typer.main.get_command(app)
    return {
        name: sorted(opt for param in cmd.params for opt in (*param.opts, *param.secondary_opts))
        for name, cmd in group.commands.items()
    }


def test_commands_are_frozen() -> None:
    assert sorted(_options()) == sorted(FROZEN)


def test_options_are_frozen() -> None:
    current = _options()
    for name, options in FROZEN.items():
        assert current[name] == sorted(options), f"planner {name}: options changed"


@pytest.mark.parametrize("module", ["planner.cli.plan", "planner.cli.report", "planner.cli.simulate"])
def test_command_modules_import_on_their_own(module: str) -> None:
    """A command module imported first (not through planner.cli.main) must not hit a cycle."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", ["simulate", "plan", "launch"])
def test_help_shows_the_defaults_in_brackets(command: str) -> None:
    """Help texts name defaults as ``[default: ...]``; rich reads an unescaped bracket as
    markup and drops it, so ``--seq-len``'s "the model's" default must still be printed."""
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "[default: the model's]" in result.output
