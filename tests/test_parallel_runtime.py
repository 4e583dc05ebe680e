"""Parallel runtime (planner.model.parallel): a parallel run computes what one process does.

Each case trains the reference model for 3 Adam steps (float32, CPU, gloo, one forked
process per rank) on a deterministic synthetic batch of 4 x 16 tokens, and compares it
with the plain single-process loop :func:`reference_train`:

- loss per step equal within 1e-5 (absolute);
- first-step gradients, reassembled to full shapes, ``allclose`` with rtol 1e-4 and atol
  1e-6 (the runs differ only in the order of floating-point sums: all-reduce, split
  matmuls, expert dispatch order).

Pipeline parallelism is not implemented by the runtime yet, so PP plans are not here.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from planner.hwmodels.placement import rank_layout  # noqa: E402
from planner.model.deepseek import Transformer  # noqa: E402
from planner.model.parallel import TrainConfig, check_supported, reference_train, train  # noqa: E402
from planner.model.parallel.groups import KINDS, Group, build_groups  # noqa: E402
from planner.model.parallel.tensor import apply_tensor_parallel  # noqa: E402
from planner.presets import load_model  # noqa: E402
from planner.specs.plan import Plan  # noqa: E402

LOSS_ATOL = 1e-5
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-6

CASES = {
    "tp2-dense": ("tiny-dense", Plan(tp=2)),
    "dp2-zero1-dense": ("tiny-dense", Plan(dp=2, zero_stage=1)),
    "dp2-zero1-moe-mla": ("tiny-moe-mla", Plan(dp=2, zero_stage=1)),
    "ep2-moe-mla": ("tiny-moe-mla", Plan(dp=2, ep=2, etp=1)),
    "ep2xdp2-zero1-moe-mla": ("tiny-moe-mla", Plan(dp=4, ep=2, etp=1, zero_stage=1)),
}


@pytest.fixture(scope="module")
def references():
    """Single-process runs, one per model, with one intra-op thread as each rank has (two
    OpenMP threads on a busy 2-core machine made a 3-step tiny run take 10 s, not 0.2 s)."""
    cache, threads = {}, torch.get_num_threads()
    torch.set_num_threads(1)

    def get(name):
        if name not in cache:
            cache[name] = reference_train(load_model(name), TrainConfig())
        return cache[name]

    yield get
    torch.set_num_threads(threads)


@pytest.mark.parametrize("case", sorted(CASES))
def test_parallel_equals_single_process(case, references):
    model, plan = CASES[case]
    spec = load_model(model)
    ref = references(model)
    run = train(plan, spec, steps=3, seed=0, batch=4)
    assert len(run.losses) == 3
    for step, (got, want) in enumerate(zip(run.losses, ref.losses)):
        assert abs(got - want) <= LOSS_ATOL, f"step {step}: loss {got} vs single-process {want}"
    assert run.grads.keys() == ref.grads.keys()
    for name, want in ref.grads.items():
        got = run.grads[name]
        assert got.shape == want.shape, name
        torch.testing.assert_close(got, want, rtol=GRAD_RTOL, atol=GRAD_ATOL, msg=lambda m: f"{name}: {m}")
    assert len(run.optimizer_state_numel) == plan.world_size
    total = sum(p.numel() for p in Transformer(spec).parameters())
    if plan.zero_stage:  # each rank keeps Adam state for ~1/dp of the model
        assert max(run.optimizer_state_numel) <= math.ceil(total / plan.dp) + 2
    if plan.ep > 1:  # each rank holds only its experts
        assert max(run.optimizer_state_numel) < total


def _groups_worker(rank: int, plan: Plan, run_dir: str, out) -> None:
    dist.init_process_group("gloo", init_method=f"file://{run_dir}/rv", rank=rank, world_size=plan.world_size)
    try:
        groups = build_groups(plan)
        out[rank] = {name: (getattr(groups, name).ranks, getattr(groups, name).rank) for name, _ in KINDS}
        dist.barrier(group=groups.ep.group)
    finally:
        dist.destroy_process_group()


def test_process_groups_come_from_the_placement(tmp_path):
    plan = Plan(dp=4, ep=2, etp=1)
    layout = rank_layout(plan)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(_groups_worker, args=(plan, str(tmp_path), out), nprocs=4, start_method="fork")
        got = dict(out)
    for rank in range(4):
        for name, experts in KINDS:
            ranks, index = got[rank][name]
            assert ranks == tuple(layout.group_of(rank, name, experts=experts)), (rank, name)
            assert ranks[index] == rank
    assert got[0]["ep"][0] == (0, 1) and got[0]["edp"][0] == (0, 2)


@pytest.mark.parametrize(
    ("model", "plan", "error", "words"),
    [
        ("tiny-moe-mla", Plan(tp=2), NotImplementedError, "MLA"),
        ("tiny-dense", Plan(pp=2), NotImplementedError, "pipeline"),
        ("tiny-dense", Plan(tp=2, sequence_parallel=True), NotImplementedError, "sequence"),
        ("tiny-dense", Plan(dp=2, zero_stage=2), NotImplementedError, "ZeRO stage 2"),
        ("tiny-moe-mla", Plan(dp=3, ep=3, etp=1), ValueError, "ep = 3 must divide"),
        ("tiny-dense", Plan(dp=3), ValueError, "dp = 3 must divide the global batch"),
    ],
)
def test_unsupported_plans_stop_before_any_process_starts(model, plan, error, words):
    with pytest.raises(error, match=words):
        check_supported(plan, load_model(model), TrainConfig())


def test_tensor_parallel_transform_names_what_it_lacks():
    """The transform itself refuses MLA under tp before touching any process group."""
    model = Transformer(load_model("tiny-moe-mla"))
    with pytest.raises(NotImplementedError, match="MLA"):
        apply_tensor_parallel(model, Group(group=None, ranks=(0, 1), rank=0))
