"""Shared @triton.jit building blocks of the integer GEMMs: tile loads, int4 unpack, main
loop with int32 accumulation and scale folding, and the scaled epilogue."""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra import libdevice


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
def gelu_tanh(x):
    """GELU, tanh approximation: 0.5 x (1 + tanh(z)) == x * sigmoid(2 z)."""
    t = 1.5957691216057308 * (x + 0.044715 * x * x * x)
    # Stable sigmoid: exp only of non-positive arguments, so it never overflows.
    e = tl.exp(-tl.abs(t))
    sig = tl.where(t >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return x * sig


@triton.jit
def unpack_int4(p, ROWS: tl.constexpr, COLS: tl.constexpr):
    """uint8 [ROWS, COLS // 2] -> exact int8 [ROWS, COLS]; the low nibble is the even column."""
    p8 = p.to(tl.int8, bitcast=True)
    lo = (p8 << 4) >> 4
    hi = p8 >> 4
    return tl.join(lo, hi).reshape(ROWS, COLS)


@triton.jit
def tile_ids(pid, M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """Grouped tile order so neighbouring programs share weight tiles in L2."""
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m
    return pid_m, pid_n


@triton.jit
def load_a_tile(a_ptr, offs_m, k0, M, K, stride_am,
                BM: tl.constexpr, BK: tl.constexpr, A_INT4: tl.constexpr):
    """Activation tile [BM, BK] as int8 (unpacked in registers when A_INT4)."""
    if A_INT4:
        kp = k0 // 2 + tl.arange(0, BK // 2)
        mask = (offs_m[:, None] < M) & (kp[None, :] < K // 2)
        p = tl.load(a_ptr + offs_m[:, None] * stride_am + kp[None, :], mask=mask, other=0)
        a = unpack_int4(p, BM, BK)
    else:
        kk = k0 + tl.arange(0, BK)
        mask = (offs_m[:, None] < M) & (kk[None, :] < K)
        a = tl.load(a_ptr + offs_m[:, None] * stride_am + kk[None, :], mask=mask, other=0)
    return a


@triton.jit
def load_w_tile(w_ptr, offs_n, k0, N, K, stride_wn,
                BN: tl.constexpr, BK: tl.constexpr, W_INT4: tl.constexpr):
    """Weight tile [BK, BN] as int8 from row-major [N, K] (or packed [N, K // 2])."""
    if W_INT4:
        kp = k0 // 2 + tl.arange(0, BK // 2)
        mask = (offs_n[:, None] < N) & (kp[None, :] < K // 2)
        p = tl.load(w_ptr + offs_n[:, None] * stride_wn + kp[None, :], mask=mask, other=0)
        w = tl.trans(unpack_int4(p, BN, BK))
    else:
        kk = k0 + tl.arange(0, BK)
        mask = (kk[:, None] < K) & (offs_n[None, :] < N)
        w = tl.load(w_ptr + offs_n[None, :] * stride_wn + kk[:, None], mask=mask, other=0)
    return w


@triton.jit
def scaled_mainloop(a_ptr, w_ptr, ws_ptr, offs_m, offs_n, M, N, K,
                    stride_am, stride_wn, stride_wsn, stride_wsg,
                    group_size, u_start, u_end,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                    PER_CHANNEL: tl.constexpr, BLOCKS_PER_GROUP: tl.constexpr,
                    A_INT4: tl.constexpr, W_INT4: tl.constexpr):
    """sum over this program's K range of s_w * (exact int32 partials), as float32 [BM, BN].

    Per channel, units are K blocks and one int32 accumulator spans the whole range; per
    group, units are groups and each group's int32 sum is folded with its own scale.
    """
    n_mask = offs_n < N
    if PER_CHANNEL:
        acc_i = tl.zeros((BM, BN), dtype=tl.int32)
        for u in range(u_start, u_end):
            a = load_a_tile(a_ptr, offs_m, u * BK, M, K, stride_am, BM, BK, A_INT4)
            w = load_w_tile(w_ptr, offs_n, u * BK, N, K, stride_wn, BN, BK, W_INT4)
            acc_i = tl.dot(a, w, acc_i, out_dtype=tl.int32)
        s = tl.load(ws_ptr + offs_n * stride_wsn, mask=n_mask, other=0.0)
        acc = acc_i.to(tl.float32) * s[None, :]
    else:
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for g in range(u_start, u_end):
            part = tl.zeros((BM, BN), dtype=tl.int32)
            for r in tl.static_range(BLOCKS_PER_GROUP):
                k0 = g * group_size + r * BK
                a = load_a_tile(a_ptr, offs_m, k0, M, K, stride_am, BM, BK, A_INT4)
                w = load_w_tile(w_ptr, offs_n, k0, N, K, stride_wn, BN, BK, W_INT4)
                part = tl.dot(a, w, part, out_dtype=tl.int32)
            s = tl.load(ws_ptr + offs_n * stride_wsn + g * stride_wsg, mask=n_mask, other=0.0)
            acc += part.to(tl.float32) * s[None, :]
    return acc


@triton.jit
def scaled_epilogue(acc, xs_ptr, bias_ptr, res_ptr, out_ptr, offs_m, offs_n, M, N,
                    stride_rm, stride_om, first_split,
                    HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, ATOMIC: tl.constexpr):
    """y = acc * s_token (+ bias) (+ residual); bias and residual only from split 0."""
    m_mask = offs_m < M
    n_mask = offs_n < N
    mask = m_mask[:, None] & n_mask[None, :]
    xs = tl.load(xs_ptr + offs_m, mask=m_mask, other=0.0)
    y = acc * xs[:, None]
    if HAS_BIAS:
        b = tl.load(bias_ptr + offs_n, mask=n_mask & first_split, other=0.0)
        y += b.to(tl.float32)[None, :]
    if HAS_RES:
        r = tl.load(res_ptr + offs_m[:, None] * stride_rm + offs_n[None, :],
                    mask=mask & first_split, other=0.0)
        y += r.to(tl.float32)
    out = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    if ATOMIC:
        tl.atomic_add(out, y, mask=mask)
    else:
        tl.store(out, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def scaled_gemm_kernel(a_ptr, xs_ptr, w_ptr, ws_ptr, bias_ptr, res_ptr, out_ptr,
                       M, N, K, group_size, units_per_split, num_units,
                       stride_am, stride_wn, stride_wsn, stride_wsg, stride_rm, stride_om,
                       HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
                       PER_CHANNEL: tl.constexpr, BLOCKS_PER_GROUP: tl.constexpr,
                       ATOMIC_OUT: tl.constexpr, A_INT4: tl.constexpr, W_INT4: tl.constexpr,
                       BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                       GROUP_M: tl.constexpr):
    """One output tile and one K split (grid axis 1); split-K atomically adds into fp32.

    W8A8, W4A8 and W4A4 are this one kernel, specialized by the A_INT4 / W_INT4 constexprs.
    """
    pid_m, pid_n = tile_ids(tl.program_id(0), M, N, BM, BN, GROUP_M)
    pid_k = tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    u_start = pid_k * units_per_split
    u_end = tl.minimum(u_start + units_per_split, num_units)
    acc = scaled_mainloop(a_ptr, w_ptr, ws_ptr, offs_m, offs_n, M, N, K,
                          stride_am, stride_wn, stride_wsn, stride_wsg,
                          group_size, u_start, u_end, BM, BN, BK,
                          PER_CHANNEL, BLOCKS_PER_GROUP, A_INT4, W_INT4)
    scaled_epilogue(acc, xs_ptr, bias_ptr, res_ptr, out_ptr, offs_m, offs_n, M, N,
                    stride_rm, stride_om, pid_k == 0, HAS_BIAS, HAS_RES, ATOMIC_OUT)
