"""Triton side of kernels/norm_kernels.py and rope_kernels.py: add + norm, GeGLU, RoPE.

Operation order and roundings follow `add_norm_reference` / `geglu_reference`. Every
intermediate rounding goes through `round_to`: the CPU interpreter truncates float32 ->
bfloat16 casts where a GPU rounds to nearest even, so it rounds by hand there.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from quantvla_ros.kernels.act_quant import MAX_K, round_half_even
from quantvla_ros.kernels.configs import act_quant_block, is_interpreted
from quantvla_ros.kernels.gate_up_gemm import gelu_tanh
from quantvla_ros.kernels.reference import SCALE_EPS
from quantvla_ros.kernels.triton_helpers import check_triton_device, row_major


@triton.jit
def round_to(x, dt: tl.constexpr, EMULATE: tl.constexpr):
    """Round float32 x to dtype dt (nearest even), returned as float32."""
    if EMULATE and dt == tl.bfloat16:
        u = x.to(tl.uint32, bitcast=True)
        u = (u + (((u >> 16) & 1) + 0x7FFF)) & 0xFFFF0000
        return u.to(tl.float32, bitcast=True)
    else:
        return x.to(dt).to(tl.float32)


@triton.jit
def add_norm_kernel(h_ptr, d_ptr, g_ptr, w_ptr, m1_ptr, sh_ptr, hout_ptr, y_ptr, s_ptr,
                    K, rows_per_sample, stride_h, stride_d, stride_ho, stride_y,
                    stride_g, stride_w, stride_m1, stride_sh, eps, scale_eps,
                    HAS_RES: tl.constexpr, HAS_GATE: tl.constexpr, ADA: tl.constexpr,
                    ROUND: tl.constexpr, QUANT: tl.constexpr, INT4: tl.constexpr,
                    BLOCK_K: tl.constexpr, USE_RINT: tl.constexpr, EMULATE: tl.constexpr):
    """One row: h (+ delta * gate) -> store h; rms; weight or modulation; store / quantize."""
    row = tl.program_id(0).to(tl.int64)
    sample = row // rows_per_sample
    offs = tl.arange(0, BLOCK_K)
    mask = offs < K
    dt = h_ptr.dtype.element_ty
    x = tl.load(h_ptr + row * stride_h + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        d = tl.load(d_ptr + row * stride_d + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_GATE:
            g = tl.load(g_ptr + sample * stride_g + offs, mask=mask, other=0.0).to(tl.float32)
            d = round_to(d * g, dt, EMULATE)
        x = round_to(x + d, dt, EMULATE)
        tl.store(hout_ptr + row * stride_ho + offs, x.to(dt), mask=mask)  # exact: rounded
    rstd = 1.0 / tl.sqrt_rn(tl.sum(x * x, axis=0) / K + eps)
    r = x * rstd
    if ROUND:
        r = round_to(r, dt, EMULATE)
    if ADA:
        m1 = tl.load(m1_ptr + sample * stride_m1 + offs, mask=mask, other=0.0).to(tl.float32)
        sh = tl.load(sh_ptr + sample * stride_sh + offs, mask=mask, other=0.0).to(tl.float32)
        y = r * m1 + sh
    else:
        w = tl.load(w_ptr + sample * stride_w + offs, mask=mask, other=0.0).to(tl.float32)
        y = r * (1.0 + w)
    if ROUND:
        y = round_to(y, dt, EMULATE)
    if QUANT:
        qmax = 7.0 if INT4 else 127.0
        scale = tl.maximum(tl.math.div_rn(tl.max(tl.abs(y), axis=0), qmax), scale_eps)
        q = round_half_even(tl.math.div_rn(y, scale), USE_RINT)
        q = tl.minimum(tl.maximum(q, -qmax), qmax).to(tl.int32)
        if INT4:
            lo, hi = tl.split(tl.reshape(q, (BLOCK_K // 2, 2)))
            offs_p = tl.arange(0, BLOCK_K // 2)
            tl.store(y_ptr + row * stride_y + offs_p,
                     ((lo & 15) | ((hi & 15) << 4)).to(tl.uint8), mask=offs_p < K // 2)
        else:
            tl.store(y_ptr + row * stride_y + offs, q.to(tl.int8), mask=mask)
        tl.store(s_ptr + row, scale)
    else:
        tl.store(y_ptr + row * stride_y + offs, round_to(y, dt, EMULATE).to(dt), mask=mask)


def add_norm_triton(h, delta, vecs, rows_per_sample, eps, round_to_dtype, quant_bits):
    """Launch `add_norm_kernel`; `vecs` maps gate / weight / scale1 / shift to (t, stride)."""
    check_triton_device(add_norm_kernel, h)
    b, s, k = h.shape
    if k > MAX_K:
        raise ValueError(f"fused norm supports K <= {MAX_K}, got {k}")
    if quant_bits == 4 and k % 2:
        raise ValueError(f"int4 activations need an even K, got K={k}")
    h2 = row_major(h.reshape(b * s, k))
    m = h2.shape[0]
    d2 = row_major(delta.reshape(m, k)) if delta is not None else h2
    h_out = torch.empty_like(h2) if delta is not None else h2
    if quant_bits is None:
        y, scale = torch.empty_like(h2), h2
    else:
        y = torch.empty(m, k if quant_bits == 8 else k // 2, device=h.device,
                        dtype=torch.int8 if quant_bits == 8 else torch.uint8)
        scale = torch.empty(m, 1, dtype=torch.float32, device=h.device)
    (g, sg), (w, sw), (m1, sm1), (sh, ssh) = (vecs[n] for n in
                                              ("gate", "weight", "scale1", "shift"))
    block_k, num_warps = act_quant_block(k)
    if m:
        add_norm_kernel[(m,)](
            h2, d2, g if g is not None else h2, w if w is not None else h2,
            m1 if m1 is not None else h2, sh if sh is not None else h2, h_out, y, scale,
            k, rows_per_sample, h2.stride(0), d2.stride(0), h_out.stride(0), y.stride(0),
            sg, sw, sm1, ssh, float(eps), SCALE_EPS,
            HAS_RES=delta is not None, HAS_GATE=g is not None, ADA=m1 is not None,
            ROUND=bool(round_to_dtype), QUANT=quant_bits is not None, INT4=quant_bits == 4,
            BLOCK_K=block_k, USE_RINT=not is_interpreted(add_norm_kernel),
            EMULATE=is_interpreted(add_norm_kernel),
            num_warps=num_warps,
        )
    h_new = h_out.view(b, s, k) if delta is not None else h
    if quant_bits is None:
        return h_new, y.view(b, s, k)
    return h_new, (y, scale)


@triton.jit
def geglu_kernel(x_ptr, out_ptr, N, stride_x, stride_o, BLOCK: tl.constexpr,
                 EMULATE: tl.constexpr):
    """out[row, cols] = gelu_tanh(x[row, cols]) * x[row, N + cols], rounded as torch does."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N
    dt = out_ptr.dtype.element_ty
    g = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(x_ptr + row * stride_x + N + cols, mask=mask, other=0.0).to(tl.float32)
    act = round_to(gelu_tanh(g), dt, EMULATE)
    tl.store(out_ptr + row * stride_o + cols, round_to(act * u, dt, EMULATE).to(dt),
             mask=mask)


def geglu_triton(gate_up: torch.Tensor) -> torch.Tensor:
    """Launch `geglu_kernel` over [..., 2N] -> [..., N]."""
    check_triton_device(geglu_kernel, gate_up)
    lead, n = gate_up.shape[:-1], gate_up.shape[-1] // 2
    x = row_major(gate_up.reshape(-1, 2 * n))
    out = torch.empty(x.shape[0], n, dtype=x.dtype, device=x.device)
    block = min(1024, triton.next_power_of_2(n))
    if x.shape[0]:
        geglu_kernel[(x.shape[0], triton.cdiv(n, block))](x, out, n, x.stride(0),
                                                          out.stride(0), BLOCK=block,
                                                          EMULATE=is_interpreted(geglu_kernel))
    return out.view(*lead, n)


@triton.jit
def rope_kernel(q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, qo_ptr, ko_ptr, vo_ptr, S, NQ, KVH,
                sq_b, sq_h, sq_s, sk_b, sk_h, sk_s, sv_b, sv_h, sv_s, sc_b, sc_s,
                sqo_b, sqo_h, sqo_s, sko_b, sko_h, sko_s, svo_b, svo_h, svo_s,
                D: tl.constexpr, EMULATE: tl.constexpr):
    """One head vector of one token: a query head, a key head (rotated) or a value head."""
    tok = tl.program_id(0).to(tl.int64)
    hd = tl.program_id(1)
    b = tok // S
    s = tok % S
    offs = tl.arange(0, D)
    partner = (offs + D // 2) % D
    sign = tl.where(offs < D // 2, -1.0, 1.0)
    dt = ko_ptr.dtype.element_ty
    c = tl.load(cos_ptr + b * sc_b + s * sc_s + offs).to(tl.float32)
    sn = tl.load(sin_ptr + b * sc_b + s * sc_s + offs).to(tl.float32)
    if hd < NQ:
        src = q_ptr + b * sq_b + hd * sq_h + s * sq_s
        dst = qo_ptr + b * sqo_b + hd * sqo_h + s * sqo_s
    elif hd < NQ + KVH:
        src = k_ptr + b * sk_b + (hd - NQ) * sk_h + s * sk_s
        dst = ko_ptr + b * sko_b + (hd - NQ) * sko_h + s * sko_s
    else:
        src = v_ptr + b * sv_b + (hd - NQ - KVH) * sv_h + s * sv_s
        dst = vo_ptr + b * svo_b + (hd - NQ - KVH) * svo_h + s * svo_s
    x = tl.load(src + offs).to(tl.float32)
    if hd < NQ + KVH:
        xr = tl.load(src + partner).to(tl.float32) * sign
        x = round_to(round_to(x * c, dt, EMULATE) + round_to(xr * sn, dt, EMULATE), dt,
                     EMULATE)
    tl.store(dst + offs, x.to(dt))


def rope_triton(qq, k, v, cos, sin, qo, k_out, v_out, nq):
    """Launch `rope_kernel`: one program per (token, head) of q, k and v."""
    check_triton_device(rope_kernel, k)
    b, kvh, s, d = k.shape
    if cos.stride(-1) != 1 or sin.stride() != cos.stride():
        cos, sin = cos.contiguous(), sin.contiguous()
    for t in (qq, k, v, qo, k_out, v_out):
        if t.stride(-1) != 1:
            raise ValueError(f"rope_qkv needs a stride-1 head dim, got strides {t.stride()}")
    rope_kernel[(b * s, nq + 2 * kvh)](
        qq, k, v, cos, sin, qo, k_out, v_out, s, nq, kvh,
        qq.stride(0), qq.stride(1), qq.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), cos.stride(0), cos.stride(2),
        qo.stride(0), qo.stride(1), qo.stride(2), k_out.stride(0), k_out.stride(1),
        k_out.stride(2), v_out.stride(0), v_out.stride(1), v_out.stride(2), D=d,
        EMULATE=is_interpreted(rope_kernel),
    )
