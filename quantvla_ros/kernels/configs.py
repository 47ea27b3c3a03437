"""Block configurations for the Triton kernels: a fixed table, no autotuning state.

Autotuning does not run under the Triton interpreter and its global caches make timing
irreproducible, so configs come from a small pure function of the problem shape. The GPU
entries follow the usual int8 tensor-core choices (BLOCK_K = 128 bytes per row) and are
unmeasured until a GPU benchmark confirms them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch
import triton

# 8-bit tensor-core dots need these minimum tile sizes on NVIDIA GPUs.
MIN_BLOCK_MN = 16
MIN_BLOCK_K = 32


@dataclass(frozen=True)
class GemmConfig:
    """Tile sizes and launch options of one integer GEMM launch."""

    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3

    def __post_init__(self) -> None:
        """Reject tiles that would not compile for 8-bit dots on a GPU."""
        for name in ("block_m", "block_n", "block_k"):
            v = getattr(self, name)
            if v & (v - 1):
                raise ValueError(f"{name}={v} must be a power of two")
        if min(self.block_m, self.block_n) < MIN_BLOCK_MN or self.block_k < MIN_BLOCK_K:
            raise ValueError(f"tiles {self.block_m}x{self.block_n}x{self.block_k} are below "
                             f"the 8-bit dot minimum {MIN_BLOCK_MN}x{MIN_BLOCK_MN}x{MIN_BLOCK_K}")
        if self.split_k < 1:
            raise ValueError(f"split_k must be >= 1, got {self.split_k}")


def is_interpreted(kernel) -> bool:
    """Whether ``kernel`` was decorated while TRITON_INTERPRET=1 (runs on the CPU)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction)


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _gpu_table(m: int) -> GemmConfig:
    # (M bucket) -> tiles; small M is weight-bandwidth bound, large M compute bound.
    if m <= 16:
        return GemmConfig(16, 64, 128, num_warps=4, num_stages=4)
    if m <= 32:
        return GemmConfig(32, 64, 128, num_warps=4, num_stages=4)
    if m <= 64:
        return GemmConfig(64, 64, 128, num_warps=4, num_stages=4)
    if m <= 256:
        return GemmConfig(64, 128, 128, num_warps=4, num_stages=4)
    return GemmConfig(128, 128, 128, num_warps=8, num_stages=3)


def _fit_group(block_k: int, group_size: int, k: int) -> int:
    """Largest legal BLOCK_K <= block_k that divides the quantization group."""
    if group_size >= k:
        return block_k
    if group_size % MIN_BLOCK_K:
        raise ValueError(f"Triton kernels need group_size to be a multiple of {MIN_BLOCK_K} "
                         f"(8-bit dots need BLOCK_K >= {MIN_BLOCK_K}), got {group_size}")
    while group_size % block_k:
        block_k //= 2
    return block_k


def sm_count(device) -> int:
    """Streaming multiprocessors of a CUDA device; 132 (an H100 SXM) for any other."""
    if device is None or torch.device(device).type != "cuda":
        return 132
    return _num_sms(torch.device(device).index or 0)


def gemm_config(
    m: int, n: int, k: int, group_size: int, *, interpret: bool, device=None
) -> GemmConfig:
    """Pick the tile config for an [M, K] x [N, K] integer GEMM with K-groups of group_size.

    Memoized (the lookup ran on every launch, ~18 us of host time each).
    """
    return _gemm_config(m, n, k, group_size, interpret, sm_count(device))


@functools.lru_cache(maxsize=4096)
def _gemm_config(m: int, n: int, k: int, group_size: int, interpret: bool,
                 sms: int) -> GemmConfig:
    if interpret:
        # One config, few large blocks: the interpreter pays per program, not per element.
        bm = min(64, max(MIN_BLOCK_MN, triton.next_power_of_2(m)))
        cfg = GemmConfig(bm, 64, 64, num_warps=4, num_stages=1)
        return replace(cfg, block_k=_fit_group(cfg.block_k, group_size, k))
    cfg = _gpu_table(m)
    cfg = replace(cfg, block_k=_fit_group(cfg.block_k, group_size, k))
    tiles = triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n)
    if 2 * tiles <= sms:
        # Too few output tiles to fill the GPU: split K, keeping >= 512 of K per split.
        units = triton.cdiv(k, max(group_size if group_size < k else 1, cfg.block_k))
        split = min(sms // tiles, units, max(1, k // 512), 16)
        cfg = replace(cfg, split_k=max(1, split))
    return cfg


def w4a8_config(m: int, n: int, k: int, *, gate_up: bool, interpret: bool,
                device=None) -> GemmConfig:
    """Tiles of the swap-AB W4A8 kernel: block_n over weight rows, block_m over tokens.

    block_k is always 128 (the K-half packing block). Few output tiles split K (the
    kernel's split-K is deterministic and needs no extra launch); gate_up never splits and
    halves its weight tile instead, since it holds two accumulators.
    """
    return _w4a8_config(m, n, k, gate_up, interpret, sm_count(device))


@functools.lru_cache(maxsize=4096)
def _w4a8_config(m: int, n: int, k: int, gate_up: bool, interpret: bool,
                 sms: int) -> GemmConfig:
    bm = min(64, max(MIN_BLOCK_MN, triton.next_power_of_2(m)))
    if interpret:
        return GemmConfig(bm, 32 if gate_up else 64, 128, num_warps=4, num_stages=1)
    # Main-loop SASS per weight per pass (sm_90, `quantvla bench sass`): 128 weight rows x
    # 16 / 32 / 64 tokens 2.1 / 2.2 / 2.5; gate_up 64 x 32 / 64: 2.4 / 2.7. Small M is
    # memory-bound, so those tiles stay. At prefill M the loop is issue-bound and the unit is
    # slots per MAC (per pass / tokens), where a larger token tile wins (below).
    if gate_up:
        cfg = GemmConfig(min(bm, 32) if m <= 64 else 64, 64, 128, num_warps=4, num_stages=4)
    else:
        cfg = GemmConfig(bm, 128, 128, num_warps=4, num_stages=4 if m <= 64 else 3)
    tiles = triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n)
    blocks = triton.cdiv(k, 128)
    if not gate_up and m >= PREFILL_M:
        big = GemmConfig(128, 128, 128, num_warps=8, num_stages=3)
        big_tiles = triton.cdiv(m, 128) * triton.cdiv(n, 128)
        # Never split (that variant is uncompiled), and only where the figure wins.
        if 2 * big_tiles > sms and _w4a8_slots(big, m) < _w4a8_slots(cfg, m):
            return big
    if gate_up or 2 * tiles > sms:
        return cfg
    # Keep >= 4 blocks (512 of K) per split so the atomics stay a small share of the work.
    return replace(cfg, split_k=max(1, min(sms // tiles, blocks // 4, 16)))


# Main-loop thread-instructions per weight per pass of the W4A8 g128 kernel by (token
# tile, warps), sm_90, triton 3.7.1 (`quantvla bench sass`; sm_87 ranks them the same).
W4A8_LOOP_PER_WEIGHT = {(16, 4): 2.141, (32, 4): 2.2, (64, 4): 2.516, (128, 8): 3.875}
PREFILL_M = 256  # below this the W4A8 GEMMs are weight-bandwidth bound, not issue bound


def _w4a8_slots(cfg: GemmConfig, m: int) -> float:
    """Main-loop issue slots per useful MAC at M tokens (one pass per token tile)."""
    per_pass = W4A8_LOOP_PER_WEIGHT[(cfg.block_m, cfg.num_warps)]
    return per_pass * triton.cdiv(m, cfg.block_m) / m


def act_quant_block(k: int) -> tuple[int, int]:
    """(BLOCK_K, num_warps) for the one-row-per-program activation quantizer."""
    block = max(16, triton.next_power_of_2(k))
    return block, max(1, min(16, block // 256))
