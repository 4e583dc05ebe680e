"""Why one plan is faster than another, and how robust that is.

:func:`explain` splits the step-time difference of two simulated plans into terms that sum
exactly to it, on each plan's critical pipeline rank::

    step_time_s = compute (forward + backward, without recompute) + recompute
                + exposed TP + CP + EP + PP communication
                + other pipeline work (what the pipeline phases hold beyond the above:
                  EP all-to-all of DualPipe chunks outside overlapped pairs, exposed
                  ZeRO-3 gathers)
                + bubble (idle time of the critical rank, PP p2p delays included)
                + exposed DP/ZeRO communication + optimizer step

The pipeline phases of :class:`~planner.costmodel.report.TimeBreakdown` are a second
partition of the same step and are differenced too; memory peak and headroom are reported
beside them (they are not part of the sum).

:func:`sensitivity` re-simulates plans under perturbations (inter-node bandwidth x0.5 and
x1.5, twice the GPUs with twice the DP degree at the same global batch, twice the
micro-batch) and says whether the ranking of the plans changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from planner.costmodel.report import PHASE_LABELS, Dim, StepReport
from planner.costmodel.simulate import simulate
from planner.errors import PlannerError
from planner.presets import revalidate
from planner.specs.hardware import ClusterSpec
from planner.specs.model import ModelSpec
from planner.specs.plan import DUAL_SCHEDULES, Plan, Workload

GIB = 2**30


@dataclass(frozen=True)
class Term:
    """One additive term of the step time of both plans (seconds per step)."""

    key: str
    label: str
    a_s: float
    b_s: float
    note: str = ""
    """What in the plans drives the term (e.g. ``TP8 vs TP1 all-reduces over NVLink``)."""

    @property
    def delta_s(self) -> float:
        """B minus A."""
        return self.b_s - self.a_s

    def to_json(self, total_delta_s: float) -> dict:
        return {
            "key": self.key, "label": self.label, "a_s": self.a_s, "b_s": self.b_s, "delta_s": self.delta_s,
            "share_of_delta": _share(self.delta_s, total_delta_s), "note": self.note,
        }


def _share(delta: float, total: float) -> float | None:
    return delta / total if total != 0 else None


@dataclass(frozen=True)
class MemoryComparison:
    """Peak bytes per GPU of each plan against the GPU's capacity."""

    a_peak_bytes: float
    b_peak_bytes: float
    a_capacity_bytes: float
    b_capacity_bytes: float
    a_fits: bool
    b_fits: bool

    @property
    def a_headroom_bytes(self) -> float:
        return self.a_capacity_bytes - self.a_peak_bytes

    @property
    def b_headroom_bytes(self) -> float:
        return self.b_capacity_bytes - self.b_peak_bytes

    def to_json(self) -> dict:
        return {
            "a_peak_bytes": self.a_peak_bytes, "b_peak_bytes": self.b_peak_bytes,
            "delta_peak_bytes": self.b_peak_bytes - self.a_peak_bytes,
            "a_capacity_bytes": self.a_capacity_bytes, "b_capacity_bytes": self.b_capacity_bytes,
            "a_headroom_bytes": self.a_headroom_bytes, "b_headroom_bytes": self.b_headroom_bytes,
            "a_fits": self.a_fits, "b_fits": self.b_fits,
        }


@dataclass(frozen=True)
class Explanation:
    """Term-by-term difference of two plans' step time (B minus A)."""

    labels: tuple[str, str]
    a_step_s: float
    b_step_s: float
    terms: tuple[Term, ...]
    """Additive terms in a fixed order; their deltas sum to :attr:`delta_s`."""
    phases: tuple[Term, ...]
    """The pipeline phases (TimeBreakdown fields); their deltas also sum to :attr:`delta_s`."""
    memory: MemoryComparison
    verdict: str
    plans: tuple[Plan, Plan] | None = None

    @property
    def delta_s(self) -> float:
        return self.b_step_s - self.a_step_s

    @property
    def relative_delta(self) -> float:
        """B / A - 1."""
        return self.b_step_s / self.a_step_s - 1.0

    @property
    def slower(self) -> str | None:
        """Label of the slower plan; None when the step times are equal."""
        if self.b_step_s == self.a_step_s:
            return None
        return self.labels[1] if self.b_step_s > self.a_step_s else self.labels[0]

    @property
    def dominant(self) -> tuple[Term, ...]:
        """The terms sorted by |delta|, largest first."""
        return tuple(sorted(self.terms, key=lambda t: -abs(t.delta_s)))

    def to_json(self) -> dict:
        """The stable JSON of ``planner explain --format json``."""
        a, b = self.labels
        data = {
            "labels": list(self.labels),
            "step_time_s": {a: self.a_step_s, b: self.b_step_s},
            "delta_s": self.delta_s,
            "relative_delta": self.relative_delta,
            "slower": self.slower,
            "terms": [t.to_json(self.delta_s) for t in self.terms],
            "dominant": [t.key for t in self.dominant],
            "phases": [t.to_json(self.delta_s) for t in self.phases],
            "memory": self.memory.to_json(),
            "verdict": self.verdict,
        }
        if self.plans is not None:
            data["plans"] = {a: self.plans[0].model_dump(mode="json"), b: self.plans[1].model_dump(mode="json")}
        return data


# --- the decomposition ----------------------------------------------------------------


def _additive(r: StepReport) -> dict[str, float]:
    b, ex = r.breakdown, r.comm_exposed_s
    work = b.forward_s + b.backward_input_s + b.backward_weight_s + b.overlapped_fb_s
    tp, cp, ep, pp = (ex.get(d, 0.0) for d in (Dim.TP, Dim.CP, Dim.EP, Dim.PP))
    return {
        "compute": r.compute_s - r.recompute_s,
        "recompute": r.recompute_s,
        "tp_comm": tp,
        "cp_comm": cp,
        "ep_comm": ep,
        "pp_comm": pp,
        "other_pipeline": work - r.compute_s - tp - cp - ep,
        # The simulator folds PP p2p delays into the bubble; keep the sum exact if it
        # ever reports some as exposed.
        "bubble": b.bubble_s - pp,
        "dp_comm": b.dp_exposed_s,
        "optimizer": b.optimizer_s,
    }


_LABELS = {
    "compute": "compute (fwd + bwd)",
    "recompute": "recompute",
    "tp_comm": "exposed TP comm",
    "cp_comm": "exposed CP comm",
    "ep_comm": "exposed EP comm",
    "pp_comm": "exposed PP comm",
    "other_pipeline": "other pipeline work",
    "bubble": "pipeline bubble",
    "dp_comm": "exposed DP/ZeRO comm",
    "optimizer": "optimizer",
}


def _vs(a, b, fmt: str = "{}") -> str:
    fa, fb = fmt.format(a), fmt.format(b)
    return fa if fa == fb else f"{fa} vs {fb}"


def _link(cluster: ClusterSpec | None, group: int) -> str:
    if cluster is None or group <= 1:
        return ""
    if group <= cluster.job_domain_gpus:
        kind = cluster.node.scale_up.kind.value
        return " over NVLink" if kind.startswith("nv") else f" over {kind}"
    return " across nodes"


def _notes(pa: Plan, pb: Plan, ra: StepReport, rb: StepReport, cluster: ClusterSpec | None,
           labels: tuple[str, str] = ("A", "B")) -> dict[str, str]:
    def link_text(ga: int, gb: int) -> str:
        la, lb = _link(cluster, ga).strip(), _link(cluster, gb).strip()
        if la == lb:
            return f" {la}" if la else ""
        return f" ({la or 'no comm'} vs {lb or 'no comm'})"

    sched = _vs(pa.pipeline_schedule.value, pb.pipeline_schedule.value)
    pipe = f"{sched} {_vs(pa.pp, pb.pp, 'PP{}')}"
    if pa.vpp > 1 or pb.vpp > 1:
        pipe += f" {_vs(pa.vpp, pb.vpp, 'VPP{}')}"
    pipe += f", {_vs(ra.num_microbatches, rb.num_microbatches)} micro-batches"
    ep = f"{_vs(pa.ep, pb.ep, 'EP{}')} all-to-all{link_text(pa.ep * pa.expert_tp, pb.ep * pb.expert_tp)}"
    dual = [p.pipeline_schedule in DUAL_SCHEDULES and p.ep > 1 for p in (pa, pb)]
    # Megatron-Core's combined 1F1B pairs a non-DualPipe schedule's forwards and backwards.
    merged = [not d and p.ep > 1 and r.breakdown.overlapped_fb_s > 0 for d, p, r in zip(dual, (pa, pb), (ra, rb))]
    if any(dual):
        ep += ", hidden in DualPipe F&B pairs" + ("" if all(dual) else f" under {pa.pipeline_schedule.value if dual[0] else pb.pipeline_schedule.value}")
    if any(merged):
        ep += ", hidden in combined 1F1B pairs" + ("" if all(merged) else f" of {labels[0] if merged[0] else labels[1]}")
    compute = (f"{_vs(pa.micro_batch_size, pb.micro_batch_size, 'micro-batch {}')}, "
               f"{_vs(pa.tp, pb.tp, 'TP{}')} {_vs(pa.cp, pb.cp, 'CP{}')}")
    if any(dual) and not all(dual):
        compute += ", DualPipe gives SMs to EP communication"
    zero = _vs(int(pa.zero_stage), int(pb.zero_stage), "ZeRO-{}")
    return {
        "compute": compute,
        "recompute": f"recompute {_vs(pa.recompute.value, pb.recompute.value)}",
        "tp_comm": f"{_vs(pa.tp, pb.tp, 'TP{}')} all-reduces{link_text(pa.tp, pb.tp)}"
                   + (", sequence parallel" if pa.sequence_parallel or pb.sequence_parallel else ""),
        "cp_comm": f"{_vs(pa.cp, pb.cp, 'CP{}')} ring exchange{link_text(pa.cp * pa.tp, pb.cp * pb.tp)}",
        "ep_comm": ep,
        "pp_comm": f"{_vs(pa.pp, pb.pp, 'PP{}')} p2p",
        "other_pipeline": "EP all-to-all outside F&B pairs, exposed ZeRO-3 gathers",
        "bubble": pipe,
        "dp_comm": f"{_vs(pa.dp, pb.dp, 'DP{}')} {zero} gradient sync",
        "optimizer": f"{zero} optimizer shard",
    }


def _seconds(x: float) -> str:
    sign = "+" if x >= 0 else "\u2212"
    x = abs(x)
    if x >= 1:
        return f"{sign}{x:.2f} s"
    if x >= 1e-3:
        return f"{sign}{x * 1e3:.0f} ms"
    return f"{sign}{x * 1e6:.0f} \u00b5s"


def runner_up_words(best_s: float, runner_up_s: float) -> str:
    """How much slower the runner-up is, in words; a gap under 0.05% (printed as 0.0%) is a tie."""
    gap = runner_up_s / best_s - 1.0
    if gap < 5e-4:
        return "takes the same time (within 0.05%): the model does not tell them apart"
    return f"is {gap:.1%} slower"


def _verdict(labels: tuple[str, str], ra: StepReport, rb: StepReport, terms: Sequence[Term]) -> str:
    a, b = labels
    ta, tb = ra.step_time_s, rb.step_time_s
    parts = []
    if tb == ta:
        head = f"{a} and {b} take the same time ({ta:.3f} s per step)"
    else:
        slow, fast, sign = (b, a, 1.0) if tb > ta else (a, b, -1.0)
        ts, tf = max(ta, tb), min(ta, tb)
        head = f"{slow} is {ts / tf - 1:.1%} slower than {fast} ({ts:.3f} s vs {tf:.3f} s per step)"
        total = sum(abs(t.delta_s) for t in terms)
        covered = 0.0
        for t in sorted(terms, key=lambda t: -abs(t.delta_s)):
            if abs(t.delta_s) <= 1e-6 * tf or len(parts) == 4 or covered >= 0.9 * total:
                break
            covered += abs(t.delta_s)
            note = f" ({t.note})" if t.note else ""
            parts.append(f"{_seconds(sign * t.delta_s)} {t.label}{note}")
    text = head + (": " + ", ".join(parts) if parts else "") + "."
    mem = (f" Peak memory {ra.memory_peak_bytes / GIB:,.1f} GiB ({a}) vs {rb.memory_peak_bytes / GIB:,.1f} GiB "
           f"({b}) of {ra.memory_capacity_bytes / GIB:,.1f} GiB")
    unfit = [lab for lab, r in ((a, ra), (b, rb)) if not r.fits]
    mem += f"; {' and '.join(unfit)} does not fit." if unfit else "."
    return text + mem


def explain(
    a: StepReport, b: StepReport, labels: tuple[str, str] = ("A", "B"), *,
    plans: tuple[Plan, Plan] | None = None, cluster: ClusterSpec | None = None,
) -> Explanation:
    """Split ``b.step_time_s - a.step_time_s`` into additive terms (module docstring).

    ``plans`` (the two plans simulated) and ``cluster`` are optional; with them each term
    says what in the plans drives it (degrees, schedule, NVLink or across nodes)."""
    da, db = _additive(a), _additive(b)
    notes = _notes(plans[0], plans[1], a, b, cluster, labels) if plans is not None else {}
    terms = tuple(Term(k, _LABELS[k], da[k], db[k], notes.get(k, "")) for k in _LABELS)
    phases = tuple(
        Term(k.removesuffix("_s"), lab, getattr(a.breakdown, k), getattr(b.breakdown, k))
        for k, lab in PHASE_LABELS.items()
    )
    memory = MemoryComparison(a.memory_peak_bytes, b.memory_peak_bytes, a.memory_capacity_bytes,
                              b.memory_capacity_bytes, a.fits, b.fits)
    return Explanation(labels=tuple(labels), a_step_s=a.step_time_s, b_step_s=b.step_time_s, terms=terms,
                       phases=phases, memory=memory, verdict=_verdict(tuple(labels), a, b, terms), plans=plans)


# --- sensitivity ----------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One plan simulated under one scenario."""

    step_time_s: float | None
    """None when the perturbed plan is invalid (see ``error``)."""
    fits: bool = False
    ratio: float | None = None
    """Step time over the unperturbed step time of the same plan."""
    error: str = ""

    def to_json(self) -> dict:
        return {"step_time_s": self.step_time_s, "fits": self.fits, "ratio": self.ratio, "error": self.error}


@dataclass(frozen=True)
class Scenario:
    key: str
    description: str
    outcomes: tuple[Outcome, ...]
    """One per plan, in the order given."""
    ranking: tuple[int, ...]
    """Plan indices, fastest fitting first (unfit and invalid last)."""
    ranking_changed: bool | None = None
    """Against the baseline; None for the baseline itself or with a single plan."""

    def to_json(self) -> dict:
        return {"key": self.key, "description": self.description,
                "outcomes": [o.to_json() for o in self.outcomes], "ranking": list(self.ranking),
                "ranking_changed": self.ranking_changed}


@dataclass(frozen=True)
class Sensitivity:
    """Step-time ratios of each plan under each perturbation, and ranking changes."""

    plans: tuple[Plan, ...]
    baseline: Scenario
    scenarios: tuple[Scenario, ...] = field(default_factory=tuple)

    def scenario(self, key: str) -> Scenario:
        return next(s for s in self.scenarios if s.key == key)

    def to_json(self) -> dict:
        return {"plans": [p.model_dump(mode="json") for p in self.plans], "baseline": self.baseline.to_json(),
                "scenarios": [s.to_json() for s in self.scenarios]}


def scale_inter_node_bandwidth(cluster: ClusterSpec, factor: float) -> ClusterSpec:
    """``cluster`` with NIC (and cross-zone) bandwidth times ``factor``."""
    node = revalidate(cluster.node, nic_bandwidth_bytes_per_s=cluster.node.nic_bandwidth_bytes_per_s * factor)
    fabric = cluster.fabric
    changes = {k: getattr(fabric, k) * factor
               for k in ("cross_zone_bandwidth_bytes_per_s", "cross_zone_flow_bandwidth_bytes_per_s")
               if getattr(fabric, k) is not None}
    if changes:
        fabric = revalidate(fabric, **changes)
    return cluster.model_copy(update={"node": node, "fabric": fabric})


def _ranking(outcomes: Sequence[Outcome]) -> tuple[int, ...]:
    def key(i: int):
        o = outcomes[i]
        return (o.step_time_s is None, not o.fits, o.step_time_s or 0.0, i)

    return tuple(sorted(range(len(outcomes)), key=key))


def _run(model, cluster, plan, workload, base: float | None) -> Outcome:
    try:
        r = simulate(model, cluster, plan, workload)
    except PlannerError as exc:
        return Outcome(step_time_s=None, error=str(exc))
    ratio = r.step_time_s / base if base else None
    return Outcome(step_time_s=r.step_time_s, fits=r.fits, ratio=ratio)


def sensitivity(
    model: ModelSpec, cluster: ClusterSpec, plan: Plan, workload: Workload, plans: Sequence[Plan] = (),
) -> Sensitivity:
    """Re-simulate ``plan`` (and ``plans``) under each perturbation.

    Scenarios: ``bw_x0.5`` and ``bw_x1.5`` (inter-node NIC bandwidth), ``gpus_x2`` (twice
    the GPUs, dp doubled, global batch unchanged) and ``micro_batch_x2``. A perturbed plan
    the model rejects (e.g. the global batch no longer divides) has ``step_time_s`` None
    and the reason in ``error``."""
    all_plans = (plan, *plans)
    base = tuple(_run(model, cluster, p, workload, None) for p in all_plans)
    base = tuple(Outcome(o.step_time_s, o.fits, 1.0 if o.step_time_s else None, o.error) for o in base)
    base_rank = _ranking(base)
    multi = len(all_plans) > 1

    def scenario(key: str, description: str, cluster_x: ClusterSpec | None, change) -> Scenario:
        outcomes = []
        for p, b in zip(all_plans, base):
            if cluster_x is None:
                outcomes.append(Outcome(step_time_s=None, error=description))
                continue
            try:
                px = change(p)
            except PlannerError as exc:
                outcomes.append(Outcome(step_time_s=None, error=str(exc)))
                continue
            outcomes.append(_run(model, cluster_x, px, workload, b.step_time_s))
        rank = _ranking(outcomes)
        return Scenario(key, description, tuple(outcomes), rank, (rank != base_rank) if multi else None)

    try:
        doubled = cluster.with_num_gpus(2 * cluster.num_gpus)
    except PlannerError:
        doubled = None
    scenarios = (
        scenario("bw_x0.5", "inter-node bandwidth x0.5", scale_inter_node_bandwidth(cluster, 0.5), lambda p: p),
        scenario("bw_x1.5", "inter-node bandwidth x1.5", scale_inter_node_bandwidth(cluster, 1.5), lambda p: p),
        scenario("gpus_x2", "GPUs x2 (dp x2, global batch fixed)", doubled, lambda p: revalidate(p, dp=2 * p.dp)),
        scenario("micro_batch_x2", "micro-batch x2", cluster,
                 lambda p: revalidate(p, micro_batch_size=2 * p.micro_batch_size)),
    )
    return Sensitivity(plans=all_plans, baseline=Scenario("baseline", "as given", base, base_rank), scenarios=scenarios)
