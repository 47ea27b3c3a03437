"""Building blocks shared by the Gemma towers: norms, rotary embedding, attention, MLP.

Parameter names follow Hugging Face / lerobot (`q_proj`, `gate_proj`, `input_layernorm`, ...)
so checkpoints map onto modules by a prefix rename only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Large finite negative for additive masks: -inf would turn fully masked (padding) query rows
# into NaN, which then leaks into keys/values of the next layer.
MASK_VALUE = -2.3819763e38


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class RMSNorm(nn.Module):
    """Gemma RMSNorm: `x * rsqrt(mean(x^2) + eps) * (1 + w)`, computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None):
        # Rounded to x's dtype before the weight, as lerobot does (identical in fp32).
        y = _rms(x, self.eps)
        return (y * (1.0 + self.weight.float())).to(x.dtype), None


class AdaRMSNorm(nn.Module):
    """pi0.5 adaptive RMSNorm: `dense(cond)` -> [scale | shift | gate]; returns (y, gate)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.dense = nn.Linear(dim, 3 * dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor):
        scale, shift, gate = self.dense(cond).unsqueeze(1).chunk(3, dim=-1)
        y = _rms(x, self.eps) * (1.0 + scale.float()) + shift.float()
        return y.to(x.dtype), gate.to(x.dtype)


def gated_residual(x: torch.Tensor, out: torch.Tensor, gate: torch.Tensor | None):
    return x + out if gate is None else x + out * gate


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos/sin of shape [B, 1, S, head_dim] for integer positions [B, S]."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)
    )
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """q/k/v/o projections of one tower; the attention itself runs jointly across towers."""

    def __init__(self, width: int, num_heads: int, num_kv_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.q_proj = nn.Linear(width, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(width, num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(width, num_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, width, bias=False)

    def qkv(self, x: torch.Tensor):
        """Project to q [B, H, S, D] and k, v [B, KVH, S, D] (before RoPE)."""
        return self.split_heads(self.q_proj(x), self.k_proj(x), self.v_proj(x))

    def split_heads(self, q, k, v):
        """[B, S, H*D] projections -> [B, heads, S, D]."""
        b, s, _ = q.shape
        q = q.view(b, s, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v


def attention_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean [B, S, T] mask -> additive [B, 1, S, T] bias with a finite negative."""
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return bias.masked_fill(~mask, MASK_VALUE)[:, None]


def attend(q, k, v, bias: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention over [B, H, S, D] with an additive [B, 1, S, T] bias.

    Returns [B, S, H*D]. Build the bias once per forward with `attention_bias`.
    """
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=bias, enable_gqa=k.shape[1] != q.shape[1]
    )
    b, h, s, d = out.shape
    return out.transpose(1, 2).reshape(b, s, h * d)


class GeGLU(nn.Module):
    """Gemma MLP: `down(gelu_tanh(gate(x)) * up(x))`."""

    def __init__(self, width: int, mlp_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(width, mlp_dim, bias=False)
        self.up_proj = nn.Linear(width, mlp_dim, bias=False)
        self.down_proj = nn.Linear(mlp_dim, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))
