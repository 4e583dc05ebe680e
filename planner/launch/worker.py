"""One rank of a ``planner launch`` run: the torchrun entry point and the forked one.

``python -m torch.distributed.run --standalone --nproc-per-node N -m planner.launch.worker
RUN.json`` starts N of these; each reads ``RANK`` and ``WORLD_SIZE`` from torchrun's
environment and rendezvouses over ``env://``. The forked launcher calls :func:`run_rank`
directly with a ``file://`` rendezvous. ``RUN.json`` (written by :mod:`planner.launch.local`)
holds the model spec, the plan and the run settings.

The rank trains with the runtime's own step, :class:`planner.model.parallel.runner.RankTrainer`
(its stage of the model under the plan, its optimizers, its rows of the global batch;
:meth:`~planner.model.parallel.runner.RankTrainer.step` runs the micro-batches through 1F1B,
sums the embedding gradients over first and last stage, syncs gradients over dp/edp, steps
Adam or ZeRO-1 and updates the gate biases), so whatever plan the runtime's
``check_supported`` accepts, this loop runs, and it follows the runtime when that changes.
Only the data differs (:mod:`planner.launch.corpus`), and each step is timed and reported
as it ends.

Per step, rank 0 appends one JSON line to ``steps.jsonl`` in the run folder: the loss over
the global batch (all-reduced over dp), ``step_time_s`` = the slowest rank's wall time from
a barrier to the end of its ``RankTrainer.step`` (the batch, the step, the loss's dp
reduction), and ``peak_memory_bytes`` = the largest rank's ``ru_maxrss`` so far (CPU
resident memory, bytes).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

STEPS_FILE = "steps.jsonl"
RUN_FILE = "run.json"
RSS_SCALE = 1 if sys.platform == "darwin" else 1024
"""ru_maxrss unit: KiB on Linux, bytes on macOS."""


def run_rank(rank: int, world_size: int, run_file: str, init_method: str = "env://") -> None:
    """Train the run of ``run_file`` as rank ``rank`` of ``world_size``."""
    import torch
    import torch.distributed as dist

    from planner.launch.corpus import Corpus, DataSource
    from planner.model.parallel import runner
    from planner.model.parallel.groups import build_groups
    from planner.specs import ModelSpec, Plan

    torch.set_num_threads(1)  # one core per rank: a rank is one "device" of local-cpu-N
    run = json.loads(Path(run_file).read_text())
    spec, plan = ModelSpec.model_validate(run["model"]), Plan.model_validate(run["plan"])
    config = runner.TrainConfig(
        steps=run["steps"], seed=run["seed"], batch=run["batch"], seq_len=run["seq_len"], lr=run["lr"]
    )
    corpus = Corpus(spec.vocab_size, run["seed"]) if DataSource(run["data"]) is DataSource.CORPUS else None
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
    try:
        trainer = runner.RankTrainer(plan, spec, config, build_groups(plan))
        out = Path(run_file).parent / STEPS_FILE
        for step in range(config.steps):
            dist.barrier()
            start = time.perf_counter()
            if corpus is not None:
                tokens, targets = corpus.batch(step, config.seed, config.batch, config.seq_len)
            else:
                tokens, targets = runner.synthetic_batch(spec, config, step)
            loss = trainer.step(tokens, targets)  # the global batch's loss on the last stage, else None
            elapsed = time.perf_counter() - start
            # Every rank (rank 0 included) gets the loss: sum (loss, 1) over the ranks that hold it.
            held = torch.zeros(2, dtype=torch.float64)
            if loss is not None:
                held[0], held[1] = loss, 1.0
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RSS_SCALE
            stats = torch.tensor([elapsed, float(rss)], dtype=torch.float64)
            dist.all_reduce(held)
            dist.all_reduce(stats, op=dist.ReduceOp.MAX)
            if rank == 0:
                line = {"step": step + 1, "loss": (held[0] / held[1]).item(), "step_time_s": stats[0].item(),
                        "peak_memory_bytes": int(stats[1].item())}
                with out.open("a") as f:
                    f.write(json.dumps(line) + "\n")
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    """torchrun entry: ``python -m planner.launch.worker RUN.json``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m planner.launch.worker RUN.json (started by torchrun)")
    run_rank(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args[0])


if __name__ == "__main__":
    main()
