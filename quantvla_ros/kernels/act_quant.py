"""Triton per-token activation quantization, optionally fused with RMSNorm and smoothing.

One program per row holds the whole row in registers (BLOCK_K = next power of two >= K), so
the row is read once: norm, smoothing, absmax and rounding all happen on the loaded values.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from quantvla_ros.kernels import checks
from quantvla_ros.kernels.configs import act_quant_block, is_interpreted
from quantvla_ros.kernels.reference import SCALE_EPS
from quantvla_ros.kernels.triton_helpers import check_triton_device, row_major

# Whole-row blocks beyond this would spill registers; Gemma widths stay far below.
MAX_K = 65536


@triton.jit
def round_half_even(x, USE_RINT: tl.constexpr):
    """Round float32 to the nearest integer, ties to even (matches torch.round)."""
    if USE_RINT:
        r = libdevice.rint(x)
    else:
        # The interpreter has no libdevice; adding 1.5 * 2**23 rounds |x| < 2**22 to even.
        r = (x + 12582912.0) - 12582912.0
    return r


@triton.jit
def act_quant_kernel(x_ptr, nw_ptr, sm_ptr, q_ptr, s_ptr, K, stride_xm, stride_qm, eps,
                     scale_eps,
                     HAS_NORM: tl.constexpr, GEMMA: tl.constexpr, HAS_SMOOTH: tl.constexpr,
                     INT4: tl.constexpr, BLOCK_K: tl.constexpr, USE_RINT: tl.constexpr):
    """Quantize one row (program id): optional RMSNorm and smoothing, absmax, rounding."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_K)
    mask = offs < K
    x = tl.load(x_ptr + row * stride_xm + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_NORM:
        # Same operation order as the reference: x * rstd * w, all in float32.
        rstd = 1.0 / tl.sqrt_rn(tl.sum(x * x, axis=0) / K + eps)
        w = tl.load(nw_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if GEMMA:
            w = 1.0 + w
        x = x * rstd * w
    if HAS_SMOOTH:
        sm = tl.load(sm_ptr + offs, mask=mask, other=1.0).to(tl.float32)
        x = tl.math.div_rn(x, sm)
    qmax = 7.0 if INT4 else 127.0
    amax = tl.max(tl.abs(x), axis=0)
    scale = tl.maximum(tl.math.div_rn(amax, qmax), scale_eps)
    q = round_half_even(tl.math.div_rn(x, scale), USE_RINT)
    q = tl.minimum(tl.maximum(q, -qmax), qmax).to(tl.int32)
    if INT4:
        lo, hi = tl.split(tl.reshape(q, (BLOCK_K // 2, 2)))
        packed = ((lo & 15) | ((hi & 15) << 4)).to(tl.uint8)
        offs_p = tl.arange(0, BLOCK_K // 2)
        tl.store(q_ptr + row * stride_qm + offs_p, packed, mask=offs_p < K // 2)
    else:
        tl.store(q_ptr + row * stride_qm + offs, q.to(tl.int8), mask=mask)
    tl.store(s_ptr + row, scale)


def quantize_activations(
    x: torch.Tensor,
    bits: int = 8,
    *,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    gemma_style: bool = False,
    smooth: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` [..., K] per token (leading dims flattened to M).

    Optional RMSNorm (``norm_weight``, ``eps``; Gemma scales by ``1 + w``) and per-channel
    smoothing factors divided in before quantizing. Returns int8 [M, K] (8 bits) or packed
    uint8 [M, K // 2] (4 bits, low nibble = even k) and float32 scales [M, 1].
    """
    k = checks.check_act_quant(x, bits, norm_weight, smooth)
    check_triton_device(act_quant_kernel, x)
    if k > MAX_K:
        raise ValueError(f"Triton activation quantization supports K <= {MAX_K}, got {k}")
    x2 = row_major(x.reshape(-1, k))
    m = x2.shape[0]
    int4 = bits == 4
    q = torch.empty(m, k // 2 if int4 else k, dtype=torch.uint8 if int4 else torch.int8,
                    device=x.device)
    scale = torch.empty(m, 1, dtype=torch.float32, device=x.device)
    if m == 0:
        return q, scale
    block_k, num_warps = act_quant_block(k)
    act_quant_kernel[(m,)](
        x2, norm_weight if norm_weight is not None else x2,
        smooth if smooth is not None else x2, q, scale,
        k, x2.stride(0), q.stride(0), float(eps), SCALE_EPS,
        HAS_NORM=norm_weight is not None, GEMMA=bool(gemma_style),
        HAS_SMOOTH=smooth is not None, INT4=int4, BLOCK_K=block_k,
        USE_RINT=not is_interpreted(act_quant_kernel), num_warps=num_warps,
    )
    return q, scale
