"""Validation cases: read a case file and turn one row into validated specs.

A case file is a CSV in the schema of ``shared/validation/README.md``: one published
training run per row (architecture, hardware, parallel configuration, measured
``step_time_s``). Any file in that schema is accepted: extra columns are ignored, column
order is free, and a schema column that is absent reads as empty. Only the columns without
which no row can be simulated are required (:data:`REQUIRED_COLUMNS`); ``step_time_s`` is
not, so a file without targets can still be predicted.

An empty cell means unknown. :func:`case_inputs` then takes the default below, the one a
user of the planner gets, and records it in ``CaseInputs.notes`` (which end up in the
output ``message``). The rules are the same for every row; no row is special-cased.

=====================  ===================================================================
Empty cell             Default
=====================  ===================================================================
arch                   ``moe`` if ``moe_experts`` is set, else ``dense``
attention              ``mla`` if ``mla_kv_lora_rank`` is set, ``gqa`` if kv_heads < heads,
                       else ``mha``
kv_heads               = heads (MHA); GQA: a shipped model preset's of the same layers,
                       hidden and heads, else the commonest kv_heads of the shipped GQA
                       presets that divides heads and is a multiple of tp (8)
ffn_act                ``swiglu``
ffn_hidden             4 * hidden for ``gelu`` (GPT-2/3, BLOOM, Megatron's default);
                       required for ``swiglu`` dense FFNs (no safe default)
moe_shared_experts,    0
moe_dense_layers,
mtp_depth
gpus_per_node,         the cluster preset's
nics_per_node, nic_gbps
intra_node             the one preset for the GPU (error when there are several)
precision              ``bf16``
(no column)            the recipe (:func:`~planner.validation.reconcile.recipe`): Adam
                       moments fp32, MoE dispatch bf16, parameter all-gather overlapped
                       with the next forward from 2024 (Megatron-Core's defaults); fp8
                       rows but FSDP reduce gradients in bf16 (NeMo and Megatron-Bridge
                       FP8 recipes); a ``dualpipe`` row in fp8 takes DeepSeek-V3's recipe
                       (BF16 moments, FP8 dispatch, V3 §3.3.3; FP32 gradients, no gather
                       overlap); MoE dispatcher (ep > 1): DeepEP when the notes name
                       DeepEP/HybridEP, the routing is node-limited, or the GPUs share a
                       multi-node NVLink domain, else Megatron-Core's ``alltoall``
                       (:func:`~planner.validation.reconcile.moe_dispatcher`)
moe_routing            ``real``: the router's own imbalance (Megatron-Core's
                       ``moe_router_force_load_balancing`` is off unless a run forces balance)
tp, pp, cp             1
dp                     num_gpus / (tp * pp * cp)
ep                     1
etp                    = tp (Megatron's default), MoE only; when ep * tp does not divide
                       tp * cp * dp, the largest divisor of tp that does
zero                   1: a sharded optimizer (Megatron distributed optimizer, DeepSpeed
                       ZeRO-1) moves the same bytes as a plain all-reduce (reduce-scatter +
                       all-gather) and is what current frameworks run
sequence_parallel      1 when tp > 1 and either the model is MoE with ep > 1 (Megatron-Core
                       requires it) or the ``source`` cites a year from 2023 (current recipes
                       pair it with tensor parallelism); otherwise 0 (Megatron's flag default)
micro_batch            1 (Megatron's default); on a TorchTitan pipeline row (``source`` or
                       ``notes`` name TorchTitan) one micro-batch per pipeline stage, its
                       default (:func:`~planner.validation.reconcile.torchtitan_microbatch`)
recompute              ``full`` when the ``source`` cites a year before 2023 (before selective
                       recomputation, Korthikanti et al. 2022, the practice of that era);
                       otherwise the least of none, selective, full that fits in memory: every
                       candidate is in ``CaseInputs.recompute_candidates`` and
                       :func:`planner.validation.run.run_cases` keeps the first that is not OOM
recompute modules      (no column) ``selective`` tries the module sets of
                       :func:`planner.validation.reconcile.selective_ladder` in order (the
                       default first; on a TorchTitan row its op-level SAC before them) and
                       keeps the first that is not OOM
activation offloading  (no column) on a NeMo or Megatron-Bridge row at pp 1 whose
                       ``recompute`` is empty and ``none`` does not fit: the fewest offloaded
                       blocks that fit (``cpu_offloading_num_layers``) when faster than the
                       recompute that fits (:func:`~planner.validation.reconcile.offload_candidate`)
attention kernel       (no column) ``unfused`` when the ``source`` cites a year before 2023,
                       else ``flash``: FlashAttention (Dao et al., arXiv 2205.14135, May
                       2022) reached Megatron-LM as ``--use-flash-attn`` in 2023; runs
                       published earlier materialised the score matrix (Korthikanti et al.
                       2022 §4.1 store its 5as^2b bytes). No year: ``flash``. A TorchTitan
                       row (through 2025) and a NeMo row up to the 24.07 container run at the
                       GPU's FlashAttention-2 rates where its preset sets them (PyTorch SDPA's
                       flash backend; NeMo's launcher set ``NVTE_FUSED_ATTN=0``); a row whose
                       notes say ``attn_impl triton`` (MosaicML's MPT) at FlashAttention's Triton
                       kernel's (FA2 paper §4.1 ratios)
                       (:func:`~planner.validation.reconcile.attention_rates`)
pp_schedule            pp = 1: irrelevant. pp > 1: ``interleaved`` if vpp > 1, else ``1f1b``
                       (Megatron without virtual stages, DeepSpeed's pipeline engine); the
                       same for ``none`` on a pp > 1 row
vpp                    1, unless the schedule is ``interleaved`` ("interleaved with an
                       unpublished count"): the smallest count >= 2 that divides the layers
                       per stage (layers // pp), i.e. the mildest even interleaving; on a
                       TorchTitan row 2, its default stages per rank
pipeline p2p           (no column) pp > 1 with ``1f1b`` and DeepSpeed named in ``source`` or
                       ``notes`` (Megatron-DeepSpeed, BLOOM, MT-NLG): DeepSpeed's blocking
                       send/recv of the whole activation; else Megatron's
                       (:func:`~planner.validation.reconcile.pipeline_p2p`)
tp comm overlap        (no column) on for a NeMo or Megatron-Bridge row (``source``; not NeMo
                       AutoModel) with tp > 1 and sequence parallelism: their performance
                       recipes run Transformer Engine's userbuffers overlap; else off
                       (Megatron-LM's default) (:func:`~planner.validation.reconcile.tp_comm_overlap`)
fp8 implementation     (no column) an fp8 TorchTitan row: torchao's float8 (tensorwise dynamic
                       scaling); else Transformer Engine's
                       (:func:`~planner.validation.reconcile.fp8_implementation`)
=====================  ===================================================================

Cells that disagree are resolved the same way every time and noted: with dp given and
tp * pp * cp * dp != num_gpus the plan's GPUs are simulated; ``mha`` with kv_heads < heads is
simulated with those kv_heads (GQA); pp_schedule on a pp = 1 row is ignored; ``1f1b`` with
vpp > 1 is interleaved and ``interleaved`` with vpp 1 is 1f1b (vpp decides), a vpp on
dualpipe / zero-bubble is ignored; a global_batch that is not a multiple of dp * micro_batch
is simulated as ceil(global_batch / (dp * micro_batch)) micro-batches per replica (the
slowest replica's share); a ``gelu`` row with ``mla`` has no linear biases.

Model style by FFN activation: ``gelu`` rows are GPT-style (LayerNorm, biases on every
linear layer, learned absolute positions, output head tied to the embedding: Megatron's GPT
defaults and GPT-2/3); ``swiglu`` rows are Llama/DeepSeek-style (RMSNorm, no biases, RoPE,
untied head). MoE rows follow DeepSeekMoE: each shared expert has the routed experts'
intermediate size, softmax router, no group-limited routing. Fields the schema cannot
express (norm, biases, tying, QK-norm, expert groups, router score) are then taken from a
shipped model preset whose architecture matches the row on every column the schema has
(layers, widths, heads, FFN, MLA and MoE shape; vocab aside, since it is often padded): a
DeepSeek-V3 row gets V3's 8 expert groups, 4-node limit and sigmoid router, and says so.

Cluster: the shipped cluster preset with the row's ``gpu`` and ``intra_node``, resized to
the row (:mod:`planner.validation.clusters`); no matching preset is an
:class:`~planner.errors.UnsupportedError`, never a guess.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planner.errors import SpecError
from planner.presets import revalidate, validate_spec
from planner.specs import (
    AttentionKernel,
    ClusterSpec,
    ModelSpec,
    Plan,
    Precision,
    Recompute,
    RecomputeModule,
    Workload,
    ZeroStage,
)
from planner.specs.compat import check_plan
from planner.specs.plan import RECOMPUTE_ORDER  # re-exported: the order tried for an empty recompute cell
from planner.validation.case_model import _default, case_model
from planner.validation.clusters import case_cluster
from planner.validation.reconcile import (
    attention_rates, cross_entropy, default_etp, ep_comm_overlap, fp8_implementation, moe_dispatcher, offload_candidate,
    pipeline_p2p, recipe, schedule_of,
    selective_ladder, torchtitan_microbatch, torchtitan_row, tp_comm_overlap, whole_micro_batches,
)

REQUIRED_COLUMNS = (
    "case_id", "layers", "hidden", "heads", "vocab", "seq_len", "gpu", "num_gpus", "global_batch",
)
"""Columns a case file must have; every other schema column may be absent (= empty)."""

# RECOMPUTE_ORDER (planner.specs.plan) is tried in order when ``recompute`` is empty: the
# least recomputation that fits.


@dataclass(frozen=True)
class CaseInputs:
    """The specs of one case, and the defaults taken for its empty cells."""

    model: ModelSpec
    cluster: ClusterSpec
    plan: Plan
    workload: Workload
    notes: list[str] = field(default_factory=list)
    """One line per default or substitution, in words."""
    recompute_candidates: tuple[Recompute, ...] = ()
    """Recompute settings to try in order (several only when the cell was empty)."""
    selective_sets: tuple[tuple[RecomputeModule, ...] | None, ...] = (None,)
    """Module sets a ``selective`` candidate tries in order
    (:func:`~planner.validation.reconcile.selective_ladder`)."""
    offload: bool = False
    """Activation offloading is a candidate beside recompute
    (:func:`~planner.validation.reconcile.offload_candidate`)."""


class Row:
    """Typed access to one CSV row; an empty or absent cell is None."""

    def __init__(self, raw: dict[str | None, Any]):
        self.cells = {
            key.strip(): str(value).strip()
            for key, value in raw.items()
            if key is not None and value is not None
        }

    def text(self, column: str) -> str | None:
        return self.cells.get(column) or None

    def number(self, column: str) -> float | None:
        value = self.text(column)
        if value is None:
            return None
        try:
            return float(value)
        except ValueError:
            raise SpecError(column, value, "must be a number") from None

    def int(self, column: str) -> int | None:
        value = self.number(column)
        if value is None:
            return None
        if not value.is_integer():
            raise SpecError(column, self.text(column), "must be a whole number")
        return int(value)

    def need(self, column: str) -> int:
        value = self.int(column)
        if value is None:
            raise SpecError(column, None, "is required; the cell is empty")
        return value

    def choice(self, column: str, enum: type, default: Any = None) -> Any:
        value = self.text(column)
        if value is None:
            return default
        try:
            return enum(value.lower())
        except ValueError:
            allowed = ", ".join(str(m.value) for m in enum)
            raise SpecError(column, value, f"must be one of {allowed}") from None

    def flag(self, column: str) -> bool | None:
        value = self.text(column)
        if value is None:
            return None
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
        raise SpecError(column, value, "must be 0 or 1")


def read_cases(path: str | Path) -> list[dict[str, str]]:
    """The rows of a case file, each a dict keyed by column; SpecError names the problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SpecError("cases", str(path), "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError("cases", str(path), f"cannot be read ({exc})") from None
    try:
        reader = csv.DictReader(io.StringIO(text))
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in REQUIRED_COLUMNS if name not in header]
        if missing:
            raise SpecError("cases", str(path), f"missing required column(s): {', '.join(missing)}")
        return [Row(raw).cells for raw in reader]
    except csv.Error as exc:
        raise SpecError("cases", str(path), f"is not a valid CSV ({exc})") from None


def case_inputs(row: dict[str, Any]) -> CaseInputs:
    """Validated specs for one case-file row; empty cells take the module's defaults."""
    cells = Row(row)
    notes: list[str] = []
    model = case_model(cells, notes)
    workload = _workload(cells, notes)
    plan, candidates = _plan(cells, model, notes)
    workload = whole_micro_batches(workload, plan, notes)
    workload = revalidate(workload, pipeline_p2p=pipeline_p2p(cells, plan, notes),
                          cross_entropy=cross_entropy(cells, notes),
                          fp8_implementation=fp8_implementation(cells, workload, notes),
                          tp_comm_overlap=tp_comm_overlap(cells, plan, notes))
    workload = revalidate(workload, ep_comm_overlap=ep_comm_overlap(cells, model, plan, workload, notes))
    check_plan(model, workload, plan)
    cluster = attention_rates(cells, case_cluster(cells, plan.world_size, notes), _source_year(cells), notes)
    if model.moe is not None and plan.ep > 1:
        workload = revalidate(workload, moe_dispatcher=moe_dispatcher(cells, model, cluster, notes))
    sets = selective_ladder(model, plan, torchtitan_row(cells))
    if Recompute.SELECTIVE in candidates and sets[0] == (RecomputeModule.OP_SAC,):
        notes.append("recompute selective on a TorchTitan row: op-level SAC first (op_sac, its "
                     "selective_ac_option default 'op': every second Linear and the elementwise ops "
                     "recomputed, attention kept)")
    return CaseInputs(model, cluster, plan, workload, notes, candidates, sets,
                      offload_candidate(cells, plan, candidates, cluster))


# --- workload and plan ----------------------------------------------------------------


def _workload(cells: Row, notes: list[str]) -> Workload:
    precision = cells.choice("precision", Precision)
    if precision is None:
        precision = Precision.BF16
        notes.append("precision empty: bf16")
    fields = {"global_batch_size": cells.need("global_batch"), "seq_length": cells.need("seq_len"),
              "precision": precision}
    fields.update(recipe(cells, precision, _source_year(cells), notes))
    return validate_spec(Workload, fields, origin=cells.text("case_id"))


def _plan(cells: Row, model: ModelSpec, notes: list[str]) -> tuple[Plan, tuple[Recompute, ...]]:
    tp = _default(cells, "tp", 1, notes)
    pp = _default(cells, "pp", 1, notes)
    cp = _default(cells, "cp", 1, notes)
    num_gpus = cells.need("num_gpus")
    dp = cells.int("dp")
    if dp is None:
        if num_gpus % (tp * pp * cp):
            raise SpecError("num_gpus", num_gpus, f"must be a multiple of tp * pp * cp ({tp * pp * cp})")
        dp = num_gpus // (tp * pp * cp)
        notes.append(f"dp empty: {dp} = num_gpus / (tp * pp * cp)")
    elif tp * pp * cp * dp != num_gpus:
        notes.append(f"num_gpus {num_gpus} != tp * pp * cp * dp ({tp * pp * cp * dp}): simulated the plan's GPUs")
    schedule, vpp = schedule_of(cells, model, pp, notes)
    ep = _default(cells, "ep", 1, notes, quiet=model.moe is None)
    recompute = cells.choice("recompute", Recompute)
    year = _source_year(cells)
    if recompute is None and year is not None and year < SELECTIVE_RECOMPUTE_YEAR:
        candidates = (Recompute.FULL,)
        notes.append(f"recompute empty: full (source year {year} < {SELECTIVE_RECOMPUTE_YEAR}, before selective recomputation)")
    elif recompute is None:
        candidates = RECOMPUTE_ORDER
        notes.append("recompute empty: the least of none / selective / full that fits in memory")
    else:
        candidates = (recompute,)
    plan: dict[str, Any] = {
        "tp": tp,
        "pp": pp,
        "vpp": vpp,
        "cp": cp,
        "dp": dp,
        "ep": ep,
        "zero_stage": ZeroStage(_default(cells, "zero", 1, notes)),
        "sequence_parallel": _sequence_parallel(cells, tp, ep, model.moe is not None, notes),
        "recompute": candidates[0],
        "micro_batch_size": _micro_batch(cells, pp, vpp, dp, notes),
        "pipeline_schedule": schedule,
        "attention_kernel": _attention_kernel(cells, notes),
    }
    etp = cells.int("etp")
    if model.moe is not None:
        if etp is None:
            etp = default_etp(tp, cp * dp, ep, notes)
        if etp is not None:
            plan["etp"] = etp
    return validate_spec(Plan, plan, origin=cells.text("case_id")), candidates


SEQUENCE_PARALLEL_YEAR = 2023
"""First year in which an unstated sequence parallelism is assumed on wherever tp > 1:
Korthikanti et al. 2022 (arXiv 2205.05198) introduced it with selective recomputation, and
current recipes turn it on with tensor parallelism (NeMo Megatron-Bridge
``recipes.llama.llama3_70b_16k.model_config``: tp 8, ``sequence_parallelism=True``).
Megatron-Core requires it for MoE with both tp > 1 and ep > 1 (megatron/core/transformer/moe
README, "Parallelism": "When using MoE with expert parallelism and tensor parallelism,
sequence parallelism must be used"), whatever the year."""


FLASH_ATTENTION_YEAR = 2023
"""First year in which published Megatron-style runs can be assumed to use FlashAttention
(Megatron-LM gained ``--use-flash-attn`` in 2023; Dao et al. 2022 appeared May 2022)."""


SELECTIVE_RECOMPUTE_YEAR = 2023
"""First year in which an unstated recomputation is not assumed to be full: selective
recomputation (Korthikanti et al., arXiv 2205.05198, May 2022) shipped in Megatron-LM during
2022; before it, runs that fit large models recomputed whole layers (Megatron-LM's
``--checkpoint-activations``; Narayanan et al. 2021 §5 and MT-NLG (Smith et al. 2022 §3)
both train with activation recomputation)."""


def _micro_batch(cells: Row, pp: int, vpp: int, dp: int, notes: list[str]) -> int:
    """The row's micro_batch; empty: TorchTitan's default on a TorchTitan pipeline row
    (:func:`~planner.validation.reconcile.torchtitan_microbatch`), else 1."""
    if cells.int("micro_batch") is None and pp > 1 and torchtitan_row(cells):
        micro = torchtitan_microbatch(cells.need("global_batch") // dp, pp, vpp, notes)
        if micro is not None:
            return micro
    return _default(cells, "micro_batch", 1, notes)


def _source_year(cells: Row) -> int | None:
    """The latest year (19xx/20xx) that the ``source`` citation names, if any."""
    years = [int(y) for y in re.findall(r"\b(?:19|20)\d{2}\b", cells.text("source") or "")]
    return max(years) if years else None


def _attention_kernel(cells: Row, notes: list[str]) -> AttentionKernel:
    year = _source_year(cells)
    if year is not None and year < FLASH_ATTENTION_YEAR:
        notes.append(f"attention kernel: unfused (source year {year} < {FLASH_ATTENTION_YEAR}, before FlashAttention)")
        return AttentionKernel.UNFUSED
    return AttentionKernel.FLASH


def _sequence_parallel(cells: Row, tp: int, ep: int, moe: bool, notes: list[str]) -> bool:
    given = cells.flag("sequence_parallel")
    if given is not None:
        return given
    if tp == 1:
        return False
    if moe and ep > 1:
        notes.append("sequence_parallel empty: 1 (Megatron-Core requires it for MoE with tp > 1 and ep > 1)")
        return True
    year = _source_year(cells)
    if year is not None and year >= SEQUENCE_PARALLEL_YEAR:
        notes.append(f"sequence_parallel empty: 1 (source year {year} >= {SEQUENCE_PARALLEL_YEAR}, with tp > 1)")
        return True
    notes.append("sequence_parallel empty: 0 (Megatron's flag default)")
    return False
