"""Triton W4A8 GEMM over the K-half int4 layout with progressive group scales (int4_layout.py).

Weights are the MMA's A operand ("swap-AB"): each program computes an output tile transposed,
acc[BN weight rows, BM tokens], so the unpacked int4 tile goes from registers straight into
the dot and never round-trips through shared memory; the activations (int8, [M, K]) are the
B operand. Per 128 of K the loop does two K = 64 dots (low nibbles with k = j, high with
k = j + 64) and, with groups, one integer multiply-add of the int32 partial by the group's
int8 scale: the accumulator stays int32 over the whole K and ``s_x * s1`` is applied once in
the epilogue. ``GATE_UP`` reads [gate; up] rows and stores ``gelu_tanh(gate) * up``.

Split-K (few output tiles) is deterministic: splits add int32 partials atomically into a
workspace (integer addition is associative), and the last split of a tile, told by a
per-tile counter, swaps the sums out (resetting the workspace and counter for the next call)
and runs the epilogue. One launch, no memset, no cast kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from quantvla_ros.kernels import checks
from quantvla_ros.kernels.configs import GemmConfig, is_interpreted, w4a8_config
from quantvla_ros.kernels.gate_up_gemm import gelu_tanh
from quantvla_ros.kernels.int4_layout import HI_ASM, LO_ASM, PACK_K, padded_k
from quantvla_ros.kernels.triton_helpers import (
    MAX_ELEMENTS,
    add_split,
    check_int32_indexing,
    check_triton_device,
    row_major,
    take_splits,
    tile_ids,
)
from quantvla_ros.kernels.workspace import split_workspace

_LO_ASM = tl.constexpr(LO_ASM)
_HI_ASM = tl.constexpr(HI_ASM)


@triton.jit
def unpack_low(p, USE_ASM: tl.constexpr):
    """Low nibbles of uint8 p as exact int8 (k = j of each 128-block)."""
    if USE_ASM:
        return tl.inline_asm_elementwise(_LO_ASM, "=r,r", [p], dtype=tl.int8, is_pure=True,
                                         pack=4)
    else:
        p8 = p.to(tl.int8, bitcast=True)
        return (p8 << 4) >> 4


@triton.jit
def unpack_high(p, USE_ASM: tl.constexpr):
    """High nibbles of uint8 p as exact int8 (k = j + 64 of each 128-block)."""
    if USE_ASM:
        return tl.inline_asm_elementwise(_HI_ASM, "=r,r", [p], dtype=tl.int8, is_pure=True,
                                         pack=4)
    else:
        return p.to(tl.int8, bitcast=True) >> 4


@triton.jit
def fold_block(acc, w_rows, gs_rows, n_mask, b, x_lo, x_hi, blocks_per_group,
               GROUPED: tl.constexpr, USE_ASM: tl.constexpr, HALF: tl.constexpr):
    """Add one 128-K block: int32 dots of weights [BN, 64] x activations [64, BM], twice.

    With groups the block's int32 partial is multiplied by its rows' integer group scale.
    """
    p = tl.load(w_rows + b * HALF, mask=n_mask[:, None], other=0)
    if GROUPED:
        part = tl.dot(unpack_low(p, USE_ASM), x_lo, out_dtype=tl.int32)
        part = tl.dot(unpack_high(p, USE_ASM), x_hi, part, out_dtype=tl.int32)
        s2 = tl.load(gs_rows + b // blocks_per_group, mask=n_mask, other=0)
        acc += part * s2.to(tl.int32)[:, None]
    else:
        acc = tl.dot(unpack_low(p, USE_ASM), x_lo, acc, out_dtype=tl.int32)
        acc = tl.dot(unpack_high(p, USE_ASM), x_hi, acc, out_dtype=tl.int32)
    return acc


@triton.jit
def k_range_sum(w_ptr, x_ptr, gs_ptr, rows, up_rows, offs_m, N_ROWS, M, K, b_start, b_end,
                blocks_per_group, stride_xm, stride_wn, stride_gn,
                GROUPED: tl.constexpr, GATE_UP: tl.constexpr, EVEN_K: tl.constexpr,
                USE_ASM: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr):
    """Exact int32 [BN, BM] sums over K blocks [b_start, b_end) of s2 * (q . x).

    Returns (rows' sums, up_rows' sums); with GATE_UP both row sets share each activation
    tile, else the second is the first.
    """
    HALF: tl.constexpr = 64
    j = tl.arange(0, HALF)
    m_mask = offs_m < M
    n_mask = rows < N_ROWS
    up_mask = up_rows < N_ROWS
    w_rows = w_ptr + rows[:, None] * stride_wn + j[None, :]
    w_up = w_ptr + up_rows[:, None] * stride_wn + j[None, :]
    x_cols = x_ptr + offs_m[None, :] * stride_xm + j[:, None]
    acc = tl.zeros((BN, BM), dtype=tl.int32)
    acc_up = tl.zeros((BN, BM), dtype=tl.int32)
    for b in range(b_start, b_end):
        x_at = x_cols + b * 2 * HALF
        if EVEN_K:
            x_lo = tl.load(x_at, mask=m_mask[None, :], other=0)
            x_hi = tl.load(x_at + HALF, mask=m_mask[None, :], other=0)
        else:
            k_lo = b * 2 * HALF + j
            x_lo = tl.load(x_at, mask=(k_lo[:, None] < K) & m_mask[None, :], other=0)
            x_hi = tl.load(x_at + HALF, mask=(k_lo[:, None] + HALF < K) & m_mask[None, :],
                           other=0)
        acc = fold_block(acc, w_rows, gs_ptr + rows * stride_gn, n_mask, b, x_lo, x_hi,
                         blocks_per_group, GROUPED, USE_ASM, HALF)
        if GATE_UP:
            acc_up = fold_block(acc_up, w_up, gs_ptr + up_rows * stride_gn, up_mask, b,
                                x_lo, x_hi, blocks_per_group, GROUPED, USE_ASM, HALF)
    if GATE_UP:
        return acc, acc_up
    else:
        return acc, acc


@triton.jit
def dequant_store(acc, acc_up, xs_ptr, ws_ptr, bias_ptr, res_ptr, out_ptr, offs_n, offs_m,
                  N, M, stride_rm, stride_om, GATE_UP: tl.constexpr, HAS_BIAS: tl.constexpr,
                  HAS_RES: tl.constexpr):
    """out[m, n] = acc[n, m] * s1[n] * s_x[m] (+ bias) (+ residual), or the GeGLU of two."""
    n_mask = offs_n < N
    m_mask = offs_m < M
    xs = tl.load(xs_ptr + offs_m, mask=m_mask, other=0.0)
    s1 = tl.load(ws_ptr + offs_n, mask=n_mask, other=0.0)
    y = acc.to(tl.float32) * s1[:, None] * xs[None, :]
    if GATE_UP:
        s1_up = tl.load(ws_ptr + N + offs_n, mask=n_mask, other=0.0)
        y = gelu_tanh(y) * (acc_up.to(tl.float32) * s1_up[:, None] * xs[None, :])
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[:, None]
    mask = n_mask[:, None] & m_mask[None, :]
    if HAS_RES:
        r = tl.load(res_ptr + offs_m[None, :] * stride_rm + offs_n[:, None], mask=mask, other=0)
        y += r.to(tl.float32)
    out = out_ptr + offs_m[None, :] * stride_om + offs_n[:, None]
    tl.store(out, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def w4a8_gemm_kernel(x_ptr, xs_ptr, w_ptr, ws_ptr, gs_ptr, bias_ptr, res_ptr, out_ptr,
                     work_ptr, count_ptr, M, N, K, num_blocks, blocks_per_split,
                     blocks_per_group, num_splits,
                     stride_xm, stride_wn, stride_gn, stride_rm, stride_om,
                     GROUPED: tl.constexpr, GATE_UP: tl.constexpr, HAS_BIAS: tl.constexpr,
                     HAS_RES: tl.constexpr, SPLIT: tl.constexpr, EVEN_K: tl.constexpr,
                     USE_ASM: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr,
                     GROUP_N: tl.constexpr):
    """One transposed output tile [BN, BM] over one K split (grid axis 1)."""
    tile = tl.program_id(0)
    pid_n, pid_m = tile_ids(tile, N, M, BN, BM, GROUP_N)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_m = pid_m * BM + tl.arange(0, BM)
    b_start = tl.program_id(1) * blocks_per_split
    b_end = tl.minimum(b_start + blocks_per_split, num_blocks)
    n_rows = 2 * N if GATE_UP else N
    # Up rows sit N rows below the gate rows; masked gate rows stay masked.
    up_rows = tl.where(offs_n < N, offs_n + N, n_rows)
    acc, acc_up = k_range_sum(w_ptr, x_ptr, gs_ptr, offs_n, up_rows, offs_m, n_rows, M, K,
                              b_start, b_end, blocks_per_group, stride_xm, stride_wn,
                              stride_gn, GROUPED, GATE_UP, EVEN_K, USE_ASM, BN, BM)
    if SPLIT:
        arrived = add_split(acc, work_ptr, count_ptr, tile, BN, BM)
        if arrived == num_splits - 1:
            total = take_splits(work_ptr, count_ptr, tile, BN, BM)
            dequant_store(total, total, xs_ptr, ws_ptr, bias_ptr, res_ptr, out_ptr, offs_n,
                          offs_m, N, M, stride_rm, stride_om, False, HAS_BIAS, HAS_RES)
    else:
        dequant_store(acc, acc_up, xs_ptr, ws_ptr, bias_ptr, res_ptr, out_ptr, offs_n, offs_m,
                      N, M, stride_rm, stride_om, GATE_UP, HAS_BIAS, HAS_RES)


def w4a8_gemm(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    group_scale: torch.Tensor | None = None,
    *,
    group_size: int | None = None,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    gate_up: bool = False,
    config: GemmConfig | None = None,
) -> torch.Tensor:
    """``y [M, N] = s_x * s1 * sum_g s2_g (x_g . q_g)`` (+ bias) (+ residual), or its GeGLU.

    ``a`` int8 [M, K]; ``w`` K-half packed uint8 [N, padded_k(K) // 2] ([2N, ...] with
    ``gate_up``); ``w_scale`` float32 [N]; ``group_scale`` int8 [N, K // group_size] or None
    (per channel). ``config`` overrides the tile table (tests, tuning); its block_k is 128.
    """
    kernel = w4a8_gemm_kernel
    gs = checks.check_w4a8(a, a_scale, w, w_scale, group_scale, group_size, bias, residual)
    checks.check_out_dtype(out_dtype)
    check_triton_device(kernel, a)
    m, k = a.shape
    n = w.shape[0] // 2 if gate_up else w.shape[0]
    if gate_up and (w.shape[0] % 2 or bias is not None or residual is not None):
        raise ValueError("gate_up needs [gate; up] weights with an even row count and no "
                         "bias or residual")
    if m == 0:
        return torch.empty(0, n, dtype=out_dtype, device=a.device)
    check_int32_indexing(a, w)
    if m * n > MAX_ELEMENTS:
        raise ValueError(f"output [{m}, {n}] exceeds the kernels' int32 indexing")
    if config is None:
        config = w4a8_config(m, n, k, gate_up=gate_up, interpret=is_interpreted(kernel),
                             device=a.device)
    if config.block_k != PACK_K:
        raise ValueError(f"W4A8 tiles need block_k={PACK_K}, got {config.block_k}")
    num_blocks = padded_k(k) // PACK_K
    per_split = triton.cdiv(num_blocks, min(config.split_k, num_blocks))
    splits = triton.cdiv(num_blocks, per_split)
    if gate_up and splits > 1:
        raise ValueError("gate_up does not split K")
    tiles = triton.cdiv(m, config.block_m) * triton.cdiv(n, config.block_n)
    # The kernel indexes scales, bias and group-scale rows as contiguous vectors.
    a, w, w_scale = row_major(a), row_major(w), w_scale.contiguous()
    a_scale = a_scale.reshape(-1).contiguous()
    group_scale = row_major(group_scale) if group_scale is not None else None
    bias = bias.contiguous() if bias is not None else None
    res = row_major(residual) if residual is not None else None
    out = torch.empty(m, n, dtype=out_dtype, device=a.device)
    work, count = (split_workspace(a.device, tiles * config.block_m * config.block_n, tiles)
                   if splits > 1 else (out, out))
    gsc = group_scale if group_scale is not None else w_scale
    kernel[(tiles, splits)](
        a, a_scale, w, w_scale, gsc,
        bias if bias is not None else out, res if res is not None else out, out, work, count,
        m, n, k, num_blocks, per_split, (gs // PACK_K) if group_scale is not None else 1,
        splits, a.stride(0), w.stride(0), gsc.stride(0),
        res.stride(0) if res is not None else 0, out.stride(0),
        GROUPED=group_scale is not None, GATE_UP=gate_up, HAS_BIAS=bias is not None,
        HAS_RES=res is not None, SPLIT=splits > 1, EVEN_K=k % PACK_K == 0,
        USE_ASM=not is_interpreted(kernel), BN=config.block_n, BM=config.block_m,
        GROUP_N=config.group_m, num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return out

