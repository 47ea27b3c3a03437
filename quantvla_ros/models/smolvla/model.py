"""SmolVLA: SmolVLM2 prefix (images, prompt, state) once, then the expert's flow steps.

Follows lerobot 0.6.1's `VLAFlowMatching` with its KV cache (use_cache, attention_mode
"cross_attn"): the backbone runs the prefix (images and prompt attend to each other, the
state token to everything before it) and keeps every layer's RoPE'd keys and values. At
each Euler step the action tokens (causal among themselves) pass through the expert: a layer
paired with a self-attention backbone layer attends to [prefix K/V; its own K/V], one paired
with a cross-attention layer projects the backbone's cached keys / values through its own
k / v and attends to those only, its queries at positions 0..H-1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from quantvla_ros.models.smolvla.config import SmolVLAConfig
from quantvla_ros.models.smolvla.layers import (
    Connector,
    Layer,
    RMSNorm,
    Vision,
    apply_rope,
    attend,
    expand_kv,
)


def time_embedding(t: torch.Tensor, dim: int, min_period: float, max_period: float):
    """Sine-cosine embedding [B, dim] of flow times t [B], computed in float64 (openpi's)."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    angle = (2 * math.pi / period)[None, :] * t[:, None].double()
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)


def prefix_mask(valid: torch.Tensor, ar: torch.Tensor) -> torch.Tensor:
    """Block-causal mask [B, L, L]: i sees valid j with cumsum(ar)[j] <= cumsum(ar)[i]."""
    c = torch.cumsum(ar, dim=1)
    return (c[:, None, :] <= c[:, :, None]) & valid[:, None, :] & valid[:, :, None]


class SmolVLAModel(nn.Module):
    """Images [B, N, 3, S, S], tokens, state [B, state_dim], noise -> actions [B, H, A]."""

    def __init__(self, cfg: SmolVLAConfig):
        """Build the module tree of `cfg` (weights uninitialized: see models/build.py)."""
        super().__init__()
        self.cfg = cfg
        # Set by calibration (ATM / OHB) to see the expert's attentions; `step` is set per
        # flow step by `sample_actions`.
        self.observer = None
        b, e = cfg.backbone, cfg.expert
        self.vision = Vision(cfg.vision)
        self.connector = Connector(cfg.vision.width, b.width, cfg.scale_factor)
        self.backbone = nn.Module()
        self.backbone.embed_tokens = nn.Embedding(cfg.vocab_size, b.width)
        # Only the prefix K/V leaves the backbone: its last layer's q / o / MLP and its final
        # norm never run, so they are not built (never_executed_modules).
        self.backbone.layers = nn.ModuleList(
            Layer(b, kv_only=i == b.depth - 1) for i in range(b.depth))
        kv = b.num_kv_heads * b.head_dim
        self.expert = nn.Module()
        self.expert.layers = nn.ModuleList(
            Layer(e, kv_in=kv if cfg.expert_reads_backbone_kv(i) else None)
            for i in range(e.depth))
        self.expert.norm = RMSNorm(e.width, e.eps)
        self.state_proj = nn.Linear(cfg.state_dim, b.width)
        self.action_in_proj = nn.Linear(cfg.action_dim, e.width)
        self.action_out_proj = nn.Linear(e.width, cfg.action_dim)
        self.action_time_mlp_in = nn.Linear(2 * e.width, e.width)
        self.action_time_mlp_out = nn.Linear(e.width, e.width)

    # ---- what a lerobot checkpoint holds that never runs -----------------------------------
    def never_executed_modules(self) -> tuple[str, ...]:
        """Names of modules a lerobot checkpoint holds that this model never runs."""
        last = f"backbone.layers.{self.cfg.backbone.depth - 1}"
        return ("lm_head", "backbone.norm", f"{last}.self_attn.q_proj",
                f"{last}.self_attn.o_proj", f"{last}.post_attention_layernorm", f"{last}.mlp")

    def never_executed_params(self) -> int:
        """Return the parameters a full checkpoint holds for the never-run modules.

        lm_head (untied in SmolVLM2), the text model's final norm and the last backbone
        layer's q / o projections, MLP and post-attention norm.
        """
        b = self.cfg.backbone
        q = b.num_heads * b.head_dim
        return self.cfg.vocab_size * b.width + b.width + 2 * q * b.width + \
            3 * b.width * b.mlp_dim + b.width

    def never_executes(self, name: str) -> bool:
        """Return True if ``name`` (a module or a tensor) lies in a never-executed module."""
        return any(name == m or name.startswith(m + ".") for m in self.never_executed_modules())

    def norm_groups(self) -> list[tuple[str, list[str]]]:
        """(norm, the linears reading only its output) per layer, for smoothing.

        A cross-attention expert layer's k / v read the backbone's keys, not its norm.
        """
        groups = []
        for tower in ("backbone", "expert"):
            for i, layer in enumerate(getattr(self, tower).layers):
                p = f"{tower}.layers.{i}"
                cross = tower == "expert" and self.cfg.expert_reads_backbone_kv(i)
                reads = ("k", "v") if layer.kv_only else ("q",) if cross else ("q", "k", "v")
                groups.append((f"{p}.input_layernorm", [f"{p}.self_attn.{x}_proj" for x in reads]))
                if not layer.kv_only:
                    groups.append((f"{p}.post_attention_layernorm",
                                   [f"{p}.mlp.{x}_proj" for x in ("gate", "up")]))
        return groups

    # ---- prefix ------------------------------------------------------------------------------
    def embed_prefix(self, images, image_masks, tokens, token_masks, state):
        """Return (embeddings [B, P, W], valid [B, P], block-causal mask [B, P, P]).

        Image and language embeddings are scaled by sqrt(width), as lerobot does; the state
        token comes last and only it sees itself (images and prompt do not see the state).
        """
        b, n = images.shape[:2]
        width = self.cfg.backbone.width
        dtype = self.backbone.embed_tokens.weight.dtype
        px = images.flatten(0, 1).to(self.vision.embeddings.patch_embedding.weight.dtype)
        img = self.connector(self.vision(px))
        img = img * torch.tensor(width**0.5, dtype=img.dtype, device=img.device)
        t = img.shape[1]
        lang = self.backbone.embed_tokens(tokens) * math.sqrt(width)
        st = self.state_proj(state.to(self.state_proj.weight.dtype))[:, None]
        embs = torch.cat([img.reshape(b, n * t, width).to(dtype), lang.to(dtype),
                          st.to(dtype)], dim=1)
        valid = torch.cat([image_masks.bool().repeat_interleave(t, dim=1), token_masks.bool(),
                           torch.ones(b, 1, dtype=torch.bool, device=tokens.device)], dim=1)
        ar = torch.zeros_like(valid, dtype=torch.long)
        ar[:, -1] = 1
        return embs, valid, prefix_mask(valid, ar)

    def prefill(self, embs, valid, mask) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Run the backbone over the prefix; return each layer's (RoPE'd keys, values)."""
        pos = torch.cumsum(valid.long(), dim=1) - 1
        theta, cache, x = self.cfg.rope_theta, [], embs
        for layer in self.backbone.layers:
            a = layer.self_attn
            h = layer.input_layernorm(x)
            k = apply_rope(a.heads(a.k_proj(h)), pos, theta)
            v = a.heads(a.v_proj(h))
            cache.append((k, v))
            if not layer.kv_only:
                q = apply_rope(a.heads(a.q_proj(h)), pos, theta)
                x = layer.finish(x, a.o_proj(attend(q, k, v, mask)))
        return cache

    # ---- suffix: the expert's flow step --------------------------------------------------------
    def embed_suffix(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Noisy actions and flow time -> action tokens [B, H, expert width]."""
        a = self.action_in_proj(x_t.to(self.action_in_proj.weight.dtype))
        te = time_embedding(t, self.cfg.expert.width, self.cfg.min_period, self.cfg.max_period)
        te = te.to(a.dtype)[:, None, :].expand_as(a)
        h = F.silu(self.action_time_mlp_in(torch.cat([a, te], dim=2)))
        return self.action_time_mlp_out(h)

    def denoise_step(self, cache, valid: torch.Tensor, x_t: torch.Tensor,
                     t: torch.Tensor) -> torch.Tensor:
        """Return the velocity [B, H, A] (float32) at x_t, flow time t [B]."""
        cfg, theta = self.cfg, self.cfg.rope_theta
        x = self.embed_suffix(x_t, t)
        b, s = x.shape[:2]
        p = valid.shape[1]
        pos = valid.long().sum(-1, keepdim=True) + torch.arange(s, device=x.device)[None]
        seen = valid[:, None, :].expand(b, s, p)
        causal = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()
        self_mask = torch.cat([seen, causal[None].expand(b, s, s)], dim=2)
        for i in range(cfg.backbone.depth):
            j = cfg.expert_layer_of(i)
            if j is None:
                continue  # the expert skips this backbone layer (its tokens pass through)
            layer = self.expert.layers[j]
            a = layer.self_attn
            h = layer.input_layernorm(x)
            q = a.heads(a.q_proj(h))
            ck, cv = cache[i]
            if cfg.is_cross(i):
                # the cached keys are already RoPE'd: projected as they are, not rotated again
                k = a.heads(a.k_proj(ck.reshape(b, p, -1)))
                v = a.heads(a.v_proj(cv.reshape(b, p, -1)))
                q = apply_rope(q, pos - pos.min(dim=1, keepdim=True).values, theta)
                mask = seen
            else:
                q = apply_rope(q, pos, theta)
                k = torch.cat([ck, apply_rope(a.heads(a.k_proj(h)), pos, theta)], dim=1)
                v = torch.cat([cv, a.heads(a.v_proj(h))], dim=1)
                mask = self_mask
            proj = a.o_proj(attend(q, k, v, mask))
            if self.observer is not None:  # ATM / OHB statistics of this expert attention
                self.observer.attention(j, q, expand_kv(k, a.num_heads), mask, proj)
            x = layer.finish(x, proj)
        out = self.expert.norm(x)
        return self.action_out_proj(out.to(self.action_out_proj.weight.dtype)).float()

    def flow_times(self, num_steps: int) -> list[float]:
        """Euler times 1, 1 - 1/n, ..., 1/n (t = 1 is noise)."""
        return [1.0 + i * (-1.0 / num_steps) for i in range(num_steps)]

    def denoise_loop(self, cache, valid, noise: torch.Tensor, num_steps: int) -> torch.Tensor:
        """Integrate from noise (t = 1) to actions (t = 0) in `num_steps` Euler steps."""
        dt, x = -1.0 / num_steps, noise.float()
        for step, t in enumerate(self.flow_times(num_steps)):
            if self.observer is not None:
                self.observer.step = step
            tt = torch.tensor(t, dtype=torch.float32, device=x.device).expand(x.shape[0])
            x = x + dt * self.denoise_step(cache, valid, x, tt)
        return x

    @torch.no_grad()
    def sample_actions(self, images, image_masks, tokens, token_masks, state, noise,
                       num_steps: int | None = None) -> torch.Tensor:
        """Return normalized actions [B, H, A] from noise [B, H, A] (float32)."""
        embs, valid, mask = self.embed_prefix(images, image_masks, tokens, token_masks, state)
        cache = self.prefill(embs, valid, mask)
        return self.denoise_loop(cache, valid, noise, num_steps or self.cfg.num_steps)


@torch.no_grad()
def init_random_weights(model: SmolVLAModel, generator: torch.Generator) -> None:
    """Seeded random weights: norms at identity, biases 0, other tensors ~ N(0, 0.02)."""
    for module in model.modules():
        if isinstance(module, (RMSNorm, nn.LayerNorm)):
            for name, p in module.named_parameters(recurse=False):
                p.fill_(1.0 if name == "weight" else 0.0)
            continue
        for name, p in module.named_parameters(recurse=False):
            if name == "bias":
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=generator)
