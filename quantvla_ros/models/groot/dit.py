"""Transformer blocks of the action head: the VL self-attention stack and the DiT.

Submodule names are diffusers' (`attn1.to_q`, `attn1.to_out.0`, `ff.net.0.proj`, `ff.net.2`,
`norm1.linear`, `timestep_embedder.linear_1`), which the NVIDIA checkpoint stores, so
quantizer globs can tell attention (`*.attn1.*`) from feed-forward (`*.ff.net.*`). Dropout
modules sit where diffusers has them (`to_out.1`, `ff.net.1`, `ff.net.3`); they have no
parameters and are identities at inference.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from quantvla_ros.models.groot.config import ActionHeadConfig


def timestep_sinusoid(t: torch.Tensor, channels: int) -> torch.Tensor:
    """Sinusoid of diffusers `Timesteps(channels, flip_sin_to_cos=True, downscale_freq_shift=1)`.

    [cos | sin] (cos first) of t * exp(-ln(10000) i / (half - 1)), i < half = channels / 2.
    """
    half = channels // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device) / (half - 1))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


class TimestepEmbedding(nn.Module):
    """`linear_2(silu(linear_1(x)))`: the timestep sinusoid to the DiT width."""

    def __init__(self, channels: int, width: int):
        """Build linear_1 (channels -> width) and linear_2 (width -> width)."""
        super().__init__()
        self.linear_1 = nn.Linear(channels, width)
        self.linear_2 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a sinusoid [B, channels] to [B, width]."""
        return self.linear_2(F.silu(self.linear_1(x)))


class TimestepEncoder(nn.Module):
    """Discretized flow time t [B] -> temb [B, width] (NVIDIA's `timestep_encoder`)."""

    def __init__(self, channels: int, width: int):
        """Build the embedder; the sinusoid has `channels` (256) channels."""
        super().__init__()
        self.channels = channels
        self.timestep_embedder = TimestepEmbedding(channels, width)

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Return temb [B, width] in ``dtype``."""
        return self.timestep_embedder(timestep_sinusoid(t, self.channels).to(dtype))


class Attention(nn.Module):
    """diffusers-style attention: to_q / to_k / to_v / to_out.0, biases, 1/sqrt(d).

    `kv_dim` != dim builds a cross-attention whose keys and values come from other tokens.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, kv_dim: int | None = None):
        """Build the projections (inner width heads * head_dim)."""
        super().__init__()
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.is_cross = kv_dim is not None
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(kv_dim or dim, inner)
        self.to_v = nn.Linear(kv_dim or dim, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                observe=None, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend from x [B, S, dim] to context [B, T, kv_dim] (or to x itself).

        `key_mask` [B, T] (bool, True = real) hides padding keys; None attends to all.
        `observe(q, k, out, key_mask)`, if given, sees the head-split query / key
        [B, heads, S|T, d] that SDPA gets and the module output [B, S, dim] (after to_out.0
        and its dropout).
        """
        context = x if context is None else context
        b = x.shape[0]

        def heads(t):
            return t.view(b, -1, self.heads, self.head_dim).transpose(1, 2)

        q, k = heads(self.to_q(x)), heads(self.to_k(context))
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, heads(self.to_v(context)), attn_mask=mask)
        out = self.to_out[1](self.to_out[0](out.transpose(1, 2).reshape(b, x.shape[1], -1)))
        if observe is not None:
            observe(q, k, out, key_mask)
        return out


class GELUProj(nn.Module):
    """diffusers `GELU(approximate="tanh")`: a Linear named `proj`, then tanh GELU."""

    def __init__(self, dim: int, inner: int):
        """Build the projection dim -> inner."""
        super().__init__()
        self.proj = nn.Linear(dim, inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return gelu_tanh(proj(x))."""
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """`net.2(gelu_tanh(net.0.proj(x)))` with diffusers' `net` layout."""

    def __init__(self, dim: int, inner: int):
        """Build dim -> inner -> dim."""
        super().__init__()
        self.net = nn.ModuleList([GELUProj(dim, inner), nn.Dropout(0.0), nn.Linear(inner, dim),
                                  nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the four stages in order."""
        for stage in self.net:
            x = stage(x)
        return x


class AdaLayerNorm(nn.Module):
    """`LN(x) * (1 + scale) + shift` with [scale | shift] = linear(silu(temb)): scale first."""

    def __init__(self, dim: int, eps: float = 1e-5):
        """Build the modulation Linear (dim -> 2 dim) and a non-affine LayerNorm."""
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """Normalize x [B, S, dim] modulated by temb [B, dim]."""
        scale, shift = self.linear(F.silu(temb)).chunk(2, dim=-1)
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None]

    @torch.no_grad()
    def divide_output_(self, s: torch.Tensor) -> None:
        """Make y / s per channel: (1 + scale) / s and shift / s through `linear`'s rows."""
        d = s.numel()
        w, b = self.linear.weight, self.linear.bias
        w[:d] = (w[:d].float() / s[:, None]).to(w.dtype)
        b[:d] = ((1.0 + b[:d].float()) / s - 1.0).to(b.dtype)
        w[d:] = (w[d:].float() / s[:, None]).to(w.dtype)
        b[d:] = (b[d:].float() / s).to(b.dtype)


class TransformerBlock(nn.Module):
    """`h += attn1(norm1(h))`, then `h += ff(norm3(h))`; no gating.

    With `adaptive`, norm1 is an AdaLayerNorm on temb and norm3 a plain non-affine LayerNorm
    (the DiT); otherwise both are affine LayerNorms (the VL self-attention stack).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_dim: int,
                 kv_dim: int | None = None, adaptive: bool = False):
        """Build norm1, attn1 (cross when kv_dim is given), norm3 and ff."""
        super().__init__()
        self.norm1 = AdaLayerNorm(dim) if adaptive else nn.LayerNorm(dim, eps=1e-5)
        self.attn1 = Attention(dim, heads, head_dim, kv_dim)
        self.norm3 = nn.LayerNorm(dim, eps=1e-5, elementwise_affine=not adaptive)
        self.ff = FeedForward(dim, mlp_dim)

    def forward(self, h: torch.Tensor, context: torch.Tensor | None = None,
                temb: torch.Tensor | None = None, observe=None,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Apply both residual sublayers to h [B, S, dim]; `observe`, `key_mask` go to attn1."""
        n = self.norm1(h, temb) if temb is not None else self.norm1(h)
        h = h + self.attn1(n, context, observe, key_mask)
        return h + self.ff(self.norm3(h))


class SelfAttentionTransformer(nn.Module):
    """`vl_self_attention`: affine-LN self-attention blocks over the VL tokens, no final norm."""

    def __init__(self, cfg: ActionHeadConfig):
        """Build `vlsa_depth` blocks at the backbone width."""
        super().__init__()
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(cfg.backbone_dim, cfg.vlsa_heads, cfg.vlsa_head_dim,
                             cfg.vlsa_mlp_dim)
            for _ in range(cfg.vlsa_depth)
        )

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Return the VL tokens [B, L, backbone_dim] after every block.

        `key_mask` [B, L] hides padding keys, so a real token's output is its unpadded one
        (padding rows still come out, finite, and the DiT masks them as keys).
        """
        for block in self.transformer_blocks:
            x = block(x, key_mask=key_mask)
        return x


class DiT(nn.Module):
    """`action_head.model`: time-conditioned blocks, even ones cross-attending to VL tokens.

    Time enters through each block's norm1 (AdaLN) and the output modulation
    (proj_out_1: [shift | scale], shift first) only. `observer` (None by default) is any
    object with `attention(block, q, k, out)`; each block's attn1 reports to it (see
    `Attention.forward`), and the sampler sets its `step` attribute to the flow step.
    """

    observer = None

    def __init__(self, cfg: ActionHeadConfig):
        """Build the timestep encoder, `dit_depth` blocks and the output projections."""
        super().__init__()
        dim = cfg.input_embedding_dim
        self.timestep_encoder = TimestepEncoder(cfg.timestep_channels, dim)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(dim, cfg.dit_heads, cfg.dit_head_dim, cfg.dit_mlp_dim,
                             kv_dim=cfg.backbone_dim if i % 2 == 0 else None, adaptive=True)
            for i in range(cfg.dit_depth)
        )
        self.norm_out = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.proj_out_1 = nn.Linear(dim, 2 * dim)
        self.proj_out_2 = nn.Linear(dim, cfg.hidden_size)

    def forward(self, h: torch.Tensor, vl_embs: torch.Tensor, t: torch.Tensor,
                vl_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Map tokens h [B, S, dim] at discretized times t [B] to [B, S, hidden_size].

        `vl_mask` [B, L] (True = real) hides the VL tokens' padding from cross-attention.
        """
        temb = self.timestep_encoder(t, h.dtype)
        obs = self.observer
        for i, block in enumerate(self.transformer_blocks):
            observe = None if obs is None else functools.partial(obs.attention, i)
            cross = block.attn1.is_cross
            h = block(h, vl_embs if cross else None, temb, observe, vl_mask if cross else None)
        shift, scale = self.proj_out_1(F.silu(temb)).chunk(2, dim=-1)
        return self.proj_out_2(self.norm_out(h) * (1 + scale[:, None]) + shift[:, None])
