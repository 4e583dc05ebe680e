"""Benchmark: one pipeline-schedule simulation, DeepSeek-V3-sized.

Run: .venv/bin/python benchmarks/bench_schedules.py
Prints the median milliseconds of 50 simulations per case: "warm" with the compiled
programs cached (what a search pays for each new set of chunk times), "cold" with the cache
cleared first (programs built and compiled too), and the cost of materialising the event
list (only a trace needs it). Target (schedules issue): DualPipe at pp = 16, 120
micro-batches (DeepSeek-V3, seeds-digest §2.2) under 50 ms.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from planner.costmodel import schedules
from planner.costmodel.schedules import ChunkTimes, simulate_pipeline
from planner.specs.plan import PipelineSchedule

REPEATS = 50
# Seconds per chunk, V3-like proportions (F : B_input : W = 1 : 1 : 0.5, F&B = 2 F).
CHUNK = ChunkTimes(forward_s=0.06, backward_input_s=0.06, backward_weight_s=0.03, overlapped_fb_s=0.12)
CASES = [
    ("dualpipe", PipelineSchedule.DUALPIPE, 16, 1, 120),
    ("dualpipev", PipelineSchedule.DUALPIPEV, 16, 1, 120),
    ("1f1b", PipelineSchedule.ONE_F_ONE_B, 16, 1, 120),
    ("zero-bubble", PipelineSchedule.ZERO_BUBBLE, 16, 1, 120),
    ("interleaved", PipelineSchedule.INTERLEAVED, 8, 3, 64),
]


def median_ms(run: Callable[[], object], before: Callable[[], object] = lambda: None) -> float:
    samples = []
    for _ in range(REPEATS):
        before()
        t0 = time.perf_counter()
        run()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e3


def main() -> None:
    head = ("schedule", "pp", "vpp", "mb", "events", "warm ms", "cold ms", "events ms")
    print("{:<12} {:>3} {:>3} {:>4} {:>7} {:>8} {:>8} {:>9}".format(*head))
    for name, schedule, pp, vpp, m in CASES:
        n = 2 * pp if schedule is PipelineSchedule.DUALPIPEV else pp * vpp
        times = [CHUNK] * n

        def sim(schedule=schedule, pp=pp, vpp=vpp, m=m, times=times):
            return simulate_pipeline(schedule, times, m, pp, vpp, p2p_s=1e-4)

        warm = median_ms(sim)
        cold = median_ms(sim, before=lambda: (schedules._compiled.cache_clear(), schedules._raw_programs.cache_clear()))
        timelines = [sim() for _ in range(REPEATS)]
        it = iter(timelines)
        events = median_ms(lambda: next(it).events)
        n_events = len(timelines[0].events)
        print(f"{name:<12} {pp:>3} {vpp:>3} {m:>4} {n_events:>7} {warm:>8.2f} {cold:>8.2f} {events:>9.2f}")


if __name__ == "__main__":
    main()
