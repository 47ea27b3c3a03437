"""SmolVLA's building blocks, under the module names lerobot's checkpoints use.

The text towers are Llama layers (RMSNorm `w * x / rms`, SiLU-gated MLP, no biases); the
attention is lerobot's eager one: float32 logits scaled by head_dim^-0.5, masked by
replacement with float32's lowest value (a query that sees no key gets a uniform average,
which is finite where SDPA's boolean mask would give NaN / 0), softmax in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quantvla_ros.models.siglip import SiglipTransformer, VisionConfig
from quantvla_ros.models.smolvla.config import TextConfig


class RMSNorm(nn.Module):
    """Llama RMSNorm: `w * x * rsqrt(mean(x^2) + eps)`, normalized in float32."""

    def __init__(self, dim: int, eps: float):
        """Norm over the last dimension `dim`; the weight starts at 1 (identity)."""
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the normalized x in x's dtype (rounded before the weight, as Llama does)."""
        y = x.float()
        y = (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        return (self.weight * y).to(x.dtype)

    @torch.no_grad()
    def divide_output_(self, s: torch.Tensor) -> None:
        """Make the output y / s per channel (SmoothQuant folding)."""
        self.weight.copy_((self.weight.float() / s).to(self.weight.dtype))


def apply_rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate x [B, L, H, D] by positions [B, L] (halves rotated, float32, as lerobot)."""
    half = x.shape[-1] // 2
    xf = x.float()
    exponents = (2.0 / x.shape[-1]) * torch.arange(half, dtype=torch.float32, device=x.device)
    radians = positions[..., None].float() / (theta ** exponents)[None, None, :]
    sin, cos = torch.sin(radians)[..., None, :], torch.cos(radians)[..., None, :]
    x1, x2 = xf[..., :half], xf[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           mask: torch.Tensor) -> torch.Tensor:
    """Grouped-query attention: q [B, S, H, D], k / v [B, T, KV, D], mask [B, S, T] -> [B, S, H*D].

    k / v are repeated per group (KV head i serves query heads i*G..(i+1)*G-1).
    """
    b, s, h, d = q.shape
    groups = h // k.shape[2]
    k, v = k.repeat_interleave(groups, dim=2), v.repeat_interleave(groups, dim=2)
    logits = q.float().transpose(1, 2) @ k.float().permute(0, 2, 3, 1)
    logits = logits * d**-0.5
    logits = torch.where(mask[:, None], logits, torch.finfo(torch.float32).min)
    probs = torch.softmax(logits, dim=-1).to(v.dtype)
    return (probs @ v.transpose(1, 2)).transpose(1, 2).reshape(b, s, h * d)


def expand_kv(k: torch.Tensor, heads: int) -> torch.Tensor:
    """Repeat k [B, T, KV, D] to one key per query head [B, T, H, D] (for observers)."""
    return k.repeat_interleave(heads // k.shape[2], dim=2)


class Attention(nn.Module):
    """q / k / v / o projections; `kv_in` widens k / v's input (cross-attention to keys)."""

    def __init__(self, width: int, cfg: TextConfig, kv_in: int | None = None,
                 kv_only: bool = False):
        """Build the projections (no biases); a key/value-only layer has no q / o."""
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (cfg.num_heads, cfg.num_kv_heads,
                                                            cfg.head_dim)
        q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        if not kv_only:
            self.q_proj = nn.Linear(width, q, bias=False)
        self.k_proj = nn.Linear(kv_in or width, kv, bias=False)
        self.v_proj = nn.Linear(kv_in or width, kv, bias=False)
        if not kv_only:
            self.o_proj = nn.Linear(q, width, bias=False)

    def heads(self, t: torch.Tensor) -> torch.Tensor:
        """[B, L, n*D] -> [B, L, n, D]."""
        return t.view(*t.shape[:-1], -1, self.head_dim)


class MLP(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, width: int, mlp_dim: int):
        """Build gate / up (width -> mlp_dim) and down (mlp_dim -> width), no biases."""
        super().__init__()
        self.gate_proj = nn.Linear(width, mlp_dim, bias=False)
        self.up_proj = nn.Linear(width, mlp_dim, bias=False)
        self.down_proj = nn.Linear(mlp_dim, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the gated MLP of x."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    """A Llama decoder layer; `kv_only` keeps only what the expert reads (norm, k, v)."""

    def __init__(self, cfg: TextConfig, kv_in: int | None = None, kv_only: bool = False):
        """Build the norms, attention and MLP of one layer."""
        super().__init__()
        self.kv_only = kv_only
        self.input_layernorm = RMSNorm(cfg.width, cfg.eps)
        self.self_attn = Attention(cfg.width, cfg, kv_in, kv_only)
        if not kv_only:
            self.post_attention_layernorm = RMSNorm(cfg.width, cfg.eps)
            self.mlp = MLP(cfg.width, cfg.mlp_dim)

    def finish(self, x: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
        """Add the projected attention output to x, then the MLP sublayer and its residual."""
        h = proj + x
        return self.mlp(self.post_attention_layernorm(h)) + h


class Connector(nn.Module):
    """SmolVLM's connector: pixel shuffle (space to depth by `scale`), then one projection."""

    def __init__(self, vision_width: int, text_width: int, scale: int):
        """Build `modality_projection.proj` (vision width * scale^2 -> text width)."""
        super().__init__()
        self.scale = scale
        self.modality_projection = nn.Module()
        self.modality_projection.proj = nn.Linear(vision_width * scale**2, text_width,
                                                  bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, side^2, w] -> [N, (side/scale)^2, text width] (Idefics3's shuffle order)."""
        n, seq, w = x.shape
        side, r = int(seq**0.5), self.scale
        x = x.reshape(n, side, side // r, w * r).permute(0, 2, 1, 3)
        x = x.reshape(n, side // r, side // r, w * r * r).permute(0, 2, 1, 3)
        return self.modality_projection.proj(x.reshape(n, seq // r**2, w * r * r))


class Vision(SiglipTransformer):
    """SmolVLM's SigLIP tower (no pooling head): pixels [N, 3, S, S] in [-1, 1] -> tokens."""

    def __init__(self, cfg: VisionConfig):
        """Build embeddings, encoder and post_layernorm under Hugging Face's names."""
        super().__init__(cfg)
        self.side = cfg.image_size // cfg.patch_size

    def positions(self, device) -> torch.Tensor:
        """Position ids of a full image, bucketed as SmolVLM does (the identity when exact)."""
        side = self.side
        edges = torch.arange(1 / side, 1.0, 1 / side, device=device)
        step = torch.tensor(1.0 / side, dtype=torch.float32, device=device)
        coords = (torch.arange(side, device=device, dtype=torch.float32) * step).clamp(
            max=1.0 - 1e-6)
        bucket = torch.bucketize(coords, edges, right=True)
        return (bucket[:, None] * side + bucket[None, :]).reshape(-1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embed the patches, run every layer and apply the final layer norm."""
        x = self.embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2)
        x = x + self.embeddings.position_embedding.weight[self.positions(pixels.device)][None]
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x)
