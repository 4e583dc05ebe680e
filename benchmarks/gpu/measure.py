"""Time one CUDA GPU's kernels at the shapes the simulator prices, and the reference model's
training step, for the GPU presets' efficiency blocks (data/hardware/gpus/*.yaml).

Reads ``benchmarks/gpu/shapes.json`` (written by ``shapes.py``: the per-GPU GEMMs and
attention cores of the Hopper validation rows) and writes one JSON file per part under
``--out`` as each part ends, so a run cut short keeps what it measured:

- ``env.json``: GPU, clocks before and after, torch / CUDA / cuBLAS / cuDNN versions;
- ``hbm.json``: device-to-device copy of 2 GiB (bytes read + written over time);
- ``gemm.json``: every shape in its three training layouts, Y = X W^T (fprop, m x n x k),
  dX = dY W (dgrad, m x k x n), dW = dY^T X (wgrad, n x k x m); BF16 through ``torch.matmul``
  (cuBLAS), FP8 rows also as Transformer Engine runs them on Hopper: e4m3 operands, per-tensor
  scales, TN layout only (``torch._scaled_mm``, cuBLASLt), with fast accumulation and with
  split (FP32-promoted) accumulation;
- ``attention.json``: ``scaled_dot_product_attention`` forward and backward per backend
  (FlashAttention-2, cuDNN, memory-efficient), causal and not, over sequence lengths at a
  fixed token count, plus every attention shape of shapes.json (causal, q = kv = the longer
  of the two lengths for context-parallel rows: the chunks of a ring add up to it);
- ``reference.json``: the project's reference model (planner.model.deepseek) training on
  this one GPU: fp32 weights, bf16 autocast, fused AdamW, synthetic tokens; the median of
  the timed steps after warm-up, and the peak allocated memory.

Kernel times are ``triton.testing.do_bench`` medians (CUDA events, L2 flushed before each
call), on random operands (never zeros, which run faster). Without CUDA (``--dry-run``) it
runs a few tiny shapes on the CPU with a wall-clock timer, to check the script.

    python benchmarks/gpu/measure.py --out DIR [--parts hbm,gemm,attention,reference]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
FP8_ALIGN = 16
"""torch._scaled_mm needs every dimension a multiple of 16."""
ATTENTION_SWEEP_TOKENS = 32768
ATTENTION_SWEEP_LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768)
ATTENTION_SWEEP_HEADS = 32
REFERENCE_MODELS = (
    # (label, preset or inline spec, update, micro-batch sequences, sequence length)
    ("dense-0.9b", "llama2-7b", {"name": "dense-0.9b", "num_layers": 16, "hidden_size": 2048,
                                 "num_attention_heads": 16, "num_kv_heads": 16,
                                 "ffn_hidden_size": 5504, "vocab_size": 32000}, 2, 4096),
    ("deepseekmoe-2b", "deepseekmoe-2b", {}, 4, 2048),
)


class Bench:
    """Timer: triton's do_bench on CUDA, a wall-clock loop on the CPU (dry runs)."""

    def __init__(self, cuda: bool, quick: bool):
        self.cuda, self.quick = cuda, quick
        if cuda:
            from triton.testing import do_bench

            self._do_bench = do_bench

    def __call__(self, fn) -> float:
        """Median seconds per call."""
        if self.cuda:
            return self._do_bench(fn, warmup=10, rep=25 if self.quick else 40, return_mode="median") / 1e3
        fn()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)


def _write(out: Path, name: str, data) -> None:
    (out / name).write_text(json.dumps(data, indent=1) + "\n")


def _smi(query: str) -> str:
    try:
        return subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def environment(cuda: bool) -> dict:
    env = {"torch": torch.__version__, "python": sys.version.split()[0], "cuda": cuda}
    if cuda:
        p = torch.cuda.get_device_properties(0)
        env.update(device=p.name, sms=p.multi_processor_count, memory_bytes=p.total_memory,
                   cuda_runtime=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   clocks=_smi("clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu"))
    return env


def hbm(bench: Bench, dev) -> dict:
    n = (1 << 30) if bench.cuda else (1 << 20)  # bf16 elements: 2 GiB
    src = torch.randn(n, device=dev, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    s = bench(lambda: dst.copy_(src))
    return {"bytes_moved": 2 * 2 * n, "seconds": s, "bytes_per_s": 4 * n / s}


def _gemm_layouts(m: int, n: int, k: int) -> dict[str, tuple[int, int, int]]:
    """(M, N, K) of the three GEMMs of a Linear with forward (m, n, k)."""
    return {"fprop": (m, n, k), "dgrad": (m, k, n), "wgrad": (n, k, m)}


def _bf16_gemm(bench: Bench, dev, layout: str, M: int, N: int, K: int) -> float:
    r = lambda *s: torch.randn(*s, device=dev, dtype=torch.bfloat16)  # noqa: E731
    if layout == "fprop":  # X [M,K] @ W[N,K]^T
        a, b = r(M, K), r(N, K).t()
    elif layout == "dgrad":  # dY [M,K'] @ W [K',N]: here K = the Linear's n
        a, b = r(M, K), r(K, N)
    else:  # dY^T [M, K] @ X [K, N], dY stored [K, M]
        a, b = r(K, M).t(), r(K, N)
    return bench(lambda: torch.matmul(a, b))


def _up(x: int) -> int:
    return -(-x // FP8_ALIGN) * FP8_ALIGN


def _fp8_gemm(bench: Bench, dev, M: int, N: int, K: int, fast: bool) -> float:
    """One TN FP8 GEMM (Hopper's only FP8 layout: Transformer Engine transposes operands into it)."""
    a = torch.randn(M, K, device=dev).to(torch.float8_e4m3fn)
    b = torch.randn(N, K, device=dev).to(torch.float8_e4m3fn).t()
    one = torch.ones((), device=dev)
    return bench(lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16,
                                          use_fast_accum=fast))


def gemm(bench: Bench, dev, shapes: list[dict], out: Path) -> list[dict]:
    rows = []
    for i, g in enumerate(shapes):
        m, n, k = g["m"], g["n"], g["k"]
        for layout, (M, N, K) in _gemm_layouts(m, n, k).items():
            row = {"m": m, "n": n, "k": k, "layout": layout, "M": M, "N": N, "K": K, "dtype": g["dtype"]}
            try:
                row["bf16_s"] = _bf16_gemm(bench, dev, layout, M, N, K)
                if g["dtype"] == "fp8" and bench.cuda:
                    Mp, Np, Kp = _up(M), _up(N), _up(K)
                    row.update(fp8_padded=[Mp, Np, Kp],
                               fp8_fast_s=_fp8_gemm(bench, dev, Mp, Np, Kp, True),
                               fp8_split_s=_fp8_gemm(bench, dev, Mp, Np, Kp, False))
            except RuntimeError as exc:  # out of memory, unsupported layout: record, go on
                row["error"] = str(exc).splitlines()[0][:200]
            rows.append(row)
            if bench.cuda:
                torch.cuda.empty_cache()
        if i % 20 == 0:
            _write(out, "gemm.json", rows)
    return rows


def _backends():
    from torch.nn.attention import SDPBackend

    return {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def _attention(bench: Bench, dev, backend, b: int, h: int, s: int, dqk: int, dv: int, causal: bool) -> dict:
    from torch.nn.attention import sdpa_kernel

    r = lambda d: torch.randn(b, h, s, d, device=dev, dtype=torch.bfloat16, requires_grad=True)  # noqa: E731
    q, k, v = r(dqk), r(dqk), r(dv)
    with sdpa_kernel([backend]):
        fwd = bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        grad = torch.randn_like(o)
        bwd = bench(lambda: torch.autograd.grad(o, (q, k, v), grad, retain_graph=True))
    # FlashAttention's FLOP convention (data/costmodel/compute.yaml): QK^T and PV, causal = half.
    flops = 2.0 * b * h * s * s * (dqk + dv) * (0.5 if causal else 1.0)
    return {"forward_s": fwd, "backward_s": bwd, "forward_flops": flops}


def attention(bench: Bench, dev, shapes: list[dict], out: Path) -> list[dict]:
    rows = []
    cases = []
    tokens = ATTENTION_SWEEP_TOKENS if bench.cuda else 256
    for s in ATTENTION_SWEEP_LENGTHS if bench.cuda else (64, 128):
        for causal in (True, False):
            cases.append(("sweep", max(1, tokens // s), ATTENTION_SWEEP_HEADS if bench.cuda else 2, s, 128, 128,
                          causal))
    for a in shapes if bench.cuda else []:
        cases.append(("rows", a["batch"], a["heads"], max(a["q_len"], a["kv_len"]), a["qk_dim"], a["v_dim"], True))
    seen = set()
    for case in cases:
        if case in seen:
            continue
        seen.add(case)
        kind, b, h, s, dqk, dv, causal = case
        for name, backend in _backends().items():
            row = {"set": kind, "backend": name, "batch": b, "heads": h, "seq": s, "qk_dim": dqk, "v_dim": dv,
                   "causal": causal}
            try:
                row.update(_attention(bench, dev, backend, b, h, s, dqk, dv, causal))
            except RuntimeError as exc:
                row["error"] = str(exc).splitlines()[0][:200]
            rows.append(row)
            if bench.cuda:
                torch.cuda.empty_cache()
        _write(out, "attention.json", rows)
    return rows


def reference(dev, cuda: bool, steps: int) -> list[dict]:
    sys.path.insert(0, str(HERE.parents[1]))
    from planner.model.deepseek import Transformer
    from planner.presets import load_model

    rows = []
    for label, preset, update, micro_batch, seq in REFERENCE_MODELS:
        if not cuda:
            preset, update, micro_batch, seq = "tiny-moe-mla" if "moe" in label else "tiny-dense", {}, 2, 32
        spec = load_model(preset)
        spec = spec.model_validate({**spec.model_dump(), **update})
        row = {"label": label, "spec": spec.model_dump(mode="json"), "micro_batch": micro_batch, "seq_len": seq}
        try:
            torch.manual_seed(0)
            model = Transformer(spec).to(dev)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
            row["parameters"] = sum(p.numel() for p in model.parameters())
            times = []
            for step in range(steps):
                tokens = torch.randint(0, spec.vocab_size, (micro_batch, seq + 1), device=dev)
                if cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
                    loss = model.loss(tokens[:, :-1], tokens[:, 1:])
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            row.update(step_s=times, median_step_s=statistics.median(times[len(times) // 3:]),
                       loss=float(loss))
            if cuda:
                row["peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
            del model, opt
        except RuntimeError as exc:
            row["error"] = str(exc).splitlines()[0][:200]
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--parts", default="hbm,gemm,attention,reference")
    ap.add_argument("--shapes", type=Path, default=HERE / "shapes.json")
    ap.add_argument("--quick", action="store_true", help="shorter timing windows")
    ap.add_argument("--dry-run", action="store_true", help="no CUDA: tiny shapes on the CPU")
    ap.add_argument("--steps", type=int, default=12, help="reference-model steps (a third are warm-up)")
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        raise SystemExit("no CUDA device: pass --dry-run to check the script on the CPU")
    dev = torch.device("cuda" if cuda else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    bench = Bench(cuda, args.quick)
    parts = args.parts.split(",")
    shapes = json.loads(args.shapes.read_text())
    if not cuda:
        shapes = {"gemm": [{"m": 64, "n": 96, "k": 32, "dtype": "bf16"}, {"m": 32, "n": 48, "k": 80, "dtype": "fp8"}],
                  "attention": shapes["attention"][:1]}
    env = environment(cuda)
    _write(args.out, "env.json", env)
    t0 = time.perf_counter()
    if "hbm" in parts:
        h = hbm(bench, dev)
        _write(args.out, "hbm.json", h)
        print(f"hbm copy {h['bytes_per_s'] / 1e12:.3f} TB/s", flush=True)
    if "gemm" in parts:
        rows = gemm(bench, dev, shapes["gemm"], args.out)
        _write(args.out, "gemm.json", rows)
        ok = [r for r in rows if "bf16_s" in r]
        rate = [2 * r["M"] * r["N"] * r["K"] / r["bf16_s"] / 1e12 for r in ok]
        print(f"gemm {len(rows)} timings ({time.perf_counter() - t0:.0f} s): bf16 TFLOP/s median "
              f"{statistics.median(rate):.0f} max {max(rate):.0f}", flush=True)
    if "attention" in parts:
        rows = attention(bench, dev, shapes["attention"], args.out)
        for r in rows:
            if r["set"] == "sweep" and "forward_s" in r:
                print(f"attn {r['backend']:9s} s={r['seq']:6d} causal={r['causal']!s:5s} "
                      f"fwd {r['forward_flops'] / r['forward_s'] / 1e12:6.0f} "
                      f"bwd {2.5 * r['forward_flops'] / r['backward_s'] / 1e12:6.0f} TFLOP/s", flush=True)
    if "reference" in parts:
        rows = reference(dev, cuda, args.steps)
        _write(args.out, "reference.json", rows)
        for r in rows:
            print(f"reference {r['label']}: {r.get('median_step_s', float('nan')) * 1e3:.1f} ms/step "
                  f"{r.get('error', '')}", flush=True)
    env["clocks_after"] = _smi("clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu") if cuda else ""
    env["seconds"] = time.perf_counter() - t0
    _write(args.out, "env.json", env)
    print(f"done in {env['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
