"""Helpers shared by several Triton op files (imports Triton; dispatch loads it lazily).

``@triton.jit`` building blocks of both integer GEMM kernels (:mod:`.scaled_gemm` and
:mod:`.gate_up_gemm`): grouped tile order, int8 or packed-int4 tile loads and the in-register
int4 unpack. Host helpers of the launchers: the device check, the int32 indexing limit,
row-major copies and the tile config of a launch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from quantvla_ros.kernels.configs import MIN_BLOCK_K, GemmConfig, gemm_config, is_interpreted

# Kernels index with int32 offsets.
MAX_ELEMENTS = 2**31 - 1


# --- @triton.jit building blocks --------------------------------------------------------


@triton.jit
def unpack_int4(p, ROWS: tl.constexpr, COLS: tl.constexpr):
    """Unpack uint8 [ROWS, COLS // 2] to exact int8 [ROWS, COLS]; low nibble = even column."""
    p8 = p.to(tl.int8, bitcast=True)
    lo = (p8 << 4) >> 4
    hi = p8 >> 4
    return tl.join(lo, hi).reshape(ROWS, COLS)


@triton.jit
def tile_ids(pid, M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """Map a program id to grouped tiles, so neighbouring programs share weight tiles in L2."""
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
    """Load an activation tile [BM, BK] as int8 (unpacked in registers when A_INT4)."""
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
    """Load a weight tile [BK, BN] as int8 from row-major [N, K] (or packed [N, K // 2])."""
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
def add_split(acc, work_ptr, count_ptr, tile, R: tl.constexpr, C: tl.constexpr):
    """Add one K split's int32 [R, C] partial to its tile's workspace; return the arrival.

    Integer addition is associative, so the sum is the same whatever order splits land in.
    The split that sees ``num_splits - 1`` is the tile's last and takes the sum.
    """
    cell = work_ptr + tile * R * C + tl.arange(0, R)[:, None] * C + tl.arange(0, C)[None, :]
    tl.atomic_add(cell, acc, sem="relaxed")
    tl.debug_barrier()  # every thread's partial is issued before the tile is counted
    return tl.atomic_add(count_ptr + tile, 1, sem="acq_rel")


@triton.jit
def take_splits(work_ptr, count_ptr, tile, R: tl.constexpr, C: tl.constexpr):
    """Swap a tile's summed partials out, leaving zeros and a zero count for the next call.

    Call only after :func:`add_split` returned the last arrival: its acquire on the counter
    (one thread) and the CTA barrier before the result is shared already order these reads
    after every split's adds, so the exchange is relaxed. acq_rel here compiled to one
    GPU-scope fence + L1 invalidate per element, serialized (66 per thread at 128x64).
    """
    cell = work_ptr + tile * R * C + tl.arange(0, R)[:, None] * C + tl.arange(0, C)[None, :]
    total = tl.atomic_xchg(cell, tl.zeros((R, C), dtype=tl.int32), sem="relaxed")
    tl.atomic_xchg(count_ptr + tile, 0)
    return total


# --- host side of the launchers -----------------------------------------------------------

def check_triton_device(kernel, t: torch.Tensor) -> None:
    """Require CUDA tensors, or CPU tensors with the interpreter on."""
    if is_interpreted(kernel):
        return
    if not t.is_cuda:
        raise ValueError(f"Triton kernels need CUDA tensors (got {t.device}); on CPU set "
                         "TRITON_INTERPRET=1 before importing quantvla_ros.kernels")


def check_int32_indexing(*tensors: torch.Tensor) -> None:
    """Refuse operands that the GEMMs' int32 offsets cannot address."""
    for t in tensors:
        if t.numel() > MAX_ELEMENTS:
            raise ValueError(f"tensor of shape {tuple(t.shape)} exceeds the kernels' int32 "
                             f"indexing ({MAX_ELEMENTS} elements)")


def row_major(t: torch.Tensor) -> torch.Tensor:
    """Return ``t`` with a stride-1 last dim (the kernels' indexing), copying only if needed."""
    return t if t.stride(-1) == 1 else t.contiguous()


def resolve_config(
    kernel, m: int, n: int, k: int, group_size: int, config: GemmConfig | None, device
) -> GemmConfig:
    """Return the table config unless one is given; a given config must fit the groups."""
    if config is None:
        return gemm_config(m, n, k, group_size, interpret=is_interpreted(kernel), device=device)
    if group_size < k and (group_size % config.block_k or config.block_k < MIN_BLOCK_K):
        raise ValueError(f"block_k={config.block_k} must divide group_size={group_size}")
    return config
