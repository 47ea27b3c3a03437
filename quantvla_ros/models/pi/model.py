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

from quantvla_ros.models.pi.attention import TORCH_OPS, AttentionContext, attention_context
from quantvla_ros.models.pi.config import PiConfig
from quantvla_ros.models.pi.gemma import (
    AttentionObserver,
    GemmaLayer,
    GemmaTower,
    KVCache,
    joint_forward,
    never_executed,
)
from quantvla_ros.models.pi.layers import AdaRMSNorm, RMSNorm, StepCondition
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
        # Float ops of joint_forward; a runtime may install fused kernels (runtime/fast_path).
        self.ops = TORCH_OPS
        self._steps_cache: dict = {}  # step_conditions, per (steps, device, dtype)
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

    def never_executed_params(self) -> int:
        """Return the parameter count a full checkpoint holds for the never-run modules.

        The backbone's last layer needs only its input norm and k/v (see GemmaTower); its q/o
        projections, MLP, post-attention norm and the final norm are dropped at load.
        """
        cfg = self.cfg.backbone
        with torch.device("meta"):
            full = GemmaLayer(cfg, adaptive=False)
            kv = GemmaLayer(cfg, adaptive=False, kv_only=True)
            norm = RMSNorm(cfg.width)
        count = sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in kv.parameters())
        return count + sum(p.numel() for p in norm.parameters())

    def never_executes(self, name: str) -> bool:
        """Return True if ``name`` (a module or a tensor) lies in a never-executed module."""
        return any(name == m or name.startswith(m + ".") for m in self.never_executed_modules())

    def norm_groups(self) -> list[tuple[str, list[str]]]:
        """(norm, the linears reading its output) in every Gemma layer, for smoothing.

        A key/value-only layer contributes its input norm with k/v and no MLP group.
        """
        groups = []
        for tower in ("backbone", "expert"):
            for i, layer in enumerate(getattr(self, tower).layers):
                p = f"{tower}.layers.{i}"
                qkv = ("k", "v") if layer.kv_only else ("q", "k", "v")
                groups.append((f"{p}.input_layernorm",
                               [f"{p}.self_attn.{x}_proj" for x in qkv]))
                if not layer.kv_only:
                    groups.append((f"{p}.post_attention_layernorm",
                                   [f"{p}.mlp.{x}_proj" for x in ("gate", "up")]))
        return groups

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

    def prefill(self, prefix_embs, prefix_valid, room: int = 0) -> KVCache:
        """Run the backbone over the prefix once; keys/values are reused by every step.

        `room` reserves that many positions after the prefix in each layer's cache, where a
        denoise step writes its own keys and values in place (use `suffix_len`).
        """
        positions = prefix_valid.long().cumsum(1) - 1
        mask = prefix_valid[:, None, :] & prefix_valid[:, :, None]
        _, cache = joint_forward(
            self.towers, [prefix_embs, None], [None, None], positions, mask,
            store=True, observer=self.observer, room=room, ops=self.ops,
        )
        return cache

    # ---- suffix: noisy actions + time (+ state for pi0) -----------------------------------
    @property
    def suffix_len(self) -> int:
        """Suffix tokens per step: the action horizon (pi0 adds a state token)."""
        return self.cfg.action_horizon + (self.cfg.variant == "pi0")

    def _suffix_ar(self) -> list[int]:
        lead = [1] if self.cfg.variant == "pi05" else [1, 1]
        return lead + [0] * (self.cfg.action_horizon - 1)

    def embed_suffix(self, x_t, t, state=None, step: StepCondition | None = None):
        """Return (suffix embeddings, adaRMS condition or None, autoregressive markers).

        `step` (from `step_conditions`) replaces the time conditioning computed from t: the
        condition returned is then `step` itself, whose modulations the norms look up.
        """
        cfg = self.cfg
        dtype = self.action_in_proj.weight.dtype
        act = self.action_in_proj(x_t.to(dtype))
        if cfg.variant == "pi05":
            return act, step or self._time_condition(t), self._suffix_ar()
        if state is None:
            raise ValueError("pi0 needs the normalized state vector")
        temb = step.temb if step is not None else self._time_embedding(t)
        fused = torch.cat([act, temb[:, None].expand_as(act)], -1)
        act = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(fused)))
        state_tok = self.state_proj(state.to(dtype))[:, None]
        return torch.cat([state_tok, act], 1), None, self._suffix_ar()

    def _time_embedding(self, t):
        cfg = self.cfg
        temb = time_embedding(t, cfg.expert.width, cfg.min_period, cfg.max_period)
        return temb.to(self.action_in_proj.weight.dtype)

    def _time_condition(self, t):
        return F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(self._time_embedding(t)))))

    def step_conditions(self, num_steps: int, device) -> list[StepCondition]:
        """Time conditioning of every flow step, made once per (steps, device) and reused.

        It depends on t only, and the flow times are fixed: pi0.5's condition and every
        adaptive norm's modulation (`dense(cond)`), pi0's time embedding, for batch 1
        (broadcast). Rebuilt when a weight they read changes (training, loading).
        """
        dtype = self.action_in_proj.weight.dtype
        norms = [m for m in self.expert.modules() if isinstance(m, AdaRMSNorm)]
        params = [p for m in (*norms, getattr(self, "time_mlp_in", None),
                              getattr(self, "time_mlp_out", None)) if m is not None
                  for p in m.parameters()]
        key = (num_steps, str(torch.device(device)), dtype)
        stamp = tuple((id(p), p.data_ptr(), p._version, p.dtype) for p in params)
        hit = self._steps_cache.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        times = _flow_times_cached(tuple(self.flow_times(num_steps)), key[1])
        steps = []
        with torch.no_grad():
            for k in range(num_steps):
                t = times[k:k + 1]
                if self.cfg.variant == "pi0":
                    steps.append(StepCondition({}, temb=self._time_embedding(t)))
                    continue
                cond = self._time_condition(t)
                steps.append(StepCondition({n: n.modulation(cond, dtype) for n in norms}))
        self._steps_cache[key] = (stamp, steps)
        return steps

    def suffix_context(self, prefix_valid) -> AttentionContext:
        """RoPE angles and mask of the suffix over [prefix, suffix]: the same for every step."""
        b, s = prefix_valid.shape[0], self.suffix_len
        dev = prefix_valid.device
        positions = prefix_valid.long().sum(1, keepdim=True) + torch.arange(s, device=dev)
        mask = torch.cat([
            prefix_valid[:, None, :].expand(b, s, -1),
            block_mask(self._suffix_ar(), dev)[None].expand(b, s, s),
        ], 2)
        return attention_context(self.cfg.expert, positions, mask,
                                 self.action_in_proj.weight.dtype)

    def _velocity(self, cache: KVCache, ctx: AttentionContext, embs, cond):
        (_, out), _ = joint_forward(
            self.towers, [None, embs], [None, cond], None, None, cache,
            observer=self.observer, ctx=ctx, ops=self.ops,
        )
        return self.action_out_proj(out[:, -self.cfg.action_horizon:])

    def denoise_step(self, cache: KVCache, prefix_valid, x_t, t, state=None):
        """Velocity v_t [B, H, A] for noisy actions x_t at times t [B], prefix from the cache."""
        embs, cond, _ = self.embed_suffix(x_t, t, state)
        return self._velocity(cache, self.suffix_context(prefix_valid), embs, cond)

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
        cache = self.prefill(embs, valid, room=self.suffix_len)
        return self.denoise_loop(cache, valid, noise, state, num_steps)

    def denoise_loop(self, cache, prefix_valid, noise, state, num_steps):
        """Run `num_steps` Euler steps from noise (t=1) to actions (t=0) over a prefilled cache.

        Sets the observer's `step` to k before step k. The suffix's mask and RoPE angles are
        built once, the time conditioning comes precomputed (`step_conditions`), and the
        suffix keys / values go in place into a cache prefilled with room.
        """
        dt = -1.0 / num_steps
        x = noise.float()
        ctx = self.suffix_context(prefix_valid)
        steps = self.step_conditions(num_steps, x.device)
        for k in range(num_steps):
            if self.observer is not None:
                self.observer.step = k
            embs, cond, _ = self.embed_suffix(x, None, state, step=steps[k])
            x = torch.add(x, self._velocity(cache, ctx, embs, cond), alpha=dt)
        return x
