"""GPUSpec, NodeSpec, FabricSpec, ClusterSpec: the hardware a plan runs on.

All fields are SI (bytes, bytes/s, FLOP/s, seconds). The YAML presets in
``data/hardware`` write friendly units in keys that say so (``hbm_capacity_gib``,
``bandwidth_gb_per_s``, ``peak_tflops``, ``latency_us``); :mod:`planner.units` converts
them once on load. Bandwidths are per direction unless a field says otherwise.

``achievable_fraction`` fields hold the share of a link's spec bandwidth that real
collectives reach, each with its source in the preset; the collective cost models of
:mod:`planner.hwmodels` use them. This module only describes hardware; it computes nothing.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator

from planner.errors import SpecError, UnsupportedError
from planner.specs._base import Spec, rule_error

Fraction = Field(gt=0.0, le=1.0)


class Dtype(StrEnum):
    """Tensor-core input formats with a dense peak on the datasheet."""

    FP32 = "fp32"
    TF32 = "tf32"
    FP16 = "fp16"
    BF16 = "bf16"
    FP8 = "fp8"
    FP4 = "fp4"


class AttentionShape(Spec):
    """How flash attention's rate moves with the kernel's shape, measured on the GPU: each
    direction's rate goes as ``t / (t + t_half) * s / (s + s_half)``, ``t`` the query tiles
    of 128 rows one launch runs (micro-batch x heads per GPU x query length / 128), per SM,
    and ``s`` the sequence length. The preset's attention fractions hold at the reference
    shape; a smaller or shorter launch scales them by the ratio of the two curves (never up:
    the measured rates stop rising past the reference)."""

    half_tiles_per_sm: tuple[PositiveFloat, PositiveFloat]
    """(forward, backward) query tiles per SM at which occupancy alone halves the rate."""
    half_seq: tuple[NonNegativeFloat, NonNegativeFloat]
    """(forward, backward) key length at which the length alone halves the rate."""
    reference_tiles: PositiveFloat
    """Query tiles of the shape the attention fractions were quoted at."""
    reference_seq: PositiveFloat
    """Key length of that shape."""
    min_tiles: PositiveFloat
    """Fewest query tiles measured: a smaller launch is priced as this one (latency-bound
    launches are outside the curve)."""
    min_seq: PositiveFloat
    """Shortest sequence measured: a shorter one is priced as this one."""


class GPUEfficiency(Spec):
    """Achievable shares of the datasheet peaks, each set in the preset with its source.

    The compute model prices a GEMM of shape (m, n, k) at
    ``peak(dtype) * gemm_max_fraction[dtype] * f(m) * f(n) * f(k)`` with
    ``f(x) = x / (x + h)``, ``h`` = :meth:`half_dim` of the format: large GEMMs run at the
    measured plateau, thin ones (few tokens per expert, narrow TP shards) lose tiles and waves.
    """

    source: str
    gemm_max_fraction: dict[Dtype, float]
    """Large-GEMM plateau as a fraction of the dense peak, per input format."""
    gemm_half_dim: NonNegativeFloat
    """GEMM dimension at which that dimension alone halves efficiency (every format
    without an entry in :attr:`gemm_half_dim_by_dtype`)."""
    gemm_half_dim_by_dtype: dict[Dtype, NonNegativeFloat] = {}
    """Per-format half dimensions where a format's own size sweep sets one: a faster
    format reaches its plateau only at larger sizes (the per-tile fixed costs stay while
    the math per tile shrinks)."""
    attention_forward_fraction: float = Fraction
    """Flash-attention forward FLOP/s as a fraction of the BF16 peak (long sequences)."""
    attention_backward_fraction: float = Fraction
    """Flash-attention backward FLOP/s as a fraction of the BF16 peak."""
    flash_attention_2_fractions: tuple[float, float] | None = None
    """(forward, backward) of FlashAttention-2 on this GPU, where the two fractions above
    are a faster kernel's (cuDNN on Hopper): what PyTorch's SDPA runs by default (its
    ``flash`` backend), as PyTorch-native trainers do; see :meth:`with_flash_attention_2`."""
    attention_shape: AttentionShape | None = None
    """How the attention fractions move with occupancy and length (None: they hold for every
    shape)."""
    hbm_fraction: float = Fraction
    """Achievable share of HBM bandwidth for memory-bound kernels (norms, casts, optimizer)."""
    fp8_split_accumulation_fraction: float | None = Field(default=None, gt=0.0, le=1.0)
    """Share of the FP8 GEMM rate above that a GEMM keeps with split accumulation (partial
    sums promoted to FP32 registers), as FP8 training runs a Linear's dgrad and wgrad; None:
    the FP8 rate above already holds for every FP8 GEMM (an in-training rate, or a GPU
    without a faster accumulation mode)."""
    sustained_kernel_fraction: float | None = Field(default=None, gt=0.0, le=1.0)
    """Share of the GEMM and attention rates above that kernels sustain inside a training
    step on this GPU, fitted with ``planner calibrate --from-cases FILE --gpu NAME`` and set
    with its leave-one-source-out error; None: data/costmodel/compute.yaml's
    ``sustained_kernel_fraction``, the value fitted on the other GPUs' cases."""

    @model_validator(mode="after")
    def _check(self) -> GPUEfficiency:
        for dtype, value in self.gemm_max_fraction.items():
            if not 0.0 < value <= 1.0:
                raise rule_error(f"gemm_max_fraction.{dtype}", value, "must be in (0, 1]")
        for dtype in self.gemm_half_dim_by_dtype:
            if dtype not in self.gemm_max_fraction:
                raise rule_error(f"gemm_half_dim_by_dtype.{dtype}", self.gemm_half_dim_by_dtype[dtype],
                                 "needs a gemm_max_fraction for the same format")
        for value in self.flash_attention_2_fractions or ():
            if not 0.0 < value <= 1.0:
                raise rule_error("flash_attention_2_fractions", self.flash_attention_2_fractions,
                                 "must be in (0, 1]")
        return self

    def half_dim(self, dtype: Dtype) -> float:
        """GEMM half dimension of ``dtype``: its own entry, else :attr:`gemm_half_dim`."""
        return self.gemm_half_dim_by_dtype.get(dtype, self.gemm_half_dim)

    def with_flash_attention_2(self) -> GPUEfficiency:
        """These efficiencies with attention at :attr:`flash_attention_2_fractions` (itself
        when the GPU sets none: its attention fractions are FlashAttention-2's already)."""
        if self.flash_attention_2_fractions is None:
            return self
        forward, backward = self.flash_attention_2_fractions
        return self.model_copy(update={"attention_forward_fraction": forward,
                                       "attention_backward_fraction": backward})


class LaunchMode(StrEnum):
    """How the host's per-op time meets the device's."""

    SYNCHRONOUS = "synchronous"
    """The host finishes each op before it issues the next (eager PyTorch on CPU): an op
    takes its device time plus the launch overhead."""
    ASYNCHRONOUS = "asynchronous"
    """The host queues ops ahead of the device (CUDA streams): an op takes the larger of
    its device time and the launch overhead, which hides behind longer ops."""


class LaunchOverhead(Spec):
    """Host (framework) time per kernel launch, set in the preset with its source."""

    source: str
    mode: LaunchMode
    overhead_s: NonNegativeFloat
    """Host seconds per modelled kernel launch: one per op of
    :func:`planner.costmodel.compute.piece_ops` in forward, and its backward launches
    (:func:`planner.costmodel.compute.op_launches`)."""


class GPUSpec(Spec):
    """One accelerator. Peaks are dense (no 2:4 sparsity)."""

    name: str
    source: str = ""
    peak_flops_per_s: dict[Dtype, PositiveFloat]
    """Dense peak per input format; BF16 is required (it is the MFU reference)."""
    hbm_capacity_bytes: PositiveFloat
    hbm_bandwidth_bytes_per_s: PositiveFloat
    num_sms: PositiveInt
    """Streaming multiprocessors (H800: 132; V3 §3.5.1 reserves 20 for communication)."""
    power_w: PositiveFloat | None = None
    """Board power (TDP)."""
    efficiency: GPUEfficiency | None = None
    """Achievable fractions of the peaks; the simulator needs them (None = unsupported)."""
    launch: LaunchOverhead | None = None
    """Host time per kernel launch; None = no host term, every op takes its device time
    (kernels long enough to hide their launches, as in large-model GPU training)."""

    @model_validator(mode="after")
    def _check(self) -> GPUSpec:
        if Dtype.BF16 not in self.peak_flops_per_s:
            raise rule_error("peak_flops_per_s", sorted(self.peak_flops_per_s), "must include bf16")
        return self

    def peak(self, dtype: Dtype) -> float:
        """Dense peak FLOP/s for ``dtype``; unsupported formats fail loudly."""
        try:
            return self.peak_flops_per_s[dtype]
        except KeyError:
            raise UnsupportedError(f"{self.name} has no {dtype} peak in its spec") from None


class ScaleUpKind(StrEnum):
    """How GPUs inside one scale-up domain talk."""

    NVSWITCH = "nvswitch"
    """All GPUs of the domain through NVSwitch at full bisection (HGX/DGX, NVL72)."""
    NVLINK_BRIDGE_PAIRS = "nvlink-bridge-pairs"
    """NVLink bridges on GPU pairs; everything else over PCIe (Fire-Flyer 2)."""
    PCIE = "pcie"
    """No NVLink: GPUs meet over PCIe and the CPU."""


class ScaleUpSpec(Spec):
    """The NVLink (or PCIe-only) domain."""

    kind: ScaleUpKind
    domain_gpus: PositiveInt
    """GPUs that share one NVLink domain: 8 (HGX), 2 (bridged pairs), 72 (NVL72)."""
    bandwidth_bytes_per_s: PositiveFloat
    """Per GPU per direction, datasheet."""
    achievable_fraction: float = Fraction
    """Share of ``bandwidth_bytes_per_s`` collectives reach."""
    latency_s: NonNegativeFloat
    """Small-message end-to-end latency."""


class PCIeSpec(Spec):
    """Host PCIe attachment of GPUs and NICs (matters on PCIe-only nodes)."""

    gpu_link_bandwidth_bytes_per_s: PositiveFloat
    """GPU <-> CPU per direction, achievable (PCIe 4.0 x16 > 27 GB/s, Fire-Flyer §IV-D)."""
    root_ports: list[list[int]] | None = None
    """GPU indices on each CPU root port; a port with two GPUs is shared (Fire-Flyer: 5, 6)."""
    root_port_bandwidth_bytes_per_s: PositiveFloat | None = None
    """Cap of one root port toward the CPU (Fire-Flyer §IV-D: ~37.5 GB/s)."""
    gpu_nic_p2p_bandwidth_bytes_per_s: PositiveFloat | None = None
    """GPUDirect GPU <-> NIC limit when the CPU lacks chained writes (EPYC Rome: ~9 GiB/s)."""
    root_port_duplex_bandwidth_bytes_per_s: PositiveFloat | None = None
    """Cap on the sum of both directions through one root port, for ports that lose
    bandwidth when traffic runs both ways (Fire-Flyer §IV-D); None = directions independent."""
    latency_s: NonNegativeFloat | None = None
    """GPU-to-GPU small-message latency through the host; None = unknown (paths that need
    it are reported unsupported rather than guessed)."""


class HostSpec(Spec):
    """CPU side of a node, for paths that reduce or stage in host memory (HFReduce)."""

    cpu_sockets: PositiveInt
    memory_bandwidth_bytes_per_s: PositiveFloat
    """Practical host memory bandwidth."""
    memory_capacity_bytes: PositiveFloat | None = None
    """Host memory of the node, for what plans park there (activation offloading); None =
    unknown, and such plans are reported unsupported rather than guessed."""
    cpu_allreduce: bool = False
    """The node runs HFReduce-style all-reduce (Fire-Flyer §IV): D2H copy, CPU reduction in
    host memory, inter-node double binary tree from host memory, H2D with GDRCopy."""
    staggered_pipeline_p2p: bool = False
    """The node's GPUs (different data-parallel ranks) stagger their pipeline transfers in
    time, so a shared NIC carries one at a time (HaiScale, Fire-Flyer §V-B2)."""


class NodeSpec(Spec):
    """One server."""

    gpus_per_node: PositiveInt
    scale_up: ScaleUpSpec
    nics_per_node: PositiveInt
    """Scale-out (compute fabric) NICs."""
    nic_bandwidth_bytes_per_s: PositiveFloat
    """Per NIC per direction, line rate."""
    nic_achievable_fraction: float = Fraction
    """Share of NIC line rate that large messages reach."""
    pcie: PCIeSpec | None = None
    host: HostSpec | None = None

    @model_validator(mode="after")
    def _check_root_ports(self) -> NodeSpec:
        # A root port naming a GPU the node lacks is a dangling link in the topology.
        ports = self.pcie.root_ports if self.pcie is not None else None
        if ports is not None and sorted(i for port in ports for i in port) != list(range(self.gpus_per_node)):
            last = self.gpus_per_node - 1
            raise rule_error("pcie.root_ports", ports, f"must place each of the {self.gpus_per_node} GPUs (0..{last}) once")
        return self


class FabricKind(StrEnum):
    """Scale-out network shape."""

    FAT_TREE = "fat-tree"
    """Non-blocking Clos; every NIC of a node on the same tree."""
    RAIL_OPTIMIZED = "rail-optimized"
    """NIC i of every node on rail i's leaf switches (DGX SuperPOD)."""
    MULTI_PLANE_FAT_TREE = "multi-plane-fat-tree"
    """One independent fat tree per NIC index (DeepSeek-V3 MPFT, ISCA'25 §5.1)."""


class FabricSpec(Spec):
    """Scale-out network."""

    kind: FabricKind
    planes: PositiveInt = 1
    """Independent networks (MPFT: one per GPU-NIC pair)."""
    switch_radix: PositiveInt
    """Ports per switch."""
    tiers: PositiveInt = 2
    """Switch layers (2 = leaf/spine)."""
    oversubscription: float = Field(default=1.0, ge=1.0)
    """Leaf downlink : uplink bandwidth ratio (1 = non-blocking)."""
    zones: PositiveInt = 1
    """Separately built trees joined by a few links (Fire-Flyer 2: two zones)."""
    nodes_per_zone: PositiveInt | None = None
    cross_zone_bandwidth_bytes_per_s: PositiveFloat | None = None
    """Total bandwidth between zones per direction; required when zones > 1."""
    cross_zone_flow_bandwidth_bytes_per_s: PositiveFloat | None = None
    """What one node-to-node flow gets across the zone links (static routing pins a node
    pair to one path); None = only the total applies."""
    latency_same_leaf_s: NonNegativeFloat
    latency_cross_leaf_s: NonNegativeFloat

    @model_validator(mode="after")
    def _check(self) -> FabricSpec:
        if self.zones > 1 and (self.nodes_per_zone is None or self.cross_zone_bandwidth_bytes_per_s is None):
            raise rule_error("zones", self.zones, "zones > 1 needs nodes_per_zone and cross_zone_bandwidth")
        if self.latency_cross_leaf_s < self.latency_same_leaf_s:
            raise rule_error(
                "latency_cross_leaf_s",
                self.latency_cross_leaf_s,
                f"must be >= latency_same_leaf_s ({self.latency_same_leaf_s})",
            )
        return self


class ClusterSpec(Spec):
    """A homogeneous cluster: ``num_nodes`` copies of ``node`` on ``fabric``."""

    name: str
    source: str = ""
    gpu: GPUSpec
    num_nodes: PositiveInt
    node: NodeSpec
    fabric: FabricSpec

    @model_validator(mode="after")
    def _check(self) -> ClusterSpec:
        per_node = self.node.gpus_per_node
        domain = self.node.scale_up.domain_gpus
        if domain <= per_node and per_node % domain:
            raise rule_error(
                "node.scale_up.domain_gpus", domain, f"must divide gpus_per_node ({per_node})"
            )
        if domain > per_node and domain % per_node:
            raise rule_error(
                "node.scale_up.domain_gpus",
                domain,
                f"a domain wider than a node must be a multiple of gpus_per_node ({per_node})",
            )
        if self.node.nics_per_node % self.fabric.planes:
            raise rule_error(
                "fabric.planes",
                self.fabric.planes,
                f"must divide node.nics_per_node ({self.node.nics_per_node})",
            )
        return self

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.node.gpus_per_node

    @property
    def job_domain_gpus(self) -> int:
        """GPUs of this cluster (one job's allocation) that share one NVLink domain, in rank
        order. A domain no wider than a node is the spec's. A multi-node domain (NVL72: 18
        trays of 4) holds a *segment* of the job: all its nodes when they fit in one domain,
        else the largest divisor of the node count that fits, so that every segment is whole
        and lies in one domain. That is the Slurm ``--segment`` default of NVIDIA's
        Megatron-Bridge launcher ("4-GPU-node jobs use all nodes when the job has at most 18
        nodes, otherwise the largest divisor of the node count up to 18";
        scripts/performance/README.md), and Megatron-MoE-ModelZoo runs EP64 on GB200 with
        ``SEGMENT=16`` (best_practice/qwen3/run_gb200_235b.sh): 256 GPUs in 4 domains of 64."""
        per_node, domain = self.node.gpus_per_node, self.node.scale_up.domain_gpus
        if domain <= per_node:
            return domain
        fit = domain // per_node
        segment = max(d for d in range(1, min(fit, self.num_nodes) + 1) if self.num_nodes % d == 0)
        return segment * per_node

    def with_num_gpus(self, num_gpus: int) -> ClusterSpec:
        """The same cluster with ``num_gpus`` GPUs (whole nodes)."""
        per_node = self.node.gpus_per_node
        if num_gpus < 1 or num_gpus % per_node:
            raise SpecError("gpus", num_gpus, f"must be a positive multiple of gpus_per_node ({per_node})")
        return self.model_copy(update={"num_nodes": num_gpus // per_node})
