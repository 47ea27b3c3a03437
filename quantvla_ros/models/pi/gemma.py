"""Gemma towers and the joint (mixture-of-transformers) forward of pi0 / pi0.5.

In every layer each tower projects its own tokens with its own weights; the attention then
runs once over the concatenation, so action tokens (expert) see image/language tokens
(backbone) through shared keys and values.
"""

from __future__ import annotations

import itertools
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from quantvla_ros.models.pi.attention import (
    TORCH_OPS,
    AttentionContext,
    KVCache,
    TorchOps,
    attention_context,
)
from quantvla_ros.models.pi.config import GemmaConfig
from quantvla_ros.models.pi.layers import (
    AdaRMSNorm,
    Attention,
    AttentionInput,
    GeGLU,
    MLPBlock,
    RMSNorm,
    attend,
)
from quantvla_ros.models.rope import apply_rope

__all__ = ["AttentionObserver", "GemmaLayer", "GemmaTower", "KVCache", "joint_forward",
           "never_executed"]


class GemmaLayer(nn.Module):
    """One decoder layer of a tower: its modules under lerobot's names, and two blocks.

    `joint_forward` calls only the blocks and `self_attn.o_proj`: `attention_input`
    (`AttentionInput`: input norm + q/k/v) and `mlp_block` (`MLPBlock`: post-attention
    norm + GeGLU + residual). The float blocks built here view the layer's registered modules,
    so parameter names and state-dict keys are `input_layernorm.*`, `self_attn.*_proj.*`,
    `post_attention_layernorm.*` and `mlp.*_proj.*`. `swap_attention_input` /
    `swap_mlp_block` install a replacement block (e.g. quantized, quant/pi_fused.py).
    """

    def __init__(self, cfg: GemmaConfig, adaptive: bool, kv_only: bool = False):
        """Build the layer of `cfg`; `adaptive` selects pi0.5's time-conditioned norms.

        A `kv_only` layer has only the input norm and k/v projections: no query, attention
        output or MLP (nothing reads them), and no `mlp_block`.
        """
        super().__init__()
        norm = AdaRMSNorm if adaptive else RMSNorm
        self.kv_only = kv_only
        self.input_layernorm = norm(cfg.width, cfg.eps)
        self.self_attn = Attention(cfg.width, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                                   kv_only=kv_only)
        self.attention_input: nn.Module = AttentionInput(self.input_layernorm, self.self_attn)
        if not kv_only:
            self.post_attention_layernorm = norm(cfg.width, cfg.eps)
            self.mlp = GeGLU(cfg.width, cfg.mlp_dim)
            self.mlp_block: nn.Module = MLPBlock(self.post_attention_layernorm, self.mlp)

    def swap_attention_input(self, block: nn.Module) -> None:
        """Replace the input norm + q/k/v by `block`, which keeps `AttentionInput`'s contract.

        The block owns its tensors; the float modules it replaces leave the layer (no second
        copy is kept), so `self_attn` then holds only `o_proj`.
        """
        if isinstance(self.attention_input, AttentionInput):
            del self.input_layernorm
            for name in ("q_proj", "k_proj", "v_proj"):
                if hasattr(self.self_attn, name):
                    delattr(self.self_attn, name)
        self.attention_input = block

    def swap_mlp_block(self, block: nn.Module) -> None:
        """Replace the post-attention norm + MLP by `block`, which keeps `MLPBlock`'s contract.

        The block owns its tensors (or takes over the layer's modules it still uses); the float
        modules it replaces leave the layer.
        """
        if isinstance(self.mlp_block, MLPBlock):
            del self.post_attention_layernorm, self.mlp
        self.mlp_block = block


class GemmaTower(nn.Module):
    """Layers and final norm of one tower; the backbone also owns the token embedding.

    A tower built with `outputs=False` is read only through its keys and values (pi0's
    backbone: the action expert attends to the prefix K/V, nothing reads the prefix hidden
    states). Its last layer is `kv_only` and it has no final norm, so the last layer's q/o
    projections and MLP, never executed, are neither built, loaded, quantized nor stored.
    """

    def __init__(self, cfg: GemmaConfig, adaptive: bool, vocab_size: int | None = None,
                 outputs: bool = True):
        """Build `cfg.depth` layers; `vocab_size` adds the token embedding (backbone)."""
        super().__init__()
        self.cfg, self.outputs = cfg, outputs
        if vocab_size is not None:
            self.embed_tokens = nn.Embedding(vocab_size, cfg.width)
        self.layers = nn.ModuleList(
            GemmaLayer(cfg, adaptive, kv_only=not outputs and i == cfg.depth - 1)
            for i in range(cfg.depth))
        if outputs:
            self.norm = (AdaRMSNorm if adaptive else RMSNorm)(cfg.width, cfg.eps)


def never_executed(prefix: str, cfg: GemmaConfig) -> tuple[str, ...]:
    """Return the modules a full `outputs=False` tower at `prefix` has that never run.

    Checkpoints (lerobot writes the full towers) and older artifacts hold these tensors;
    the loaders skip them.
    """
    last = f"{prefix}.layers.{cfg.depth - 1}"
    return (f"{last}.self_attn.q_proj", f"{last}.self_attn.o_proj",
            f"{last}.post_attention_layernorm", f"{last}.mlp", f"{prefix}.norm")


@runtime_checkable
class AttentionObserver(Protocol):
    """What `joint_forward` reports to an observer (calibration: quant/stats.StatsCollector).

    Towers are numbered as in `joint_forward`'s lists (0 backbone, 1 expert); layers from 0.
    Only active towers are reported, and nothing for a layer whose queries do not run (the
    last layer of a tower built with `outputs=False`). The observer must not modify the
    tensors it is given.
    """

    step: int | None
    """Set by `PiModel.sample_actions` / `denoise_loop`: None for the prefix, k for step k."""

    def attention(self, layer: int, tower: int, q: torch.Tensor, k: torch.Tensor,
                  mask_rows: torch.Tensor) -> None:
        """See one tower's attention inputs in one layer, before the softmax.

        q [B, H, S_i, D] are the tower's post-RoPE queries; k [B, KVH, T, D] all post-RoPE
        keys it attends over (cached prefix, then every tower's new tokens); mask_rows
        [B, S_i, T] is the boolean mask of its query rows (True = may attend).
        """

    def tokens(self, tower: int, valid_rows: torch.Tensor) -> None:
        """See which of a tower's new token rows are real, before any layer runs.

        valid_rows [B, S_i] is True for rows that attend to anything (not padding). The
        default ignores it; a recorder of linear inputs uses it to drop padding rows.
        """

    def o_proj(self, layer: int, tower: int, out: torch.Tensor,
               valid_rows: torch.Tensor) -> None:
        """See one tower's attention output projection out [B, S_i, W] in one layer.

        valid_rows [B, S_i] is True for query rows that attend to anything (not padding).
        """


def joint_forward(
    towers: list[GemmaTower],
    hiddens: list[torch.Tensor | None],
    conds: list,
    positions: torch.Tensor | None,
    mask: torch.Tensor | None,
    past: KVCache | None = None,
    store: bool = False,
    observer: AttentionObserver | None = None,
    *,
    ctx: AttentionContext | None = None,
    room: int = 0,
    ops: TorchOps = TORCH_OPS,
):
    """Run all layers over the towers' tokens.

    hiddens[i] is tower i's input [B, S_i, W_i] or None (tower idle); conds[i] its adaRMS
    condition [B, W_i], a `StepCondition` or None; positions [B, sum S_i] are RoPE positions
    of the new tokens; mask [B, sum S_i, P + sum S_i] is boolean over [past keys, new keys];
    `ctx` (`attention_context`) replaces both when the caller reuses one. Returns (outputs
    after the final norms, None for towers built with `outputs=False` or idle; KVCache of
    the new keys if `store`, with `room` free positions after them). New keys and values go
    in place into `past` when it has room, else are concatenated. In the last layer a tower
    without outputs only adds its keys and values: when no active tower has outputs (a
    prefill) the loop ends there. Each block's residual add is deferred into the next norm
    (`add_residual`). An `observer` (calibration, see `AttentionObserver`) sees each tower's
    post-RoPE queries with all keys and the mask rows, and each tower's o_proj output, for
    every layer whose queries run. `ops` are the float ops (models/attention.TorchOps).
    """
    active = [i for i, h in enumerate(hiddens) if h is not None]
    hiddens = list(hiddens)
    ref = towers[active[0]].cfg
    dtype = hiddens[active[0]].dtype
    ctx = ctx or attention_context(ref, positions, mask, dtype)
    mask = ctx.mask
    sizes = [hiddens[i].shape[1] for i in active]
    ends = list(itertools.accumulate(sizes))
    rows = {i: (end - size, end) for i, size, end in zip(active, sizes, ends, strict=True)}
    if observer is not None:
        for i in active:
            observer.tokens(i, mask[:, slice(*rows[i])].any(-1))
    new, batch = ends[-1], hiddens[active[0]].shape[0]
    in_place = past is not None and past.has_room(new)
    start = past.length if in_place else 0
    stored = KVCache([], [], new if room else None)
    res: dict[int, tuple | None] = dict.fromkeys(active)
    depth = len(towers[active[0]].layers)
    for li in range(depth):
        layers = {i: towers[i].layers[li] for i in active}
        # towers whose queries run in this layer: all, except in the last layer
        query = [i for i in active if li < depth - 1 or towers[i].outputs]
        qs, ks, vs, gates = [], [], [], {}
        for i in active:
            block = layers[i].attention_input
            if i in query:
                hiddens[i], q, k, v, gates[i] = block.project(hiddens[i], res[i], conds[i])
                qs.append(q)
            else:
                k, v = block.project_kv(hiddens[i], res[i], conds[i])
            ks.append(k)
            vs.append(v)
        k_out = v_out = None
        if in_place:
            k_out = past.keys[li][:, :, start:start + new]
            v_out = past.values[li][:, :, start:start + new]
        elif store and room:
            shape = (batch, ref.num_kv_heads, new + room, ref.head_dim)
            stored.keys.append(ks[0].new_empty(shape))
            stored.values.append(vs[0].new_empty(shape))
            k_out, v_out = stored.keys[-1][:, :, :new], stored.values[-1][:, :, :new]
        if len(active) == 1:
            q, k, v = ops.rope_qkv(qs[0] if qs else None, ks[0], vs[0], ctx.cos, ctx.sin,
                                   k_out, v_out)
        else:  # several towers (the reference path, training): concatenated, plain torch
            q, k, v = TORCH_OPS.rope_qkv(None, torch.cat(ks, 2), torch.cat(vs, 2), ctx.cos,
                                         ctx.sin, k_out, v_out)
        if store and not room:
            stored.keys.append(k)
            stored.values.append(v)
        if in_place:
            k = past.keys[li][:, :, :start + new]
            v = past.values[li][:, :, :start + new]
        elif past is not None:
            k = torch.cat([past.keys[li], k], 2)
            v = torch.cat([past.values[li], v], 2)
        if not query:
            break
        q_bias, q_mask, folded = ctx.bias, mask, ctx.folded
        if q is None:  # several towers: rotate the queries of those that run
            q_cos, q_sin = ctx.cos, ctx.sin
            if query != active:
                pick = torch.cat([torch.arange(*rows[i], device=mask.device) for i in query])
                q_cos, q_sin = ctx.cos[:, :, pick], ctx.sin[:, :, pick]
                q_bias, q_mask, folded = ctx.bias[:, :, pick], mask[:, pick], None
            q = apply_rope(torch.cat(qs, 2), q_cos, q_sin)
        q_sizes = [sizes[active.index(i)] for i in query]
        if observer is not None:
            q_ends = itertools.accumulate(q_sizes)
            for i, size, end in zip(query, q_sizes, q_ends, strict=True):
                observer.attention(li, i, q[:, :, end - size:end], k, q_mask[:, end - size:end])
        att = attend(q, k, v, q_bias, folded).split(q_sizes, dim=1)
        for i, a in zip(query, att, strict=True):
            layer = layers[i]
            out = layer.self_attn.o_proj(a)
            if observer is not None:
                observer.o_proj(li, i, out, mask[:, slice(*rows[i])].any(-1))
            hiddens[i], res[i] = layer.mlp_block.deferred(hiddens[i], (out, gates[i]), conds[i])
    outputs = [None] * len(hiddens)
    for i in active:
        if towers[i].outputs:
            _, outputs[i], _ = towers[i].norm.add_forward(hiddens[i], res[i], conds[i])
    return outputs, (stored if store else None)
