"""pi0 and pi0.5 flow-matching policies: one module tree, one code path for every size.

Top-level module names are what the quantizer selects on: `vision`, `projector`, `backbone`,
`expert`, and the small float heads (`action_in_proj`, `action_out_proj`, time / state MLPs).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from quantvla_ros.models.config import PiConfig
from quantvla_ros.models.gemma import (
    AttentionObserver,
    GemmaTower,
    KVCache,
    joint_forward,
    never_executed,
)
from quantvla_ros.models.siglip import SiglipVision


@functools.lru_cache(maxsize=32)
def _block_mask_cached(ar: tuple[int, ...], device: str) -> torch.Tensor:
    blocks = torch.tensor(ar).cumsum(0)
    return (blocks[None, :] <= blocks[:, None]).to(device)


def block_mask(ar: list[int], device) -> torch.Tensor:
    """Pattern from openpi's autoregressive markers: i sees j iff block(j) <= block(i).

    Cached per device so a CUDA-graph capture performs no host-to-device copy.
    """
    return _block_mask_cached(tuple(ar), str(torch.device(device)))


@functools.lru_cache(maxsize=8)
def _flow_times_cached(times: tuple[float, ...], device: str) -> torch.Tensor:
    return torch.tensor(times, dtype=torch.float32).to(device)


def joint_mask(prefix_valid: torch.Tensor, suffix_ar: list[int]):
    """Boolean [B, P+S, P+S] mask over [prefix, suffix] and the validity [B, P+S].

    Prefix tokens see every valid prefix token and no suffix token; suffix tokens see the
    valid prefix and the suffix as `suffix_ar` allows.
    """
    b, p = prefix_valid.shape
    dev = prefix_valid.device
    ones = torch.ones(b, len(suffix_ar), dtype=torch.bool, device=dev)
    valid = torch.cat([prefix_valid, ones], 1)
    pattern = block_mask([0] * p + list(suffix_ar), dev)[None]
    return pattern & valid[:, None, :] & valid[:, :, None], valid


def time_embedding(t: torch.Tensor, dim: int, min_period: float, max_period: float):
    """Sinusoidal embedding [B, dim] of flow time t [B], computed in float64 as openpi does."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    angle = (2 * math.pi / period)[None, :] * t.double()[:, None]
    return torch.cat([angle.sin(), angle.cos()], dim=1)


class PiModel(nn.Module):
    """A pi0 or pi0.5 policy network (`cfg.variant`): vision, backbone and action expert."""

    def __init__(self, cfg: PiConfig):
        """Build the module tree of `cfg` (weights uninitialized: see models/build.py)."""
        super().__init__()
        self.cfg = cfg
        # Set by calibration (quant/balance.run_batches) to see attention logits and o_proj
        # outputs; the denoising loop sets its `step`.
        self.observer: AttentionObserver | None = None
        e = cfg.expert.width
        self.vision = SiglipVision(cfg.vision)
        self.projector = nn.Linear(cfg.vision.width, cfg.backbone.width)
        # Only the prefix K/V leaves the backbone: its last layer's q/o/MLP and final norm
        # never run, so they are not built (GemmaTower, never_executed_modules).
        self.backbone = GemmaTower(cfg.backbone, adaptive=False, vocab_size=cfg.vocab_size,
                                   outputs=False)
        self.expert = GemmaTower(cfg.expert, adaptive=cfg.variant == "pi05")
        self.action_in_proj = nn.Linear(cfg.action_dim, e)
        self.action_out_proj = nn.Linear(e, cfg.action_dim)
        if cfg.variant == "pi05":
            self.time_mlp_in = nn.Linear(e, e)
            self.time_mlp_out = nn.Linear(e, e)
        else:
            self.state_proj = nn.Linear(cfg.state_dim, e)
            self.action_time_mlp_in = nn.Linear(2 * e, e)
            self.action_time_mlp_out = nn.Linear(e, e)

    def never_executed_modules(self) -> tuple[str, ...]:
        """Names of modules a full-size checkpoint holds that this model never runs."""
        return never_executed("backbone", self.cfg.backbone)

    def never_executes(self, name: str) -> bool:
        """Return True if ``name`` (a module or a tensor) lies in a never-executed module."""
        return any(name == m or name.startswith(m + ".") for m in self.never_executed_modules())

    @property
    def towers(self) -> list[GemmaTower]:
        """The backbone and the expert, in `joint_forward`'s tower order."""
        return [self.backbone, self.expert]

    # ---- prefix: images + language -------------------------------------------------------
    def embed_prefix(self, images, image_masks, tokens, token_masks):
        """Embed images [B, N, 3, H, W] in [-1, 1], image_masks [B, N] bool, tokens/masks [B, L].

        Returns embeddings [B, N*T + L, W] and the validity mask [B, N*T + L].
        """
        b, n = images.shape[:2]
        img = self.projector(self.vision(images.flatten(0, 1)))
        t = img.shape[1]
        img = img.view(b, n * t, -1)
        img_valid = image_masks[:, :, None].expand(b, n, t).reshape(b, n * t)
        lang = self.backbone.embed_tokens(tokens)
        lang = lang * torch.tensor(math.sqrt(lang.shape[-1]), dtype=lang.dtype)
        return torch.cat([img.to(lang.dtype), lang], 1), torch.cat([img_valid, token_masks], 1)

    def prefill(self, prefix_embs, prefix_valid) -> KVCache:
        """Run the backbone over the prefix once; keys/values are reused by every step."""
        positions = prefix_valid.long().cumsum(1) - 1
        mask = prefix_valid[:, None, :] & prefix_valid[:, :, None]
        _, cache = joint_forward(
            self.towers, [prefix_embs, None], [None, None], positions, mask,
            store=True, observer=self.observer,
        )
        return cache

    # ---- suffix: noisy actions + time (+ state for pi0) -----------------------------------
    def embed_suffix(self, x_t, t, state=None):
        """Return (suffix embeddings, adaRMS condition or None, autoregressive markers)."""
        cfg = self.cfg
        dtype = self.action_in_proj.weight.dtype
        temb = time_embedding(t, cfg.expert.width, cfg.min_period, cfg.max_period).to(dtype)
        act = self.action_in_proj(x_t.to(dtype))
        if cfg.variant == "pi05":
            cond = F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(temb))))
            return act, cond, [1] + [0] * (act.shape[1] - 1)
        if state is None:
            raise ValueError("pi0 needs the normalized state vector")
        fused = torch.cat([act, temb[:, None].expand_as(act)], -1)
        act = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(fused)))
        state_tok = self.state_proj(state.to(dtype))[:, None]
        return torch.cat([state_tok, act], 1), None, [1, 1] + [0] * (act.shape[1] - 1)

    def denoise_step(self, cache: KVCache, prefix_valid, x_t, t, state=None):
        """Velocity v_t [B, H, A] for noisy actions x_t at times t [B], prefix from the cache."""
        embs, cond, ar = self.embed_suffix(x_t, t, state)
        b, s = embs.shape[:2]
        positions = prefix_valid.long().sum(1, keepdim=True) + torch.arange(s, device=embs.device)
        mask = torch.cat([
            prefix_valid[:, None, :].expand(b, s, -1),
            block_mask(ar, embs.device)[None].expand(b, s, s),
        ], 2)
        (_, out), _ = joint_forward(
            self.towers, [None, embs], [None, cond], positions, mask, cache,
            observer=self.observer,
        )
        return self.action_out_proj(out[:, -self.cfg.action_horizon:])

    def denoise_uncached(self, prefix_embs, prefix_valid, x_t, t, state=None):
        """Compute v_t on the reference path: prefix and suffix through every layer, no cache."""
        embs, cond, ar = self.embed_suffix(x_t, t, state)
        mask, valid = joint_mask(prefix_valid, ar)
        positions = valid.long().cumsum(1) - 1
        (_, out), _ = joint_forward(
            self.towers, [prefix_embs, embs], [None, cond], positions, mask
        )
        return self.action_out_proj(out[:, -self.cfg.action_horizon:])

    def flow_times(self, num_steps: int) -> list[float]:
        """t_k = 1 + k*dt in double, dt = -1/num_steps: 1.0, 0.9, ..., 0.1 for 10 steps."""
        dt = -1.0 / num_steps
        return [1.0 + k * dt for k in range(num_steps)]

    @torch.no_grad()
    def sample_actions(self, images, image_masks, tokens, token_masks, noise, state=None,
                       num_steps: int | None = None):
        """Integrate the flow from noise at t=1 to t=0 with Euler steps -> actions [B, H, A]."""
        num_steps = num_steps or self.cfg.num_steps
        embs, valid = self.embed_prefix(images, image_masks, tokens, token_masks)
        if self.observer is not None:
            self.observer.step = None
        cache = self.prefill(embs, valid)
        return self.denoise_loop(cache, valid, noise, state, num_steps)

    def denoise_loop(self, cache, prefix_valid, noise, state, num_steps):
        """Run `num_steps` Euler steps from noise (t=1) to actions (t=0) over a prefilled cache.

        Sets the observer's `step` to k before step k.
        """
        dt = -1.0 / num_steps
        x = noise.float()
        times = _flow_times_cached(tuple(self.flow_times(num_steps)), str(x.device))
        for k in range(num_steps):
            if self.observer is not None:
                self.observer.step = k
            t = times[k].expand(x.shape[0])
            x = x + dt * self.denoise_step(cache, prefix_valid, x, t, state).float()
        return x
