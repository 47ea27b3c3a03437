"""Fused float kernels (add + norm, GeGLU, RoPE + KV write) against the model's unfused torch
path, and the fused add + adaRMS + quantization against normalizing, then quantizing.

Triton runs under the CPU interpreter (conftest sets TRITON_INTERPRET=1). Tolerances: float32
to 1e-6 (the kernels use 1/sqrt where torch uses rsqrt); bfloat16 residual sums and RoPE
bit for bit, normalized rows to one bf16 rounding step; int8 bit-exact where the float rows
are identical (reference), else within 1 LSB.
"""

import pytest
import torch
import torch.nn.functional as F

from quantvla_ros.kernels import dispatch, norm_kernels, rope_kernels
from quantvla_ros.models.pi.attention import TORCH_OPS
from quantvla_ros.models.pi.layers import (
    AdaRMSNorm,
    RMSNorm,
    StepCondition,
    split_heads,
)
from quantvla_ros.models.rope import rope_cos_sin

pytestmark = pytest.mark.skipif(not dispatch.triton_interpreted() and
                                not torch.cuda.is_available(),
                                reason="needs Triton's interpreter or a GPU")
DTYPES = [torch.float32, torch.bfloat16]


def _close(a, b, dtype):
    if dtype == torch.float32:
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    else:  # one bf16 rounding step (2^-8 relative)
        torch.testing.assert_close(a.float(), b.float(), atol=1e-2, rtol=8e-3)


def _norm(kind, w, seed=0):
    torch.manual_seed(seed)
    if kind == "gemma":
        n = RMSNorm(w)
        torch.nn.init.normal_(n.weight, 0.0, 0.3)
    else:
        n = AdaRMSNorm(w)
        torch.nn.init.normal_(n.dense.weight, 0.0, 0.2)
        torch.nn.init.normal_(n.dense.bias, 0.0, 0.5)
    return n


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["gemma", "ada", "ada_broadcast"])
@pytest.mark.parametrize("residual", [None, "plain", "gated"])
@torch.no_grad()
def test_add_norm_equals_the_unfused_norm(kind, residual, dtype):
    b, s, w = 2, 5, 96  # W not a power of two: masked tail
    norm = _norm(kind.split("_")[0], w)
    g = torch.Generator().manual_seed(1)
    h = torch.randn(b, s, w, generator=g).to(dtype)
    cond = torch.randn(1 if kind == "ada_broadcast" else b, w, generator=g)
    res = None
    if residual is not None:
        delta = torch.randn(b, s, w, generator=g).to(dtype)
        gate = (torch.rand(b, 1, w, generator=g) + 0.5).to(dtype) if residual == "gated" \
            else None
        res = (delta, gate)
    want_h, want_y, _ = norm.add_forward(h, res, cond if kind != "gemma" else None)
    if kind == "gemma":
        kw = dict(weight=norm.weight, eps=norm.eps)
    else:
        m = norm.modulation(cond, dtype)
        kw = dict(scale1=m.scale1, shift=m.shift, eps=norm.eps)
    delta, gate = res or (None, None)
    ref_h, ref_y = norm_kernels.add_norm(h, delta, gate, backend="reference", **kw)
    assert torch.equal(ref_h, want_h) and torch.equal(ref_y, want_y)  # the unfused path
    got_h, got_y = norm_kernels.add_norm(h, delta, gate, backend="triton", **kw)
    assert got_h.dtype == got_y.dtype == dtype
    assert torch.equal(got_h, want_h)  # the residual sum rounds as torch does
    _close(got_y, want_y, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@torch.no_grad()
def test_add_adarms_quantization_equals_norm_then_quantize(dtype):
    """adaRMS scale / shift per sample, gated residual, int8 rows: one kernel."""
    b, s, w = 3, 4, 160
    norm = _norm("ada", w, seed=2)
    g = torch.Generator().manual_seed(3)
    h, delta = (torch.randn(b, s, w, generator=g).to(dtype) for _ in range(2))
    gate = (torch.rand(b, 1, w, generator=g) + 0.5).to(dtype)
    m = norm.modulation(torch.randn(b, w, generator=g), dtype)
    want_h, x, _ = norm.add_forward(h, (delta, gate), StepCondition({norm: m}))
    want_q, want_s = dispatch.quantize_activations(x, 8, backend="reference")
    kw = dict(scale1=m.scale1, shift=m.shift, eps=norm.eps, quant_bits=8)
    ref_h, (ref_q, ref_s) = norm_kernels.add_norm(h, delta, gate, backend="reference", **kw)
    assert torch.equal(ref_h, want_h) and torch.equal(ref_q, want_q)  # identical float rows
    assert torch.equal(ref_s, want_s)
    got_h, (got_q, got_s) = norm_kernels.add_norm(h, delta, gate, backend="triton", **kw)
    assert torch.equal(got_h, want_h) and got_q.dtype == torch.int8
    assert (got_q.int() - want_q.int()).abs().max() <= 1  # 1/sqrt vs rsqrt: at most 1 LSB
    if dtype == torch.float32:
        assert (got_q != want_q).float().mean() < 0.01
        torch.testing.assert_close(got_s, want_s, atol=0, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@torch.no_grad()
def test_gemma_norm_quantization_matches_the_act_quant_kernel(dtype):
    """The backbone's fused norm + int8 path keeps act_quant's float32 (unrounded) rows."""
    b, s, w = 2, 3, 128
    norm = _norm("gemma", w, seed=4)
    g = torch.Generator().manual_seed(5)
    h, delta = (torch.randn(b, s, w, generator=g).to(dtype) for _ in range(2))
    want_q, want_s = dispatch.quantize_activations(h + delta, 8, norm_weight=norm.weight,
                                                   eps=norm.eps, gemma_style=True,
                                                   backend="reference")
    _, (q, sc) = norm_kernels.add_norm(h, delta, None, weight=norm.weight, eps=norm.eps,
                                       round_to_dtype=False, quant_bits=8, backend="reference")
    assert torch.equal(q, want_q) and torch.equal(sc, want_s)
    _, (q, sc) = norm_kernels.add_norm(h, delta, None, weight=norm.weight, eps=norm.eps,
                                       round_to_dtype=False, quant_bits=8, backend="triton")
    assert (q.int() - want_q.int()).abs().max() <= 1


@pytest.mark.parametrize("dtype", DTYPES)
@torch.no_grad()
def test_geglu_equals_gelu_times_up(dtype):
    g = torch.Generator().manual_seed(6)
    gu = (torch.randn(7, 2 * 200, generator=g) * 3).to(dtype)
    want = F.gelu(gu[:, :200], approximate="tanh") * gu[:, 200:]
    assert torch.equal(norm_kernels.geglu(gu, backend="reference"), want)
    _close(norm_kernels.geglu(gu, backend="triton"), want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_q", [True, False])
@torch.no_grad()
def test_rope_with_in_place_kv_write_equals_the_torch_path(dtype, with_q):
    """q/k/v are views of one fused GEMM output; k / v land in a cache's slice."""
    b, s, heads, kvh, d, p = 2, 6, 4, 1, 32, 5
    g = torch.Generator().manual_seed(7)
    qkv = torch.randn(b, s, (heads + 2 * kvh) * d, generator=g).to(dtype)
    q, k, v = split_heads(*qkv.split([heads * d, kvh * d, kvh * d], -1), heads, kvh, d)
    pos = torch.arange(p, p + s)[None].expand(b, s) + torch.tensor([[0], [3]])
    cos, sin = rope_cos_sin(pos, d, 10_000.0, dtype)
    want_q, want_k, want_v = TORCH_OPS.rope_qkv(q if with_q else None, k, v, cos, sin)
    cache_k, cache_v = (torch.zeros(b, kvh, p + s + 2, d, dtype=dtype) for _ in range(2))
    got_q, got_k, got_v = rope_kernels.rope_qkv(
        q if with_q else None, k, v, cos, sin, cache_k[:, :, p:p + s], cache_v[:, :, p:p + s],
        backend="triton")
    assert torch.equal(cache_k[:, :, p:p + s], got_k) and torch.equal(cache_v[:, :, p:p + s], v)
    assert not cache_k[:, :, :p].any() and not cache_k[:, :, p + s:].any()  # only its slice
    assert torch.equal(got_v, want_v)
    _close(got_k, want_k, dtype)
    if with_q:
        assert got_q.shape == q.shape and got_q.transpose(1, 2).is_contiguous()
        _close(got_q, want_q, dtype)
    else:
        assert got_q is None


def test_meta_tensors_report_one_launch_each():
    """Shape-only dry runs (bench launches): outputs on meta, one listener call per op."""
    seen = []
    dispatch.add_launch_listener(seen.append)
    try:
        h = torch.empty(2, 3, 64, device="meta")
        vec = torch.empty(1, 1, 64, device="meta")
        h2, (q, sc) = norm_kernels.add_norm(h, h, vec, scale1=vec, shift=vec, quant_bits=8)
        y = norm_kernels.geglu(torch.empty(6, 128, device="meta"))
        kk = torch.empty(2, 1, 3, 16, device="meta")
        qq, k2, v2 = rope_kernels.rope_qkv(torch.empty(2, 4, 3, 16, device="meta"), kk, kk,
                                           torch.empty(2, 1, 3, 16, device="meta"),
                                           torch.empty(2, 1, 3, 16, device="meta"))
    finally:
        dispatch.remove_launch_listener(seen.append)
    assert seen == ["meta.add_norm_q8", "meta.geglu", "meta.rope_qkv"]
    assert h2.shape == h.shape and q.shape == (6, 64) and q.dtype == torch.int8
    assert sc.shape == (6, 1) and y.shape == (6, 64) and qq.shape == (2, 4, 3, 16)
    assert all(t.is_meta for t in (h2, q, y, qq, k2, v2))


_AOT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from quantvla_ros.kernels.norm_triton import add_norm_kernel, geglu_kernel, rope_kernel

def comp(fn, types, consts, warps):
    sig = {n: "constexpr" if n in consts else types[n] for n in fn.arg_names}
    k = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", ARCH, 32),
                       options=dict(num_warps=warps))
    assert k.asm["cubin"]

ints = dict.fromkeys(["K", "rows_per_sample", "stride_h", "stride_d", "stride_ho", "stride_y",
                      "stride_g", "stride_w", "stride_m1", "stride_sh"], "i32")
base = dict(h_ptr="*bf16", d_ptr="*bf16", g_ptr="*bf16", w_ptr="*fp32", m1_ptr="*fp32",
            sh_ptr="*fp32", hout_ptr="*bf16", y_ptr="*bf16", s_ptr="*bf16", eps="fp32",
            scale_eps="fp32", **ints)
q8 = {**base, "y_ptr": "*i8", "s_ptr": "*fp32"}
c = dict(HAS_RES=True, HAS_GATE=True, ADA=True, ROUND=True, QUANT=False, INT4=False,
         BLOCK_K=1024, USE_RINT=True, EMULATE=False)
comp(add_norm_kernel, base, c, 4)  # expert: add + adaRMS, bf16 out
comp(add_norm_kernel, q8, {**c, "QUANT": True}, 4)  # expert MLP: add + adaRMS + int8
comp(add_norm_kernel, q8, {**c, "QUANT": True, "ADA": False, "HAS_GATE": False,
                           "ROUND": False, "BLOCK_K": 2048}, 8)  # backbone: add + RMS + int8
comp(add_norm_kernel, {**base, "y_ptr": "*u8", "s_ptr": "*fp32"},
     {**c, "QUANT": True, "INT4": True}, 4)
comp(geglu_kernel, dict(x_ptr="*bf16", out_ptr="*bf16", N="i32", stride_x="i32",
                        stride_o="i32"), dict(BLOCK=1024, EMULATE=False), 4)
rt = {n: "*bf16" if n.endswith("_ptr") else "i32" for n in rope_kernel.arg_names}
comp(rope_kernel, rt, dict(D=256, EMULATE=False), 4)
"""


@pytest.mark.parametrize("arch", [90, 87])
def test_float_kernels_compile_for_gpu(arch):
    """The interpreter accepts what a GPU compiler may reject: compile to cubin (no GPU)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import triton

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("no ptxas bundled with triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", f"ARCH = {arch}\n" + _AOT], env=env,
                          capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.gpu
@torch.no_grad()
def test_compiled_kernels_on_cuda_match_the_reference():
    """On a GPU the compiled kernels (not the interpreter) against the torch references."""
    dev, dt = "cuda", torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    h, delta = (torch.randn(2, 50, 1024, device=dev, generator=g).to(dt) for _ in range(2))
    gate = torch.rand(1, 1, 1024, device=dev, generator=g).to(dt)
    s1, sh = (torch.randn(1, 1, 1024, device=dev, generator=g) for _ in range(2))
    for quant in (None, 8):
        kw = dict(scale1=s1, shift=sh, quant_bits=quant)
        want = norm_kernels.add_norm(h, delta, gate, backend="reference", **kw)
        got = norm_kernels.add_norm(h, delta, gate, backend="triton", **kw)
        assert torch.equal(got[0], want[0])
        if quant is None:
            _close(got[1], want[1], dt)
        else:
            assert (got[1][0].int() - want[1][0].int()).abs().max() <= 1
    gu = torch.randn(100, 8192, device=dev, generator=g).to(dt)
    _close(norm_kernels.geglu(gu, backend="triton"), norm_kernels.geglu_reference(gu), dt)
    qkv = torch.randn(1, 50, 10 * 256, device=dev, generator=g).to(dt)
    q, k, v = split_heads(*qkv.split([2048, 256, 256], -1), 8, 1, 256)
    pos = torch.arange(968, 1018, device=dev)[None]
    cos, sin = rope_cos_sin(pos, 256, 10_000.0, dt)
    want = rope_kernels.rope_qkv_reference(q, k, v, cos, sin)
    got = rope_kernels.rope_qkv(q, k, v, cos, sin, backend="triton")
    for a, b in zip(got, want, strict=True):
        _close(a, b, dt)


@pytest.mark.gpu
@torch.no_grad()
def test_folded_attention_is_one_cuda_kernel():
    """`bench launches` counts SDPA as one launch: check the backend the fold enables."""
    from torch.profiler import ProfilerActivity, profile

    from quantvla_ros.models.pi.layers import attend, attention_bias, fold_bias

    dev, dt = "cuda", torch.bfloat16
    q = torch.randn(1, 50, 8, 256, device=dev, dtype=dt).transpose(1, 2)
    k, v = (torch.randn(1, 1, 1018, 256, device=dev, dtype=dt) for _ in range(2))
    mask = torch.ones(1, 50, 1018, dtype=torch.bool, device=dev)
    mask[:, :, 900:968] = False
    bias = attention_bias(mask, dt)
    folded = fold_bias(bias, 8)
    want = attend(q, k, v, bias)
    got = attend(q, k, v, bias, folded)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        attend(q, k, v, bias, folded)
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type.name == "CUDA"]
    assert len(kernels) == 1, kernels
