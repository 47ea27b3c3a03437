"""SigLIP vision tower (no pooling head), with Hugging Face parameter names.

Written here rather than taken from transformers so it builds on the meta device with no
buffers and runs SDPA in whatever dtype the policy runs in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class VisionConfig:
    """SigLIP vision tower (So400m/14 by default)."""

    image_size: int = 224
    patch_size: int = 14
    width: int = 1152
    depth: int = 27
    mlp_dim: int = 4304
    num_heads: int = 16
    eps: float = 1e-6

    @property
    def num_tokens(self) -> int:
        """Patch tokens per image."""
        return (self.image_size // self.patch_size) ** 2



class SiglipAttention(nn.Module):
    """Multi-head self-attention over patch tokens (no mask, no KV cache)."""

    def __init__(self, cfg: VisionConfig):
        """Build the q / k / v / out projections (width x width, with bias)."""
        super().__init__()
        self.num_heads = cfg.num_heads
        self.q_proj = nn.Linear(cfg.width, cfg.width)
        self.k_proj = nn.Linear(cfg.width, cfg.width)
        self.v_proj = nn.Linear(cfg.width, cfg.width)
        self.out_proj = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over tokens [B, S, width]; return [B, S, width]."""
        b, s, w = x.shape
        h = self.num_heads

        def heads(t):
            return t.view(b, s, h, w // h).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, s, w))


class SiglipMLP(nn.Module):
    """Feed-forward block: fc1, tanh-approximated GELU, fc2."""

    def __init__(self, cfg: VisionConfig):
        """Build fc1 (width -> mlp_dim) and fc2 (mlp_dim -> width)."""
        super().__init__()
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return fc2(gelu(fc1(x)))."""
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiglipLayer(nn.Module):
    """Pre-norm transformer block: attention, then MLP, each with a residual."""

    def __init__(self, cfg: VisionConfig):
        """Build the two layer norms, the attention and the MLP."""
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.self_attn = SiglipAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.mlp = SiglipMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply both residual sublayers to tokens [B, S, width]."""
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEmbeddings(nn.Module):
    """Patch embedding (a strided convolution) plus learned position embeddings."""

    def __init__(self, cfg: VisionConfig):
        """Build the patch convolution and one position embedding per patch."""
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size)
        self.position_embedding = nn.Embedding(cfg.num_tokens, cfg.width)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Turn pixels [N, 3, H, W] into tokens [N, num_tokens, width]."""
        x = self.patch_embedding(pixels).flatten(2).transpose(1, 2)
        return x + self.position_embedding.weight[None]


class SiglipEncoder(nn.Module):
    """The stack of SigLIP layers (a container: SiglipVision runs them)."""

    def __init__(self, cfg: VisionConfig):
        """Build ``cfg.depth`` layers."""
        super().__init__()
        self.layers = nn.ModuleList(SiglipLayer(cfg) for _ in range(cfg.depth))


class SiglipTransformer(nn.Module):
    """Embeddings, encoder and final layer norm under Hugging Face's names."""

    def __init__(self, cfg: VisionConfig):
        """Build the embeddings, the encoder and the final layer norm."""
        super().__init__()
        self.embeddings = SiglipEmbeddings(cfg)
        self.encoder = SiglipEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.width, eps=cfg.eps)


class SiglipVision(nn.Module):
    """Pixels in [-1, 1], [N, 3, H, W] -> tokens [N, (H/14)*(W/14), width]."""

    def __init__(self, cfg: VisionConfig):
        """Build the tower under ``vision_model`` (Hugging Face's parameter names)."""
        super().__init__()
        self.vision_model = SiglipTransformer(cfg)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embed the patches, run every layer and apply the final layer norm."""
        vm = self.vision_model
        x = vm.embeddings(pixels)
        for layer in vm.encoder.layers:
            x = layer(x)
        return vm.post_layernorm(x)
