"""The real `planner` entry point: output formats, exit codes, one-line errors."""

from __future__ import annotations

import json
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
