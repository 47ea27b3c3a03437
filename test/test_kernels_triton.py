"""Triton kernels against the exact reference: under the interpreter on CPU, on CUDA if any.

Accumulators are compared bit for bit (unit scales keep them exact in float32 for these K),
scaled outputs to 1e-3 relative. Tiles are GPU-legal (>= 16 x 16 x 32) so the same configs
compile on a GPU. Tests marked ``gpu`` repeat the checks at model shapes on CUDA.
"""

import functools
import os

import pytest
import torch

if not torch.cuda.is_available():
    # The interpreter is chosen when kernels are decorated, so this must precede their import.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from quantvla_ros.kernels import dispatch  # noqa: E402
from quantvla_ros.kernels import reference as ref  # noqa: E402
from quantvla_ros.kernels.act_quant import quantize_activations  # noqa: E402
from quantvla_ros.kernels.configs import GemmConfig  # noqa: E402
from quantvla_ros.kernels.gate_up_gemm import gate_up_gemm  # noqa: E402
from quantvla_ros.kernels.int4_layout import pack_khalf  # noqa: E402
from quantvla_ros.kernels.scaled_gemm import scaled_gemm  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
if DEV == "cpu" and not dispatch.triton_interpreted():
    pytest.skip("Triton kernels were imported without TRITON_INTERPRET=1 and there is no GPU",
                allow_module_level=True)

M_VALUES = (1, 16, 37, 64)
RTOL = 1e-3

w8a8_gemm = functools.partial(scaled_gemm, a_int4=False, w_int4=False)
w4a4_gemm = functools.partial(scaled_gemm, a_int4=True, w_int4=True)


def _int(shape, lo, hi, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.int8).to(DEV)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEV)


def _ones(*shape):
    return torch.ones(*shape, device=DEV)


def _assert_rel(got, want, rtol=RTOL):
    err = (got.float() - want.float()).abs().max() / want.float().abs().max().clamp(min=1e-30)
    assert err <= rtol, f"relative error {err:.3e} > {rtol}"


def _operands(m, k, n, a_bits, w_bits, seed=0):
    """Integer operands in their storage format plus their int8 values."""
    a = _int((m, k), -127 if a_bits == 8 else -7, 127 if a_bits == 8 else 7, seed)
    w = _int((n, k), -128 if w_bits == 8 else -8, 127 if w_bits == 8 else 7, seed + 1)
    a_store = a if a_bits == 8 else ref.pack_int4(a)
    w_store = w if w_bits == 8 else ref.pack_int4(w)
    return a, w, a_store, w_store


GEMMS = {
    "w8a8": (w8a8_gemm, 8, 8, ref.matmul_w8a8),
    "w4a4": (w4a4_gemm, 4, 4, ref.matmul_w4a4),
}


# --- accumulators -------------------------------------------------------------------------


@pytest.mark.parametrize("m", M_VALUES)
@pytest.mark.parametrize("op", list(GEMMS))
def test_accumulators_are_bit_exact(op, m):
    gemm, a_bits, w_bits, _ = GEMMS[op]
    k = 200 if op == "w8a8" else 196  # not a multiple of BLOCK_K
    a, w, a_s, w_s = _operands(m, k, 48, a_bits, w_bits, seed=m)
    y = gemm(a_s, _ones(m, 1), w_s, _ones(48))
    # |acc| <= 200 * 128 * 127 < 2**24, so unit scales keep the int32 sums exact in float32.
    assert torch.equal(y, ref.int_matmul(a, w).float())


@pytest.mark.parametrize("op", list(GEMMS))
@pytest.mark.parametrize(
    "cfg", [GemmConfig(16, 16, 32, split_k=3), GemmConfig(32, 16, 64, split_k=2, group_m=2)]
)
def test_small_tiles_and_split_k_stay_exact(op, cfg):
    gemm, a_bits, w_bits, _ = GEMMS[op]
    a, w, a_s, w_s = _operands(37, 256, 48, a_bits, w_bits, seed=3)
    for _ in range(2):  # the second call finds the workspace the first one re-zeroed
        y = gemm(a_s, _ones(37, 1), w_s, _ones(48), config=cfg)
        assert torch.equal(y, ref.int_matmul(a, w).float())


@pytest.mark.parametrize("op", ["w8a8", "w4a4"])
@pytest.mark.parametrize(("group_size", "cfg"), [
    (64, None),
    (128, None),  # two BLOCK_K = 64 blocks per group
    (64, GemmConfig(16, 16, 32, split_k=2)),
])
def test_group_scales_fold_exactly(op, group_size, cfg):
    gemm, a_bits, w_bits, _ = GEMMS[op]
    a, w, a_s, w_s = _operands(37, 256, 48, a_bits, w_bits, seed=5)
    groups = 256 // group_size
    # Powers of two keep every partial exact, so the fold order cannot hide an index bug.
    exps = torch.arange(48 * groups, device=DEV).reshape(48, groups) % 4
    ws = torch.pow(2.0, exps.float() - 1)
    y = gemm(a_s, _ones(37, 1), w_s, ws, group_size=group_size, config=cfg)
    parts = ref.accumulate_grouped(a, w, group_size).double()
    assert torch.equal(y.double(), (parts * ws.double().t()[:, None, :]).sum(0))


# --- scaled outputs -----------------------------------------------------------------------


@pytest.mark.parametrize("m", M_VALUES)
@pytest.mark.parametrize("op", list(GEMMS))
def test_scaled_outputs_match_reference(op, m):
    gemm, a_bits, w_bits, ref_mm = GEMMS[op]
    k, n, gs = 256, 48, (None if op == "w8a8" else 128)
    _, _, a_s, w_s = _operands(m, k, n, a_bits, w_bits, seed=10 + m)
    xs = _rand(m, 1, seed=1).abs() * 0.02
    ws = _rand(n, 1 if gs is None else k // gs, seed=2).abs() * 0.01
    bias, res = _rand(n, seed=3), _rand(m, n, seed=4).bfloat16()
    for out_dtype in (torch.float32, torch.bfloat16):
        got = gemm(a_s, xs, w_s, ws, group_size=gs, bias=bias, residual=res,
                   out_dtype=out_dtype)
        want = ref_mm(a_s, xs, w_s, ws, group_size=gs, bias=bias, residual=res)
        assert got.dtype == out_dtype and got.shape == (m, n)
        _assert_rel(got, want, RTOL if out_dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("op", ["w4a4"])
def test_per_channel_int4_matches_reference(op):
    gemm, a_bits, w_bits, ref_mm = GEMMS[op]
    _, _, a_s, w_s = _operands(16, 320, 48, a_bits, w_bits, seed=21)
    xs, ws = _rand(16, 1).abs(), _rand(48, 1, seed=1).abs()
    _assert_rel(gemm(a_s, xs, w_s, ws), ref_mm(a_s, xs, w_s, ws))


@pytest.mark.parametrize("op", list(GEMMS))
def test_split_k_epilogue_adds_bias_and_residual_once(op):
    gemm, a_bits, w_bits, ref_mm = GEMMS[op]
    gs = None if op == "w8a8" else 64
    _, _, a_s, w_s = _operands(20, 256, 48, a_bits, w_bits, seed=40)
    xs, bias, res = _rand(20, 1).abs() * 0.01, _rand(48, seed=1), _rand(20, 48, seed=2)
    ws = _rand(48, 1 if gs is None else 4, seed=3).abs() * 0.01
    got = gemm(a_s, xs, w_s, ws, group_size=gs, bias=bias, residual=res,
               out_dtype=torch.bfloat16, config=GemmConfig(32, 64, 64, split_k=4))
    want = ref_mm(a_s, xs, w_s, ws, group_size=gs, bias=bias, residual=res)
    assert got.dtype == torch.bfloat16
    _assert_rel(got, want, 1e-2)


def test_gpu_config_table_is_legal_and_splits_small_problems():
    from quantvla_ros.kernels.bench import DEFAULT_SHAPES
    from quantvla_ros.kernels.configs import gemm_config

    for m, k, n in DEFAULT_SHAPES:
        for gs in (k, 128):
            cfg = gemm_config(m, n, k, gs, interpret=False)  # GemmConfig checks tile minima
            assert gs == k or gs % cfg.block_k == 0
    assert gemm_config(64, 1024, 4096, 4096, interpret=False).split_k > 1
    assert gemm_config(968, 16384, 2048, 2048, interpret=False).split_k == 1
    assert gemm_config(968, 2048, 2048, 64, interpret=False).block_k == 64


# --- fused gate + up ----------------------------------------------------------------------


# W4A8's gate_up is a mode of its own kernel: test/test_w4a8_kernel.py.
@pytest.mark.parametrize(("weight_bits", "group_size"), [(8, None)])
def test_concatenated_gemm_equals_two_gemms_and_fused_geglu(weight_bits, group_size):
    m, k, n = 37, 256, 48
    gemm = w8a8_gemm
    a, _, _, w_s = _operands(m, k, 2 * n, 8, weight_bits, seed=30)
    xs = _rand(m, 1, seed=1).abs() * 0.01
    ws = _rand(2 * n, 1 if group_size is None else k // group_size, seed=2).abs() * 0.01
    both = gemm(a, xs, w_s, ws, group_size=group_size)
    gate = gemm(a, xs, w_s[:n], ws[:n], group_size=group_size)
    up = gemm(a, xs, w_s[n:], ws[n:], group_size=group_size)
    assert torch.equal(both, torch.cat([gate, up], dim=1))
    fused = gate_up_gemm(a, xs, w_s, ws, weight_bits=weight_bits, group_size=group_size)
    want = ref.gate_up(a, xs, w_s, ws, weight_bits=weight_bits, group_size=group_size)
    _assert_rel(fused, want)
    torch.testing.assert_close(fused, ref.gelu_tanh(gate) * up, rtol=1e-4, atol=1e-4)


# --- activation quantization --------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("fused", ["plain", "norm", "gemma+smooth", "smooth"])
def test_activation_quantization_matches_reference(bits, fused):
    x = (_rand(2, 19, 200) * 3).bfloat16()
    x[0, 3] = 0  # zero row
    kw = {
        "plain": {},
        "norm": dict(norm_weight=_rand(200, seed=1)),
        "gemma+smooth": dict(norm_weight=_rand(200, seed=1) * 0.1, gemma_style=True,
                             smooth=_rand(200, seed=2).abs() + 0.5),
        "smooth": dict(smooth=_rand(200, seed=2).abs() + 0.5),
    }[fused]
    q, s = quantize_activations(x, bits, **kw)
    qr, sr = ref.quantize_activations(x, bits, **kw)
    assert q.dtype == qr.dtype and q.shape == qr.shape and s.shape == (38, 1)
    torch.testing.assert_close(s, sr, rtol=1e-6, atol=0)
    if bits == 4:
        q, qr = ref.unpack_int4(q), ref.unpack_int4(qr)
    diff = (q.int() - qr.int()).abs()
    if fused in ("plain", "smooth"):
        assert torch.equal(q, qr)  # same float ops as the reference: identical codes
    else:  # the norm's sum order may move a value across a rounding boundary
        assert diff.max() <= 1 and diff.float().mean() < 1e-3
    assert torch.equal(q[3], torch.zeros_like(q[3]))


def test_activation_quantization_rounds_ties_to_even():
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5]], device=DEV)
    q, s = quantize_activations(x, 8)
    assert s.item() == 1.0 and q.tolist() == [[127, 0, 2, 2, 0, -2, -2, 4]]


# --- rejection ----------------------------------------------------------------------------


def test_gemm_rejects_unsupported_shapes():
    _, _, a, w = _operands(4, 64, 16, 4, 4)
    with pytest.raises(ValueError, match="multiple of 32"):
        w4a4_gemm(a, _ones(4, 1), w, _ones(16, 4), group_size=16)
    with pytest.raises(ValueError, match="multiple of group_size"):
        w4a4_gemm(a, _ones(4, 1), w, _ones(16, 2), group_size=48)
    with pytest.raises(ValueError, match="block_k"):
        w4a4_gemm(a, _ones(4, 1), w, _ones(16, 2), config=GemmConfig(16, 16, 64 * 2))
    with pytest.raises(ValueError, match="activations must be"):
        w8a8_gemm(a, _ones(4, 1), w, _ones(16))
    with pytest.raises(ValueError, match="out_dtype"):
        w4a4_gemm(a, _ones(4, 1), w, _ones(16), out_dtype=torch.int32)
    with pytest.raises(ValueError, match="8-bit dot minimum"):
        GemmConfig(8, 16, 32)
    with pytest.raises(ValueError, match="even"):
        quantize_activations(_rand(2, 7), 4)
    with pytest.raises(ValueError, match="even row count"):
        gate_up_gemm(_int((4, 64), -1, 1, 0), _ones(4, 1), _int((15, 64), -1, 1, 0), _ones(15))


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    from quantvla_ros.kernels import triton_helpers

    monkeypatch.setattr(triton_helpers, "is_interpreted", lambda kernel: False)
    _, _, a, w = _operands(4, 64, 16, 8, 8)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        w8a8_gemm(a.cpu(), torch.ones(4, 1), w.cpu(), torch.ones(16))


# --- dispatch -----------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["w8a8", "w4a8", "w4a4"])
def test_dispatch_triton_backend_reports_and_matches(op, monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    x, res = _rand(2, 8, 128), _rand(2, 8, 48, seed=3)
    w = _int((48, 128), -7, 7, 1)
    ws = _rand(48, 2, seed=2).abs() * 0.01
    if op == "w8a8":
        w_s, ws, kw = w, ws[:, 0], {}
    elif op == "w4a8":
        s2 = _int((48, 1), 1, 64, 5)
        w_s, ws, kw = pack_khalf(w), ws[:, 0], {"group_scale": s2}
    else:
        w_s, kw = ref.pack_int4(w), {"group_size": 64}
    fn = getattr(dispatch, f"linear_{op}")
    got = fn(x, w_s, ws, bias=_rand(48, seed=4), residual=res, backend="triton", **kw)
    assert dispatch.last_kernel() == f"triton.{op}"
    want = fn(x, w_s, ws, bias=_rand(48, seed=4), residual=res, backend="reference", **kw)
    assert dispatch.last_kernel() == f"reference.{op}"
    assert got.shape == (2, 8, 48)
    _assert_rel(got, want)


def test_dispatch_quantize_and_gate_up_on_triton():
    x = _rand(5, 64)
    q, s = dispatch.quantize_activations(x, 8, backend="triton")
    assert dispatch.last_kernel() == "triton.act_quant8"
    w = _int((32, 64), -127, 127, 2)
    dispatch.gate_up(q, s, w, _ones(32) * 0.01, backend="triton")
    assert dispatch.last_kernel() == "triton.gate_up_w8a8"


def test_bench_checks_pass_on_small_shapes():
    from quantvla_ros.kernels.bench import format_markdown, run_kernel_bench

    if DEV == "cuda":
        pytest.skip("the CUDA benchmark is covered by the gpu tests")
    rows = run_kernel_bench(shapes=[(16, 256, 48)], check=True, device="cpu")
    assert {r["kernel"] for r in rows} == {"w8a8", "w4a8", "w4a4", "w4a8_gate_up", "w4a8_pc",
                                           "w4a8_nosplit", "act_quant8"}
    assert all(r["check"] == "ok" and r["ms"] is None for r in rows)
    assert format_markdown(rows).count("\n") == len(rows) + 1


# --- GPU, model shapes --------------------------------------------------------------------

GPU_SHAPES = [(50, 1024, 4096), (64, 4096, 1024), (968, 2048, 16384), (968, 16384, 2048),
              (1, 2048, 2048), (16, 2048, 2048)]


@pytest.mark.gpu
@pytest.mark.parametrize(("m", "k", "n"), GPU_SHAPES)
@pytest.mark.parametrize("op", list(GEMMS))
def test_gpu_model_shapes_match_reference(op, m, k, n):
    gemm, a_bits, w_bits, ref_mm = GEMMS[op]
    gs = None if op == "w8a8" else 128
    _, _, a_s, w_s = _operands(m, k, n, a_bits, w_bits, seed=m + k)
    xs = _rand(m, 1, seed=1).abs() * 0.01
    ws = _rand(n, 1 if gs is None else k // gs, seed=2).abs() * 0.01
    _assert_rel(gemm(a_s, xs, w_s, ws, group_size=gs), ref_mm(a_s, xs, w_s, ws, group_size=gs))


@pytest.mark.gpu
@pytest.mark.parametrize(("m", "k"), [(50, 1024), (968, 2048), (968, 16384)])
def test_gpu_activation_quantization_and_gate_up(m, k):
    x = _rand(m, k).bfloat16()
    nw = _rand(k, seed=1) * 0.1
    q, s = quantize_activations(x, 8, norm_weight=nw, gemma_style=True)
    qr, sr = ref.quantize_activations(x, 8, norm_weight=nw, gemma_style=True)
    torch.testing.assert_close(s, sr, rtol=1e-5, atol=0)
    assert (q.int() - qr.int()).abs().max() <= 1
    w = _int((2 * 1024, k), -127, 127, 3)
    ws = _rand(2 * 1024, seed=4).abs() * 0.01
    _assert_rel(gate_up_gemm(q, s, w, ws), ref.gate_up(q, s, w, ws))


@pytest.mark.gpu
def test_gpu_bench_runs_and_checks():
    from quantvla_ros.kernels.bench import run_kernel_bench

    rows = run_kernel_bench(shapes=[(50, 1024, 4096)], check=True, device="cuda")
    assert all(r["ms"] > 0 for r in rows)
    assert all(r["check"] in (None, "ok") for r in rows)
