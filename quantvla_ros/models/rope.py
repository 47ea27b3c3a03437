"""Rotary position embedding and the additive mask value, shared by every family's attention."""

from __future__ import annotations

import torch

# Large finite negative for additive masks: -inf would turn fully masked (padding) query rows
# into NaN, which then leaks into keys/values of the next layer.
MASK_VALUE = -2.3819763e38


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos/sin of shape [B, 1, S, head_dim] for integer positions [B, S]."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)
    )
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, heads, S, D] by the angles whose cos/sin `rope_cos_sin` returns."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
