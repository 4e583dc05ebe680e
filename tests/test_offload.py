"""Activation offloading to host memory (Plan.cpu_offloading_num_layers, Megatron-Core's
``cpu_offloading_num_layers``): the plan's rules, what leaves the GPU, what the copies cost,
the host's capacity, and the validator's use of it for Megatron-Bridge rows."""

from __future__ import annotations

import csv

import pytest
from typer.testing import CliRunner

from planner import load_cluster, load_model
from planner.cli.main import app
from planner.costmodel import fast
from planner.costmodel.memory import activation_bytes
from planner.costmodel.offload import host_copy_rate
from planner.costmodel.partition import Piece
from planner.costmodel.report import Status
from planner.costmodel.simulate import simulate
from planner.errors import SpecError, UnsupportedError
from planner.presets import data_root, revalidate
from planner.specs import Plan, Workload
from planner.specs.compat import check_plan
from planner.validation.cases import case_inputs
from planner.validation.run import default_simulate, run_cases

MODEL = load_model("llama3-8b")
WORKLOAD = Workload(global_batch_size=32, seq_length=8192)
BASE = Plan(dp=8, micro_batch_size=2, zero_stage=1)


def _cluster(name="dgx-h100", link_bytes_per_s=None):
    """The preset, or with each GPU's host link at ``link_bytes_per_s`` and host memory fast
    enough for all eight GPUs to copy at once."""
    cluster = load_cluster(name, num_gpus=8)
    if link_bytes_per_s is not None:
        node = cluster.node
        node = revalidate(node, pcie=revalidate(node.pcie, gpu_link_bandwidth_bytes_per_s=link_bytes_per_s),
                          host=revalidate(node.host, memory_bandwidth_bytes_per_s=8 * link_bytes_per_s))
        cluster = revalidate(cluster, node=node)
    return cluster


def _with(plan: Plan, blocks: int) -> Plan:
    return revalidate(plan, cpu_offloading_num_layers=blocks)


def test_megatron_cores_rules_are_enforced():
    """TransformerConfig.__post_init__: no pipeline, no recompute, fewer blocks than layers."""
    with pytest.raises(ValueError, match="cpu_offloading_num_layers.*pp 1"):
        Plan(pp=2, dp=4, cpu_offloading_num_layers=2)
    with pytest.raises(ValueError, match="cpu_offloading_num_layers.*recompute 'none'"):
        Plan(dp=8, recompute="selective", cpu_offloading_num_layers=2)
    with pytest.raises(SpecError, match=r"cpu_offloading_num_layers.*< num_layers \(32\)"):
        check_plan(MODEL, WORKLOAD, _with(BASE, 32))
    check_plan(MODEL, WORKLOAD, _with(BASE, 31))


def test_offloaded_blocks_leave_the_gpu_and_land_on_the_host():
    """Each offloaded block takes exactly its kept activations off the GPU's peak."""
    cluster = _cluster()
    per_block = activation_bytes(MODEL, BASE, WORKLOAD, Piece.DENSE)
    base = simulate(MODEL, cluster, BASE, WORKLOAD).stages[0].memory
    for blocks in (1, 8, 31):
        mem = simulate(MODEL, cluster, _with(BASE, blocks), WORKLOAD).stages[0].memory
        assert mem.host_offload_bytes == pytest.approx(blocks * per_block, rel=1e-12)
        assert mem.activations_bytes == pytest.approx(base.activations_bytes - blocks * per_block, rel=1e-12)
        assert mem.total_bytes < base.total_bytes
        assert mem.host_capacity_bytes == pytest.approx(2000e9 / 8)  # DGX H100 datasheet: 2 TB per 8 GPUs


def test_copies_hide_behind_the_next_block_when_the_link_is_fast():
    """Exposed time is the copy beyond the next block's compute: nothing on a fast link,
    about two copies per block per micro-batch on a slow one, never less with less bandwidth."""
    plan = _with(BASE, 16)
    reference = simulate(MODEL, _cluster(), BASE, WORKLOAD).step_time_s
    fast_link = simulate(MODEL, _cluster(link_bytes_per_s=1e15), plan, WORKLOAD)
    assert fast_link.step_time_s == pytest.approx(reference, rel=1e-9)
    slow_rate = 1e9
    slow = simulate(MODEL, _cluster(link_bytes_per_s=slow_rate), plan, WORKLOAD)
    copy = activation_bytes(MODEL, plan, WORKLOAD, Piece.DENSE) / slow_rate
    micro = slow.num_microbatches
    block_compute = fast_link.compute_s / micro / MODEL.num_layers  # > one block's F + B + W
    added = slow.step_time_s - reference
    assert 16 * micro * (2 * copy - block_compute) <= added <= 16 * micro * 2 * copy
    times = [simulate(MODEL, _cluster(link_bytes_per_s=r), plan, WORKLOAD).step_time_s
             for r in (2e9, 8e9, 32e9, 128e9)]
    assert times == sorted(times, reverse=True)


def test_the_node_shares_its_host_memory_bandwidth():
    """GB200's tray: 4 GPUs at 193 GB/s each against a 763 GB/s host memory (Azure ND GB200 v6)."""
    gb200 = load_cluster("gb200-nvl72", num_gpus=8)
    assert host_copy_rate(gb200) == pytest.approx(763e9 / 4)
    assert host_copy_rate(_cluster()) == pytest.approx(51e9)  # PCIe Gen5 link, below 480 / 8


def test_unknown_or_full_host_memory_is_said():
    with pytest.raises(UnsupportedError, match="host memory capacity"):
        simulate(MODEL, load_cluster("deepseek-v3-h800", num_gpus=8), _with(BASE, 4), WORKLOAD)
    cluster = _cluster()
    small = revalidate(cluster, node=revalidate(cluster.node, host=revalidate(cluster.node.host,
                                                                               memory_capacity_bytes=8e9)))
    report = simulate(MODEL, small, _with(BASE, 16), WORKLOAD)
    assert report.status is Status.OOM
    assert any("out of host memory" in m and "cpu_offloading_num_layers" in m for m in report.messages)


def test_fast_estimate_refuses_offloading():
    with pytest.raises(UnsupportedError, match="activation offloading"):
        fast.estimate(MODEL, _cluster(), WORKLOAD, [_with(BASE, 4)])


def _gb200_row():
    path = data_root() / "validation" / "extra_cases.csv"
    rows = {r["case_id"]: r for r in csv.DictReader(path.open())}
    return rows["mbridge2511-gb200-llama3-70b-fp8cs-64gpu"]


def test_validator_offloads_the_fewest_blocks_that_fit_on_megatron_bridge_rows():
    """Megatron-Bridge's GB200 FP8-CS Llama 3 70B recipe offloads activations instead of
    recomputing (llama3_workload_base_configs.py, cpu_offloading_num_layers = 40); with the
    recompute cell empty the validator takes the fewest blocks that fit when faster."""
    row = _gb200_row()
    inputs = case_inputs(row)
    assert inputs.offload and inputs.plan.pp == 1
    result = run_cases([row], default_simulate())[0]
    assert result.status == "ok"
    taken = int(result.message.split("activation offloading of ")[1].split()[0])
    sim = default_simulate()
    plan = revalidate(inputs.plan, recompute="none")
    assert sim(inputs.model, inputs.cluster, _with(plan, taken), inputs.workload).status is Status.OK
    assert sim(inputs.model, inputs.cluster, _with(plan, taken - 1), inputs.workload).status is Status.OOM
    # Only Megatron-Core recipe sources (NeMo, Megatron-Bridge) may have offloaded.
    other = {**row, "source": "MosaicML llm-foundry 2023, MPT training benchmarks"}
    assert not case_inputs(other).offload
    assert not case_inputs({**row, "recompute": "none"}).offload


def test_cli_flag_and_launch_arguments():
    from planner.launch.emit import megatron_args

    args = ["simulate", "-m", "llama3-8b", "-c", "dgx-h100", "--gpus", "8", "--global-batch", "32",
            "--seq-len", "8192", "--micro-batch", "2", "-f", "json"]
    runner = CliRunner()
    out = runner.invoke(app, args + ["--cpu-offloading-num-layers", "8"])
    assert out.exit_code == 0, out.output
    assert "activation offloading: 8 blocks" in out.output
    bad = runner.invoke(app, args + ["--cpu-offloading-num-layers", "8", "--pp", "2"])
    assert bad.exit_code == 2 and "cpu_offloading_num_layers" in bad.output and "Traceback" not in bad.output
    lines = megatron_args(MODEL, _with(BASE, 8), WORKLOAD)
    assert "--cpu-offloading" in lines and "--cpu-offloading-num-layers 8" in lines
