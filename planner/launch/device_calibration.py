"""``planner calibrate --device cpu|cuda``: measure this machine and write a cluster YAML.

:func:`measure` starts ``nproc`` local processes (gloo; forked on CPU, spawned for CUDA),
each one "device" of a one-node cluster, and in every rank at the same time (so the
numbers include the contention of a full node, as a launched job sees it):

- GEMM: ``torch.matmul`` at a few (m, n, k) shapes (float32 with one intra-op thread on
  CPU; bf16 on CUDA), each timed over repeats of at least :data:`MIN_TIMED_S`;
- attention: ``scaled_dot_product_attention`` forward, and forward + backward, causal, at
  one shape (:data:`ATTENTION_SHAPE`);
- memory bandwidth: ``torch.add(a, b, out=c)`` on 16 Mi float32 (3 x 64 MiB moved);
- collectives: all-reduce, all-gather and all-to-all over all ranks at :data:`COLLECTIVE_BYTES`
  (nccl-tests' sizes: the buffer per rank; the full gathered buffer; all bytes one rank sends),
  the slowest rank's time;
- host time per kernel launch (:mod:`planner.launch.host_overhead`): on CPU forward +
  backward of the reference model at a few tokens, on CUDA a loop of tiny ops.

Compute figures are the median over ranks. :func:`fit` turns them into the GPU spec's terms
(:class:`~planner.specs.hardware.GPUEfficiency`): the peak is the fitted large-GEMM plateau
P (no datasheet peak exists for "one core of this CPU"), so ``gemm_max_fraction`` is 1 and
``gemm_half_dim`` h is the least-squares fit (log space) of ``rate = P f(m) f(n) f(k)``,
``f(x) = x / (x + h)``; attention fractions are the measured attention FLOP/s over P, in
FlashAttention's FLOP convention (causal = half the score matrix, backward = 2.5 x forward,
``data/costmodel/compute.yaml``); ``hbm_fraction`` is 1 on the measured bandwidth. The link
(``scale_up``: gloo over loopback between processes of one node) gets the bandwidth B and
latency L that make the planner's own collective model (:func:`planner.hwmodels.collectives.collective_cost`,
time = L x (latency terms) + bytes x (per-byte load) / B) best fit every measured
collective: the model is linear in L and 1/B, so two trial evaluations give each sample's
coefficients and a non-negative least squares gives L and 1/B. The launch overhead is
fitted last, against the compute model with the terms above (``launch`` block: synchronous
on CPU, asynchronous on CUDA).

:func:`cluster_document` writes the result as one self-contained cluster YAML (GPU spec
inline) that :func:`planner.presets.load_cluster` and ``planner simulate --cluster FILE``
accept; the measurements go in the ``source`` fields with the method and date.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path

from planner.launch import host_overhead
from planner.specs.hardware import LaunchMode

MIN_TIMED_S = 0.05
"""Shortest timed batch of repeats per measurement (timer resolution and noise)."""
CPU_GEMM_SHAPES = ((64, 64, 64), (128, 128, 128), (256, 256, 256), (512, 512, 512),
                   (1024, 256, 256), (256, 1024, 64), (64, 512, 512))
CUDA_GEMM_SHAPES = ((2048, 2048, 2048), (4096, 4096, 4096), (8192, 8192, 8192), (8192, 8192, 2048),
                    (2048, 8192, 8192), (16384, 4096, 4096))
"""Every dimension >= 2048: on an H100 (data/hardware/measurements/h100-sxm-80gb-2026-11-24,
squares.json) a 1024^3 GEMM takes ~10 us, launch- and latency-bound (223 TFLOP/s against 773
at 4096^3), outside the shape curve the fit assumes; 256^3 pulled the fitted half dimension
to 1448 when it was in the list."""
ATTENTION_SHAPE = (2, 4, 256, 32)
"""(batch, heads, seq, head_dim) of the CPU attention measurement; CUDA: (4, 16, 4096, 128)."""
CUDA_ATTENTION_SHAPE = (4, 16, 4096, 128)
COLLECTIVE_BYTES = (16 * 1024, 256 * 1024, 4 * 1024 * 1024)
MEMORY_ELEMENTS = 16 * 1024 * 1024
ATTENTION_BACKWARD_FLOPS_RATIO = 2.5
"""FlashAttention-2's backward convention, as data/costmodel/compute.yaml."""


class Device(StrEnum):
    CPU = "cpu"
    CUDA = "cuda"


@dataclass
class Measurements:
    """Raw timings of one calibration (medians over ranks; collectives: slowest rank)."""

    device: str
    nproc: int
    gemm: list[tuple[int, int, int, float]] = field(default_factory=list)
    """(m, n, k, seconds) per shape."""
    attention_shape: tuple[int, int, int, int] = ATTENTION_SHAPE
    attention_forward_s: float = 0.0
    attention_forward_backward_s: float = 0.0
    memory_bytes_per_s: float = 0.0
    collectives: list[tuple[str, int, float]] = field(default_factory=list)
    """(op, nbytes, seconds)."""
    device_name: str = ""
    memory_capacity_bytes: float = 0.0
    framework_op_s: float = 0.0
    """Host seconds per tiny torch op (in-place add of one-element tensors)."""
    launch_probe: list[tuple[str, float]] = field(default_factory=list)
    """CPU: (model preset, seconds per forward + backward at PROBE_SEQ tokens)."""


def _timed(fn, sync) -> float:
    """Seconds per call: one warm-up, then doubling repeats until a batch lasts MIN_TIMED_S."""
    fn()
    sync()
    reps = 1
    while True:
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= MIN_TIMED_S:
            return elapsed / reps
        reps *= 2


def _compute_rank(device: Device) -> dict:
    """This rank's compute timings (all ranks run them at once)."""
    import torch
    import torch.nn.functional as F

    cuda = device is Device.CUDA
    dev = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    out: dict = {"gemm": []}
    for m, n, k in CUDA_GEMM_SHAPES if cuda else CPU_GEMM_SHAPES:
        a, b = torch.randn(m, k, device=dev, dtype=dtype), torch.randn(k, n, device=dev, dtype=dtype)
        out["gemm"].append((m, n, k, _timed(lambda: torch.matmul(a, b), sync)))
    shape = CUDA_ATTENTION_SHAPE if cuda else ATTENTION_SHAPE
    q, k_, v = (torch.randn(*shape, device=dev, dtype=dtype, requires_grad=True) for _ in range(3))
    out["attention_forward_s"] = _timed(lambda: F.scaled_dot_product_attention(q, k_, v, is_causal=True), sync)

    def forward_backward():
        F.scaled_dot_product_attention(q, k_, v, is_causal=True).sum().backward()

    out["attention_forward_backward_s"] = _timed(forward_backward, sync)
    elements = MEMORY_ELEMENTS * (8 if cuda else 1)
    x, y, z = (torch.ones(elements, device=dev) for _ in range(3))
    out["memory_bytes_per_s"] = 3 * 4 * elements / _timed(lambda: torch.add(x, y, out=z), sync)
    out.update(host_overhead.measure_rank(cuda, _timed))
    return out


def _collective_iters(nbytes: int) -> int:
    """Repeats per size, the same on every rank: ~8 MiB moved per rank, 3 to 50 repeats."""
    return max(3, min(50, (8 * 1024 * 1024) // nbytes))


def _collectives_rank(world: int) -> list[tuple[str, int, float]]:
    import torch
    import torch.distributed as dist

    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    out = []
    for nbytes in COLLECTIVE_BYTES:
        n = nbytes // 4
        per = max(1, n // world)
        ops = {
            "all_reduce": lambda: dist.all_reduce(buf),
            "all_gather": lambda: gather(gathered, shard),
            "all_to_all": lambda: dist.all_to_all_single(a2a_out, a2a_in),
        }
        buf = torch.ones(n)
        shard, gathered = torch.ones(per), torch.empty(per * world)
        a2a_in, a2a_out = torch.ones(per * world), torch.empty(per * world)
        for op, fn in ops.items():
            iters = _collective_iters(nbytes)
            fn()
            dist.barrier()
            start = time.perf_counter()
            for _ in range(iters):
                fn()
            elapsed = torch.tensor([(time.perf_counter() - start) / iters], dtype=torch.float64)
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
            moved = per * world * 4 if op != "all_reduce" else n * 4
            out.append((op, moved, elapsed.item()))
    return out


def _rank_entry(rank: int, world: int, device: str, run_dir: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    if device == Device.CUDA:
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group("gloo", init_method=f"file://{run_dir}/rendezvous", rank=rank, world_size=world)
    try:
        dist.barrier()
        result = _compute_rank(Device(device))
        dist.barrier()
        result["collectives"] = _collectives_rank(world) if world > 1 else []
        torch.save(result, os.path.join(run_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _median(values: list[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else 0.5 * (s[mid - 1] + s[mid])


def _memory_capacity(device: Device, nproc: int) -> tuple[float, str]:
    import torch

    if device is Device.CUDA:
        props = torch.cuda.get_device_properties(0)
        return float(props.total_memory), props.name
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total / nproc, _cpu_name()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(device: Device, nproc: int) -> Measurements:
    """Run the measurements on ``nproc`` local ranks (see the module docstring)."""
    import torch
    import torch.multiprocessing as mp

    method = "spawn" if device is Device.CUDA else "fork"
    with tempfile.TemporaryDirectory(prefix="planner-calibrate-") as run_dir:
        mp.start_processes(_rank_entry, args=(nproc, device.value, run_dir), nprocs=nproc, join=True,
                           start_method=method)
        ranks = [torch.load(os.path.join(run_dir, f"rank{r}.pt")) for r in range(nproc)]
    gemm = [(m, n, k, _median([r["gemm"][i][3] for r in ranks])) for i, (m, n, k, _) in enumerate(ranks[0]["gemm"])]
    capacity, name = _memory_capacity(device, nproc)
    return Measurements(
        device=device.value, nproc=nproc, gemm=gemm,
        attention_shape=CUDA_ATTENTION_SHAPE if device is Device.CUDA else ATTENTION_SHAPE,
        attention_forward_s=_median([r["attention_forward_s"] for r in ranks]),
        attention_forward_backward_s=_median([r["attention_forward_backward_s"] for r in ranks]),
        memory_bytes_per_s=_median([r["memory_bytes_per_s"] for r in ranks]),
        collectives=ranks[0]["collectives"], device_name=name, memory_capacity_bytes=capacity,
        framework_op_s=_median([r["framework_op_s"] for r in ranks]),
        launch_probe=[(model, _median([r["launch_probe"][i][1] for r in ranks]))
                      for i, (model, _) in enumerate(ranks[0].get("launch_probe", []))],
    )


@dataclass(frozen=True)
class Fit:
    peak_flops_per_s: float
    gemm_half_dim: float
    gemm_rms_log_error: float
    attention_forward_fraction: float
    attention_backward_fraction: float
    memory_bytes_per_s: float
    link_bandwidth_bytes_per_s: float
    link_latency_s: float
    link_rms_relative_error: float
    launch_overhead_s: float = 0.0
    launch_mode: LaunchMode = LaunchMode.SYNCHRONOUS
    """Synchronous on CPU (eager PyTorch), asynchronous on CUDA."""
    launch_probe: list[host_overhead.ProbeRow] = field(default_factory=list)


def fit_gemm(samples: list[tuple[int, int, int, float]]) -> tuple[float, float, float]:
    """Plateau P (FLOP/s), half-dim h and the rms log error of ``rate = P f(m) f(n) f(k)``:
    for each h on a grid, log P is the mean of log(rate) - sum log f (least squares in log
    space); the h with the least residual wins."""
    rates = [(2.0 * m * n * k / s, (m, n, k)) for m, n, k, s in samples]
    best = None
    for h in [0.0] + [2.0 ** (i / 4) for i in range(0, 57)]:  # 1 .. 16384
        logs = [math.log(r) - sum(math.log(x / (x + h)) for x in shape) for r, shape in rates]
        log_p = sum(logs) / len(logs)
        rms = math.sqrt(sum((v - log_p) ** 2 for v in logs) / len(logs))
        if best is None or rms < best[2] - 1e-12:
            best = (math.exp(log_p), h, rms)
    return best


def _trial_cluster(nproc: int, bandwidth: float, latency: float):
    from planner.presets import validate_spec
    from planner.specs import ClusterSpec

    doc = cluster_document("trial", _placeholder_gpu(), nproc, bandwidth, latency, "")
    return validate_spec(ClusterSpec, doc)


def _placeholder_gpu() -> dict:
    return {"name": "trial", "peak_flops_per_s": {"bf16": 1.0}, "hbm_capacity_bytes": 1.0,
            "hbm_bandwidth_bytes_per_s": 1.0, "num_sms": 1}


def fit_link(samples: list[tuple[str, int, float]], nproc: int) -> tuple[float, float, float]:
    """Bandwidth B (bytes/s), latency L (s) and rms relative error of the planner's collective
    model over the measured ``samples`` (see the module docstring)."""
    import numpy as np

    from planner.hwmodels.collectives import CollectiveOp, collective_cost

    if not samples:
        return float("nan"), float("nan"), float("nan")
    b0, l0 = 1e9, 1e-5
    cluster = _trial_cluster(nproc, b0, l0)
    group = np.arange(nproc).reshape(1, -1)
    rows, times = [], []
    for op, nbytes, seconds in samples:
        cost = collective_cost(cluster, CollectiveOp(op), group, nbytes)
        lat_coef = cost.latency_s / l0  # latency terms per second of link latency
        byte_coef = (cost.time_s - cost.latency_s) * b0  # seconds x bandwidth
        # Weight by 1/time so every sample counts by its relative error.
        rows.append([lat_coef / seconds, byte_coef / seconds])
        times.append(1.0)
    lat, inv_bw = _nnls2(np.array(rows), np.array(times))
    if inv_bw <= 0:  # latency explains everything: take the best measured busbw instead
        inv_bw = min(seconds / nbytes for _, nbytes, seconds in samples)
    bandwidth = 1.0 / inv_bw if inv_bw > 0 else float("inf")
    pred = np.array(rows) @ np.array([lat, inv_bw])
    rms = float(np.sqrt(np.mean((pred - 1.0) ** 2)))
    return bandwidth, lat, rms


def _nnls2(a, b) -> tuple[float, float]:
    """Non-negative least squares in two unknowns: the unconstrained solution, else the
    better of the two one-variable fits."""
    import numpy as np

    x, *_ = np.linalg.lstsq(a, b, rcond=None)
    if (x >= 0).all():
        return float(x[0]), float(x[1])
    candidates = []
    for i in range(2):
        col = a[:, i]
        v = max(0.0, float(col @ b / (col @ col))) if col @ col > 0 else 0.0
        sol = [0.0, 0.0]
        sol[i] = v
        candidates.append((float(np.sum((a @ np.array(sol) - b) ** 2)), sol))
    return tuple(min(candidates)[1])


def fit(m: Measurements) -> Fit:
    """The spec terms of ``m`` (module docstring)."""
    peak, half, rms = fit_gemm(m.gemm)
    b, h, s, d = m.attention_shape
    forward_flops = 4.0 * b * h * s * s * d / 2  # QK^T and PV, causal half (FlashAttention)
    backward_s = max(m.attention_forward_backward_s - m.attention_forward_s, 1e-12)
    fwd = min(1.0, forward_flops / m.attention_forward_s / peak)
    bwd = min(1.0, ATTENTION_BACKWARD_FLOPS_RATIO * forward_flops / backward_s / peak)
    bandwidth, latency, link_rms = fit_link(m.collectives, m.nproc)
    f = Fit(peak, half, rms, fwd, bwd, m.memory_bytes_per_s, bandwidth, latency, link_rms)
    if m.device == Device.CUDA:
        return replace(f, launch_overhead_s=m.framework_op_s, launch_mode=LaunchMode.ASYNCHRONOUS)
    from planner.presets import validate_spec
    from planner.specs.hardware import GPUSpec

    device_only = validate_spec(GPUSpec, {**gpu_document(m, f, "probe"), "launch": None})
    rows = host_overhead.probe_rows(m.launch_probe, device_only)
    return replace(f, launch_overhead_s=host_overhead.fit_overhead_s(rows), launch_probe=rows)


def gpu_document(m: Measurements, f: Fit, name: str) -> dict:
    """The GPU-spec mapping (SI keys) of a calibrated device."""
    today = _dt.date.today().isoformat()
    gemm = ", ".join(f"{a}x{b}x{c} {2 * a * b * c / s / 1e9:.2f}" for a, b, c, s in m.gemm)
    dtype = "bf16" if m.device == Device.CUDA else "float32"
    b, h, s, d = m.attention_shape
    source = (
        f"Measured by planner calibrate --device {m.device} --nproc {m.nproc} on {today}: {m.device_name}, "
        f"torch matmul {dtype}" + (", one intra-op thread per process" if m.device == Device.CPU else "")
        + f", all {m.nproc} processes at once, median over processes, GFLOP/s: {gemm}. "
        f"Peak = fitted plateau P of rate = P f(m)f(n)f(k), f(x) = x/(x+h) (rms log error "
        f"{f.gemm_rms_log_error:.3f}); no datasheet peak exists for this device, so "
        f"gemm_max_fraction = 1. Every dtype key holds this one measured {dtype} rate: the "
        f"simulator prices the workload's bf16 GEMMs at it. SDPA causal (b, h, s, d) = "
        f"({b}, {h}, {s}, {d}): forward {m.attention_forward_s * 1e3:.3f} ms, forward+backward "
        f"{m.attention_forward_backward_s * 1e3:.3f} ms. Memory: torch.add of {MEMORY_ELEMENTS} "
        f"float32, {m.memory_bytes_per_s / 1e9:.2f} GB/s per process (hbm_fraction 1). "
        + ("Capacity: host RAM / processes. num_sms is not a core count: the simulator charges "
           "20 of num_sms to DualPipe's overlapped all-to-all (data/costmodel/compute.yaml), and "
           "gloo communicates on its own threads, so 2000 makes that charge 1%."
           if m.device == Device.CPU else "Capacity: torch.cuda total_memory.")
    )
    peak = f.peak_flops_per_s
    return {
        "name": name, "source": source,
        "peak_flops_per_s": {"bf16": peak, "fp16": peak, "fp32": peak, "tf32": peak},
        "hbm_capacity_bytes": m.memory_capacity_bytes,
        "hbm_bandwidth_bytes_per_s": m.memory_bytes_per_s,
        "num_sms": 2000 if m.device == Device.CPU else _cuda_sms(),
        "efficiency": {
            "source": f"Fitted by planner calibrate --device {m.device} on {today} (see source).",
            "gemm_max_fraction": {"bf16": 1.0, "fp16": 1.0, "tf32": 1.0},
            "gemm_half_dim": round(f.gemm_half_dim, 3),
            "attention_forward_fraction": f.attention_forward_fraction,
            "attention_backward_fraction": f.attention_backward_fraction,
            "hbm_fraction": 1.0,
        },
        "launch": {"source": _launch_source(m, f, today), "mode": f.launch_mode.value,
                   "overhead_s": f.launch_overhead_s},
    }


def _launch_source(m: Measurements, f: Fit, today: str) -> str:
    tiny = f"an in-place add of one-element tensors costs {m.framework_op_s * 1e6:.2f} us of host time per op"
    if m.device == Device.CUDA:
        return (f"Measured by planner calibrate --device cuda on {today} (planner/launch/host_overhead.py): "
                f"{tiny}, {host_overhead.TINY_OPS} in a row synchronised once (asynchronous).")
    rows = "; ".join(
        f"{r.model} {r.measured_s * 1e3:.2f} ms measured, {r.device_s * 1e3:.2f} ms device time, "
        f"{r.launches} launches" for r in f.launch_probe
    )
    return (
        f"Measured by planner calibrate --device cpu --nproc {m.nproc} on {today} "
        f"(planner/launch/host_overhead.py): forward + backward of the reference model on 1 x "
        f"{host_overhead.PROBE_SEQ} tokens, median over processes: {rows}; overhead = (measured - "
        f"device time) / launches = {f.launch_overhead_s * 1e6:.1f} us per modelled launch, added to "
        f"every op (eager PyTorch is synchronous). For comparison {tiny}: the runtime issues several "
        f"torch ops per modelled kernel."
    )


def _cuda_sms() -> int:
    import torch

    return torch.cuda.get_device_properties(0).multi_processor_count


def cluster_document(name: str, gpu: dict, nproc: int, bandwidth: float, latency: float, source: str) -> dict:
    """A one-node cluster of ``nproc`` devices (SI keys) whose devices meet over one switch-
    like link (loopback TCP for gloo): ``scale_up.kind: nvswitch`` is the planner's only
    full-bisection shape; the NIC and fabric are required by the schema but unused on one node."""
    return {
        "name": name, "source": source, "gpu": gpu, "num_nodes": 1,
        "node": {
            "gpus_per_node": nproc,
            "scale_up": {"kind": "nvswitch", "domain_gpus": nproc, "bandwidth_bytes_per_s": bandwidth,
                         "achievable_fraction": 1.0, "latency_s": latency},
            "nics_per_node": 1, "nic_bandwidth_bytes_per_s": bandwidth, "nic_achievable_fraction": 1.0,
        },
        "fabric": {"kind": "fat-tree", "switch_radix": 64, "tiers": 1,
                   "latency_same_leaf_s": latency, "latency_cross_leaf_s": latency},
    }


def calibrated_cluster(m: Measurements, f: Fit, name: str) -> dict:
    today = _dt.date.today().isoformat()
    coll = ", ".join(f"{op} {n} B {s * 1e6:.0f} us" for op, n, s in m.collectives)
    source = (
        f"Measured by planner calibrate --device {m.device} --nproc {m.nproc} on {today}: {m.nproc} local "
        f"processes (one device each) on one machine. Link = gloo between the processes (loopback "
        f"TCP): bandwidth and latency fitted to the planner's collective model (rms relative error "
        f"{f.link_rms_relative_error:.2f}) over the slowest rank's times: {coll}. NIC and fabric unused (one node)."
    )
    return cluster_document(name, gpu_document(m, f, f"{name}-device"), m.nproc,
                            f.link_bandwidth_bytes_per_s, f.link_latency_s, source)


def summary(m: Measurements, f: Fit) -> dict:
    """The JSON the command prints."""
    return {"measurements": asdict(m), "fit": asdict(f)}
