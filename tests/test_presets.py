"""Every shipped preset loads, cites a source, and is named after its file."""

from __future__ import annotations

import pytest

from planner.presets import data_root, load_cluster, load_gpu, load_model, preset_names

REQUIRED = {
    "model": {
        "deepseek-v3", "deepseek-v2", "deepseek-v2-lite", "deepseekmoe-2b", "deepseekmoe-16b",
        "deepseekmoe-145b", "deepseek-llm-7b", "deepseek-llm-67b", "llama2-7b", "llama2-13b",
        "llama2-70b", "llama3-8b", "llama3-70b", "llama3-405b", "gpt3-175b", "mixtral-8x7b",
        "qwen3-235b-a22b",
    },
    # The `gpu` vocabulary of ../shared/validation/README.md.
    "gpu": {
        "h800-sxm-80gb", "h100-sxm-80gb", "h100-sxm-95gb-500w", "a100-sxm-40gb", "a100-sxm-80gb",
        "a100-pcie-40gb", "b200", "gb200",
    },
    "cluster": {"deepseek-v3-h800", "fire-flyer-2", "dgx-a100", "dgx-h100", "dgx-b200", "gb200-nvl72"},
}
LOADERS = {"model": load_model, "gpu": load_gpu, "cluster": load_cluster}


@pytest.mark.parametrize("kind", sorted(REQUIRED))
def test_required_presets_exist(kind):
    assert REQUIRED[kind] <= set(preset_names(kind))


@pytest.mark.parametrize(("kind", "name"), [(k, n) for k in sorted(REQUIRED) for n in sorted(REQUIRED[k])])
def test_preset_loads_and_cites_source(kind, name):
    spec = LOADERS[kind](name)
    assert spec.name == name
    assert len(spec.source) > 20, f"{name} must cite its source"


def test_validation_cases_ship_with_the_data():
    assert (data_root() / "validation" / "public_cases.csv").is_file()


def test_deepseek_v3_cluster_numbers():
    """Seeds-digest §2.1 / §5: 2048 H800 on 256 nodes, 8 x 400G IB per node, 8-plane
    fat tree, NVLink 160 GB/s achievable, IB 40 GB/s effective, 132 SMs."""
    c = load_cluster("deepseek-v3-h800")
    assert (c.num_gpus, c.num_nodes, c.node.nics_per_node, c.fabric.planes) == (2048, 256, 8, 8)
    assert c.node.nic_bandwidth_bytes_per_s == pytest.approx(50e9)
    up = c.node.scale_up
    assert up.bandwidth_bytes_per_s * up.achievable_fraction == pytest.approx(160e9)
    assert c.node.nic_bandwidth_bytes_per_s * c.node.nic_achievable_fraction == pytest.approx(40e9)
    assert c.gpu.num_sms == 132
    assert c.gpu.peak_flops_per_s["bf16"] == pytest.approx(989e12, rel=0.001)


def test_fire_flyer_numbers():
    """Fire-Flyer AI-HPC (arXiv 2408.14158) Table I and §IV-D: PCIe A100-40GB, one 200G
    NIC per node, NVLink-bridged pairs, GPU5/GPU6 on one root port of ~37.5 GB/s, 320 GB/s
    host memory, two zones."""
    c = load_cluster("fire-flyer-2")
    assert c.gpu.name == "a100-pcie-40gb"
    assert c.node.nics_per_node == 1
    assert c.node.nic_bandwidth_bytes_per_s == pytest.approx(25e9)
    assert c.node.scale_up.kind == "nvlink-bridge-pairs" and c.node.scale_up.domain_gpus == 2
    assert [5, 6] in c.node.pcie.root_ports
    assert c.node.pcie.root_port_bandwidth_bytes_per_s == pytest.approx(37.5e9)
    assert c.node.host.memory_bandwidth_bytes_per_s == pytest.approx(320e9)
    assert c.fabric.zones == 2
