"""The CLI's option set, frozen: a change here is a deliberate change of the public
interface (issue #8: "a test freezes the option set so changes are deliberate"). Update
FROZEN in the same commit as the option, and say so in the commit message."""

from __future__ import annotations

import typer.main

from planner.cli.main import app

FROZEN = {
    "calibrate": (
        "--format", "--from-cases", "--grid", "--out",
    ),
    "collective": (
        "--algorithm", "--bytes", "--cluster", "--first-node", "--format", "--gpus",
        "--group-size", "--job-gpus", "--layout", "--op", "--zone-spread", "-a",
        "-b", "-c", "-f", "-n",
    ),
    "describe": (
        "--cluster", "--format", "--gpu", "--gpus", "--list", "--model",
        "--seq-len", "-c", "-f", "-m",
    ),
    "explain": (
        "--cluster", "--format", "--global-batch", "--gpus", "--model", "--plan-a",
        "--plan-b", "--precision", "--sensitivity", "--seq-len", "-c", "-m",
    ),
    "launch": (
        "--backend", "--context-parallel-size", "--cp", "--dp", "--emit", "--ep",
        "--etp", "--expert-model-parallel-size", "--expert-tensor-parallel-size", "--global-batch", "--micro-batch", "--micro-batch-size",
        "--model", "--nnodes", "--no-sequence-parallel", "--nproc", "--pipeline-model-parallel-size", "--plan",
        "--pp", "--precision", "--recompute", "--schedule", "--seed", "--seq-len",
        "--sequence-parallel", "--steps", "--tensor-model-parallel-size", "--tp", "--virtual-pipeline-model-parallel-size", "--vpp",
        "--zero", "-m",
    ),
    "plan": (
        "--cluster", "--cp", "--ep", "--exhaustive", "--format", "--global-batch",
        "--gpus", "--max-memory-frac", "--micro-batch", "--model", "--pp", "--precision",
        "--recompute", "--schedule", "--seq-len", "--sequence-parallel", "--top-k", "--tp",
        "--vpp", "--zero", "-c", "-m",
    ),
    "simulate": (
        "--cluster", "--context-parallel-size", "--cp", "--dp", "--ep", "--etp",
        "--expert-model-parallel-size", "--expert-tensor-parallel-size", "--format", "--global-batch", "--gpus", "--micro-batch",
        "--micro-batch-size", "--model", "--no-sequence-parallel", "--pipeline-model-parallel-size", "--plan", "--plot-dir",
        "--pp", "--precision", "--recompute", "--schedule", "--seq-len", "--sequence-parallel",
        "--tensor-model-parallel-size", "--tp", "--trace", "--virtual-pipeline-model-parallel-size", "--vpp", "--zero",
        "-c", "-m",
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
