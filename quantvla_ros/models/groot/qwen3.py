"""Qwen3 decoder as GR00T runs it: `depth` layers then the final RMSNorm, no lm_head.

Names are transformers' (`language_model.model.layers.i.self_attn.q_proj`, ...) so the
NVIDIA checkpoint maps onto these modules with no rename. The lm_head is not built: GR00T
discards its logits, and the embedding table (tied to it) is all the model reads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quantvla_ros.models.groot.config import Qwen3Config
from quantvla_ros.models.rope import MASK_VALUE, apply_rope, rope_cos_sin


class Qwen3RMSNorm(nn.Module):
    """`w * x * rsqrt(mean(x^2) + eps)`, in float32 and rounded before the weight (as HF)."""

    def __init__(self, dim: int, eps: float):
        """Norm over the last dimension `dim`; the weight starts at 1 (identity)."""
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize x [..., dim]."""
        xf = x.float()
        y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        return self.weight * y

    @torch.no_grad()
    def divide_output_(self, s: torch.Tensor) -> None:
        """Make the output y / s per channel (SmoothQuant folding): w / s."""
        self.weight.copy_((self.weight.float() / s).to(self.weight.dtype))


class Qwen3Attention(nn.Module):
    """GQA self-attention with per-head q/k RMSNorm applied before RoPE, no biases."""

    def __init__(self, cfg: Qwen3Config):
        """Build q/k/v/o projections and the two per-head norms."""
        super().__init__()
        self.cfg = cfg
        q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.q_proj = nn.Linear(cfg.width, q, bias=False)
        self.k_proj = nn.Linear(cfg.width, kv, bias=False)
        self.v_proj = nn.Linear(cfg.width, kv, bias=False)
        self.o_proj = nn.Linear(q, cfg.width, bias=False)
        self.q_norm = Qwen3RMSNorm(cfg.head_dim, cfg.eps)
        self.k_norm = Qwen3RMSNorm(cfg.head_dim, cfg.eps)

    def forward(self, x, cos, sin, bias) -> torch.Tensor:
        """Attend over x [B, S, W] with RoPE angles [B, 1, S, D] and additive bias."""
        b, s, _ = x.shape
        c = self.cfg
        q = self.q_norm(self.q_proj(x).view(b, s, c.num_heads, c.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(b, s, c.num_kv_heads, c.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(b, s, c.num_kv_heads, c.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class Qwen3MLP(nn.Module):
    """SwiGLU: `down(silu(gate(x)) * up(x))`."""

    def __init__(self, cfg: Qwen3Config):
        """Gate / up projections width -> mlp_dim, down projection back."""
        super().__init__()
        self.gate_proj = nn.Linear(cfg.width, cfg.mlp_dim, bias=False)
        self.up_proj = nn.Linear(cfg.width, cfg.mlp_dim, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_dim, cfg.width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP to an already normalized x."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen3Layer(nn.Module):
    """Pre-norm decoder layer: attention, then MLP, each with a residual."""

    def __init__(self, cfg: Qwen3Config):
        """Build both norms, the attention and the MLP."""
        super().__init__()
        self.input_layernorm = Qwen3RMSNorm(cfg.width, cfg.eps)
        self.self_attn = Qwen3Attention(cfg)
        self.post_attention_layernorm = Qwen3RMSNorm(cfg.width, cfg.eps)
        self.mlp = Qwen3MLP(cfg)

    def forward(self, h, cos, sin, bias) -> torch.Tensor:
        """Apply both residual sublayers to h [B, S, W]."""
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, bias)
        return h + self.mlp(self.post_attention_layernorm(h))


def causal_padding_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive [B, 1, S, S] bias: key j is visible to query i iff j <= i and j is not padding.

    A finite negative, not -inf: a left-padding query sees no key at all, and -inf would make
    its row NaN, which the action head (it never masks padding) would then read.
    """
    s = attention_mask.shape[1]
    causal = torch.ones(s, s, dtype=torch.bool, device=attention_mask.device).tril()
    visible = causal[None] & attention_mask.bool()[:, None, :]
    bias = torch.zeros(visible.shape, dtype=dtype, device=attention_mask.device)
    return bias.masked_fill(~visible, MASK_VALUE)[:, None]


class Qwen3Decoder(nn.Module):
    """Token embedding, the kept layers and the final norm (transformers' `Qwen3Model`)."""

    def __init__(self, cfg: Qwen3Config):
        """Build the embedding table, `cfg.depth` layers and the final norm."""
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.width)
        self.layers = nn.ModuleList(Qwen3Layer(cfg) for _ in range(cfg.depth))
        self.norm = Qwen3RMSNorm(cfg.width, cfg.eps)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor):
        """Run embeddings [B, S, W] (mask [B, S] of 1 / 0) through every layer, then norm.

        Positions are arange(S) for every row, unshifted for left padding, as GR00T calls
        the LLM with position_ids=None.
        """
        b, s, _ = inputs_embeds.shape
        positions = torch.arange(s, device=inputs_embeds.device).expand(b, s)
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta,
                                inputs_embeds.dtype)
        bias = causal_padding_bias(attention_mask, inputs_embeds.dtype)
        h = inputs_embeds
        for layer in self.layers:
            h = layer(h, cos, sin, bias)
        return self.norm(h)


class Qwen3LanguageModel(nn.Module):
    """Holder that puts the decoder under `model.` as in `Qwen3ForCausalLM` (no lm_head)."""

    def __init__(self, cfg: Qwen3Config):
        """Build the decoder."""
        super().__init__()
        self.model = Qwen3Decoder(cfg)

    def forward(self, inputs_embeds, attention_mask) -> torch.Tensor:
        """Return the final-normed hidden states [B, S, W]."""
        return self.model(inputs_embeds, attention_mask)
