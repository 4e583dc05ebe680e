"""Train the reference model under a :class:`~planner.specs.Plan`, one process per rank.

:func:`train` spawns ``plan.world_size`` processes (torch.multiprocessing, gloo on CPU,
float32). Each rank builds the *single-process* model from the same seed, then
:func:`parallelize` transforms it for the plan, in this order:

1. pipeline parallelism (:mod:`.pipeline`): keep only this rank's stage (the simulator's
   layer split; embedding first, head and MTP last, with a copy of the embedding there);
2. tensor parallelism (:mod:`.tensor`): attention (MHA/GQA or MLA), dense FFN and shared
   experts sharded over tp;
3. expert parallelism (:mod:`.expert`): routed experts split over ep with all-to-all
   routing, their tokens split over tp (etp = 1: routed experts are never tp-sharded);
4. data parallelism (:mod:`.data`) lives in the training step, not in the modules: the
   global batch is split over dp, gradients are averaged after backward, and the optimizer
   is Adam or ZeRO-1 Adam.

A training step: the replica's batch is cut into micro-batches of ``plan.micro_batch_size``
sequences, run under 1F1B (also when pp = 1: plain gradient accumulation), the embedding
gradient is summed over the first and last stage, gradients are averaged over dp, the
optimizer steps, then every gate of the stage updates its aux-loss-free bias from the
global expert load (V3 §2.1.2, gamma = 0.001); under pp each stage updates its own layers'
gates. The same loss, gradients and updates as :func:`reference_train`, a plain
single-process loop on the whole batch. :func:`train` returns the per-step global loss and
the first step's gradients reassembled into the single model's shapes and names, so the
two can be compared tensor by tensor, plus each step's wall time and peak RSS.

Not implemented: context parallelism, sequence parallelism, expert tp (etp > 1), ZeRO-2/3,
interleaved/zero-bubble/DualPipe schedules, activation recomputation;
:func:`check_supported` says so before any process starts.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from planner.errors import SpecError, UnsupportedError
from planner.hwmodels.placement import rank_layout
from planner.model.deepseek import MoE, Transformer
from planner.model.parallel.data import ZeroAdam, all_reduce_mean, synchronize_gradients
from planner.model.parallel.expert import ExpertParallelMoE, apply_expert_parallel, routed_expert_parameters
from planner.model.parallel.groups import Group, ProcessGroups, build_groups
from planner.model.parallel.pipeline import PipelineStage, split_model, sync_embedding_gradients
from planner.model.parallel.tensor import apply_tensor_parallel, tp_shard_dims
from planner.specs.compat import check_plan
from planner.specs.model import ModelSpec, PositionEmbedding
from planner.specs.plan import PipelineSchedule, Plan, Workload, ZeroStage

DEFAULT_START_METHOD = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
BIAS_UPDATE_SPEED = 1e-3
"""gamma of the aux-loss-free balancing (V3 §4.2: 0.001)."""


@dataclass(frozen=True)
class TrainConfig:
    """What a run trains on; identical for the single-process and the parallel run."""

    steps: int = 3
    seed: int = 0
    """Seed of the model initialisation; the data uses seed + 1 + step."""
    batch: int = 4
    """Sequences per optimizer step (global batch), split over dp."""
    seq_len: int = 16
    lr: float = 1e-3


@dataclass(frozen=True)
class RunResult:
    losses: list[float]
    """Mean loss over the global batch, per optimizer step (before that step's update)."""
    grads: dict[str, Tensor]
    """Gradients of the first step, full shapes, names of the single-process model."""
    optimizer_state_numel: list[int]
    """Per rank: parameter elements whose Adam state the rank keeps."""
    step_times_s: list[float] = field(default_factory=list)
    """Per step: wall time of the step (forward, backward, gradient sync, optimizer, bias
    update) on the slowest rank, seconds. The first step includes warm-up."""
    peak_rss_bytes: list[int] = field(default_factory=list)
    """Per step: the largest resident set size any rank reached during that step, bytes
    (Linux VmHWM, reset at each step start; elsewhere the process's ru_maxrss so far)."""


class RuntimeUnsupportedError(UnsupportedError, NotImplementedError):
    """A plan feature the parallel runtime does not implement (also a NotImplementedError,
    which is what callers caught before)."""


def synthetic_batch(spec: ModelSpec, config: TrainConfig, step: int) -> tuple[Tensor, Tensor]:
    """Deterministic random tokens [batch, seq_len] and their next tokens."""
    g = torch.Generator().manual_seed(config.seed + 1 + step)
    seq = torch.randint(0, spec.vocab_size, (config.batch, config.seq_len + 1), generator=g)
    return seq[:, :-1], seq[:, 1:]


def build_model(spec: ModelSpec, seed: int) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(spec)


def _moe_layers(model: nn.Module) -> list[MoE | ExpertParallelMoE]:
    return [m for m in model.modules() if isinstance(m, (MoE, ExpertParallelMoE))]


def _balance_experts(model: nn.Module, dp: Group | None) -> None:
    """Update every gate's bias from the load summed over the global batch, then reset it.
    (Every tp rank counts all of its replica's tokens, so the dp sum is the global load.)"""
    for moe in _moe_layers(model):
        if dp is not None:
            all_reduce_mean([moe.tokens_per_expert], dp, 1)
        moe.gate.update_bias(moe.tokens_per_expert, BIAS_UPDATE_SPEED)
        moe.tokens_per_expert.zero_()


class _StepMeter:
    """Wall time and peak RSS of one step of this process."""

    def __init__(self):
        self.start = 0.0

    def __enter__(self):
        try:  # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.time_s = time.perf_counter() - self.start
        self.peak_rss_bytes = _peak_rss_bytes()


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if os.uname().sysname == "Darwin" else 1024  # macOS reports bytes, Linux KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def reference_train(spec: ModelSpec, config: TrainConfig) -> RunResult:
    """The single-process run every plan must reproduce."""
    model = build_model(spec, config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    losses, grads, times, peaks = [], {}, [], []
    for step in range(config.steps):
        with _StepMeter() as meter:
            loss = model.loss(*synthetic_batch(spec, config, step))
            loss.backward()
            if step == 0:
                grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            losses.append(loss.item())
            optimizer.step()
            optimizer.zero_grad()
            _balance_experts(model, None)
        times.append(meter.time_s)
        peaks.append(meter.peak_rss_bytes)
    numel = sum(p.numel() for p in model.parameters())
    return RunResult(losses, grads, [numel], times, peaks)


def _unsupported(field_name: str, value, what: str, spec: ModelSpec) -> RuntimeUnsupportedError:
    # "<what>: not implemented" is the prefix planner.cli.launch shows.
    return RuntimeUnsupportedError(
        f"{field_name} = {value} ({what}): not implemented by planner.model.parallel ({spec.name})"
    )


def check_supported(plan: Plan, spec: ModelSpec, config: TrainConfig) -> None:
    """Stop before any process starts on what this runtime cannot run: RuntimeUnsupportedError
    (an UnsupportedError and a NotImplementedError) for features it lacks, SpecError (a
    ValueError) for a plan that does not fit the model or the batch."""
    moe = spec.moe is not None
    etp_rule = "expert tensor parallelism, etp > 1; etp unset means etp = tp, set etp = 1"
    missing = [
        ("plan.cp", plan.cp, "context parallelism, cp > 1", plan.cp > 1),
        ("plan.vpp", plan.vpp, "virtual pipeline stages, vpp > 1", plan.vpp > 1),
        (
            "plan.pipeline_schedule", plan.pipeline_schedule.value, "only 1f1b runs with pp > 1",
            plan.pp > 1 and plan.pipeline_schedule is not PipelineSchedule.ONE_F_ONE_B,
        ),
        ("plan.sequence_parallel", True, "sequence parallelism", plan.sequence_parallel and plan.tp > 1),
        ("plan.zero_stage", int(plan.zero_stage), "ZeRO stage 2 or 3", plan.zero_stage > ZeroStage.OPTIMIZER),
        ("plan.etp", plan.expert_tp, etp_rule, moe and plan.expert_tp > 1),
        ("plan.recompute", plan.recompute.value, "activation recomputation", plan.recompute != "none"),
        ("plan.cpu_offloading_num_layers", plan.cpu_offloading_num_layers, "activation offloading",
         plan.cpu_offloading_num_layers > 0),
    ]
    for field_name, value, what, hit in missing:
        if hit:
            raise _unsupported(field_name, value, what, spec)
    check_plan(spec, Workload(global_batch_size=config.batch, seq_length=config.seq_len), plan)
    if moe and spec.moe.num_shared_experts and spec.moe.shared_ffn_hidden_size % plan.tp:
        size = spec.moe.shared_ffn_hidden_size
        raise SpecError("plan.tp", plan.tp, f"must divide the shared experts' ffn size ({size})")
    if spec.position_embedding is PositionEmbedding.LEARNED and config.seq_len > spec.default_seq_length:
        limit = spec.default_seq_length
        rule = f"must be <= default_seq_length ({limit}) with learned positions"
        raise SpecError("seq_len", config.seq_len, rule)


def parallelize(model: Transformer, plan: Plan, groups: ProcessGroups) -> Transformer:
    """Cut a built single-process model to this rank's stage, then apply tp and ep (in
    place), as the module says."""
    split_model(model, plan, groups.stage)
    apply_tensor_parallel(model, groups.tp)
    apply_expert_parallel(model, groups.ep, groups.tp)
    return model


def _optimizers(named, expert_names: set[str], plan: Plan, groups: ProcessGroups, lr: float):
    """Adam over every parameter, or ZeRO-1: dense parameters sharded over dp, routed
    experts over edp. Also returns the number of elements whose Adam state this rank keeps."""
    if plan.zero_stage < ZeroStage.OPTIMIZER:
        return [torch.optim.Adam([p for _, p in named], lr=lr)], sum(p.numel() for _, p in named)
    dense = [p for n, p in named if n not in expert_names]
    experts = [p for n, p in named if n in expert_names]
    optimizers = [ZeroAdam(dense, groups.dp, lr=lr), ZeroAdam(experts, groups.edp, lr=lr)]
    return optimizers, sum(o.state_numel for o in optimizers)


class RankTrainer:
    """One rank's share of a run: its stage of the model under ``plan``, its optimizers and
    its rows of the global batch. :meth:`step` is one optimizer step; the process group must
    be initialised and ``groups`` built (:func:`build_groups`) on every rank."""

    def __init__(self, plan: Plan, spec: ModelSpec, config: TrainConfig, groups: ProcessGroups):
        self.plan, self.groups = plan, groups
        self.model = parallelize(build_model(spec, config.seed), plan, groups)
        self.named = list(self.model.named_parameters())
        self.expert_names = routed_expert_parameters(self.model)
        self.optimizers, self.state_numel = _optimizers(
            self.named, self.expert_names, plan, groups, config.lr
        )
        self.stage = PipelineStage(self.model, groups, plan.micro_batch_size, config.seq_len)
        self.local_batch = config.batch // plan.dp
        self.first_row = groups.dp.rank * self.local_batch

    def step(
        self, tokens: Tensor, targets: Tensor, grads_out: dict[str, Tensor] | None = None
    ) -> float | None:
        """Train on the global batch ``tokens``/``targets`` [batch, seq_len] (this rank takes
        its replica's rows); fill ``grads_out`` with the synchronised gradients if given.
        Returns the loss over the global batch on the last pipeline stage, else None."""
        groups, mbs = self.groups, self.plan.micro_batch_size
        rows = range(self.first_row, self.first_row + self.local_batch, mbs)
        loss = self.stage.train_step([(tokens[r : r + mbs], targets[r : r + mbs]) for r in rows])
        sync_embedding_gradients(self.model, groups.embed)
        synchronize_gradients(self.named, self.expert_names, groups.dp, groups.edp)
        if grads_out is not None:
            grads_out.update({n: p.grad.clone() for n, p in self.named})
        if loss is not None:  # last stage: mean over the replicas
            all_reduce_mean([loss], groups.dp, groups.dp.size)
        for optimizer in self.optimizers:
            optimizer.step()
            optimizer.zero_grad()
        _balance_experts(self.model, groups.dp)
        return None if loss is None else loss.item()


def _worker(rank: int, plan: Plan, spec: ModelSpec, config: TrainConfig, run_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{run_dir}/rendezvous", rank=rank, world_size=plan.world_size
    )
    try:
        trainer = RankTrainer(plan, spec, config, build_groups(plan))
        losses, grads, times, peaks = [], {}, [], []
        for step in range(config.steps):
            with _StepMeter() as meter:
                tokens, targets = synthetic_batch(spec, config, step)
                loss = trainer.step(tokens, targets, grads_out=grads if step == 0 else None)
            if loss is not None:
                losses.append(loss)
            times.append(meter.time_s)
            peaks.append(meter.peak_rss_bytes)
        result = {
            "losses": losses, "grads": grads, "shard_dims": tp_shard_dims(trainer.model),
            "state_numel": trainer.state_numel, "times": times, "peaks": peaks,
        }
        torch.save(result, os.path.join(run_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _merge(plan: Plan, per_rank: list[dict]) -> dict[str, Tensor]:
    """Whole gradients from the ranks' pieces: a tp-sharded parameter is concatenated in tp
    order over the tp group of the first rank that holds it (its pipeline stage), each
    routed expert comes from a rank that owns it, the rest from the first rank that holds
    it (after the dp and embedding reductions every copy holds the same values)."""
    layout = rank_layout(plan)
    grads: dict[str, Tensor] = {}
    for rank, result in enumerate(per_rank):
        for name, grad in result["grads"].items():
            if name in grads:
                continue
            dim = result["shard_dims"].get(name)
            if dim is None:
                grads[name] = grad
            else:
                shards = [per_rank[r]["grads"][name] for r in layout.group_of(rank, "tp")]
                grads[name] = torch.cat(shards, dim=dim)
    return grads


def train(
    plan: Plan,
    spec: ModelSpec,
    steps: int = 3,
    seed: int = 0,
    batch: int = 4,
    start_method: str = DEFAULT_START_METHOD,
    **kwargs,
) -> RunResult:
    """Train ``spec`` under ``plan`` on the synthetic batch; a world of 1 is the reference.

    ``start_method`` is "fork" where the platform has it: a "spawn"ed rank re-imports torch
    and the caller's main module, 5-10 s per process on a 2-core CI machine, against under
    a second for a whole forked run. A forked rank sets one intra-op thread before any
    torch op, since the parent's OpenMP thread pool does not survive the fork.
    """
    config = TrainConfig(steps=steps, seed=seed, batch=batch, **kwargs)
    check_supported(plan, spec, config)
    if plan.world_size == 1:
        return reference_train(spec, config)
    with tempfile.TemporaryDirectory(prefix="planner-run-") as run_dir:
        mp.start_processes(
            _worker, args=(plan, spec, config, run_dir), nprocs=plan.world_size, join=True,
            start_method=start_method,
        )
        per_rank = [torch.load(os.path.join(run_dir, f"rank{r}.pt")) for r in range(plan.world_size)]
    last_stage = int(rank_layout(plan).groups("pp")[0][-1])
    return RunResult(
        losses=per_rank[last_stage]["losses"],
        grads=_merge(plan, per_rank),
        optimizer_state_numel=[r["state_numel"] for r in per_rank],
        step_times_s=[max(r["times"][i] for r in per_rank) for i in range(steps)],
        peak_rss_bytes=[max(r["peaks"][i] for r in per_rank) for i in range(steps)],
    )
