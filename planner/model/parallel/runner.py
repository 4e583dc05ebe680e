"""Train the reference model under a :class:`~planner.specs.Plan`, one process per rank.

:func:`train` spawns ``plan.world_size`` processes (torch.multiprocessing, gloo on CPU,
float32). Each rank builds the *single-process* model from the same seed, then
:func:`parallelize` transforms it for the plan, in this order:

1. tensor parallelism (:mod:`.tensor`): attention and dense FFN linears sharded over tp;
2. expert parallelism (:mod:`.expert`): routed experts split over ep, all-to-all routing;
3. data parallelism (:mod:`.data`) lives in the training step, not in the modules: the
   global batch is split over dp, gradients are averaged after backward, and the optimizer
   is Adam or ZeRO-1 Adam.

The training step is the one of :func:`reference_train` (a plain single-process loop):
loss with MTP, backward, Adam, then the aux-loss-free bias update of every gate from the
global expert load (V3 §2.1.2, gamma = 0.001). :func:`train` returns the per-step global
loss and the first step's gradients reassembled into the single model's shapes and names,
so the two can be compared tensor by tensor.

Not implemented: pipeline parallelism, context parallelism, sequence parallelism, MLA or
MoE under tp, expert tp, ZeRO-2/3; :func:`check_supported` says so before any process starts.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from planner.hwmodels.placement import rank_layout
from planner.model.deepseek import MoE, Transformer
from planner.model.parallel.data import ZeroAdam, all_reduce_mean, synchronize_gradients
from planner.model.parallel.expert import ExpertParallelMoE, apply_expert_parallel, routed_expert_parameters
from planner.model.parallel.groups import Group, ProcessGroups, build_groups
from planner.model.parallel.tensor import apply_tensor_parallel, tp_shard_dims
from planner.specs.model import ModelSpec
from planner.specs.plan import Plan, ZeroStage

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
    """Update every gate's bias from the load summed over the global batch, then reset it."""
    for moe in _moe_layers(model):
        if dp is not None:
            all_reduce_mean([moe.tokens_per_expert], dp, 1)
        moe.gate.update_bias(moe.tokens_per_expert, BIAS_UPDATE_SPEED)
        moe.tokens_per_expert.zero_()


def reference_train(spec: ModelSpec, config: TrainConfig) -> RunResult:
    """The single-process run every plan must reproduce."""
    model = build_model(spec, config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    losses, grads = [], {}
    for step in range(config.steps):
        loss = model.loss(*synthetic_batch(spec, config, step))
        loss.backward()
        if step == 0:
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        losses.append(loss.item())
        optimizer.step()
        optimizer.zero_grad()
        _balance_experts(model, None)
    numel = sum(p.numel() for p in model.parameters())
    return RunResult(losses, grads, [numel])


def check_supported(plan: Plan, spec: ModelSpec, config: TrainConfig) -> None:
    """Stop before any process starts on what this runtime cannot run."""
    missing = {
        "pipeline parallelism (pp > 1)": plan.pp > 1,
        "context parallelism (cp > 1)": plan.cp > 1,
        "sequence parallelism": plan.sequence_parallel and plan.tp > 1,
        f"ZeRO stage {int(plan.zero_stage)}": plan.zero_stage > ZeroStage.OPTIMIZER,
        "tensor parallelism of MLA attention": plan.tp > 1 and spec.mla is not None,
        "tensor parallelism of MoE layers (tp > 1 on a MoE model)": plan.tp > 1 and spec.moe is not None,
        "expert tensor parallelism (etp > 1)": spec.moe is not None and plan.expert_tp > 1,
    }
    for what, hit in missing.items():
        if hit:
            raise NotImplementedError(f"{what}: not implemented by planner.model.parallel ({spec.name})")
    if plan.ep > 1 and (spec.moe is None or spec.moe.num_experts % plan.ep):
        experts = spec.moe.num_experts if spec.moe else 0
        raise ValueError(f"ep = {plan.ep} must divide the number of routed experts ({experts})")
    if config.batch % plan.dp:
        raise ValueError(f"dp = {plan.dp} must divide the global batch ({config.batch} sequences)")


def parallelize(model: Transformer, plan: Plan, groups: ProcessGroups) -> Transformer:
    """Apply tp then ep to a built single-process model (in place), as the module says."""
    apply_tensor_parallel(model, groups.tp)
    apply_expert_parallel(model, groups.ep)
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


def _worker(rank: int, plan: Plan, spec: ModelSpec, config: TrainConfig, run_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{run_dir}/rendezvous", rank=rank, world_size=plan.world_size
    )
    try:
        groups = build_groups(plan)
        model = parallelize(build_model(spec, config.seed), plan, groups)
        named = list(model.named_parameters())
        expert_names = routed_expert_parameters(model)
        optimizers, state_numel = _optimizers(named, expert_names, plan, groups, config.lr)
        local_batch = config.batch // plan.dp
        rows = slice(groups.dp.rank * local_batch, (groups.dp.rank + 1) * local_batch)
        losses, grads = [], {}
        for step in range(config.steps):
            tokens, targets = synthetic_batch(spec, config, step)
            loss = model.loss(tokens[rows], targets[rows])
            loss.backward()
            synchronize_gradients(named, expert_names, groups.dp, groups.edp)
            if step == 0:
                grads = {n: p.grad.clone() for n, p in named}
            global_loss = loss.detach().clone()
            all_reduce_mean([global_loss], groups.dp, groups.dp.size)
            losses.append(global_loss.item())
            for optimizer in optimizers:
                optimizer.step()
                optimizer.zero_grad()
            _balance_experts(model, groups.dp)
        shard_dims = tp_shard_dims(model)
        result = {"losses": losses, "grads": grads, "shard_dims": shard_dims, "state_numel": state_numel}
        torch.save(result, os.path.join(run_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _merge(plan: Plan, per_rank: list[dict]) -> dict[str, Tensor]:
    """Whole gradients from the ranks' pieces: tp shards concatenated in tp order (the tp
    group of rank 0), each routed expert from the rank that owns it, the rest from rank 0
    (after the dp reduction every replica holds the same values)."""
    tp_ranks = rank_layout(plan).group_of(0, "tp")
    shard_dims = per_rank[0]["shard_dims"]
    grads: dict[str, Tensor] = {}
    for name, dim in shard_dims.items():
        grads[name] = torch.cat([per_rank[r]["grads"][name] for r in tp_ranks], dim=dim)
    for result in per_rank:
        for name, grad in result["grads"].items():
            grads.setdefault(name, grad)
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
    return RunResult(
        losses=per_rank[0]["losses"],
        grads=_merge(plan, per_rank),
        optimizer_state_numel=[r["state_numel"] for r in per_rank],
    )
