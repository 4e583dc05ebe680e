"""Second pass over one CUDA GPU (after ``measure.py``): how kernel rates hold up when the GPU
runs them back to back for seconds, as a training step does, and where the reference model's
step time goes. Writes JSON under ``--out``:

- ``squares.json``: square GEMMs 512^3 .. 16384^3 in BF16 and FP8 (fast and split
  accumulation), ``do_bench`` medians as in measure.py: the rows the literature quotes;
- ``sustained.json``: one large GEMM per format (8192 x 28672 x 8192, Llama-3-70B's FC1 at
  tp 1) and the cuDNN attention forward + backward, each looped without pause for
  ``--seconds``; chunks of calls timed with CUDA events while ``nvidia-smi`` samples the SM
  clock and power every 200 ms. The first chunk's rate (burst) against the last third's
  (sustained) and the clocks under load;
- ``stream.json``: small GEMMs (MoE experts, routers) issued back to back as a layer issues
  them, eagerly and as a CUDA-graph replay, against one alone with L2 flushed;
- ``profile.json``: the reference model's dense training step (measure.py's first
  reference config) under ``torch.profiler``: CUDA kernel time by kind (GEMM, attention,
  optimizer, other) against the step's wall time; then the same step under ``torch.compile``.

    python benchmarks/gpu/sustain.py --out DIR [--seconds 12]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from measure import REFERENCE_MODELS, Bench, _fp8_gemm, _write  # noqa: E402

SQUARES = (512, 1024, 2048, 4096, 8192, 16384)
SUSTAINED_GEMM = (8192, 28672, 8192)
SUSTAINED_ATTENTION = (4, 32, 4096, 128)  # batch, heads, seq, head dim (causal)
KINDS = (("attention", ("flash", "fmha", "cudnn", "attn")), ("optimizer", ("adam",)),
         ("gemm", ("gemm", "xmma", "cutlass", "nvjet", "cublas", "sm90_", "matmul")))


class ClockSampler(threading.Thread):
    """nvidia-smi's SM clock (MHz) and power (W) every 200 ms, with host timestamps."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float, float]] = []
        self._proc = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits", "-lms", "200"],
            stdout=subprocess.PIPE, text=True)

    def run(self) -> None:
        for line in self._proc.stdout:
            try:
                clock, power = (float(x) for x in line.split(","))
            except ValueError:
                continue
            self.samples.append((time.perf_counter(), clock, power))

    def stop(self) -> None:
        self._proc.terminate()


def squares(bench: Bench, dev) -> list[dict]:
    rows = []
    for n in SQUARES:
        a, b = torch.randn(n, n, device=dev, dtype=torch.bfloat16), torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        row = {"n": n, "bf16_s": bench(lambda: torch.matmul(a, b))}
        row["fp8_fast_s"] = _fp8_gemm(bench, dev, n, n, n, True)
        row["fp8_split_s"] = _fp8_gemm(bench, dev, n, n, n, False)
        rows.append(row)
        del a, b
    return rows


def _loop(fn, flops: float, seconds: float, sampler: ClockSampler) -> dict:
    """Run ``fn`` back to back for ``seconds``, in chunks timed with CUDA events."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    t0 = time.perf_counter()
    one = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    one[0].record()
    fn()
    one[1].record()
    torch.cuda.synchronize()
    per_call = one[0].elapsed_time(one[1]) / 1e3
    calls = max(1, int(0.2 / per_call))  # ~200 ms chunks
    chunks = []
    while time.perf_counter() - start < seconds:
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        h0 = time.perf_counter()
        e0.record()
        for _ in range(calls):
            fn()
        e1.record()
        e1.synchronize()
        chunks.append((h0 - t0, calls * flops / (e0.elapsed_time(e1) / 1e3)))
    end = time.perf_counter()
    window = [s for s in sampler.samples if start <= s[0] <= end]
    late = [s for s in window if s[0] >= start + 2 * (end - start) / 3]
    rates = [r for _, r in chunks]
    return {"first_call_flops_per_s": flops / per_call, "chunk_flops_per_s": rates,
            "first_chunk_flops_per_s": rates[0], "last_third_flops_per_s": statistics.median(rates[2 * len(rates) // 3:]),
            "sm_clock_mhz_last_third": statistics.median([c for _, c, _ in late]) if late else None,
            "power_w_last_third": statistics.median([p for _, _, p in late]) if late else None,
            "clock_samples": [(round(t - start, 2), c, p) for t, c, p in window]}


def sustained(dev, seconds: float) -> list[dict]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    sampler = ClockSampler()
    sampler.start()
    time.sleep(1.0)
    m, n, k = SUSTAINED_GEMM
    rows = []
    a, w = torch.randn(m, k, device=dev, dtype=torch.bfloat16), torch.randn(n, k, device=dev, dtype=torch.bfloat16)
    rows.append({"kernel": "gemm_bf16", "shape": [m, n, k],
                 **_loop(lambda: torch.matmul(a, w.t()), 2.0 * m * n * k, seconds, sampler)})
    a8, w8 = a.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn).t()
    one = torch.ones((), device=dev)
    for fast in (True, False):
        rows.append({"kernel": f"gemm_fp8_{'fast' if fast else 'split'}", "shape": [m, n, k], **_loop(
            lambda: torch._scaled_mm(a8, w8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16, use_fast_accum=fast),
            2.0 * m * n * k, seconds, sampler)})
    del a, w, a8, w8
    b, h, s, d = SUSTAINED_ATTENTION
    q, kk, v = (torch.randn(b, h, s, d, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    grad = torch.randn(b, h, s, d, device=dev, dtype=torch.bfloat16)

    def attention():
        o = F.scaled_dot_product_attention(q, kk, v, is_causal=True)
        torch.autograd.grad(o, (q, kk, v), grad)

    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        # forward + backward in FlashAttention's convention: 3.5 x the causal forward's FLOPs
        rows.append({"kernel": "attention_cudnn_fwd_bwd", "shape": [b, h, s, d],
                     **_loop(attention, 3.5 * 2.0 * b * h * s * s * 2 * d * 0.5, seconds, sampler)})
    sampler.stop()
    return rows


STREAM_SHAPES = ((256, 768, 2048), (1024, 768, 2048), (2048, 2048, 768), (4096, 128, 2048), (4096, 4096, 4096))
STREAM_GEMMS = 32


def stream(bench: Bench, dev) -> list[dict]:
    """Small GEMMs as a MoE layer issues them: STREAM_GEMMS different weights, back to back on
    one stream, operands not flushed from L2, timed as a whole (eagerly and as one CUDA-graph
    replay), against one GEMM alone with L2 flushed (do_bench, as gemm.json)."""
    rows = []
    for m, n, k in STREAM_SHAPES:
        xs = [torch.randn(m, k, device=dev, dtype=torch.bfloat16) for _ in range(STREAM_GEMMS)]
        ws = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) for _ in range(STREAM_GEMMS)]

        def run():
            for x, w in zip(xs, ws):
                torch.matmul(x, w.t())

        single = bench(lambda: torch.matmul(xs[0], ws[0].t()))
        eager = bench(run) / STREAM_GEMMS
        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            run()
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            run()
        graphed = bench(graph.replay) / STREAM_GEMMS
        rows.append({"m": m, "n": n, "k": k, "gemms": STREAM_GEMMS, "single_flushed_s": single,
                     "eager_in_sequence_s": eager, "graph_in_sequence_s": graphed})
        del xs, ws, graph
    return rows


def _kind(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(key in low for key in keys):
            return kind
    return "other"


PROFILE_MODELS = {
    # label: (preset, update, micro-batch sequences, sequence length)
    "dense-0.9b": REFERENCE_MODELS[0][1:],
    # Llama-3-8B's block (d 4096, GQA 32/8, SwiGLU 14336, vocab 128256, 8k tokens), 6 of its
    # 32 layers so that fp32 weights, gradients and Adam states fit one 80 GB GPU.
    "llama3-8b-6l": ("llama3-8b", {"name": "llama3-8b-6l", "num_layers": 6}, 1, 8192),
    # One tensor-parallel rank of Llama-3-70B at tp 8 (no sequence parallelism): the same
    # per-GPU GEMMs and attention (8 query heads, 1 KV head, FFN 28672 / 8, the head's 128256 / 8
    # vocabulary columns) on one GPU, without the TP collectives; 8 of its 80 layers.
    "llama3-70b-tp8-8l": ("llama3-70b", {"name": "llama3-70b-tp8-8l", "num_layers": 8, "num_attention_heads": 8,
                                         "num_kv_heads": 1, "head_dim": 128, "ffn_hidden_size": 3584,
                                         "vocab_size": 16032}, 1, 8192),
}


def _by_kind(prof, steps: int) -> tuple[dict[str, float], list]:
    by_kind: dict[str, float] = {}
    top = []
    for evt in prof.key_averages():
        dev_us = getattr(evt, "self_device_time_total", None) or getattr(evt, "self_cuda_time_total", 0)
        if dev_us <= 0 or evt.device_type.name != "CUDA":
            continue
        by_kind[_kind(evt.key)] = by_kind.get(_kind(evt.key), 0.0) + dev_us / 1e6 / steps
        top.append((evt.key[:120], dev_us / 1e6 / steps, evt.count // steps))
    top.sort(key=lambda x: -x[1])
    return by_kind, top[:40]


def _float8(model, recipe: str):
    """torchao's float8 training (as TorchTitan runs it) on every Linear but the output head:
    dynamic scaling of the ``recipe`` (tensorwise: one scale per tensor)."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    config = Float8LinearConfig.from_recipe_name(recipe)
    return convert_to_float8_training(model, config=config, module_filter_fn=lambda mod, fqn: fqn != "head")


def profile(dev, steps: int, label: str = "dense-0.9b", fp8: str | None = None) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from planner.model.deepseek import Transformer
    from planner.presets import load_model

    preset, update, micro_batch, seq = PROFILE_MODELS[label]
    spec = load_model(preset)
    spec = spec.model_validate({**spec.model_dump(), **update})
    torch.manual_seed(0)
    model = Transformer(spec).to(dev)
    if fp8:
        model = _float8(model, fp8)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step(loss_fn):
        tokens = torch.randint(0, spec.vocab_size, (micro_batch, seq + 1), device=dev)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def timed(loss_fn, n):
        times = []
        for _ in range(n):
            torch.cuda.synchronize()
            t = time.perf_counter()
            step(loss_fn)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        return times

    out = {"label": label, "spec": spec.model_dump(mode="json"), "micro_batch": micro_batch, "seq_len": seq,
           "fp8": fp8}
    timed(model.loss, 3)
    with torch_profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        wall = timed(model.loss, steps)
    by_kind, top = _by_kind(prof, steps)
    out.update(eager_wall_s=wall, kernel_s_by_kind=by_kind, top_kernels=top,
               eager_peak_allocated_bytes=torch.cuda.max_memory_allocated())
    try:
        compiled = torch.compile(model.loss)  # the whole loss (blocks, head, cross entropy)
        t = time.perf_counter()
        timed(compiled, 2)
        out["compile_s"] = time.perf_counter() - t
        out["compiled_step_s"] = timed(compiled, 6)
        with torch_profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            timed(compiled, steps)
        out["compiled_kernel_s_by_kind"], out["compiled_top_kernels"] = _by_kind(prof, steps)
    except Exception as exc:  # noqa: BLE001 - record why, keep the rest
        out["compile_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--parts", default="squares,sustained,profile,stream")
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--model", default="dense-0.9b", choices=sorted(PROFILE_MODELS), help="profiled configuration")
    ap.add_argument("--fp8", default=None, help="torchao float8 recipe for the profiled model's Linears (tensorwise)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    dev = torch.device("cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    if "squares" in parts:
        rows = squares(Bench(True, False), dev)
        _write(args.out, "squares.json", rows)
        for r in rows:
            f = 2 * r["n"] ** 3 / 1e12
            print(f"square {r['n']:6d}: bf16 {f / r['bf16_s']:6.0f} fp8 fast {f / r['fp8_fast_s']:6.0f} "
                  f"split {f / r['fp8_split_s']:6.0f} TFLOP/s", flush=True)
    if "sustained" in parts:
        rows = sustained(dev, args.seconds)
        _write(args.out, "sustained.json", rows)
        for r in rows:
            print(f"sustained {r['kernel']:24s} first call {r['first_call_flops_per_s'] / 1e12:6.0f} first chunk "
                  f"{r['first_chunk_flops_per_s'] / 1e12:6.0f} last third {r['last_third_flops_per_s'] / 1e12:6.0f} "
                  f"TFLOP/s at {r['sm_clock_mhz_last_third']} MHz {r['power_w_last_third']} W", flush=True)
    if "stream" in parts:
        rows = stream(Bench(True, False), dev)
        _write(args.out, "stream.json", rows)
        for r in rows:
            flops = 2.0 * r["m"] * r["n"] * r["k"]
            print(f"stream {r['m']}x{r['n']}x{r['k']}: alone {r['single_flushed_s'] * 1e6:.1f} us, in sequence "
                  f"{r['eager_in_sequence_s'] * 1e6:.1f} us eager, {r['graph_in_sequence_s'] * 1e6:.1f} us graphed "
                  f"({flops / r['graph_in_sequence_s'] / 1e12:.0f} TFLOP/s)", flush=True)
    if "profile" in parts:
        p = profile(dev, args.steps, args.model, args.fp8)
        name = "profile" + ("" if args.model == "dense-0.9b" else f"-{args.model}") + (f"-fp8-{args.fp8}" if args.fp8 else "")
        _write(args.out, f"{name}.json", p)
        compiled = (f"compiled {statistics.median(p['compiled_step_s']) * 1e3:.1f} ms/step"
                    if "compiled_step_s" in p else p.get("compile_error"))
        kinds = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in sorted(p["kernel_s_by_kind"].items()))
        print(f"profile {args.model} eager {statistics.median(p['eager_wall_s']) * 1e3:.1f} ms/step (profiled), "
              f"kernels {kinds}; {compiled}", flush=True)
        if "compiled_kernel_s_by_kind" in p:
            print("compiled kernels " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in
                                                  sorted(p["compiled_kernel_s_by_kind"].items())), flush=True)


if __name__ == "__main__":
    main()
