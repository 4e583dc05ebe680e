"""The GEMM and attention shapes the simulator prices for the Hopper validation rows, as JSON
for ``benchmarks/gpu/measure.py`` to time on a real GPU.

For every row of ``data/validation/*.csv`` on an H100/H800 (and the DeepSeek-V3 golden plan),
the per-GPU forward GEMMs of one transformer block (:func:`planner.costmodel.ops.piece_ops`)
and the head, with their precision (an FP8 row's Linears run FP8), and the flash-attention
core's (heads per GPU, query length, key length, qk and v head dims, sequences). Duplicates
collapse; each shape keeps the rows it came from.

    python benchmarks/gpu/shapes.py > benchmarks/gpu/shapes.json
"""

from __future__ import annotations

import csv
import json
import sys
from collections import defaultdict

from planner.costmodel.ops import OpKind, piece_ops
from planner.costmodel.partition import Piece
from planner.presets import data_root
from planner.specs.plan import Precision
from planner.validation.cases import case_inputs

HOPPER = ("h100", "h800")


def shapes() -> dict:
    gemms: dict[tuple, set] = defaultdict(set)
    attention: dict[tuple, set] = defaultdict(set)
    root = data_root() / "validation"
    for path in sorted(root.glob("*_cases.csv")):
        for row in csv.DictReader(path.open()):
            if not row["gpu"].startswith(HOPPER):
                continue
            try:
                inp = case_inputs(row)
            except Exception:  # rows the simulator refuses are not priced either
                continue
            model, plan, wl = inp.model, inp.plan, inp.workload
            fp8 = wl.precision is Precision.FP8
            pieces = [Piece.HEAD] + ([Piece.MOE] if model.moe else []) + (
                [Piece.DENSE] if not model.moe or model.moe.num_dense_layers else [])
            for piece in pieces:
                for op in piece_ops(model, plan, wl, piece):
                    if op.kind is OpKind.GEMM and op.weight_grad:
                        m, n, k = (int(round(x)) for x in op.shape)
                        gemms[(m, n, k, "fp8" if fp8 and op.fp8 else "bf16")].add(row["case_id"])
            if plan.attention_kernel.value == "flash":
                s = wl.seq_length
                heads = model.num_attention_heads // plan.tp
                attention[(plan.micro_batch_size, heads, s // plan.cp, s, model.qk_head_dim,
                           model.v_head_dim)].add(row["case_id"])
    return {
        "gemm": [{"m": m, "n": n, "k": k, "dtype": d, "rows": sorted(r)} for (m, n, k, d), r in sorted(gemms.items())],
        "attention": [{"batch": b, "heads": h, "q_len": q, "kv_len": kv, "qk_dim": dq, "v_dim": dv,
                       "rows": sorted(r)} for (b, h, q, kv, dq, dv), r in sorted(attention.items())],
    }


if __name__ == "__main__":
    json.dump(shapes(), sys.stdout, indent=1)
    sys.stdout.write("\n")
