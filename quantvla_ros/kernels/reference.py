"""Exact torch reference for the integer kernels (runs on CPU and CUDA).

Every Triton kernel in this package is tested against these functions: the integer
accumulators must match bit for bit and the scaled outputs to float rounding.
"""

from __future__ import annotations

import torch

from quantvla_ros.kernels import checks
from quantvla_ros.kernels.int4_layout import unpack_khalf

INT8_MAX = 127
INT4_MAX = 7
# Floor for per-token scales so that all-zero rows quantize to zeros instead of NaN.
SCALE_EPS = 1e-12


def _rows(x: torch.Tensor) -> torch.Tensor:
    """Flatten leading dims to [M, K] float32."""
    if not x.is_floating_point():
        raise ValueError(f"activations must be a float tensor, got {x.dtype}")
    return x.reshape(-1, x.shape[-1]).float()


def _quantize_rows(x: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = _rows(x)
    amax = x.abs().amax(dim=-1, keepdim=True)
    scale = (amax / qmax).clamp(min=SCALE_EPS)
    # torch.round is round-half-to-even, the rounding the kernels reproduce.
    q = torch.round(x / scale).clamp(-qmax, qmax).to(torch.int8)
    return q, scale


def quantize_per_token_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize each row of ``x`` [..., K] to int8 with scale absmax/127.

    Returns ``(q int8 [M, K], scale float32 [M, 1])`` with leading dims flattened.
    """
    return _quantize_rows(x, INT8_MAX)


def quantize_per_token_int4(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize each row of ``x`` [..., K] to int4 values in [-7, 7] (stored as int8).

    Returns ``(q int8 [M, K], scale float32 [M, 1])``; use :func:`pack_int4` to pack.
    """
    return _quantize_rows(x, INT4_MAX)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, gemma_style: bool = False
) -> torch.Tensor:
    """RMSNorm in float32; Gemma norms scale by ``(1 + weight)`` instead of ``weight``."""
    x = _rows(x)
    rstd = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)
    w = weight.float()
    return x * rstd * ((1.0 + w) if gemma_style else w)


def quantize_activations(
    x: torch.Tensor,
    bits: int = 8,
    *,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    gemma_style: bool = False,
    smooth: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Optionally RMS-normalize and smooth ``x``, then quantize per token.

    Returns ``(q, scale)``: int8 [M, K] for 8 bits, packed uint8 [M, K // 2] for 4 bits,
    and float32 scales [M, 1].
    """
    checks.check_act_quant(x, bits, norm_weight, smooth)
    y = _rows(x) if norm_weight is None else rms_norm(x, norm_weight, eps, gemma_style)
    if smooth is not None:
        y = y / smooth.float()
    if bits == 8:
        return quantize_per_token_int8(y)
    q, scale = quantize_per_token_int4(y)
    return pack_int4(q), scale


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack int8 values in [-8, 7] of shape [N, K] into uint8 [N, K // 2].

    Two's-complement nibbles; the low nibble holds the even k, the high nibble the odd k.
    """
    if q.dtype != torch.int8:
        raise ValueError(f"pack_int4 expects int8 values, got {q.dtype}")
    if q.shape[-1] % 2:
        raise ValueError(f"int4 packing needs an even last dimension, got K={q.shape[-1]}")
    if q.numel() and (q.min() < -8 or q.max() > 7):
        raise ValueError("int4 values must lie in [-8, 7]")
    nib = q.to(torch.int16) & 0xF
    return (nib[..., 0::2] | (nib[..., 1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Unpack uint8 [N, K // 2] into int8 [N, K] values in [-8, 7] (inverse of pack_int4)."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_int4 expects uint8, got {packed.dtype}")
    p = packed.to(torch.int16)
    lo, hi = p & 0xF, p >> 4
    # Sign-extend the 4-bit two's-complement nibbles.
    lo = lo - ((lo & 0x8) << 1)
    hi = hi - ((hi & 0x8) << 1)
    return torch.stack((lo, hi), dim=-1).flatten(-2).to(torch.int8)


def _int_mm_ok(a: torch.Tensor, b: torch.Tensor) -> bool:
    # cuBLASLt int8 constraints; on CPU float64 BLAS is ~20x faster than _int_mm.
    m, k = a.shape
    return a.is_cuda and m > 16 and k % 8 == 0 and b.shape[0] % 8 == 0


def int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact ``a @ b.T`` for int8 a [M, K] and int8 b [N, K], returned as int32 [M, N].

    Float64 is exact here: every product and partial sum is an integer below 2**53
    (127 * 128 * K stays far below that for any realistic K).
    """
    if a.dtype != torch.int8 or b.dtype != torch.int8:
        raise ValueError(f"int_matmul expects int8 operands, got {a.dtype} and {b.dtype}")
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"int_matmul shapes do not match: {tuple(a.shape)} x {tuple(b.shape)}")
    if _int_mm_ok(a, b):
        return torch._int_mm(a.contiguous(), b.contiguous().t())
    return (a.double() @ b.double().t()).to(torch.int32)


def accumulate_w8a8(x_q: torch.Tensor, w_q: torch.Tensor) -> torch.Tensor:
    """Int32 accumulator [M, N] of int8 activations [M, K] and int8 weights [N, K]."""
    return int_matmul(x_q, w_q)


def accumulate_grouped(a: torch.Tensor, b: torch.Tensor, group_size: int) -> torch.Tensor:
    """Exact per-group int32 partial sums [G, M, N] over K groups of ``group_size``."""
    k = a.shape[1]
    if group_size <= 0 or k % group_size:
        raise ValueError(f"K={k} is not a multiple of group_size={group_size}")
    return torch.stack(
        [int_matmul(a[:, g : g + group_size], b[:, g : g + group_size])
         for g in range(0, k, group_size)]
    )


def _scaled(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    b: torch.Tensor,
    w_scale: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Compute y = s_x * sum_g s_w[:, g] * acc_g (+ bias) (+ residual) in float32."""
    k = a.shape[1]
    s_w = w_scale.reshape(w_scale.shape[0], -1).float()
    y = None
    for g, k0 in enumerate(range(0, k, group_size)):
        acc = int_matmul(a[:, k0 : k0 + group_size], b[:, k0 : k0 + group_size])
        part = acc.float() * s_w[:, g]
        y = part if y is None else y + part
    y = y * a_scale.reshape(-1, 1).float()
    if bias is not None:
        y = y + bias.float()
    if residual is not None:
        y = y + residual.reshape(y.shape).float()
    return y.to(out_dtype)


def matmul_w8a8(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    *,
    group_size: int | None = None,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Scaled GEMM of pre-quantized int8 activations [M, K] with int8 weights [N, K]."""
    gs = checks.check_gemm(x_q, x_scale, w_q, w_scale, group_size, bias, residual,
                           a_int4=False, w_int4=False)
    return _scaled(x_q, x_scale, w_q, w_scale, gs, bias, residual, out_dtype)


def accumulate_w4a8(x_q: torch.Tensor, w_packed: torch.Tensor,
                    group_scale: torch.Tensor | None, group_size: int | None) -> torch.Tensor:
    """Exact int32 [M, N] ``sum_g s2[:, g] * (x_g . q_g)`` over K-half packed int4 weights."""
    k = x_q.shape[1]
    w = unpack_khalf(w_packed, k)
    if group_scale is None:
        return int_matmul(x_q, w)
    gs = group_size or k // group_scale.shape[1]
    if k % gs:
        raise ValueError(f"K={k} is not a multiple of group_size={gs}")
    # One group at a time into an int64 [M, N] sum (exact in any order): stacking the [G, M, N]
    # partials first held G times the output, e.g. 8 GiB for pi0.5's fused gate / up on an
    # 800-token prefix, where the running sum needs 0.2 GiB.
    s2 = group_scale.t().long()
    acc = torch.zeros(x_q.shape[0], w.shape[0], dtype=torch.int64, device=x_q.device)
    for g, k0 in enumerate(range(0, k, gs)):
        acc += int_matmul(x_q[:, k0 : k0 + gs], w[:, k0 : k0 + gs]) * s2[g]
    return acc.to(torch.int32)


def matmul_w4a8(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    w_packed: torch.Tensor,
    w_scale: torch.Tensor,
    *,
    group_scale: torch.Tensor | None = None,
    group_size: int | None = None,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """W4A8 GEMM: int8 activations [M, K], K-half int4 weights, progressive scales.

    ``y = acc * s1 * s_x (+ bias) (+ residual)`` with the int32 ``acc`` of
    :func:`accumulate_w4a8`, in the kernel's order of float operations.
    """
    gs = checks.check_w4a8(x_q, x_scale, w_packed, w_scale, group_scale, group_size, bias,
                           residual)
    acc = accumulate_w4a8(x_q, w_packed, group_scale, gs)
    y = acc.float() * w_scale.float()[None, :] * x_scale.reshape(-1, 1).float()
    if bias is not None:
        y = y + bias.float()
    if residual is not None:
        y = y + residual.reshape(y.shape).float()
    return y.to(out_dtype)


def matmul_w4a4(
    x_packed: torch.Tensor,
    x_scale: torch.Tensor,
    w_packed: torch.Tensor,
    w_scale: torch.Tensor,
    *,
    group_size: int | None = None,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Scaled GEMM of packed int4 activations [M, K // 2] with packed int4 weights."""
    gs = checks.check_gemm(x_packed, x_scale, w_packed, w_scale, group_size, bias, residual,
                           a_int4=True, w_int4=True)
    a, w = unpack_int4(x_packed), unpack_int4(w_packed)
    return _scaled(a, x_scale, w, w_scale, gs, bias, residual, out_dtype)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation (Gemma's GeGLU activation), in float32."""
    return torch.nn.functional.gelu(x.float(), approximate="tanh")


def gate_up(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_scale: torch.Tensor,
    *,
    weight_bits: int = 8,
    group_size: int | None = None,
    group_scale: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``gelu_tanh(gate) * up`` from one GEMM over concatenated [gate; up] weights [2N, K]."""
    if weight_bits == 8:
        y = matmul_w8a8(x_q, x_scale, w_gate_up, w_scale, group_size=group_size)
    else:
        y = matmul_w4a8(x_q, x_scale, w_gate_up, w_scale, group_scale=group_scale,
                        group_size=group_size)
    gate, up = y.chunk(2, dim=-1)
    return (gelu_tanh(gate) * up).to(out_dtype)


def _linear(x, quantize, matmul, bias, residual, smooth, out_dtype, **weights):
    lead = x.shape[:-1]
    y = x.reshape(-1, x.shape[-1])
    if smooth is not None:
        y = y.float() / smooth.float()
    q, s = quantize(y)
    res = None if residual is None else residual.reshape(q.shape[0], -1)
    out = matmul(q, s, bias=bias, residual=res, out_dtype=out_dtype or x.dtype, **weights)
    return out.reshape(*lead, out.shape[-1])


def linear_w8a8(
    x: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    *,
    group_size: int | None = None,
    residual: torch.Tensor | None = None,
    smooth: torch.Tensor | None = None,
) -> torch.Tensor:
    """``y = (acc * s_token * s_weight) (+ bias)`` with int8 activations and weights."""
    return _linear(x, quantize_per_token_int8, matmul_w8a8, bias, residual, smooth, out_dtype,
                   w_q=w_q, w_scale=w_scale, group_size=group_size)


def linear_w4a8(
    x: torch.Tensor,
    w_packed: torch.Tensor,
    w_scale: torch.Tensor,
    group_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    *,
    group_size: int | None = None,
    residual: torch.Tensor | None = None,
    smooth: torch.Tensor | None = None,
) -> torch.Tensor:
    """Linear with int8 per-token activations and K-half int4 weights (progressive scales)."""
    return _linear(x, quantize_per_token_int8, matmul_w4a8, bias, residual, smooth, out_dtype,
                   w_packed=w_packed, w_scale=w_scale, group_scale=group_scale,
                   group_size=group_size)


def _quantize_int4_packed(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    q, s = quantize_per_token_int4(x)
    return pack_int4(q), s


def linear_w4a4(
    x: torch.Tensor,
    w_packed: torch.Tensor,
    w_scale: torch.Tensor,
    group_size: int | None = None,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    *,
    residual: torch.Tensor | None = None,
    smooth: torch.Tensor | None = None,
) -> torch.Tensor:
    """Linear with int4 per-token activations and packed int4 weights."""
    if x.shape[-1] % 2:
        raise ValueError(f"int4 activations need an even K, got K={x.shape[-1]}")
    return _linear(x, _quantize_int4_packed, matmul_w4a4, bias, residual, smooth, out_dtype,
                   w_packed=w_packed, w_scale=w_scale, group_size=group_size)
