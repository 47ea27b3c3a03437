"""GR00T's flow-matching action head: per-embodiment encoders, the DiT and the Euler sampler.

Names are NVIDIA's (`action_head.state_encoder.layer1.W`, `action_encoder.W2.b`, ...).
Category-specific weights are stored (num_embodiments, in, out), transposed relative to
nn.Linear, and one slice is picked per sample by its embodiment id.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from quantvla_ros.models.groot.config import ActionHeadConfig
from quantvla_ros.models.groot.dit import DiT, SelfAttentionTransformer


class CategorySpecificLinear(nn.Module):
    """`y = x @ W[id] + b[id]`: one (in, out) weight slice per embodiment."""

    def __init__(self, num_categories: int, in_dim: int, out_dim: int):
        """Build W [C, in, out] and b [C, out]."""
        super().__init__()
        self.W = nn.Parameter(torch.zeros(num_categories, in_dim, out_dim))
        self.b = nn.Parameter(torch.zeros(num_categories, out_dim))

    def forward(self, x: torch.Tensor, embodiment_id: torch.Tensor) -> torch.Tensor:
        """Map x [B, T, in] with each row's slice embodiment_id [B] to [B, T, out]."""
        return torch.bmm(x, self.W[embodiment_id]) + self.b[embodiment_id][:, None]


class CategorySpecificMLP(nn.Module):
    """`layer2(relu(layer1(x)))`, both layers category-specific."""

    def __init__(self, num_categories: int, in_dim: int, hidden: int, out_dim: int):
        """Build layer1 (in -> hidden) and layer2 (hidden -> out)."""
        super().__init__()
        self.layer1 = CategorySpecificLinear(num_categories, in_dim, hidden)
        self.layer2 = CategorySpecificLinear(num_categories, hidden, out_dim)

    def forward(self, x: torch.Tensor, embodiment_id: torch.Tensor) -> torch.Tensor:
        """Apply the MLP with each row's embodiment slices."""
        return self.layer2(F.relu(self.layer1(x, embodiment_id)), embodiment_id)


def action_time_sinusoid(t: torch.Tensor, width: int) -> torch.Tensor:
    """[sin | cos] (sin first) of t * exp(-i ln(10000) / half), half = width / 2.

    t [B, T] holds the discretized integer flow time (0..999) of each action token.
    """
    half = width // 2
    freqs = torch.exp(-torch.arange(half, device=t.device) * (math.log(10_000.0) / half))
    args = t.float()[..., None] * freqs
    return torch.cat([args.sin(), args.cos()], dim=-1)


class MultiEmbodimentActionEncoder(nn.Module):
    """`W3(swish(W2([W1(a) | sinusoid(t)])))`: noisy actions and their time, per embodiment."""

    def __init__(self, action_dim: int, width: int, num_categories: int):
        """Build W1 (action -> width), W2 (2 width -> width), W3 (width -> width)."""
        super().__init__()
        self.width = width
        self.W1 = CategorySpecificLinear(num_categories, action_dim, width)
        self.W2 = CategorySpecificLinear(num_categories, 2 * width, width)
        self.W3 = CategorySpecificLinear(num_categories, width, width)

    def forward(self, actions: torch.Tensor, t: torch.Tensor,
                embodiment_id: torch.Tensor) -> torch.Tensor:
        """Encode actions [B, H, A] at times t [B] to tokens [B, H, width]."""
        a = self.W1(actions, embodiment_id)
        tau = action_time_sinusoid(t[:, None].expand(-1, actions.shape[1]), self.width)
        x = F.silu(self.W2(torch.cat([a, tau.to(a.dtype)], dim=-1), embodiment_id))
        return self.W3(x, embodiment_id)


def flow_times(num_steps: int, buckets: int) -> list[int]:
    """Discretized Euler step times: int(k / N * buckets), k < N (0, 250, 500, 750 at N = 4)."""
    return [int(k / num_steps * buckets) for k in range(num_steps)]


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Return the prompt mask as bool keys [B, L], or None when nothing is padding.

    None keeps an unpadded batch on the unmasked attention path (bit-identical to GR00T).
    """
    if attention_mask is None or bool(attention_mask.bool().all()):
        return None
    return attention_mask.bool()


class FlowMatchingActionHead(nn.Module):
    """VL tokens + state -> a normalized action chunk by flow matching (t = 0 noise, 1 data)."""

    def __init__(self, cfg: ActionHeadConfig):
        """Build vlln, the VL self-attention, encoders, future tokens, DiT and decoder."""
        super().__init__()
        self.cfg = cfg
        c, d = cfg.max_num_embodiments, cfg.input_embedding_dim
        self.vlln = nn.LayerNorm(cfg.backbone_dim, eps=1e-5)
        self.vl_self_attention = SelfAttentionTransformer(cfg)
        self.state_encoder = CategorySpecificMLP(c, cfg.max_state_dim, cfg.hidden_size, d)
        self.action_encoder = MultiEmbodimentActionEncoder(cfg.action_dim, d, c)
        self.action_decoder = CategorySpecificMLP(c, cfg.hidden_size, cfg.hidden_size,
                                                  cfg.action_dim)
        self.future_tokens = nn.Embedding(cfg.num_future_tokens, d)
        self.position_embedding = nn.Embedding(cfg.max_seq_len, d)
        self.model = DiT(cfg)

    def encode_vl(self, backbone_features: torch.Tensor,
                  vl_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Apply vlln, then the VL self-attention: the DiT's cross-attention context [B, L, W]."""
        return self.vl_self_attention(self.vlln(backbone_features), vl_mask)

    def sequence(self, state_tokens: torch.Tensor, actions: torch.Tensor, t: torch.Tensor,
                 embodiment_id: torch.Tensor) -> torch.Tensor:
        """DiT input [B, 1 + F + H, D]: state, future tokens, action tokens + positions."""
        b, h = actions.shape[:2]
        act = self.action_encoder(actions, t, embodiment_id)
        act = act + self.position_embedding.weight[:h][None]
        future = self.future_tokens.weight[None].expand(b, -1, -1)
        return torch.cat([state_tokens, future.to(act.dtype), act], dim=1)

    def velocity(self, vl_embs, state_tokens, actions, t, embodiment_id,
                 vl_mask=None) -> torch.Tensor:
        """Predicted velocity [B, H, A]: the decoder's last H tokens."""
        h = self.model(self.sequence(state_tokens, actions, t, embodiment_id), vl_embs, t,
                       vl_mask)
        return self.action_decoder(h, embodiment_id)[:, -actions.shape[1]:]

    def sample_actions(self, backbone_features: torch.Tensor, state: torch.Tensor,
                       embodiment_id: torch.Tensor, noise: torch.Tensor,
                       num_steps: int | None = None,
                       attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Integrate noise [B, H, A] to normalized actions with forward Euler, dt = 1 / N.

        state is [B, 1, max_state_dim] (normalized, zero-padded); the state tokens and the
        VL context are computed once, the action tokens at every step. `attention_mask`
        [B, L] (the prompt's, 1 = real) keeps left padding out of the VL self-attention and
        the DiT's cross-attention, so a padded row gets its single-run actions; GR00T itself
        never masks there (GROOT.md §7.12), which only a mixed-length batch can tell.
        """
        n = num_steps or self.cfg.num_steps
        vl_mask = padding_mask(attention_mask)
        vl_embs = self.encode_vl(backbone_features, vl_mask)
        state_tokens = self.state_encoder(state.to(vl_embs.dtype), embodiment_id)
        x = noise.to(vl_embs.dtype)
        for step, t_disc in enumerate(flow_times(n, self.cfg.num_timestep_buckets)):
            if self.model.observer is not None:
                self.model.observer.step = step
            t = torch.full((x.shape[0],), t_disc, device=x.device, dtype=torch.long)
            x = x + self.velocity(vl_embs, state_tokens, x, t, embodiment_id, vl_mask) / n
        return x
