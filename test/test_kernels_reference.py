"""Tests of the exact torch reference kernels and the dispatch layer (CPU, no Triton needed)."""

import pytest
import torch

from quantvla_ros.kernels import dispatch
from quantvla_ros.kernels import reference as ref
from quantvla_ros.kernels.int4_layout import pack_khalf


def _int8(*shape, lo=-128, hi=127, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.int8)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- int4 packing -------------------------------------------------------------------------


def test_pack_unpack_round_trips_all_16_values():
    vals = torch.arange(-8, 8, dtype=torch.int8)
    pairs = torch.cartesian_prod(vals, vals).to(torch.int8).reshape(1, -1)  # every (lo, hi)
    assert torch.equal(ref.unpack_int4(ref.pack_int4(pairs)), pairs)
    q = _int8(7, 64, lo=-8, hi=7)
    assert torch.equal(ref.unpack_int4(ref.pack_int4(q)), q)


def test_pack_layout_low_nibble_is_even_k():
    q = torch.tensor([[1, 2, -1, 0, -8, 7]], dtype=torch.int8)
    assert ref.pack_int4(q).tolist() == [[0x21, 0x0F, 0x78]]


def test_pack_unpack_every_byte_round_trips():
    p = torch.arange(256, dtype=torch.int32).to(torch.uint8).reshape(4, 64)
    assert torch.equal(ref.pack_int4(ref.unpack_int4(p)), p)


@pytest.mark.parametrize(
    ("q", "match"),
    [
        (torch.zeros(2, 3, dtype=torch.int8), "even"),
        (torch.full((2, 4), 8, dtype=torch.int8), r"\[-8, 7\]"),
        (torch.zeros(2, 4, dtype=torch.int32), "int8"),
    ],
)
def test_pack_rejects_bad_input(q, match):
    with pytest.raises(ValueError, match=match):
        ref.pack_int4(q)


def test_unpack_rejects_non_uint8():
    with pytest.raises(ValueError, match="uint8"):
        ref.unpack_int4(torch.zeros(2, 2, dtype=torch.int8))


# --- per-token quantization ---------------------------------------------------------------


@pytest.mark.parametrize(("quant", "qmax"), [(ref.quantize_per_token_int8, 127),
                                              (ref.quantize_per_token_int4, 7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_quantize_error_is_at_most_half_a_step(quant, qmax, dtype):
    x = (_rand(3, 5, 96) * 4).to(dtype)
    q, s = quant(x)
    assert q.dtype == torch.int8 and q.shape == (15, 96) and s.shape == (15, 1)
    assert s.dtype == torch.float32
    assert q.abs().max() <= qmax and q.abs().amax(-1).eq(qmax).all()
    err = (x.reshape(15, 96).float() - q.float() * s).abs()
    assert (err <= s / 2 * (1 + 1e-5)).all()


def test_quantize_zero_rows_and_ties_to_even():
    x = torch.tensor([[0.0, 0.0, 0.0, 0.0], [127.0, 0.5, 1.5, 2.5], [-127.0, -0.5, -1.5, -2.5]])
    q, s = ref.quantize_per_token_int8(x)
    assert torch.isfinite(s).all() and s[0, 0] > 0
    assert q.tolist() == [[0, 0, 0, 0], [127, 0, 2, 2], [-127, 0, -2, -2]]


def test_quantize_rejects_integer_input():
    with pytest.raises(ValueError, match="float"):
        ref.quantize_per_token_int8(torch.zeros(2, 4, dtype=torch.int32))


def test_quantize_activations_norm_and_smooth():
    x, w, sm = _rand(6, 64), _rand(64, seed=1) * 0.1, _rand(64, seed=2).abs() + 0.5
    q, s = ref.quantize_activations(x, 8, norm_weight=w, eps=1e-6, gemma_style=True, smooth=sm)
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + w) / sm
    assert torch.equal((q, s)[0], ref.quantize_per_token_int8(y)[0])
    q4, s4 = ref.quantize_activations(x, 4, norm_weight=w)
    y4 = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    assert q4.dtype == torch.uint8 and q4.shape == (6, 32)
    assert torch.equal(ref.unpack_int4(q4), ref.quantize_per_token_int4(y4)[0])


# --- exact integer accumulation -----------------------------------------------------------


@pytest.mark.parametrize(("m", "k", "n"), [(1, 7, 3), (37, 200, 48), (4, 16384, 8)])
def test_int_matmul_is_exact(m, k, n):
    a, b = _int8(m, k, seed=1), _int8(n, k, seed=2)
    want = a.long() @ b.long().t()  # int64: independent of the float64 path
    got = ref.int_matmul(a, b)
    assert got.dtype == torch.int32 and torch.equal(got.long(), want)
    assert torch.equal(got.double(), a.double() @ b.double().t())


def test_int_matmul_extreme_values_long_k():
    a = torch.full((2, 16384), -128, dtype=torch.int8)
    b = torch.full((3, 16384), -128, dtype=torch.int8)
    assert (ref.int_matmul(a, b) == 128 * 128 * 16384).all()


def test_accumulate_grouped_partials_are_exact():
    a, b = _int8(5, 256, seed=3), _int8(6, 256, seed=4)
    parts = ref.accumulate_grouped(a, b, 64)
    assert parts.shape == (4, 5, 6) and parts.dtype == torch.int32
    for g in range(4):
        sl = slice(64 * g, 64 * (g + 1))
        assert torch.equal(parts[g].long(), a[:, sl].long() @ b[:, sl].long().t())
    assert torch.equal(parts.sum(0), ref.accumulate_w8a8(a, b))
    with pytest.raises(ValueError, match="multiple"):
        ref.accumulate_grouped(a, b, 100)


def _expected(a, xs, b, ws, gs, bias=None):
    """float64 y = s_x * sum_g s_w[:, g] * acc_g (+ bias)."""
    parts = ref.accumulate_grouped(a, b, gs).double()
    y = (parts * ws.double().t()[:, None, :]).sum(0) * xs.double()
    return y if bias is None else y + bias.double()


def _close(got, want, rtol=1e-5):
    """Float32 results against float64 expectations, relative to the output's magnitude."""
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=rtol * want.abs().max())


def test_matmul_scaled_outputs_follow_the_formula():
    a, w8 = _int8(9, 256, seed=5), _int8(40, 256, seed=6)
    w4 = _int8(40, 256, lo=-8, hi=7, seed=7)
    a4 = _int8(9, 256, lo=-7, hi=7, seed=8)
    xs, ws_c, ws_g = _rand(9, 1).abs(), _rand(40).abs(), _rand(40, 4, seed=3).abs()
    bias = _rand(40, seed=4)
    y = ref.matmul_w8a8(a, xs, w8, ws_c, bias=bias)
    _close(y, _expected(a, xs, w8, ws_c[:, None], 256, bias))
    # W4A8: K-half packing, float per-channel x int8 per-group scales (int4_layout.py).
    s2 = torch.randint(1, 65, (40, 2), generator=torch.Generator().manual_seed(9),
                       dtype=torch.int8)
    y = ref.matmul_w4a8(a, xs, pack_khalf(w4), ws_c, group_scale=s2, bias=bias)
    _close(y, _expected(a, xs, w4, s2.double() * ws_c.double()[:, None], 128, bias))
    y = ref.matmul_w4a4(ref.pack_int4(a4), xs, ref.pack_int4(w4), ws_g)  # group size inferred
    _close(y, _expected(a4, xs, w4, ws_g, 64))


def test_linear_matches_float_matmul_of_dequantized_operands():
    x, w = _rand(2, 5, 128), _rand(24, 128, seed=1) * 0.05
    ws = w.abs().amax(-1) / 127
    wq = torch.round(w / ws[:, None]).to(torch.int8)
    bias, res = _rand(24, seed=2), _rand(2, 5, 24, seed=3)
    y = ref.linear_w8a8(x, wq, ws, bias, residual=res)
    q, s = ref.quantize_per_token_int8(x)
    want = (q.float() * s) @ (wq.float() * ws[:, None]).t() + bias + res.reshape(10, 24)
    assert y.shape == (2, 5, 24) and y.dtype == x.dtype
    torch.testing.assert_close(y.reshape(10, 24), want, rtol=1e-5, atol=1e-5)
    # Quantization noise stays small against the float linear (SQNR > 30 dB).
    exact = x @ w.t() + bias + res
    sqnr = 10 * torch.log10(exact.pow(2).mean() / (y - exact).pow(2).mean())
    assert sqnr > 30


def test_gate_up_reference_is_gelu_of_gate_times_up():
    a, w = _int8(4, 64, seed=9), _int8(32, 64, seed=10)
    xs, ws = torch.full((4, 1), 1e-3), torch.full((32,), 1e-2)
    y = ref.gate_up(a, xs, w, ws)
    full = ref.matmul_w8a8(a, xs, w, ws)
    want = torch.nn.functional.gelu(full[:, :16], approximate="tanh") * full[:, 16:]
    torch.testing.assert_close(y, want)


# --- validation ---------------------------------------------------------------------------


def _ok():
    return dict(a=_int8(4, 64), xs=torch.ones(4, 1), w=_int8(8, 64), ws=torch.ones(8))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(w=_int8(8, 32)), "K mismatch"),
        (dict(ws=torch.ones(8, dtype=torch.float16)), "weight scale"),
        (dict(ws=torch.ones(7)), "weight scale"),
        (dict(ws=torch.ones(8, 3)), "groups"),
        (dict(xs=torch.ones(5, 1)), "activation scale"),
        (dict(a=torch.zeros(4, 64, dtype=torch.uint8)), "activations"),
        (dict(bias=torch.ones(9)), "bias"),
        (dict(residual=torch.ones(4, 9)), "residual"),
        (dict(group_size=48), "multiple of group_size"),
        (dict(ws=torch.ones(8, 2), group_size=16), "groups"),
    ],
)
def test_matmul_rejects_unsupported_inputs(change, match):
    args = {**_ok(), **change}
    extra = {k: args.pop(k) for k in ("bias", "residual", "group_size") if k in args}
    with pytest.raises(ValueError, match=match):
        ref.matmul_w8a8(args["a"], args["xs"], args["w"], args["ws"], **extra)


def test_int4_paths_reject_odd_k():
    with pytest.raises(ValueError, match="even"):
        ref.linear_w4a4(_rand(2, 63), torch.zeros(4, 31, dtype=torch.uint8), torch.ones(4))
    with pytest.raises(ValueError, match="even"):
        ref.quantize_activations(_rand(2, 63), 4)


# --- dispatch -----------------------------------------------------------------------------


def _w8_problem():
    x = _rand(3, 64)
    return x, _int8(16, 64, seed=1), torch.full((16,), 0.01)


def test_auto_on_cpu_runs_the_reference_and_reports_it(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    x, w, ws = _w8_problem()
    y = dispatch.linear_w8a8(x, w, ws)
    assert dispatch.last_kernel() == "reference.w8a8"
    torch.testing.assert_close(y, ref.linear_w8a8(x, w, ws))
    dispatch.quantize_activations(x, 4)
    assert dispatch.last_kernel() == "reference.act_quant4"
    assert dispatch.resolve_backend("auto", "cpu") == "reference"


def test_environment_forces_the_reference(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    x, w, ws = _w8_problem()
    dispatch.linear_w8a8(x, w, ws, backend="triton")
    assert dispatch.last_kernel() == "reference.w8a8"
    assert dispatch.resolve_backend("auto", "cuda") == "reference"


def test_bad_backend_names_are_rejected(monkeypatch):
    with pytest.raises(ValueError, match="backend"):
        dispatch.resolve_backend("cuda", "cpu")
    monkeypatch.setenv(dispatch.ENV_VAR, "fast")
    with pytest.raises(ValueError, match=dispatch.ENV_VAR):
        dispatch.resolve_backend("auto", "cpu")


def test_triton_on_cpu_without_interpreter_is_an_error(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    monkeypatch.setattr(dispatch, "triton_interpreted", lambda: False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        dispatch.resolve_backend("triton", "cpu")


def test_dispatch_linear_validates_before_computing():
    x, w, ws = _w8_problem()
    with pytest.raises(ValueError, match="residual"):
        dispatch.linear_w8a8(x, w, ws, residual=torch.zeros(3, 15), backend="reference")
    with pytest.raises(ValueError, match="out_dtype"):
        dispatch.linear_w8a8(x, w, ws, out_dtype=torch.int32, backend="reference")
    with pytest.raises(ValueError, match="per channel"):
        dispatch.linear_w4a8(x, torch.zeros(16, 64, dtype=torch.uint8), torch.ones(16, 3),
                             backend="reference")


def test_dispatch_w4_linears_on_reference():
    x = _rand(2, 3, 128)
    w4 = _int8(24, 128, lo=-7, hi=7, seed=2)
    ws = _rand(24, 2, seed=3).abs() * 0.05
    y = dispatch.linear_w4a8(x.bfloat16(), pack_khalf(w4), ws[:, 0], backend="reference")
    assert y.shape == (2, 3, 24) and y.dtype == torch.bfloat16
    assert dispatch.last_kernel() == "reference.w4a8"
    y4 = dispatch.linear_w4a4(x, ref.pack_int4(w4), ws, 64, backend="reference")
    torch.testing.assert_close(y4, ref.linear_w4a4(x, ref.pack_int4(w4), ws, 64))
    assert dispatch.last_kernel() == "reference.w4a4"
