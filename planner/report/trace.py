"""The simulated pipeline timeline as a Chrome / Perfetto trace (Trace Event Format).

One process ("pipeline"), one thread per pipeline rank (``tid`` = rank, named "rank r"),
one complete event (``"ph": "X"``) per simulated operation: F, B, W, BW or a DualPipe
F&B pair (FB). Times are microseconds from the first forward; idle time (bubbles) is left
empty. Open the file at https://ui.perfetto.dev or chrome://tracing.

Names read ``F mb12 c3`` (forward of micro-batch 12 through model chunk 3), an FB pair
``F mb12 c3 + B mb5 c12``. Under DualPipe, where micro-batches enter from both ends, names
start with ``→`` (direction 0, entering at rank 0) or ``←`` (direction 1, entering at the
last rank), the colour (``cname``) differs by direction, and ``args`` carry ``direction``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from planner.costmodel.schedules import Event, EventKind, PipelineTimeline

_US = 1e6
ARROWS = ("→", "←")
"""Name prefixes of DualPipe's two directions (0: enters at rank 0, 1: at the last rank)."""
# Reserved colour names of the Chrome trace viewer (catapult color_scheme): cool colours
# for direction 0, warm for direction 1.
CNAMES: dict[tuple[EventKind, int], str] = {
    (EventKind.F, 0): "thread_state_running",
    (EventKind.B, 0): "rail_response",
    (EventKind.W, 0): "rail_idle",
    (EventKind.BW, 0): "rail_animation",
    (EventKind.FB, 0): "olive",
    (EventKind.F, 1): "yellow",
    (EventKind.B, 1): "terrible",
    (EventKind.W, 1): "thread_state_iowait",
    (EventKind.BW, 1): "bad",
    (EventKind.FB, 1): "rail_load",
}


def _timeline(source: Any) -> PipelineTimeline:
    """A timeline, or a StepReport carrying one (``report.timeline``)."""
    if isinstance(source, PipelineTimeline):
        return source
    timeline = getattr(source, "timeline", None)
    if isinstance(timeline, PipelineTimeline):
        return timeline
    raise TypeError(f"need a PipelineTimeline or a StepReport with one, not {type(source).__name__}")


def _half(kind: str, mb: int, chunk: int) -> str:
    return f"{kind} mb{mb} c{chunk}"


def event_name(event: Event, two_directions: bool = False, backward_direction: int = 0) -> str:
    """``F mb12 c3``; FB: ``F mb12 c3 + B mb5 c12``; with two directions each half is
    prefixed by its arrow (``→F mb1 c0 + ←B mb5 c3``)."""
    fwd_kind = "F" if event.kind is EventKind.FB else event.kind.value
    name = _half(fwd_kind, event.microbatch, event.chunk)
    if two_directions:
        name = ARROWS[event.direction] + name
    if event.kind is EventKind.FB:
        back = _half("B", event.backward_microbatch, event.backward_chunk)
        name += " + " + (ARROWS[backward_direction] + back if two_directions else back)
    return name


def chrome_trace(timeline: PipelineTimeline | Any, *, label: str = "") -> dict:
    """The Chrome Trace Event Format object ``{"traceEvents": [...], "displayTimeUnit": "ms"}``
    of one simulated step (a :class:`PipelineTimeline`, or a StepReport that carries one).

    ``args`` of each event: kind, rank, microbatch, chunk, direction, start_s, end_s; FB pairs
    add backward_microbatch, backward_chunk, backward_direction. ``label`` names the process."""
    tl = _timeline(timeline)
    events = tl.events
    # Each micro-batch's direction, from its forward (the only place an Event states it).
    direction = {e.microbatch: e.direction for e in events if e.kind in (EventKind.F, EventKind.FB)}
    two = any(d for d in direction.values())
    num_ranks = len(tl.phases)
    trace: list[dict] = [
        {"ph": "M", "name": "process_name", "pid": 0, "tid": 0,
         "args": {"name": f"pipeline: {label}" if label else "pipeline"}},
    ]
    for r in range(num_ranks):
        trace.append({"ph": "M", "name": "thread_name", "pid": 0, "tid": r, "args": {"name": f"rank {r}"}})
        trace.append({"ph": "M", "name": "thread_sort_index", "pid": 0, "tid": r, "args": {"sort_index": r}})
    for e in events:
        ts = e.start_s * _US
        args: dict[str, Any] = {
            "kind": e.kind.value, "rank": e.rank, "microbatch": e.microbatch, "chunk": e.chunk,
            "direction": e.direction, "start_s": e.start_s, "end_s": e.end_s,
        }
        back_dir = 0
        if e.kind is EventKind.FB:
            back_dir = direction.get(e.backward_microbatch, 0)
            args.update(backward_microbatch=e.backward_microbatch, backward_chunk=e.backward_chunk,
                        backward_direction=back_dir)
        trace.append({
            "name": event_name(e, two, back_dir),
            "cat": e.kind.value,
            "ph": "X",
            "pid": 0,
            "tid": e.rank,
            "ts": ts,
            "dur": max(0.0, e.end_s * _US - ts),
            "cname": CNAMES[e.kind, e.direction],
            "args": args,
        })
    return {
        "traceEvents": trace,
        "displayTimeUnit": "ms",
        "otherData": {
            "label": label,
            "makespan_s": tl.makespan_s,
            "pipeline_ranks": num_ranks,
            "critical_rank": tl.critical_rank,
            "bubble_s_per_rank": [p.bubble_s for p in tl.phases],
        },
    }


def write_chrome_trace(timeline: PipelineTimeline | Any, path: str | Path, *, label: str = "") -> Path:
    """Write :func:`chrome_trace` as JSON to ``path`` (parent folders created); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(chrome_trace(timeline, label=label)), encoding="utf-8")
    return path
