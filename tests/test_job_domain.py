"""Where a job's GPUs share an NVLink domain (ClusterSpec.job_domain_gpus) and the per-GPU
sustained kernel fraction (GPUEfficiency.sustained_kernel_fraction)."""

from __future__ import annotations

import numpy as np
import pytest

from planner.costmodel import compute
from planner.costmodel.ops import Op, OpKind
from planner.hwmodels.alltoall import moe_all_to_all
from planner.presets import load_cluster, load_gpu, revalidate
from planner.specs import Precision


@pytest.mark.parametrize(
    ("gpus", "domain"),
    [(576, 72), (256, 64), (128, 64), (64, 64), (72, 72), (8, 8), (4, 4), (76, 4), (96, 48)],
)
def test_nvl72_segments(gpus, domain):
    """Megatron-Bridge's launcher (scripts/performance/README.md, ``--segment``): 4-GPU trays,
    all nodes in one segment up to 18, else the largest divisor of the node count up to 18;
    so 64 trays (256 GPUs) run in segments of 16 trays = 64 GPUs, 19 trays (prime) in
    segments of one tray. The whole preset (144 trays) fills its 72-GPU racks."""
    cluster = load_cluster("gb200-nvl72", num_gpus=gpus) if gpus != 576 else load_cluster("gb200-nvl72")
    assert cluster.job_domain_gpus == domain


@pytest.mark.parametrize("name", ["dgx-h100", "deepseek-v3-h800", "dgx-a100", "fire-flyer-2"])
def test_domain_within_a_node_is_the_spec(name):
    cluster = load_cluster(name)
    assert cluster.job_domain_gpus == cluster.node.scale_up.domain_gpus


def test_ep64_groups_of_a_256_gpu_gb200_job_stay_on_nvlink():
    """Megatron-MoE-ModelZoo runs Qwen3-235B with EP64 on 256 GB200 GPUs with SEGMENT=16
    (best_practice/qwen3/run_gb200_235b.sh): every EP group, the second (GPUs 64-127) too,
    lies in one NVLink domain, so every group's all-to-all costs the first group's."""
    cluster = load_cluster("gb200-nvl72", num_gpus=256)
    args = (4096, 4096, 8, 128, None, 2.0, 2.0)
    first = moe_all_to_all(cluster, np.arange(64)[None, :], *args)
    second = moe_all_to_all(cluster, np.arange(64, 128)[None, :], *args)
    assert second.dispatch_s == pytest.approx(first.dispatch_s, rel=1e-9)
    assert second.combine_s == pytest.approx(first.combine_s, rel=1e-9)


def test_gpu_sustained_fraction_overrides_the_shared_one():
    """A GEMM takes 1 / fraction as long: the GPU's own value when its preset sets one (b200,
    gb200: 0.72, fitted on the Blackwell cases), else compute.yaml's."""
    gemm = Op("g", OpKind.GEMM, flops=2 * 8192**3, shape=(8192, 8192, 8192), fp8=True)
    shared = compute.compute_constants()["sustained_kernel_fraction"]
    h100 = load_gpu("h100-sxm-80gb")
    assert h100.efficiency.sustained_kernel_fraction is None
    assert compute.sustained_fraction(h100) == shared
    b200 = load_gpu("b200")
    assert compute.sustained_fraction(b200) == b200.efficiency.sustained_kernel_fraction == 0.72
    slow = revalidate(b200, efficiency=revalidate(b200.efficiency, sustained_kernel_fraction=0.5))
    fast = revalidate(b200, efficiency=revalidate(b200.efficiency, sustained_kernel_fraction=1.0))
    t_slow = compute.op_forward_s(gemm, slow, Precision.FP8, 1.0)
    t_fast = compute.op_forward_s(gemm, fast, Precision.FP8, 1.0)
    assert t_slow == pytest.approx(2 * t_fast, rel=1e-12)


def test_gpu_sustained_fraction_is_validated():
    b200 = load_gpu("b200")
    from planner.errors import SpecError

    with pytest.raises(SpecError):
        revalidate(b200.efficiency, sustained_kernel_fraction=1.2)


def test_describe_names_the_segment():
    from planner.cli.describe import _cluster_rows

    def scale_up(cluster):
        return dict(_cluster_rows(cluster))["scale-up"]

    assert "segments of 64" in scale_up(load_cluster("gb200-nvl72", num_gpus=256))
    assert "segments" not in scale_up(load_cluster("gb200-nvl72"))
    assert "segments" not in scale_up(load_cluster("dgx-h100", num_gpus=16))
