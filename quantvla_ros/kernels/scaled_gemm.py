"""Triton scaled integer GEMM: W8A8 and W4A4 (both operands packed int4).

One kernel, specialized by the A_INT4 / W_INT4 constexprs: int4 operands stay packed two per
byte in memory and are unpacked to int8 in registers for the int8 tensor-core dot (Hopper
has no int4 tensor cores, so W4A4 gains bandwidth, not math). It computes
``y = s_x * sum_g s_w[:, g] * acc_g (+ bias) (+ residual)`` as out_dtype [M, N], with
x_scale float32 [M, 1] and w_scale float32 [N] (per channel) or [N, K // group_size].
Per channel, small problems split K over a second grid axis: int32 partials meet in a
workspace and the tile's last split runs the epilogue (deterministic, one launch; see
triton_helpers.add_split). Grouped scales fold in float inside the loop and never split.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from quantvla_ros.kernels import checks
from quantvla_ros.kernels.configs import GemmConfig
from quantvla_ros.kernels.triton_helpers import (
    MAX_ELEMENTS,
    add_split,
    check_int32_indexing,
    check_triton_device,
    load_a_tile,
    load_w_tile,
    resolve_config,
    row_major,
    take_splits,
    tile_ids,
)
from quantvla_ros.kernels.workspace import split_workspace

# Op name -> (activations packed int4, weights packed int4). W4A8 has its own kernel and
# weight layout (w4a8_gemm.py).
INT4_OPERANDS = {"w8a8": (False, False), "w4a4": (True, True)}


@triton.jit
def scaled_mainloop(a_ptr, w_ptr, ws_ptr, offs_m, offs_n, M, N, K,
                    stride_am, stride_wn, stride_wsn, stride_wsg,
                    group_size, u_start, u_end,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                    PER_CHANNEL: tl.constexpr, BLOCKS_PER_GROUP: tl.constexpr,
                    A_INT4: tl.constexpr, W_INT4: tl.constexpr):
    """Sum this program's K range: exact int32 [BM, BN] per channel, else float32 [BM, BN].

    Per channel, units are K blocks and one int32 accumulator spans the whole range (the
    epilogue applies s_w); per group, units are groups and each group's int32 sum is folded
    with its own scale.
    """
    n_mask = offs_n < N
    if PER_CHANNEL:
        acc = tl.zeros((BM, BN), dtype=tl.int32)
        for u in range(u_start, u_end):
            a = load_a_tile(a_ptr, offs_m, u * BK, M, K, stride_am, BM, BK, A_INT4)
            w = load_w_tile(w_ptr, offs_n, u * BK, N, K, stride_wn, BN, BK, W_INT4)
            acc = tl.dot(a, w, acc, out_dtype=tl.int32)
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
def scaled_epilogue(acc, xs_ptr, ws_ptr, bias_ptr, res_ptr, out_ptr, offs_m, offs_n, M, N,
                    stride_wsn, stride_rm, stride_om,
                    PER_CHANNEL: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr):
    """Store y = acc (* s_w per channel) * s_token (+ bias) (+ residual)."""
    m_mask = offs_m < M
    n_mask = offs_n < N
    mask = m_mask[:, None] & n_mask[None, :]
    if PER_CHANNEL:
        s = tl.load(ws_ptr + offs_n * stride_wsn, mask=n_mask, other=0.0)
        acc = acc.to(tl.float32) * s[None, :]
    xs = tl.load(xs_ptr + offs_m, mask=m_mask, other=0.0)
    y = acc * xs[:, None]
    if HAS_BIAS:
        b = tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0)
        y += b.to(tl.float32)[None, :]
    if HAS_RES:
        r = tl.load(res_ptr + offs_m[:, None] * stride_rm + offs_n[None, :], mask=mask,
                    other=0.0)
        y += r.to(tl.float32)
    out = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    tl.store(out, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def scaled_gemm_kernel(a_ptr, xs_ptr, w_ptr, ws_ptr, bias_ptr, res_ptr, out_ptr, work_ptr,
                       count_ptr, M, N, K, group_size, units_per_split, num_units, num_splits,
                       stride_am, stride_wn, stride_wsn, stride_wsg, stride_rm, stride_om,
                       HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
                       PER_CHANNEL: tl.constexpr, BLOCKS_PER_GROUP: tl.constexpr,
                       SPLIT: tl.constexpr, A_INT4: tl.constexpr, W_INT4: tl.constexpr,
                       BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                       GROUP_M: tl.constexpr):
    """Compute one output tile over one K split (grid axis 1; SPLIT only per channel).

    W8A8 and W4A4 are this one kernel, specialized by the A_INT4 / W_INT4 constexprs.
    """
    tile = tl.program_id(0)
    pid_m, pid_n = tile_ids(tile, M, N, BM, BN, GROUP_M)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    u_start = tl.program_id(1) * units_per_split
    u_end = tl.minimum(u_start + units_per_split, num_units)
    acc = scaled_mainloop(a_ptr, w_ptr, ws_ptr, offs_m, offs_n, M, N, K,
                          stride_am, stride_wn, stride_wsn, stride_wsg,
                          group_size, u_start, u_end, BM, BN, BK,
                          PER_CHANNEL, BLOCKS_PER_GROUP, A_INT4, W_INT4)
    if SPLIT:
        arrived = add_split(acc, work_ptr, count_ptr, tile, BM, BN)
        if arrived == num_splits - 1:
            total = take_splits(work_ptr, count_ptr, tile, BM, BN)
            scaled_epilogue(total, xs_ptr, ws_ptr, bias_ptr, res_ptr, out_ptr, offs_m,
                            offs_n, M, N, stride_wsn, stride_rm, stride_om, True, HAS_BIAS,
                            HAS_RES)
    else:
        scaled_epilogue(acc, xs_ptr, ws_ptr, bias_ptr, res_ptr, out_ptr, offs_m, offs_n, M, N,
                        stride_wsn, stride_rm, stride_om, PER_CHANNEL, HAS_BIAS, HAS_RES)


def scaled_gemm(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    *,
    a_int4: bool,
    w_int4: bool,
    group_size: int | None = None,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    config: GemmConfig | None = None,
) -> torch.Tensor:
    """Validate, pick tiles and launch :func:`scaled_gemm_kernel`; return out_dtype [M, N].

    ``a`` is int8 [M, K] (packed uint8 [M, K // 2] with ``a_int4``), ``w`` int8 [N, K]
    (packed uint8 [N, K // 2] with ``w_int4``); see :data:`INT4_OPERANDS` for the flags of
    W8A8 and W4A4. ``config`` overrides the tile table (tests, tuning).
    """
    kernel = scaled_gemm_kernel
    gs = checks.check_gemm(a, a_scale, w, w_scale, group_size, bias, residual,
                           a_int4=a_int4, w_int4=w_int4)
    checks.check_out_dtype(out_dtype)
    check_triton_device(kernel, a)
    m, n = a.shape[0], w.shape[0]
    k = a.shape[1] * (2 if a_int4 else 1)
    if m == 0:
        return torch.empty(0, n, dtype=out_dtype, device=a.device)
    check_int32_indexing(a, w)
    if m * n > MAX_ELEMENTS:
        raise ValueError(f"output [{m}, {n}] exceeds the kernels' int32 indexing")
    cfg = resolve_config(kernel, m, n, k, gs, config, a.device)
    per_channel = gs == k
    # Work units along K: BLOCK_K blocks per channel, whole groups per group.
    num_units = triton.cdiv(k, cfg.block_k) if per_channel else k // gs
    units_per_split = triton.cdiv(num_units, min(cfg.split_k if per_channel else 1, num_units))
    split = triton.cdiv(num_units, units_per_split)
    tiles = triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n)
    a, w = row_major(a), row_major(w)
    ws = w_scale.reshape(n, -1)
    res = row_major(residual) if residual is not None else None
    out = torch.empty(m, n, dtype=out_dtype, device=a.device)
    work, count = (split_workspace(a.device, tiles * cfg.block_m * cfg.block_n, tiles)
                   if split > 1 else (out, out))
    kernel[(tiles, split)](
        a, a_scale.reshape(-1).contiguous(), w, ws,
        bias if bias is not None else out, res if res is not None else out, out, work, count,
        m, n, k, gs, units_per_split, num_units, split,
        a.stride(0), w.stride(0), ws.stride(0), ws.stride(1),
        res.stride(0) if res is not None else 0, out.stride(0),
        HAS_BIAS=bias is not None, HAS_RES=res is not None,
        PER_CHANNEL=per_channel, BLOCKS_PER_GROUP=1 if per_channel else gs // cfg.block_k,
        SPLIT=split > 1, A_INT4=a_int4, W_INT4=w_int4,
        BM=cfg.block_m, BN=cfg.block_n, BK=cfg.block_k, GROUP_M=cfg.group_m,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out
