"""Kernel benchmark: bf16 matmul, torch._int_mm and our W8A8 / W4A8 / W4A4 GEMMs per shape.

Rows stream out one (shape, kernel) at a time (:func:`iter_kernel_bench`), so a crash or a
timeout keeps every row measured before it; a kernel that raises gives a row with
``"check": "ERROR ..."`` and the run goes on. On CUDA each kernel is checked against the
exact reference, then timed by CUDA-graph replay (:mod:`bench_timing`): "ms" cycles
through weight copies larger than twice the L2 (weights come from HBM, as in a layer
sweep; used for TOP/s, GB/s and the speed-ups), "ms_warm" reuses one copy (warm L2) and
"ms_act_quant" runs the activation quantizer before the GEMM (what the model pays). On CPU
only the checks run, under the interpreter, on small GPU-legal shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

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
# GR00T N1.5 (shared/GROOT.md section 2): the DiT's 49 tokens per sample (state, 32 future
# tokens, 16 actions) at batch 1 and 2 with K / N 1536 <-> 6144, and the 12 LLM layers at a
# one-view prefix (~300 tokens) with K / N 2048 <-> 6144 and the 1024-wide k/v.
GROOT_SHAPES: tuple[tuple[int, int, int], ...] = (
    *((m, k, n) for m in (49, 98) for k, n in ((1536, 6144), (6144, 1536), (1536, 1536))),
    *((300, k, n) for k, n in ((2048, 6144), (6144, 2048), (2048, 1024))),
)
CPU_CHECK_SHAPES: tuple[tuple[int, int, int], ...] = ((1, 256, 64), (50, 256, 48), (64, 384, 96))
CHECK_RTOL = 1e-3


@dataclass(frozen=True)
class BenchOp:
    """One benchmarked kernel.

    ``gemm(a, xs, wts, out_dtype)`` runs it on the activations of ``act_bits`` (8 / 4: the
    quantized codes and scales; None: the bf16 ``x``, ``xs`` None) and the weight set
    ``wts``; ``reference(a, xs, wts)`` is the exact result it is checked against (None: a
    baseline, never checked, not run on CPU). ``flops``: a GEMM (TOP/s and speed-ups).
    """

    name: str
    act_bits: int | str | None
    gemm: Callable
    reference: Callable | None = None
    flops: bool = True
    supports: Callable[[int, int, int], bool] = lambda m, k, n: True


def _scaled_gemm(a_int4: bool, w_key: str, s_key: str, grouped: bool) -> Callable:
    def run(a, xs, w, out_dtype):
        from quantvla_ros.kernels.scaled_gemm import scaled_gemm

        return scaled_gemm(a, xs, w[w_key], w[s_key], a_int4=a_int4, w_int4=w_key == "w4",
                           group_size=w["gs"] if grouped else None, out_dtype=out_dtype)
    return run


def _w4a8(a, xs, w, out_dtype):
    from quantvla_ros.kernels.w4a8_gemm import w4a8_gemm

    return w4a8_gemm(a, xs, w["w4k"], w["s1"], w["s2"], group_size=w["gs2"],
                     out_dtype=out_dtype)


def _w4a8_case(gate_up: bool = False, per_channel: bool = False, split: bool = True):
    """Run W4A8 as the model also does: fused GeGLU, per channel, or unsplit."""
    def run(a, xs, w, out_dtype):
        from quantvla_ros.kernels.configs import w4a8_config
        from quantvla_ros.kernels.w4a8_gemm import w4a8_gemm

        wk, s1, s2, gs = (w["w4k_pc"], w["s1_pc"], None, None) if per_channel else \
            (w["w4k"], w["s1"], w["s2"], w["gs2"])
        cfg = None
        if not split:  # the split on / off pair times the split-K fixup directly
            m, n = a.shape[0], wk.shape[0] // (2 if gate_up else 1)
            cfg = replace(w4a8_config(m, n, a.shape[1], gate_up=gate_up,
                                      interpret=a.device.type != "cuda", device=a.device),
                          split_k=1)
        return w4a8_gemm(a, xs, wk, s1, s2, group_size=gs, gate_up=gate_up,
                         out_dtype=out_dtype, config=cfg)
    return run


def _w4a8_ref(gate_up: bool = False, per_channel: bool = False) -> Callable:
    def ref(a, xs, w):
        both = reference.matmul_w4a8(a, xs, w["w4k_pc"], w["s1_pc"]) if per_channel else \
            reference.matmul_w4a8(a, xs, w["w4k"], w["s1"], group_scale=w["s2"],
                                  group_size=w["gs2"])
        if not gate_up:
            return both
        n = both.shape[1] // 2
        return reference.gelu_tanh(both[:, :n]) * both[:, n:]
    return ref


def _fp8_rowwise(a, xs, w, out_dtype):
    """Multiply fp8 e4m3 with per-token and per-channel scales (cuBLASLt): prefill candidate."""
    return torch._scaled_mm(a, w["wf8"].t(), scale_a=xs, scale_b=w["sf8"][None, :],
                            out_dtype=torch.bfloat16)


def _fp8_quant(t: torch.Tensor):
    """Per-row e4m3 codes and float32 scales [rows, 1] (448: the largest e4m3 value)."""
    scale = t.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 448.0
    return (t.float() / scale).to(torch.float8_e4m3fn), scale


def _act_quant8(x, _, __, out_dtype):
    from quantvla_ros.kernels import act_quant

    return act_quant.quantize_activations(x, 8)


OPS: tuple[BenchOp, ...] = (
    BenchOp("bf16", None, lambda x, _, w, dt: torch.matmul(x, w["w"].t())),
    BenchOp("int_mm", 8, lambda a, _, w, dt: torch._int_mm(a, w["w8"].t()),
            supports=lambda m, k, n: m > 16 and k % 8 == 0 and n % 8 == 0),
    BenchOp("w8a8", 8, _scaled_gemm(False, "w8", "s8", False),
            lambda a, xs, w: reference.matmul_w8a8(a, xs, w["w8"], w["s8"])),
    # The model's W4A8: K-half nibbles, float s1 per channel and int8 s2 per group.
    BenchOp("w4a8", 8, _w4a8,
            lambda a, xs, w: reference.matmul_w4a8(a, xs, w["w4k"], w["s1"],
                                                   group_scale=w["s2"], group_size=w["gs2"])),
    BenchOp("w4a4", 4, _scaled_gemm(True, "w4", "s4", True),
            lambda a, xs, w: reference.matmul_w4a4(a, xs, w["w4"], w["s4"],
                                                   group_size=w["gs"])),
    # Rows the model runs too: fused gate/up (N = 2 x the GeGLU width), per channel, and
    # the table's split with split-K forced off (the pair that times the fixup).
    BenchOp("w4a8_gate_up", 8, _w4a8_case(gate_up=True), _w4a8_ref(gate_up=True),
            supports=lambda m, k, n: n % 2 == 0),
    BenchOp("w4a8_pc", 8, _w4a8_case(per_channel=True), _w4a8_ref(per_channel=True)),
    BenchOp("w4a8_nosplit", 8, _w4a8_case(split=False), _w4a8_ref()),
    # A ceiling and prefill candidate (no reference: fp8 is not exact, so never checked).
    BenchOp("fp8_rowwise", "fp8", _fp8_rowwise,
            supports=lambda m, k, n: m >= 256 and k % 16 == 0 and n % 16 == 0),
    BenchOp("act_quant8", None, _act_quant8,
            lambda x, _, __: reference.quantize_activations(x, 8), flops=False),
)


def _quantize_weight(w: torch.Tensor, bits: int, group_size: int):
    """Symmetric round-to-nearest weights: each group of K is a row of the token quantizer."""
    n, k = w.shape
    rows = w.float().reshape(n * (k // group_size), group_size)
    quantize = reference.quantize_per_token_int8 if bits == 8 else \
        reference.quantize_per_token_int4
    q, scale = quantize(rows)
    q = q.reshape(n, k)
    return (q if bits == 8 else reference.pack_int4(q)), scale.reshape(n, k // group_size)


def make_problem(m: int, k: int, n: int, device, group_size: int = GROUP_SIZE):
    """Return (activations, weights) of one shape, seeded by the shape.

    Activations by bits: bf16 x, and its int8 / packed int4 codes with scales; weights:
    bf16, int8 per channel, row-major packed int4 per group (W4A4) and the W4A8 format
    (K-half packed, progressive scales; per channel where K has no whole 128-groups).
    """
    from quantvla_ros.kernels.int4_layout import PACK_K, pack_khalf, quantize_progressive

    gen = torch.Generator(device="cpu").manual_seed(m * 7919 + k * 31 + n)
    x = torch.randn(m, k, generator=gen).to(device, torch.bfloat16)
    w = (torch.randn(n, k, generator=gen) * 0.02).to(device)
    gs = group_size if k % group_size == 0 else k
    w8, s8 = _quantize_weight(w, 8, k)
    w4, s4 = _quantize_weight(w, 4, gs)
    a8, xs8 = reference.quantize_per_token_int8(x)
    a4, xs4 = reference.quantize_per_token_int4(x)
    gs2 = gs if gs % PACK_K == 0 and gs < k else None
    q, s1, s2 = quantize_progressive(w.float(), gs2)
    q_pc, s1_pc, _ = quantize_progressive(w.float(), None)
    wf8, sf8 = _fp8_quant(w)
    acts = {None: (x, None), 8: (a8, xs8), 4: (reference.pack_int4(a4), xs4),
            "fp8": _fp8_quant(x)}
    return acts, dict(w=w.to(torch.bfloat16), w8=w8, s8=s8.reshape(-1), w4=w4, s4=s4, gs=gs,
                      w4k=pack_khalf(q), s1=s1, s2=s2, gs2=gs2, w4k_pc=pack_khalf(q_pc),
                      s1_pc=s1_pc, wf8=wf8, sf8=sf8.reshape(-1))


def check_op(op: BenchOp, acts: dict, wts: dict) -> str:
    """"ok" or "FAIL (...)": the kernel (float32 out) against its exact reference."""
    a, xs = acts[op.act_bits]
    got, want = op.gemm(a, xs, wts, torch.float32), op.reference(a, xs, wts)
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
        "w4a8": m * k + n * k // 2 + out + 4 * (m + n) + n * groups,
        "w4a8_gate_up": m * k + n * k // 2 + out // 2 + 4 * (m + n) + n * groups,
        "w4a8_pc": m * k + n * k // 2 + out + 4 * (m + n),
        "w4a8_nosplit": m * k + n * k // 2 + out + 4 * (m + n) + n * groups,
        "fp8_rowwise": m * k + n * k + out + 4 * (m + n),
        "w4a4": m * k // 2 + n * k // 2 + out + 4 * (m + n * groups),
        "act_quant8": 2 * m * k + m * k + 4 * m,
    }.get(name, 0)


def _ratio(a, b):
    return a / b if a and b else None


def _row(op: BenchOp, shape, groups: int, check, t: dict, bf16: dict, device) -> dict:
    (m, k, n), ms = shape, t.get("ms")
    flops = 2 * m * n * k if op.flops else 0
    nbytes = _bytes(op.name, m, k, n, groups)
    return {
        "M": m, "K": k, "N": n, "kernel": op.name, "ms": ms, "ms_warm": t.get("ms_warm"),
        "ms_act_quant": t.get("ms_act_quant"), "weight_copies": t.get("copies"),
        "tops": flops / ms / 1e9 if ms and flops else None,
        "gbps": nbytes / ms / 1e6 if ms and nbytes else None,
        "speedup_vs_bf16": _ratio(bf16.get("ms"), ms) if flops else None,
        "speedup_with_act_quant": _ratio(bf16.get("ms"), t.get("ms_act_quant")),
        "check": check, "device": str(device),
    }


def _error(exc: BaseException) -> str:
    return f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def iter_kernel_bench(shapes=None, check: bool = True, device=None,
                      group_size: int = GROUP_SIZE, ops=OPS, timer=None,
                      timed: bool = True) -> Iterator[dict]:
    """Yield one row per (shape, kernel) as soon as it is checked (and timed).

    ``timer(op, acts, wts)`` returns the row's timings; it defaults to CUDA-graph replay
    on a GPU (unless not ``timed``) and to none on CPU, where only ops with a reference
    run (``shapes`` defaults to CPU_CHECK_SHAPES there). Exceptions become ``"ERROR ..."``
    checks, one row each.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device.type == "cuda"
    if not timed:
        timer = None
    elif timer is None and on_gpu:
        from quantvla_ros.kernels.bench_timing import time_op as timer
    shapes = shapes or (DEFAULT_SHAPES if on_gpu else CPU_CHECK_SHAPES)
    for shape in shapes:
        m, k, n = shape
        chosen = [op for op in ops if op.supports(m, k, n) and (on_gpu or op.reference)]
        try:
            acts, wts = make_problem(m, k, n, device, group_size)
        except Exception as exc:  # e.g. out of memory: every op of this shape fails
            yield from (_row(op, shape, 1, _error(exc), {}, {}, device) for op in chosen)
            continue
        bf16: dict = {}
        for op in chosen:
            t, result = {}, None
            try:
                result = check_op(op, acts, wts) if check and op.reference else None
                t = timer(op, acts, wts) if timer else {}
            except Exception as exc:
                result = _error(exc)
            if op.name == "bf16":
                bf16 = t
            yield _row(op, shape, k // wts["gs"], result, t, bf16, device)
        del acts, wts
        if on_gpu:
            torch.cuda.empty_cache()


def run_kernel_bench(shapes=None, check: bool = True, device=None,
                     group_size: int = GROUP_SIZE) -> list[dict]:
    """Every row of :func:`iter_kernel_bench`, as a list."""
    return list(iter_kernel_bench(shapes, check, device, group_size))


def format_markdown(rows: list[dict]) -> str:
    """Render benchmark rows as a markdown table."""
    cols = ("M", "K", "N", "kernel", "ms", "ms_warm", "ms_act_quant", "tops", "gbps",
            "speedup_vs_bf16", "speedup_with_act_quant", "check")
    head = ["M", "K", "N", "kernel", "ms (HBM weights)", "ms (warm L2)", "ms (+act quant)",
            "TOP/s", "GB/s", "x bf16", "x bf16 (+act quant)", "check"]

    def fmt(v):
        if v is None:
            return "-"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
