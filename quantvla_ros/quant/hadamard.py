"""Block-diagonal Hadamard rotation for int4 activations (QuaRot-style).

Rotating x by an orthonormal H spreads outlier channels across the block, so per-token
int4 quantization loses far less. Since x W^T = (x H)(W H)^T, the weight side is folded
offline and only x H runs at inference (a [M, K/b, b] x [b, b] matmul).
"""

from __future__ import annotations

import functools
import math

import torch

BLOCK = 128


@functools.lru_cache(maxsize=8)
def _hadamard_cpu(n: int) -> torch.Tensor:
    if n & (n - 1):
        raise ValueError(f"Hadamard block size must be a power of two, got {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


def block_size(k: int) -> int:
    """Largest power-of-two block up to BLOCK that divides K."""
    b = BLOCK
    while b > 1 and k % b:
        b //= 2
    return b


@functools.lru_cache(maxsize=32)
def hadamard_matrix(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Return the orthonormal n x n Hadamard matrix on ``device``, made once per device/dtype.

    Cached because a per-call host-to-device copy syncs the stream on every W4A4 linear and
    is illegal inside CUDA-graph capture; the warm-up runs before capture fill the cache.
    """
    return _hadamard_cpu(n).to(device=device, dtype=dtype)


def rotate(x: torch.Tensor, block: int) -> torch.Tensor:
    """X [..., K] -> x H_blockdiag, computed in float32, returned in x's dtype."""
    h = hadamard_matrix(block, x.device, torch.float32)
    shape = x.shape
    y = x.float().reshape(*shape[:-1], shape[-1] // block, block) @ h
    return y.reshape(shape).to(x.dtype)
