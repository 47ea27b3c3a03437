"""Gemma towers and the joint (mixture-of-transformers) forward of pi0 / pi0.5.

In every layer each tower projects its own tokens with its own weights; the attention then
runs once over the concatenation, so action tokens (expert) see image/language tokens
(backbone) through shared keys and values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import GemmaConfig
from .layers import (
    AdaRMSNorm,
    Attention,
    GeGLU,
    RMSNorm,
    apply_rope,
    attend,
    attention_bias,
    gated_residual,
    rope_cos_sin,
)


class GemmaLayer(nn.Module):
    def __init__(self, cfg: GemmaConfig, adaptive: bool):
        super().__init__()
        norm = AdaRMSNorm if adaptive else RMSNorm
        self.input_layernorm = norm(cfg.width, cfg.eps)
        self.self_attn = Attention(cfg.width, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
        self.post_attention_layernorm = norm(cfg.width, cfg.eps)
        self.mlp = GeGLU(cfg.width, cfg.mlp_dim)
        # Inference-time fusions (quant/fused.py) may set these: norm + int8 quantization in
        # one kernel feeding one GEMM over the concatenated q/k/v or gate/up weights.
        self.fused_qkv: nn.Module | None = None
        self.fused_gate_up: nn.Module | None = None

    def attention_inputs(self, h: torch.Tensor, cond):
        """q [B, H, S, D], k, v [B, KVH, S, D] (before RoPE) and the residual gate."""
        if self.fused_qkv is not None:
            return (*self.self_attn.split_heads(*self.fused_qkv(h)), None)
        x, gate = self.input_layernorm(h, cond)
        return (*self.self_attn.qkv(x), gate)

    def mlp_block(self, h: torch.Tensor, cond) -> torch.Tensor:
        """h + MLP(norm(h)), gated for the adaptive norm."""
        if self.fused_gate_up is not None:
            return h + self.mlp.down_proj(self.fused_gate_up(h))
        x, gate = self.post_attention_layernorm(h, cond)
        return gated_residual(h, self.mlp(x), gate)


class GemmaTower(nn.Module):
    """Layers and final norm of one tower; the backbone also owns the token embedding."""

    def __init__(self, cfg: GemmaConfig, adaptive: bool, vocab_size: int | None = None):
        super().__init__()
        self.cfg = cfg
        if vocab_size is not None:
            self.embed_tokens = nn.Embedding(vocab_size, cfg.width)
        self.layers = nn.ModuleList(GemmaLayer(cfg, adaptive) for _ in range(cfg.depth))
        self.norm = (AdaRMSNorm if adaptive else RMSNorm)(cfg.width, cfg.eps)


def mask_rows_valid(mask: torch.Tensor, sizes, active, tower: int) -> torch.Tensor:
    """[B, S_i] True for tower i's query rows that attend to anything (i.e. not padding)."""
    start = sum(sizes[: active.index(tower)])
    return mask[:, start:start + sizes[active.index(tower)]].any(-1)


@dataclass
class KVCache:
    """Post-RoPE keys and values of the prefix, per layer [B, KVH, P, D]."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]


def joint_forward(
    towers: list[GemmaTower],
    hiddens: list[torch.Tensor | None],
    conds: list[torch.Tensor | None],
    positions: torch.Tensor,
    mask: torch.Tensor,
    past: KVCache | None = None,
    store: bool = False,
    final_outputs: bool = True,
    observer=None,
):
    """Run all layers over the towers' tokens.

    hiddens[i] is tower i's input [B, S_i, W_i] or None (tower idle); positions [B, sum S_i]
    are RoPE positions of the new tokens; mask [B, sum S_i, P + sum S_i] is boolean over
    [past keys, new keys]. Returns (outputs after the final norms, KVCache of the new keys if
    `store`). With `final_outputs=False` the last layer's o_proj / MLP are skipped: a prefill
    only needs the keys and values. An `observer` (calibration) sees each tower's post-RoPE
    queries with all keys and the mask rows, and each tower's o_proj output.
    """
    active = [i for i, h in enumerate(hiddens) if h is not None]
    hiddens = list(hiddens)
    ref = towers[active[0]].cfg
    dtype = hiddens[active[0]].dtype
    cos, sin = rope_cos_sin(positions, ref.head_dim, ref.rope_theta, dtype)
    bias = attention_bias(mask, dtype)  # once for all layers
    sizes = [hiddens[i].shape[1] for i in active]
    stored = KVCache([], [])
    depth = len(towers[active[0]].layers)
    for li in range(depth):
        layers = {i: towers[i].layers[li] for i in active}
        qs, ks, vs, gates = [], [], [], {}
        for i in active:
            q, k, v, gates[i] = layers[i].attention_inputs(hiddens[i], conds[i])
            qs.append(q)
            ks.append(k)
            vs.append(v)
        q = apply_rope(torch.cat(qs, 2), cos, sin)
        k = apply_rope(torch.cat(ks, 2), cos, sin)
        v = torch.cat(vs, 2)
        if store:
            stored.keys.append(k)
            stored.values.append(v)
        if past is not None:
            k = torch.cat([past.keys[li], k], 2)
            v = torch.cat([past.values[li], v], 2)
        if li == depth - 1 and not final_outputs:
            break
        if observer is not None:
            rows = torch.tensor(sizes).cumsum(0).tolist()
            for i, start, end in zip(active, [0] + rows[:-1], rows, strict=True):
                observer.attention(li, i, q[:, :, start:end], k, mask[:, start:end])
        att = attend(q, k, v, bias).split(sizes, dim=1)
        for i, a in zip(active, att, strict=True):
            layer = layers[i]
            out = layer.self_attn.o_proj(a)
            if observer is not None:
                observer.o_proj(li, i, out, mask_rows_valid(mask, sizes, active, i))
            h = gated_residual(hiddens[i], out, gates[i])
            hiddens[i] = layer.mlp_block(h, conds[i])
    outputs = [None] * len(hiddens)
    if final_outputs:
        for i in active:
            outputs[i], _ = towers[i].norm(hiddens[i], conds[i])
    return outputs, (stored if store else None)
