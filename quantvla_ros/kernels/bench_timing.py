"""CUDA-graph timing for the kernel benchmark (GPU only).

Each measurement captures one graph that calls a kernel ``copies`` times and replays it,
so Python launch overhead never shows. With distinct weight copies whose total exceeds
ROTATE_BYTES (over twice the 50-60 MB L2 of an H100 / H200) every call streams its weights
from HBM, as a layer sweep does; with one copy repeated the weights stay in L2. The bf16
activations and their int codes are shared by all calls (a model has just written them).
"""

from __future__ import annotations

import math
import statistics

import torch

ROTATE_BYTES = 120 * 2**20
MAX_COPIES = 64  # bounds the graph size for the smallest weights
TARGET_MS = 20.0  # replay time per measurement
MAX_REPLAYS = 200


def graph_ms(calls: list) -> float:
    """Median milliseconds per call of a CUDA graph that runs ``calls`` in order."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile and warm up outside the capture
        for fn in calls:
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in calls:
            fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    graph.replay()
    end.record()
    end.synchronize()
    replays = max(3, min(MAX_REPLAYS, math.ceil(TARGET_MS / max(start.elapsed_time(end), 1e-3))))
    times = []
    for _ in range(replays):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    del graph
    return statistics.median(times) / len(calls)


def weight_copies(wts: dict, n: int) -> list[dict]:
    """``wts`` and n - 1 clones of its tensors (distinct memory, same values)."""
    return [wts] + [{k: v.clone() if torch.is_tensor(v) else v for k, v in wts.items()}
                    for _ in range(n - 1)]


def copies_needed(wts: dict) -> int:
    """Count the copies whose smallest weight tensors together exceed ROTATE_BYTES."""
    smallest = min(wts[k].numel() * wts[k].element_size() for k in ("w", "w8", "w4", "w4k")
                   if k in wts)
    return max(2, min(MAX_COPIES, math.ceil(ROTATE_BYTES / smallest)))


def time_op(op, acts: dict, wts: dict) -> dict:
    """Time one BenchOp: ms (rotating weights), ms_warm, ms_act_quant, copies."""
    from quantvla_ros.kernels import act_quant

    n = copies_needed(wts)
    sets = weight_copies(wts, n)
    a, xs = acts[op.act_bits]
    out = torch.bfloat16

    def call(w):
        return lambda: op.gemm(a, xs, w, out)

    t = {"copies": n, "ms_warm": graph_ms([call(wts)] * n)}
    # Without weights (the activation quantizer) there is nothing to rotate.
    t["ms"] = graph_ms([call(w) for w in sets]) if op.flops else t["ms_warm"]
    if op.act_bits in (4, 8):  # our quantizer's codes (fp8 codes come from torch ops)
        x = acts[None][0]

        def quant_then_gemm(w):
            return lambda: op.gemm(*act_quant.quantize_activations(x, op.act_bits), w, out)

        t["ms_act_quant"] = graph_ms([quant_then_gemm(w) for w in sets])
    del sets
    return t
