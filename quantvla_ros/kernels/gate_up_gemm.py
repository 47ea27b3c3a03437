"""Triton fused GeGLU projection: ``gelu_tanh(x W_gate^T) * (x W_up^T)`` in one kernel.

The gate and up weights are stored concatenated as int8 [2N, K] with scales [2N] or [2N, G];
each program reads its activation tile once and feeds two accumulators, so the [M, 2N]
intermediate never reaches memory. (W4A8's gate/up is a mode of w4a8_gemm.)
"""

from __future__ import annotations

from dataclasses import replace

import torch
import triton
import triton.language as tl

from quantvla_ros.kernels import checks
from quantvla_ros.kernels.configs import GemmConfig
from quantvla_ros.kernels.triton_helpers import (
    check_int32_indexing,
    check_triton_device,
    load_a_tile,
    load_w_tile,
    resolve_config,
    row_major,
    tile_ids,
)


@triton.jit
def gelu_tanh(x):
    """GELU, tanh approximation: 0.5 x (1 + tanh(z)) == x * sigmoid(2 z)."""
    t = 1.5957691216057308 * (x + 0.044715 * x * x * x)
    # Stable sigmoid: exp only of non-positive arguments, so it never overflows.
    e = tl.exp(-tl.abs(t))
    sig = tl.where(t >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return x * sig


@triton.jit
def gate_up_kernel(a_ptr, xs_ptr, w_ptr, ws_ptr, out_ptr, M, N, K, group_size, num_units,
                   stride_am, stride_wn, stride_wsn, stride_wsg, stride_om,
                   PER_CHANNEL: tl.constexpr, BLOCKS_PER_GROUP: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr,
                   BK: tl.constexpr, GROUP_M: tl.constexpr):
    """Compute one [BM, BN] tile of gelu_tanh(gate) * up from two int32 accumulator sets."""
    pid_m, pid_n = tile_ids(tl.program_id(0), M, N, BM, BN, GROUP_M)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    # Up rows live N rows below the gate rows; out-of-range gate columns stay masked.
    offs_u = tl.where(offs_n < N, offs_n + N, 2 * N)
    n_mask = offs_n < N
    if PER_CHANNEL:
        acc_g = tl.zeros((BM, BN), dtype=tl.int32)
        acc_u = tl.zeros((BM, BN), dtype=tl.int32)
        for u in range(0, num_units):
            a = load_a_tile(a_ptr, offs_m, u * BK, M, K, stride_am, BM, BK, False)
            wg = load_w_tile(w_ptr, offs_n, u * BK, N, K, stride_wn, BN, BK, False)
            wu = load_w_tile(w_ptr, offs_u, u * BK, 2 * N, K, stride_wn, BN, BK, False)
            acc_g = tl.dot(a, wg, acc_g, out_dtype=tl.int32)
            acc_u = tl.dot(a, wu, acc_u, out_dtype=tl.int32)
        sg = tl.load(ws_ptr + offs_n * stride_wsn, mask=n_mask, other=0.0)
        su = tl.load(ws_ptr + offs_u * stride_wsn, mask=n_mask, other=0.0)
        gate = acc_g.to(tl.float32) * sg[None, :]
        up = acc_u.to(tl.float32) * su[None, :]
    else:
        gate = tl.zeros((BM, BN), dtype=tl.float32)
        up = tl.zeros((BM, BN), dtype=tl.float32)
        for g in range(0, num_units):
            part_g = tl.zeros((BM, BN), dtype=tl.int32)
            part_u = tl.zeros((BM, BN), dtype=tl.int32)
            for r in tl.static_range(BLOCKS_PER_GROUP):
                k0 = g * group_size + r * BK
                a = load_a_tile(a_ptr, offs_m, k0, M, K, stride_am, BM, BK, False)
                wg = load_w_tile(w_ptr, offs_n, k0, N, K, stride_wn, BN, BK, False)
                wu = load_w_tile(w_ptr, offs_u, k0, 2 * N, K, stride_wn, BN, BK, False)
                part_g = tl.dot(a, wg, part_g, out_dtype=tl.int32)
                part_u = tl.dot(a, wu, part_u, out_dtype=tl.int32)
            sg = tl.load(ws_ptr + offs_n * stride_wsn + g * stride_wsg, mask=n_mask, other=0.0)
            su = tl.load(ws_ptr + offs_u * stride_wsn + g * stride_wsg, mask=n_mask, other=0.0)
            gate += part_g.to(tl.float32) * sg[None, :]
            up += part_u.to(tl.float32) * su[None, :]
    m_mask = offs_m < M
    xs = tl.load(xs_ptr + offs_m, mask=m_mask, other=0.0)[:, None]
    y = gelu_tanh(gate * xs) * (up * xs)
    out = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    tl.store(out, y.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def gate_up_gemm(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_scale: torch.Tensor,
    *,
    weight_bits: int = 8,
    group_size: int | None = None,
    out_dtype: torch.dtype = torch.float32,
    config: GemmConfig | None = None,
) -> torch.Tensor:
    """Compute ``gelu_tanh(gate) * up`` [M, N] from int8 activations [M, K], [gate; up] weights.

    ``w_gate_up`` is int8 [2N, K]; ``w_scale`` float32 [2N] or [2N, K // group_size].
    """
    if weight_bits != 8:
        raise ValueError(f"this kernel takes int8 weights (got weight_bits={weight_bits}); "
                         "W4A8's gate/up is w4a8_gemm(..., gate_up=True)")
    gs = checks.check_gemm(x_q, x_scale, w_gate_up, w_scale, group_size, None, None,
                           a_int4=False, w_int4=False)
    if w_gate_up.shape[0] % 2:
        raise ValueError(f"gate/up weights need an even row count, got {w_gate_up.shape[0]}")
    checks.check_out_dtype(out_dtype)
    check_triton_device(gate_up_kernel, x_q)
    m, k, n = x_q.shape[0], x_q.shape[1], w_gate_up.shape[0] // 2
    out = torch.empty(m, n, dtype=out_dtype, device=x_q.device)
    if m == 0:
        return out
    check_int32_indexing(x_q, w_gate_up, out)
    cfg = resolve_config(gate_up_kernel, m, n, k, gs, config, x_q.device)
    if config is None:
        # Two accumulator pairs per tile: halve wide tiles to stay within registers.
        cfg = replace(cfg, block_n=min(cfg.block_n, 64), split_k=1)
    per_channel = gs == k
    num_units = triton.cdiv(k, cfg.block_k) if per_channel else k // gs
    a, w = row_major(x_q), row_major(w_gate_up)
    ws = w_scale.reshape(2 * n, -1)
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
    gate_up_kernel[grid](
        a, x_scale.reshape(-1).contiguous(), w, ws, out, m, n, k, gs, num_units,
        a.stride(0), w.stride(0), ws.stride(0), ws.stride(1), out.stride(0),
        PER_CHANNEL=per_channel,
        BLOCKS_PER_GROUP=1 if per_channel else gs // cfg.block_k,
        BM=cfg.block_m, BN=cfg.block_n, BK=cfg.block_k, GROUP_M=cfg.group_m,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out
