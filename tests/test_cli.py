"""The real `planner` entry point: output formats, exit codes, one-line errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from planner.presets import data_root


def planner(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "planner", *args], capture_output=True, text=True, timeout=60
    )


def assert_user_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0]


def test_describe_json_keys():
    result = planner("describe", "--model", "deepseek-v3", "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    for key in ("params_total", "params_active", "flops_per_token_train",
                "flops_per_token_train_noncausal", "kv_cache_bytes_per_token"):
        assert key in data
    assert data["kv_cache_bytes_per_token"] == 70_272
    assert data["seq_length"] == 4096


def test_describe_table_and_seq_len():
    result = planner("describe", "--model", "llama3-8b", "--seq-len", "2048")
    assert result.returncode == 0, result.stderr
    assert "Routed experts" not in result.stdout and "Attention" in result.stdout
    assert "at seq 2048" in result.stdout


def test_describe_hardware_and_list():
    result = planner("describe", "--cluster", "fire-flyer-2", "--gpus", "640")
    assert result.returncode == 0, result.stderr
    assert "640 (80 nodes x 8)" in result.stdout
    listing = json.loads(planner("describe", "--list", "--format", "json").stdout)
    assert "deepseek-v3" in listing["model"] and "h800-sxm-80gb" in listing["gpu"]
    assert planner("describe", "--gpu", "b200", "--format", "json").returncode == 0


def test_unknown_preset_lists_known_names():
    assert_user_error(planner("describe", "--model", "deepseek-v4"), "deepseek-v4", "known:", "deepseek-v3")


def test_bad_cluster_size():
    assert_user_error(planner("describe", "--cluster", "dgx-h100", "--gpus", "12"), "gpus = 12", "gpus_per_node")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"hidden_sise": 7168}, ["hidden_sise", "unknown field", "hidden_size"]),
        ({"num_layers": -61}, ["num_layers = -61", "greater than 0"]),
        ({"num_attention_heads": 100, "num_kv_heads": 8}, ["num_kv_heads = 8", "must divide num_attention_heads (100)"]),
        ({"moe": {"num_experts": 8, "top_k": 9, "expert_ffn_hidden_size": 64}}, ["moe.top_k = 9", "num_experts (8)"]),
    ],
)
def test_bad_model_file(tmp_path: Path, change, words):
    data = yaml.safe_load((data_root() / "models" / "llama3-8b.yaml").read_text())
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**data, **change}))
    assert_user_error(planner("describe", "--model", str(path)), "bad.yaml", *words)


def test_unparseable_and_missing_files(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    assert_user_error(planner("describe", "--model", str(path)), "not valid YAML")
    assert_user_error(planner("describe", "--model", str(tmp_path / "none.yaml")), "no such file")


def test_needs_exactly_one_subject():
    assert_user_error(planner("describe"), "exactly one")
    assert_user_error(planner("describe", "--model", "llama3-8b", "--gpus", "64"), "only resizes a --cluster")


def test_usage_error_exit_code():
    result = planner("describe", "--format", "xml", "--model", "deepseek-v3")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_version_and_help():
    assert planner("--version").stdout.startswith("planner ")
    result = planner("describe", "--help")
    assert result.returncode == 0 and "--seq-len" in result.stdout


def test_topology_summary_and_route():
    result = planner("topology", "--cluster", "deepseek-v3-h800", "--route", "0,9", "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["elements"]["spine"] == 8
    assert [hop[2] for hop in data["route"]["hops"]] == ["nvlink", "nvlink", "pcie", "ib", "ib", "pcie"]
    table = planner("topology", "--cluster", "dgx-h100", "--gpus", "16", "--route", "0,9")
    assert table.returncode == 0 and "(nvlink, " in table.stdout


def test_topology_bad_route():
    assert_user_error(planner("topology", "--cluster", "dgx-h100", "--gpus", "16", "--route", "0,99"), "gpu = 99")
    assert_user_error(planner("topology", "--cluster", "dgx-h100", "--route", "zero"), "route = 'zero'")


# --- formats, --out, cost, sweep, plan --tokens / --emit (issue #8, #6 item 7) ---------------

TINY = ("-m", "tiny-moe-mla", "-c", "dgx-h100", "--gpus", "8")


def test_yaml_and_out_file(tmp_path: Path):
    result = planner("describe", "--model", "llama3-8b", "--format", "yaml")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["params_total"] == json.loads(
        planner("describe", "--model", "llama3-8b", "--format", "json").stdout)["params_total"]
    out = tmp_path / "sub" / "topo.json"
    result = planner("collective", "-c", "dgx-h100", "--gpus", "16", "--op", "all_reduce", "-n", "16", "-b", "1GiB",
                     "-f", "json", "-o", str(out))
    assert result.returncode == 0 and result.stdout == ""
    assert json.loads(out.read_text())["op"] == "all_reduce" and "wrote" in result.stderr
    table = tmp_path / "describe.txt"
    assert planner("describe", "--cluster", "dgx-h100", "--out", str(table)).returncode == 0
    assert "scale-up" in table.read_text() and "\x1b[" not in table.read_text()  # no colour codes in files


def test_csv_where_tabular_and_rejected_elsewhere():
    assert_user_error(planner("describe", "--model", "llama3-8b", "--format", "csv"), "--format", "not a table")
    result = planner("simulate", *TINY, "--global-batch", "16", "--pp", "2", "--ep", "4", "-f", "csv")
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.strip().splitlines()
    assert header.startswith("num_gpus,tokens_per_step,status") and "gpu_hours_per_1e12_tokens" in header
    assert row.startswith("8,")


def test_simulate_cost_and_token_budget():
    result = planner("simulate", *TINY, "--global-batch", "16", "--pp", "2", "--ep", "4", "--tokens", "1e9",
                     "--price-per-gpu-hour", "3", "-f", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    cost = data["cost"]
    assert cost["tokens"] == 1e9 and cost["price_per_gpu_hour"] == 3
    tokens_per_step = 16 * data["workload"]["seq_length"]
    assert cost["gpu_hours"] == pytest.approx(8 * data["step_time_s"] * 1e9 / tokens_per_step / 3600)
    assert cost["cost_usd"] == pytest.approx(3 * cost["gpu_hours"])
    table = planner("simulate", *TINY, "--global-batch", "16", "--pp", "2", "--ep", "4")
    assert "cost: 1T tokens" in table.stdout and "$2/GPU-hour" in table.stdout  # default: per trillion, $2
    assert_user_error(planner("simulate", *TINY, "--pp", "2"), "--global-batch", "--tokens")
    assert_user_error(planner("simulate", *TINY, "--global-batch", "16", "--tokens", "nan"), "--tokens")
    # No whole dp fits: the rule names tp * cp * pp, not an absent --dp (no --dp would help).
    assert_user_error(planner("simulate", *TINY, "--global-batch", "16", "--pp", "3"),
                      "tp * cp * pp = 3", "must divide the GPUs (8)")


def test_plan_from_token_budget_and_emit(tmp_path: Path):
    emit = tmp_path / "launch"
    result = planner("plan", *TINY, "--tokens", "2e12", "--pp", "2", "--top-k", "2", "--emit", str(emit),
                     "-f", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    budget = data["budget"]
    assert budget["global_batch_size"] % 8 == 0 and data["workload"]["global_batch_size"] == budget["global_batch_size"]
    assert budget["learning_rate_opt"] == pytest.approx(0.3118 * budget["compute_flops"] ** -0.125)
    assert data["cost"]["tokens"] == 2e12
    assert {Path(p).name for p in data["emitted_files"]} == {"torchrun.sh", "run_config.yaml", "megatron_args.txt"}
    args = (emit / "megatron_args.txt").read_text()
    assert f"--global-batch-size {budget['global_batch_size']}" in args
    assert f"--train-iters {math.ceil(data['cost']['steps'])}" in args
    table = planner("plan", *TINY, "--tokens", "2e12", "--pp", "2", "--top-k", "1")
    assert "B_opt" in table.stdout and "rounded to" in table.stdout and "cost of #1" in table.stdout


def test_plan_csv_rows():
    result = planner("plan", *TINY, "--global-batch", "16", "--pp", "2", "--top-k", "2", "-f", "csv")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("rank,tp,pp") and "gpu_hours" in lines[0] and len(lines) == 3


def test_sweep_cli(tmp_path: Path):
    plot = tmp_path / "heat.png"
    result = planner("sweep", *TINY, "--global-batch", "16", "--grid", "pp=1,2", "--grid", "ep=2,4",
                     "--plot", str(plot), "-f", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    points = data["points"]
    assert [(p["plan.pp"], p["plan.ep"]) for p in points] == [(1, 2), (1, 4), (2, 2), (2, 4)]
    assert [p["plan.dp"] for p in points] == [8, 8, 4, 4]  # dp follows GPUs / (tp cp pp)
    assert all(p["status"] == "ok" for p in points) and plot.stat().st_size > 1000
    csv_out = tmp_path / "sweep.csv"
    assert planner("sweep", *TINY, "--global-batch", "16", "-g", "mb=1,2", "-f", "csv", "-o", str(csv_out)).returncode == 0
    assert csv_out.read_text().splitlines()[0].startswith("plan.micro_batch_size,")
    table = planner("sweep", *TINY, "--global-batch", "16", "--grid", "tensor-model-parallel-size=1,3")
    assert table.returncode == 0 and "invalid" in table.stdout  # a bad point is a row, not an error
    assert_user_error(planner("sweep", *TINY, "--global-batch", "16", "--grid", "warp=1,2"), "--grid", "warp")
    assert_user_error(planner("sweep", *TINY, "--global-batch", "16", "--grid", "pp"), "KEY=V1,V2")
    assert_user_error(planner("sweep", *TINY, "--global-batch", "16", "--grid", "pp=1,2", "--plot",
                              str(tmp_path / "x.png")), "--plot", "two --grid axes")


def test_help_text_is_rendered_whole():
    """Typer renders help as Markdown: the command list joins each docstring's lines into one
    paragraph (Rich's markup mode kept the source's line breaks mid-sentence) and square
    brackets are text, not Rich markup tags (which swallowed ``[src, dst]``)."""
    import os

    env = {**os.environ, "COLUMNS": "250"}
    top = subprocess.run([sys.executable, "-m", "planner", "--help"], capture_output=True, text=True,
                         timeout=60, env=env).stdout
    assert "memory per GPU (GiB) and the cost of a token budget (GPU-hours, US$) for one plan." in top
    collective = subprocess.run([sys.executable, "-m", "planner", "collective", "--help"], capture_output=True,
                                text=True, timeout=60, env=env).stdout
    assert "[src, dst]" in collective


def test_every_command_help_has_an_example():
    for command in ("describe", "simulate", "plan", "explain", "sweep", "report", "validate", "collective",
                    "topology"):
        result = planner(command, "--help")
        assert result.returncode == 0 and "Example" in result.stdout, command


def test_validation_reports_progress_per_case():
    """run_cases calls progress(done, total) after every row (the CLI's progress bar)."""
    from planner.validation import read_cases, run_cases
    from planner.presets import data_root

    rows = read_cases(data_root() / "validation" / "public_cases.csv")[:3]
    seen = []
    results = run_cases(rows, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)] and len(results) == 3


def test_progress_bar_is_silent_off_a_terminal(capsys):
    from planner.cli.output import progress_bar

    with progress_bar("working", "items") as update:
        update(1, 2)
        update(2, 2)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
