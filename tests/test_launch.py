"""``planner launch``: bad input stops before any process starts; a real run; --emit configs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import pytest
import yaml

from planner.launch.emit import megatron_args, megatron_argv, torchrun_command
from planner.presets import load_model
from planner.specs import Plan, Workload


def planner(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "planner", "launch", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def assert_user_error(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode == 2, result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert result.stdout == ""
    return lines[0]


BAD_INPUTS = {
    "ep-not-dividing-experts": (
        ["-m", "tiny-moe-mla", "--ep", "3", "--dp", "3", "--etp", "1", "--steps", "3"],
        ["plan.ep = 3", "must divide the routed experts (8)"],
    ),
    "pp-above-layers": (["-m", "tiny-dense", "--pp", "8", "--steps", "3"], ["plan.pp = 8", "num_layers (4)"]),
    "cp-not-in-runtime": (
        ["-m", "tiny-dense", "--cp", "2", "--steps", "3"],
        ["plan.cp = 2", "not implemented in the runtime yet"],
    ),
    "unknown-cluster": (
        ["-m", "tiny-dense", "--cluster", "no-such-cluster", "--steps", "1"],
        ["cluster = 'no-such-cluster'", "local-cpu-8"],
    ),
    "nccl-run": (["-m", "tiny-dense", "--backend", "nccl", "--steps", "1"], ["--backend", "gloo only"]),
    "micro-batch": (
        ["-m", "tiny-dense", "--dp", "2", "--global-batch", "3", "--steps", "1"],
        ["micro_batch_size", "global_batch_size (3)"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_the_rule(case):
    args, words = BAD_INPUTS[case]
    assert_user_error(planner(*args), *words)


def test_nproc_mismatch_fails_fast():
    start = time.perf_counter()
    result = planner("-m", "tiny-dense", "--tp", "2", "--nproc", "4", "--steps", "3")
    elapsed = time.perf_counter() - start
    assert_user_error(result, "--nproc = 4", "world size", "= 2")
    assert elapsed < 15, f"took {elapsed:.1f} s: the check must come before any process or torch import"


def test_torch_missing_says_how_to_install(tmp_path):
    """A ``torch`` package that fails to import, first on the path, stands for a missing torch."""
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'torch'\")\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    result = planner("-m", "tiny-dense", "--tp", "2", "--steps", "3", env=env)
    assert_user_error(result, "torch is not installed", 'pip install "planner[model]"')


STEP_KEYS = {"step", "loss", "step_time_s", "peak_memory_bytes"}


def _lines(result: subprocess.CompletedProcess) -> tuple[list[dict], dict]:
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    return lines[:-1], lines[-1]


def _check_summary(steps: list[dict], summary: dict, world: int) -> None:
    assert summary["summary"] is True and summary["world_size"] == world
    assert summary["final_loss"] == steps[-1]["loss"] and summary["all_losses_finite"] is True
    measured = summary["measured_step_time_s"]
    assert measured == pytest.approx(sum(s["step_time_s"] for s in steps[1:]) / (len(steps) - 1))
    assert summary["cluster"] == "local-cpu-8" and summary["prediction_status"] == "ok"
    assert summary["predicted_step_time_s"] > 0
    assert summary["relative_error"] == pytest.approx((summary["predicted_step_time_s"] - measured) / measured)


def test_loss_falls_over_50_steps_on_the_corpus():
    """The issue's "Done when": a tiny preset trains, loss falls over 50 steps (forked ranks)."""
    pytest.importorskip("torch")
    result = planner("-m", "tiny-dense", "--dp", "2", "--nproc", "2", "--steps", "50", "--launcher", "fork",
                     timeout=180)
    steps, summary = _lines(result)
    assert [s["step"] for s in steps] == list(range(1, 51))
    for s in steps:
        assert set(s) == STEP_KEYS
        assert math.isfinite(s["loss"]) and s["step_time_s"] > 0 and s["peak_memory_bytes"] > 1_000_000
    first, last = steps[0]["loss"], sum(s["loss"] for s in steps[-5:]) / 5
    assert first == pytest.approx(math.log(256), abs=0.5)  # untrained: about ln(vocab)
    assert last < first - 1.5, f"loss {first:.2f} -> {last:.2f}: the corpus must be learnable"
    assert summary["data"] == "corpus" and summary["launcher"] == "fork" and summary["loss_fell"] is True
    _check_summary(steps, summary, 2)


def test_torchrun_single_rank():
    """The torchrun path end to end (one rank keeps it short: each rank imports torch)."""
    pytest.importorskip("torch")
    result = planner("-m", "tiny-dense", "--steps", "3", "--launcher", "torchrun", timeout=180)
    steps, summary = _lines(result)
    assert [s["step"] for s in steps] == [1, 2, 3] and summary["launcher"] == "torchrun"
    _check_summary(steps, summary, 1)


@pytest.mark.slow
def test_torchrun_ep2_dp2_on_the_moe_model():
    pytest.importorskip("torch")
    result = planner("-m", "tiny-moe-mla", "--ep", "2", "--dp", "2", "--steps", "4", timeout=300)
    steps, summary = _lines(result)
    assert len(steps) == 4 and summary["ep"] == 2 and summary["launcher"] == "torchrun"
    _check_summary(steps, summary, 2)


def test_random_data_is_the_runtime_batch():
    """--data random trains on the runtime's uniform tokens: loss stays near ln(vocab)."""
    pytest.importorskip("torch")
    result = planner("-m", "tiny-dense", "--steps", "3", "--launcher", "fork", "--data", "random", timeout=120)
    steps, summary = _lines(result)
    assert summary["data"] == "random"
    assert all(abs(s["loss"] - math.log(256)) < 0.5 for s in steps)


def test_a_launched_run_is_the_runtime_step():
    """The worker trains with the runtime's RankTrainer.step: on --data random (the runtime's
    batch) its per-step losses are those of planner.model.parallel.train for the same plan,
    seed and batch (1e-6 absolute; same processes, same order of sums)."""
    pytest.importorskip("torch")
    from planner.model.parallel import train

    args = ["--ep", "2", "--dp", "2", "--etp", "1", "--global-batch", "4", "--seq-len", "16"]
    result = planner("-m", "tiny-moe-mla", *args, "--steps", "3", "--launcher", "fork", "--data", "random",
                     timeout=120)
    steps, _ = _lines(result)
    reference = train(Plan(ep=2, dp=2, etp=1), load_model("tiny-moe-mla"), steps=3, batch=4, seq_len=16)
    assert [s["loss"] for s in steps] == pytest.approx(reference.losses, abs=1e-6)


def test_corpus_is_deterministic_and_structured():
    from planner.launch.corpus import generate_text

    text = generate_text(0, 4096)
    assert text == generate_text(0, 4096) and text != generate_text(1, 4096)
    assert len(text) == 4096 and text.isascii() and text.count(b". ") > 50


def test_local_cluster_fits_the_world_size():
    from planner.launch.local import local_cluster
    from planner.presets import load_cluster

    cluster = load_cluster("local-cpu-8")
    for world in (1, 2, 8, 12):
        fitted = local_cluster(cluster, world)
        assert fitted.num_gpus == world and fitted.num_nodes == 1
        assert fitted.node.scale_up.domain_gpus == world
    assert local_cluster(load_cluster("dgx-h100"), 16).num_nodes == 2


def test_emit_writes_three_files(tmp_path):
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(
        "tensor_model_parallel_size: 2\nexpert_model_parallel_size: 2\ndata_parallel_size: 2\n"
    )
    out = tmp_path / "emit"
    result = planner(
        "-m",
        "tiny-moe-mla",
        "--plan",
        str(plan_file),
        "--etp",
        "1",
        "--zero",
        "1",
        "--steps",
        "7",
        "--emit",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["megatron_args.txt", "run_config.yaml", "torchrun.sh"]
    args = (out / "megatron_args.txt").read_text().splitlines()
    for line in (
        "--tensor-model-parallel-size 2",
        "--pipeline-model-parallel-size 1",
        "--expert-model-parallel-size 2",
        "--expert-tensor-parallel-size 1",
        "--use-distributed-optimizer",
        "--num-experts 8",
        "--train-iters 7",
        "--multi-latent-attention",
    ):
        assert line in args
    script = (out / "torchrun.sh").read_text()
    assert "torchrun --nnodes 1 --nproc-per-node 4" in script
    config = yaml.safe_load((out / "run_config.yaml").read_text())
    assert config["plan"]["tensor_model_parallel_size"] == 2
    assert config["plan"]["expert_model_parallel_size"] == 2
    assert config["plan"]["data_parallel_size"] == 2
    assert config["world_size"] == 4 and config["steps"] == 7 and config["seed"] == 0
    assert config["model"]["name"] == "tiny-moe-mla"


def test_emit_also_checks_the_plan(tmp_path):
    assert_user_error(
        planner("-m", "tiny-dense", "--pp", "8", "--steps", "1", "--emit", str(tmp_path / "x")), "plan.pp"
    )
    assert not (tmp_path / "x").exists()


def test_megatron_args_deepseek_v3_dualpipe():
    model = load_model("deepseek-v3")
    plan = Plan(
        pp=16, ep=64, etp=1, dp=128, zero_stage=1, pipeline_schedule="dualpipe", recompute="selective"
    )
    workload = Workload(global_batch_size=15360, seq_length=4096, precision="fp8")
    lines = megatron_args(model, plan, workload)
    for line in (
        "--pipeline-model-parallel-size 16",
        "--expert-model-parallel-size 64",
        "--expert-tensor-parallel-size 1",
        "--tensor-model-parallel-size 1",
        "--num-layers 61",
        "--num-experts 256",
        "--moe-router-topk 8",
        "--multi-latent-attention",
        "--kv-lora-rank 512",
        "--q-lora-rank 1536",
        "--use-distributed-optimizer",
        "--recompute-granularity selective",
        "--fp8-format e4m3",
        "--global-batch-size 15360",
        "--seq-length 4096",
        "--mtp-num-layers 1",
        "--moe-router-score-function sigmoid",
        "--moe-layer-freq ([0]*3+[1]*58)",
    ):
        assert line in lines, line
    comments = [line for line in lines if line.startswith("#")]
    assert any("no DualPipe" in c for c in comments)
    argv = megatron_argv(lines)
    assert not any(tok.startswith("#") for tok in argv)
    assert argv[argv.index("--pipeline-model-parallel-size") + 1] == "16"
    cmd = torchrun_command(plan, nproc_per_node=8, nnodes=256)
    assert "--nproc-per-node 8" in cmd and "--nnodes 256" in cmd


def test_megatron_args_gpt3_interleaved():
    model = load_model("gpt3-175b")
    plan = Plan(
        tp=8, pp=8, vpp=3, dp=8, pipeline_schedule="interleaved", sequence_parallel=True, recompute="full"
    )
    lines = megatron_args(model, plan, Workload(global_batch_size=1536, seq_length=2048))
    for line in (
        "--tensor-model-parallel-size 8",
        "--pipeline-model-parallel-size 8",
        "--num-layers-per-virtual-pipeline-stage 4",
        "--num-layers 96",
        "--hidden-size 12288",
        "--num-attention-heads 96",
        "--sequence-parallel",
        "--recompute-granularity full",
        "--recompute-method uniform",
        "--bf16",
        "--position-embedding-type learned_absolute",
    ):
        assert line in lines, line
    assert not any(line.startswith(("--num-experts", "--swiglu")) for line in lines)
    assert not any("DualPipe" in line for line in lines)


def test_megatron_args_carry_the_data_parallel_overlap():
    """The overlap the cost model assumes (planner.costmodel.dp_overlap) as Megatron-LM flags:
    gradient reduction always overlapped, the ZeRO-1/2 gather per Workload, BF16 reduction."""
    model = load_model("gpt3-175b")
    plan = Plan(tp=8, pp=8, dp=16, zero_stage=1)
    default = megatron_args(model, plan, Workload(global_batch_size=1536, seq_length=2048))
    assert "--overlap-grad-reduce" in default and "--overlap-param-gather" in default
    assert "--grad-reduce-in-bf16" not in default
    off = megatron_args(model, plan, Workload(global_batch_size=1536, seq_length=2048, overlap_param_gather=False,
                                              grad_reduce_dtype="bf16"))
    assert "--overlap-param-gather" not in off and "--grad-reduce-in-bf16" in off
    ddp = megatron_args(model, plan.model_copy(update={"zero_stage": 0}), Workload(global_batch_size=1536, seq_length=2048))
    assert "--overlap-param-gather" not in ddp  # nothing to gather without a sharded optimizer


def test_torchrun_command_rejects_a_wrong_world():
    from planner.errors import SpecError

    with pytest.raises(SpecError, match="world size"):
        torchrun_command(Plan(tp=2), nproc_per_node=4)
    assert torchrun_command(Plan(tp=2, dp=2), nproc_per_node=4).startswith(
        "torchrun --nnodes 1 --nproc-per-node 4 "
    )


def test_a_plan_from_planner_plan_launches(tmp_path):
    """Issue #7: a plan that `planner plan` recommends for a tiny preset on local-cpu-8 runs
    with `planner launch --plan` on the run_config.yaml that `plan --emit` wrote."""
    pytest.importorskip("torch")
    emit = tmp_path / "emit"
    searched = subprocess.run(
        [sys.executable, "-m", "planner", "plan", "-m", "tiny-dense", "-c", "local-cpu-8", "--global-batch", "16",
         "--seq-len", "64", "--emit", str(emit), "--format", "json"],
        capture_output=True, text=True, timeout=300,
    )
    assert searched.returncode == 0, searched.stderr
    best = yaml.safe_load((emit / "run_config.yaml").read_text())["plan"]
    world = 8
    result = planner("-m", "tiny-dense", "--plan", str(emit / "run_config.yaml"), "--nproc", str(world),
                     "--global-batch", "16", "--seq-len", "64", "--steps", "3", "--launcher", "fork", timeout=240)
    steps, summary = _lines(result)
    assert [s["step"] for s in steps] == [1, 2, 3] and summary["world_size"] == world
    assert summary["micro_batch"] == best["micro_batch_size"]


def test_megatron_args_carry_an_uneven_split():
    """A plan's pipeline_layers become Megatron-Core's --pipeline-model-parallel-layout
    (docs.nvidia.com/megatron-core "Custom Pipeline Model Parallel Layout": E embedding,
    t block, m MTP, L loss, stages split by |, virtual stage 0's ranks first), and the
    reference runtime builds the same stages."""
    model = load_model("deepseek-v3")
    layers = (3, *([4] * 14), 2)
    plan = Plan(pp=16, ep=64, etp=1, dp=128, zero_stage=1, pipeline_layers=layers)
    lines = megatron_args(model, plan, Workload(global_batch_size=15360, seq_length=4096, precision="fp8"))
    layout = [line for line in lines if line.startswith("--pipeline-model-parallel-layout")]
    assert layout == ['--pipeline-model-parallel-layout "E,t*3|' + "t*4|" * 14 + 't*2,m,L"']
    interleaved = Plan(pp=2, vpp=2, dp=1, pipeline_schedule="interleaved", pipeline_layers=(1, 2, 3, 55))
    lines = megatron_args(model, interleaved, Workload(global_batch_size=8, seq_length=4096))
    assert '--pipeline-model-parallel-layout "E,t|t*2|t*3|t*55,m,L"' in lines
    loss_only = Plan(pp=2, dp=1, pipeline_layers=(61, 0))
    lines = megatron_args(model, loss_only, Workload(global_batch_size=8, seq_length=4096))
    assert '--pipeline-model-parallel-layout "E,t*61|m,L"' in lines
    assert not any(line.startswith("--num-layers-per-virtual") for line in lines)


def test_runtime_stages_follow_pipeline_layers():
    from planner.model.parallel.pipeline import stage_layers

    model = load_model("tiny-dense")
    plan = Plan(pp=2, dp=1, pipeline_layers=(model.num_layers - 1, 1))
    assert [len(r) for r in stage_layers(model, plan)] == [model.num_layers - 1, 1]
