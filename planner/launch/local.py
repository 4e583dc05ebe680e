"""Run a plan on this machine, one process per rank, and predict its step time.

:func:`run_local` writes the run description (``run.json``) into a temporary folder and
starts the ranks of :mod:`planner.launch.worker` with one of two :class:`Launcher` s:

- ``torchrun`` (default): ``python -m torch.distributed.run --standalone --nproc-per-node N
  -m planner.launch.worker run.json``, fresh interpreters, ``env://`` rendezvous: the way
  a real job starts. Each rank imports torch (about 4 s of CPU per rank here, 2 cores);
- ``fork``: ``torch.multiprocessing`` fork of this process, ``file://`` rendezvous: well
  under a second to start, what the tests use.

While the ranks run, it relays rank 0's per-step JSON lines as they are written.

:func:`local_cluster` fits a one-node cluster preset (``local-cpu-8``, or a file written by
``planner calibrate --device``) to the plan's world size, and :func:`predict_step_s` asks
the simulator for the step time there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from planner.errors import PlannerError, SpecError, UnsupportedError
from planner.launch.corpus import DataSource
from planner.launch.worker import RUN_FILE, STEPS_FILE
from planner.specs import ClusterSpec, ModelSpec, Plan, Workload

POLL_S = 0.1
LEARNING_RATE = 1e-3
"""Adam learning rate of launched runs (the runtime's TrainConfig default)."""


class Launcher(StrEnum):
    """How the local ranks are started."""

    TORCHRUN = "torchrun"
    FORK = "fork"


class RunFailedError(PlannerError):
    """A rank process failed after starting (exit code 1; its stderr tail is the message)."""


@dataclass(frozen=True)
class LocalRun:
    steps: list[dict]
    """Per step: step, loss, step_time_s, peak_memory_bytes (see planner.launch.worker)."""
    wall_time_s: float
    """From the launch to the last rank's exit, process start included."""
    launcher: str
    data: DataSource


def _tail(path: Path, seen: int, on_line: Callable[[dict], None], lines: list[dict]) -> int:
    """Relay the complete lines of ``path`` past byte ``seen``; the new offset."""
    if not path.exists():
        return seen
    text = path.read_text()
    end = text.rfind("\n") + 1
    for raw in text[seen:end].splitlines():
        line = json.loads(raw)
        lines.append(line)
        on_line(line)
    return max(seen, end)


def _fork_entry(rank: int, world_size: int, run_file: str, run_dir: str) -> None:
    from planner.launch.worker import run_rank

    run_rank(rank, world_size, run_file, init_method=f"file://{run_dir}/rendezvous")


def _run_torchrun(run_dir: Path, nproc: int, on_tick: Callable[[], None]) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "planner.launch.worker", str(run_dir / RUN_FILE)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log = run_dir / "torchrun.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None:
            time.sleep(POLL_S)
            on_tick()
    if proc.returncode:
        tail = log.read_text().strip().splitlines()[-15:]
        raise RunFailedError(f"torchrun exited {proc.returncode}:\n" + "\n".join(tail))


def _run_fork(run_dir: Path, nproc: int, on_tick: Callable[[], None]) -> None:
    import torch.multiprocessing as mp

    context = mp.start_processes(_fork_entry, args=(nproc, str(run_dir / RUN_FILE), str(run_dir)),
                                 nprocs=nproc, join=False, start_method="fork")
    try:
        while not context.join(timeout=POLL_S):
            on_tick()
    except mp.ProcessRaisedException as exc:
        raise RunFailedError(f"a rank failed: {str(exc).strip().splitlines()[-1]}") from None
    except mp.ProcessExitedException as exc:
        raise RunFailedError(f"a rank exited: {exc}") from None


def run_local(spec: ModelSpec, plan: Plan, *, steps: int, seed: int, batch: int, seq_len: int,
              data: DataSource, launcher: Launcher, on_line: Callable[[dict], None]) -> LocalRun:
    """Train ``plan`` on ``plan.world_size`` local processes; ``on_line`` gets each step's line."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="planner-launch-") as tmp:
        run_dir = Path(tmp)
        (run_dir / RUN_FILE).write_text(json.dumps({
            "model": spec.model_dump(mode="json"), "plan": plan.model_dump(mode="json"), "steps": steps,
            "seed": seed, "batch": batch, "seq_len": seq_len, "lr": LEARNING_RATE, "data": data.value,
        }))
        lines: list[dict] = []
        seen = 0

        def tick() -> None:
            nonlocal seen
            seen = _tail(run_dir / STEPS_FILE, seen, on_line, lines)

        runner = _run_torchrun if launcher is Launcher.TORCHRUN else _run_fork
        runner(run_dir, plan.world_size, tick)
        tick()
    return LocalRun(lines, time.perf_counter() - start, launcher.value, data)


def local_cluster(cluster: ClusterSpec, world_size: int) -> ClusterSpec:
    """``cluster`` with exactly ``world_size`` devices: a one-node cluster's node is narrowed
    or widened to the run's processes (one device per local process); others are resized
    by whole nodes."""
    if cluster.num_gpus == world_size:
        return cluster
    if cluster.num_nodes != 1:
        return cluster.with_num_gpus(world_size)
    from planner.presets import revalidate

    node = cluster.node
    scale_up = revalidate(node.scale_up, domain_gpus=world_size)
    return revalidate(cluster, node=revalidate(node, gpus_per_node=world_size, scale_up=scale_up))


def predict_step_s(spec: ModelSpec, cluster: ClusterSpec, plan: Plan, workload: Workload) -> tuple[float | None, str]:
    """The simulator's step time of ``plan`` on ``cluster`` fitted to its world size, and
    its status (``ok``/``oom``) or why there is no prediction."""
    from planner.costmodel.simulate import simulate

    try:
        report = simulate(spec, local_cluster(cluster, plan.world_size), plan, workload)
    except (SpecError, UnsupportedError) as exc:
        return None, f"no prediction: {exc}"
    return report.step_time_s, str(report.status.value)


def mean_after_warmup(times: list[float]) -> float:
    """Mean step time without the first step (warm-up: allocator, first gloo connections)."""
    rest = times[1:] or times
    return sum(rest) / len(rest)
