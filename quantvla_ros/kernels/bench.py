"""Kernel benchmark: bf16 matmul, torch._int_mm and our W8A8 / W4A8 / W4A4 GEMMs per shape.

On CUDA every kernel is first checked against the exact reference, then timed twice:
``triton.testing.do_bench`` (L2 flushed before each call, so weights come from HBM as in a
layer sweep; "ms", used for TOP/s, GB/s and speedup) and a CUDA-graph replay (no Python
launch overhead, warm L2; "ms_graph"). On CPU only the checks run (under the Triton
interpreter, with small GPU-legal shapes); their rows carry no timings.
"""

from __future__ import annotations

import torch

from quantvla_ros.kernels import reference

GROUP_SIZE = 128
# (M, K, N): action expert (M = 50 action tokens, or 64), pi0.5 prefix (~968 tokens) and
# decode-sized M.
DEFAULT_SHAPES: tuple[tuple[int, int, int], ...] = (
    *((m, k, n) for m in (50, 64) for k, n in ((1024, 4096), (4096, 1024))),
    *((968, k, n) for k, n in ((2048, 16384), (16384, 2048), (2048, 2048))),
    *((m, k, n) for m in (1, 16) for k, n in ((2048, 2048), (2048, 16384))),
)
CPU_CHECK_SHAPES: tuple[tuple[int, int, int], ...] = ((1, 256, 64), (50, 256, 48), (64, 384, 96))
CHECK_RTOL = 1e-3


def _quantize_weight(w: torch.Tensor, bits: int, group_size: int):
    """Symmetric round-to-nearest weights: each group of K is a row of the token quantizer."""
    n, k = w.shape
    rows = w.float().reshape(n * (k // group_size), group_size)
    quantize = reference.quantize_per_token_int8 if bits == 8 else \
        reference.quantize_per_token_int4
    q, scale = quantize(rows)
    q = q.reshape(n, k)
    return (q if bits == 8 else reference.pack_int4(q)), scale.reshape(n, k // group_size)


def _problem(m: int, k: int, n: int, device, group_size: int) -> dict:
    gen = torch.Generator(device="cpu").manual_seed(m * 7919 + k * 31 + n)
    x = torch.randn(m, k, generator=gen).to(device, torch.bfloat16)
    w = (torch.randn(n, k, generator=gen) * 0.02).to(device)
    gs = group_size if k % group_size == 0 else k
    w8, s8 = _quantize_weight(w, 8, k)
    w4, s4 = _quantize_weight(w, 4, gs)
    a8, xs8 = reference.quantize_per_token_int8(x)
    a4, xs4 = reference.quantize_per_token_int4(x)
    return dict(x=x, w=w.to(torch.bfloat16), w8=w8, s8=s8.reshape(-1), w4=w4, s4=s4, gs=gs,
                a8=a8, xs8=xs8, a4=reference.pack_int4(a4), xs4=xs4)


def _ops(p: dict, out_dtype: torch.dtype) -> dict:
    """Map each kernel name to (run ours, run the reference) on the same quantized operands."""
    from quantvla_ros.kernels import act_quant
    from quantvla_ros.kernels.scaled_gemm import scaled_gemm

    gs = p["gs"]
    return {
        "w8a8": (lambda: scaled_gemm(p["a8"], p["xs8"], p["w8"], p["s8"], a_int4=False,
                                     w_int4=False, out_dtype=out_dtype),
                 lambda: reference.matmul_w8a8(p["a8"], p["xs8"], p["w8"], p["s8"])),
        "w4a8": (lambda: scaled_gemm(p["a8"], p["xs8"], p["w4"], p["s4"], a_int4=False,
                                     w_int4=True, group_size=gs, out_dtype=out_dtype),
                 lambda: reference.matmul_w4a8(p["a8"], p["xs8"], p["w4"], p["s4"],
                                               group_size=gs)),
        "w4a4": (lambda: scaled_gemm(p["a4"], p["xs4"], p["w4"], p["s4"], a_int4=True,
                                     w_int4=True, group_size=gs, out_dtype=out_dtype),
                 lambda: reference.matmul_w4a4(p["a4"], p["xs4"], p["w4"], p["s4"],
                                               group_size=gs)),
        "act_quant8": (lambda: act_quant.quantize_activations(p["x"], 8),
                       lambda: reference.quantize_activations(p["x"], 8)),
    }


def _check(ours, ref) -> str:
    got, want = ours(), ref()
    if isinstance(want, tuple):  # quantizer: codes may differ by one where ulps differ
        dq = (got[0].int() - want[0].int()).abs().max().item()
        ds = ((got[1] - want[1]).abs().max() / want[1].abs().max()).item()
        return "ok" if dq <= 1 and ds <= 1e-6 else f"FAIL (codes {dq}, scales {ds:.2e})"
    err = ((got.float() - want.float()).abs().max() / want.float().abs().max().clamp(min=1e-30))
    return "ok" if err.item() <= CHECK_RTOL else f"FAIL (rel err {err.item():.2e})"


def _bytes(name: str, m: int, k: int, n: int, groups: int) -> int:
    out = 2 * m * n
    return {
        "bf16": 2 * m * k + 2 * n * k + out,
        "int_mm": m * k + n * k + 4 * m * n,
        "w8a8": m * k + n * k + out + 4 * (m + n),
        "w4a8": m * k + n * k // 2 + out + 4 * (m + n * groups),
        "w4a4": m * k // 2 + n * k // 2 + out + 4 * (m + n * groups),
        "act_quant8": 2 * m * k + m * k + 4 * m,
    }[name]


def _row(name, m, k, n, times, bf16_ms, groups, check, device) -> dict:
    ms, ms_graph = times or (None, None)
    flops = 2 * m * n * k if name != "act_quant8" else 0
    return {
        "M": m, "K": k, "N": n, "kernel": name, "ms": ms, "ms_graph": ms_graph,
        "tops": flops / ms / 1e9 if ms and flops else None,
        "gbps": _bytes(name, m, k, n, groups) / ms / 1e6 if ms else None,
        "speedup_vs_bf16": bf16_ms / ms if ms and bf16_ms and flops else None,
        "check": check, "device": str(device),
    }


def _time_shape(p: dict, ops: dict, checks: dict, device) -> list[dict]:
    from triton.testing import do_bench, do_bench_cudagraph

    def t(fn):
        # do_bench flushes L2 before every call (weights cold, as in a real layer sweep);
        # the CUDA-graph replay has no host overhead but a warm L2.
        return (do_bench(fn, warmup=25, rep=100, return_mode="median"),
                do_bench_cudagraph(fn, rep=50, return_mode="median"))

    (m, k), n = p["x"].shape, p["w"].shape[0]
    groups = k // p["gs"]
    bf16_ms, bf16_graph = t(lambda: torch.matmul(p["x"], p["w"].t()))
    rows = [_row("bf16", m, k, n, (bf16_ms, bf16_graph), bf16_ms, groups, None, device)]
    if m > 16 and k % 8 == 0 and n % 8 == 0:
        ms = t(lambda: torch._int_mm(p["a8"], p["w8"].t()))
        rows.append(_row("int_mm", m, k, n, ms, bf16_ms, groups, None, device))
    for name, (ours, _) in ops.items():
        rows.append(_row(name, m, k, n, t(ours), bf16_ms, groups, checks.get(name), device))
    return rows


def run_kernel_bench(shapes=None, check: bool = True, device=None,
                     group_size: int = GROUP_SIZE) -> list[dict]:
    """Check (optionally) and time the kernels on each (M, K, N); return one row per kernel.

    On CPU nothing is timed: with ``check`` the kernels are verified under the interpreter
    on small shapes (``shapes`` defaults to CPU_CHECK_SHAPES there).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device.type == "cuda"
    shapes = shapes or (DEFAULT_SHAPES if on_gpu else CPU_CHECK_SHAPES)
    rows = []
    for m, k, n in shapes:
        p = _problem(m, k, n, device, group_size)
        groups = k // p["gs"]
        ops = _ops(p, torch.bfloat16)
        checks = {}
        if check:
            checked = _ops(p, torch.float32)
            checks = {name: _check(*fns) for name, fns in checked.items()}
        if not on_gpu:
            rows += [_row(name, m, k, n, None, None, groups, checks.get(name), device)
                     for name in ops]
            continue
        rows += _time_shape(p, ops, checks, device)
    return rows


def format_markdown(rows: list[dict]) -> str:
    """Render benchmark rows as a markdown table."""
    cols = ("M", "K", "N", "kernel", "ms", "ms_graph", "tops", "gbps", "speedup_vs_bf16",
            "check")
    head = ["M", "K", "N", "kernel", "ms (cold L2)", "ms (graph)", "TOP/s", "GB/s", "x bf16",
            "check"]

    def fmt(v):
        if v is None:
            return "-"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
