"""Parallel runtime (planner.model.parallel): a parallel run computes what one process does.

Each case trains the reference model for 3 Adam steps (float32, CPU, gloo, one forked
process per rank) on a deterministic synthetic batch of 4 x 16 tokens, and compares it
with the plain single-process loop :func:`reference_train` on the whole batch:

- loss per step equal within 1e-5 (absolute); steps 2 and 3 also check the optimizer
  update and the aux-loss-free bias update of the gates;
- first-step gradients, reassembled to full shapes, ``allclose`` with rtol 1e-4 and atol
  1e-6 (the runs differ only in the order of floating-point sums: all-reduce, split
  matmuls, expert dispatch order, micro-batch accumulation).

The cases cover TP (MLA heads, shared experts, routed tokens split over tp), PP (1F1B,
embedding copy on the last stage for MTP), EP, DP with ZeRO-1, and their combinations on
the tiny MoE + MLA model, plus a few shapes the main preset lacks (tied head with learned
positions, per-head q/k norms, MLA without query compression with two MTP modules).
All of them together take well under a minute on a 2-core machine.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from test_reference_model import GPT3_LIKE, QWEN3_LIKE, V2_LITE_LIKE  # noqa: E402

from planner.errors import SpecError, UnsupportedError  # noqa: E402
from planner.hwmodels.placement import rank_layout  # noqa: E402
from planner.model.deepseek import Transformer  # noqa: E402
from planner.model.parallel import TrainConfig, check_supported, reference_train, train  # noqa: E402
from planner.model.parallel.groups import KINDS, Group, build_groups  # noqa: E402
from planner.model.parallel.pipeline import stage_layers  # noqa: E402
from planner.model.parallel.tensor import tp_shard_dims  # noqa: E402
from planner.presets import load_model  # noqa: E402
from planner.specs.plan import Plan  # noqa: E402

LOSS_ATOL = 1e-5
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-6

MODELS = {
    "tiny-dense": lambda: load_model("tiny-dense"),
    "tiny-moe-mla": lambda: load_model("tiny-moe-mla"),
    "tiny-gpt3": lambda: GPT3_LIKE,
    "tiny-qwen3": lambda: QWEN3_LIKE,
    "tiny-v2-lite": lambda: V2_LITE_LIKE,
}

# etp = 1 throughout on MoE models: routed experts are not split by tp (the runtime's only
# choice; an unset etp means etp = tp). "ep2" needs two ranks per stage: dp = 2 here.
CASES = {
    "tp2-dense": ("tiny-dense", Plan(tp=2)),
    "dp2-zero1-dense": ("tiny-dense", Plan(dp=2, zero_stage=1)),
    "tp2-moe-mla": ("tiny-moe-mla", Plan(tp=2, etp=1)),
    "pp2-moe-mla": ("tiny-moe-mla", Plan(pp=2)),
    "ep2-moe-mla": ("tiny-moe-mla", Plan(dp=2, ep=2, etp=1)),
    "dp2-zero1-moe-mla": ("tiny-moe-mla", Plan(dp=2, zero_stage=1)),
    "tp2xpp2-moe-mla": ("tiny-moe-mla", Plan(tp=2, pp=2, etp=1)),
    "ep2xdp2-zero1-moe-mla": ("tiny-moe-mla", Plan(dp=4, ep=2, etp=1, zero_stage=1)),
    "pp2xep2xdp2-zero1-moe-mla": ("tiny-moe-mla", Plan(pp=2, dp=4, ep=2, etp=1, zero_stage=1)),
    # experts over the tp ranks: each dispatches its half of the tokens
    "tp2xep2-moe-mla": ("tiny-moe-mla", Plan(tp=2, ep=2, etp=1)),
    # one block per stage, micro-batches of 2 (2 per step): warm-up longer than the batch
    "pp4-mbs2-moe-mla": ("tiny-moe-mla", Plan(pp=4, micro_batch_size=2)),
    # 3 stages over 4 blocks: the simulator's uneven split
    "pp3-moe-mla": ("tiny-moe-mla", Plan(pp=3)),
    "tp2xpp2-tied-gpt3": ("tiny-gpt3", Plan(tp=2, pp=2)),
    "tp2xep2xpp2-qknorm-qwen3": ("tiny-qwen3", Plan(tp=2, pp=2, ep=2, etp=1)),
    "tp2xpp2xdp2-v2-lite": ("tiny-v2-lite", Plan(tp=2, pp=2, dp=2, etp=1)),
}


def assert_same_run(run, ref) -> None:
    """Losses within LOSS_ATOL at every step, first-step gradients allclose by name."""
    assert len(run.losses) == len(ref.losses)
    for step, (got, want) in enumerate(zip(run.losses, ref.losses)):
        assert abs(got - want) <= LOSS_ATOL, f"step {step}: loss {got} vs single-process {want}"
    assert run.grads.keys() == ref.grads.keys()
    for name, want in ref.grads.items():
        got = run.grads[name]
        assert got.shape == want.shape, name
        torch.testing.assert_close(got, want, rtol=GRAD_RTOL, atol=GRAD_ATOL, msg=lambda m: f"{name}: {m}")


@pytest.fixture(scope="module")
def references():
    """Single-process runs, one per model, with one intra-op thread as each rank has (two
    OpenMP threads on a busy 2-core machine made a 3-step tiny run take 10 s, not 0.2 s)."""
    cache, threads = {}, torch.get_num_threads()
    torch.set_num_threads(1)

    def get(name):
        if name not in cache:
            cache[name] = reference_train(MODELS[name](), TrainConfig())
        return cache[name]

    yield get
    torch.set_num_threads(threads)


@pytest.mark.parametrize("case", sorted(CASES))
def test_parallel_equals_single_process(case, references):
    model, plan = CASES[case]
    spec = MODELS[model]()
    ref = references(model)
    run = train(plan, spec, steps=3, seed=0, batch=4)
    assert len(run.losses) == 3
    assert_same_run(run, ref)
    assert len(run.optimizer_state_numel) == plan.world_size
    total = sum(p.numel() for p in Transformer(spec).parameters())
    if plan.zero_stage:  # each rank keeps Adam state for ~1/dp of the model
        assert max(run.optimizer_state_numel) <= math.ceil(total / plan.dp) + 2
    if plan.ep > 1 or plan.pp > 1 or plan.tp > 1:  # each rank holds only its part
        assert max(run.optimizer_state_numel) < total
    assert len(run.step_times_s) == len(run.peak_rss_bytes) == 3
    assert all(t > 0 for t in run.step_times_s) and all(m > 0 for m in run.peak_rss_bytes)


def test_experts_that_get_no_token_still_join_the_all_to_all():
    """ep = 8 with one expert per rank and 2 tokens per rank: some ranks receive no rows;
    their backward must still take part in both all-to-alls (a mismatch aborts gloo)."""
    spec, kwargs = load_model("tiny-moe-mla"), {"batch": 8, "seq_len": 2}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = reference_train(spec, TrainConfig(**kwargs))
    finally:
        torch.set_num_threads(threads)
    run = train(Plan(dp=8, ep=8, etp=1), spec, **kwargs)
    assert_same_run(run, ref)


def _groups_worker(rank: int, plan: Plan, run_dir: str, out) -> None:
    dist.init_process_group("gloo", init_method=f"file://{run_dir}/rv", rank=rank, world_size=plan.world_size)
    try:
        groups = build_groups(plan)
        got = {name: (getattr(groups, name).ranks, getattr(groups, name).rank) for name, _ in KINDS}
        got["embed"] = None if groups.embed is None else (groups.embed.ranks, groups.embed.rank)
        out[rank] = got
        dist.barrier(group=groups.ep.group)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "plan", [Plan(dp=4, ep=2, etp=1), Plan(pp=2, dp=2, ep=2, etp=1)], ids=["ep2xdp2", "pp2xep2"]
)
def test_process_groups_come_from_the_placement(plan, tmp_path):
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
    if plan.pp == 1:
        assert got[0]["ep"][0] == (0, 1) and got[0]["edp"][0] == (0, 2)
        assert all(got[r]["embed"] is None for r in range(4))
    else:  # stage = rank // 2; the embedding group pairs a pipeline's first and last rank
        assert got[0]["pp"] == ((0, 2), 0) and got[3]["pp"] == ((1, 3), 1)
        assert got[0]["embed"] == ((0, 2), 0) and got[3]["embed"] == ((1, 3), 1)


@pytest.mark.parametrize(
    ("model", "plan", "error", "words"),
    [
        ("tiny-dense", Plan(cp=2), UnsupportedError, r"plan.cp = 2 \(context parallelism"),
        ("tiny-dense", Plan(tp=2, sequence_parallel=True), UnsupportedError, "sequence parallelism"),
        ("tiny-dense", Plan(dp=2, zero_stage=2), UnsupportedError, "plan.zero_stage = 2"),
        ("tiny-dense", Plan(dp=2, zero_stage=3), UnsupportedError, "plan.zero_stage = 3"),
        ("tiny-dense", Plan(pp=2, vpp=2, pipeline_schedule="interleaved"), UnsupportedError, "plan.vpp = 2"),
        ("tiny-dense", Plan(pp=2, pipeline_schedule="zero-bubble"), UnsupportedError, "only 1f1b"),
        ("tiny-dense", Plan(pp=2, pipeline_schedule="dualpipe"), UnsupportedError, "plan.pipeline_schedule"),
        ("tiny-dense", Plan(recompute="full"), UnsupportedError, "recomputation"),
        ("tiny-moe-mla", Plan(tp=2), UnsupportedError, "plan.etp = 2 .*set etp = 1"),
        ("tiny-moe-mla", Plan(dp=3, ep=3, etp=1), SpecError, "plan.ep = 3: must divide the routed experts"),
        ("tiny-dense", Plan(dp=3), SpecError, r"dp \* micro_batch_size \(3\) must divide global_batch_size"),
        ("tiny-dense", Plan(dp=2, micro_batch_size=4), SpecError, "plan.micro_batch_size = 4"),
        ("tiny-dense", Plan(pp=8), SpecError, "plan.pp = 8"),
        ("tiny-dense", Plan(tp=8), SpecError, "plan.tp = 8"),
    ],
)
def test_unsupported_plans_stop_before_any_process_starts(model, plan, error, words):
    with pytest.raises(error, match=words) as info:
        check_supported(plan, load_model(model), TrainConfig())
    if error is UnsupportedError:  # what callers caught before stays caught
        assert isinstance(info.value, NotImplementedError) and ": not implemented" in str(info.value)


@pytest.mark.parametrize(("pp", "blocks"), [(1, [4]), (2, [2, 2]), (3, [1, 1, 2]), (4, [1, 1, 1, 1])])
def test_stages_take_the_simulator_layer_split(pp, blocks):
    from planner.costmodel.partition import partition

    spec, plan = load_model("tiny-moe-mla"), Plan(pp=pp)
    ranges = stage_layers(spec, plan)
    assert [len(r) for r in ranges] == [c.num_blocks for c in partition(spec, plan).chunks] == blocks
    assert [i for r in ranges for i in r] == list(range(spec.num_layers))


def test_mla_tensor_parallel_splits_heads_and_keeps_the_latent_projections_whole():
    """The transform alone (no process group is touched until forward)."""
    from planner.model.parallel.expert import apply_expert_parallel
    from planner.model.parallel.tensor import apply_tensor_parallel

    model = Transformer(load_model("tiny-moe-mla"))
    tp = Group(group=None, ranks=(0, 1), rank=1)
    full = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_tensor_parallel(model, tp)
    apply_expert_parallel(model, Group(group=None, ranks=(1,), rank=0), tp)
    dims = tp_shard_dims(model)
    attn = "layers.1.attn."
    assert {attn + n: dims[attn + n] for n in ("wq_b.weight", "wkv_b.weight", "wo.weight")} == {
        attn + "wq_b.weight": 0, attn + "wkv_b.weight": 0, attn + "wo.weight": 1,
    }
    replicated = (attn + "wq_a.weight", attn + "wkv_a.weight", "layers.1.ffn.gate.weight")
    assert not any(n in dims for n in replicated)
    assert "layers.1.ffn.shared_experts.0.w2.weight" in dims
    assert "layers.1.ffn.experts.0.w1.weight" not in dims  # routed experts whole (etp = 1)
    assert model.layers[1].attn.num_heads == 2
    params = dict(model.named_parameters())
    assert params.keys() == full.keys()  # single-model names
    want = full[attn + "wq_b.weight"].chunk(2)[1]  # rank 1's two heads
    torch.testing.assert_close(params[attn + "wq_b.weight"], want, rtol=0, atol=0)
