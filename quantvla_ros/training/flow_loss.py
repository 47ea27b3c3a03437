"""The pi0.5 flow-matching training loss.

Follows openpi's ``Pi0.compute_loss`` (and lerobot's ``PI05Policy.forward``): time
t ~ Beta(1.5, 1) * 0.999 + 0.001, x_t = t * noise + (1 - t) * actions, target velocity
u = noise - actions, mean squared error of the predicted velocity; steps past an episode's
end are masked out (lerobot's ``action_is_pad``). Sampling integrates the same field from
t = 1 to 0 (``PiModel.denoise_loop``).

The prefix (images + prompt) runs once per batch through the backbone with gradients; its
keys and values are then shared by ``noise_samples`` independent (t, noise) draws of the
action expert. This equals running the joint forward once per draw (prefix tokens never
attend to the suffix) at a fraction of the cost: the prefix is ~25x more tokens.
"""

from __future__ import annotations

import torch

from quantvla_ros.models.pi.gemma import KVCache
from quantvla_ros.models.pi.model import PiModel


def sample_time(batch: int, gen: torch.Generator) -> torch.Tensor:
    """Draw flow times [batch] from Beta(1.5, 1), squeezed into [0.001, 1]."""
    # Beta(a, 1) has CDF x^a: inverse-transform seeded uniforms (Beta.sample takes no
    # generator), x = u^(1/a).
    u = torch.rand(batch, generator=gen)
    return u.pow(1.0 / 1.5) * 0.999 + 0.001


def flow_matching_loss(model: PiModel, batch: dict, gen: torch.Generator,
                       noise_samples: int = 1) -> torch.Tensor:
    """Return the masked mean squared velocity error over ``noise_samples`` draws per frame."""
    embs, valid = model.embed_prefix(batch["images"], batch["image_masks"], batch["tokens"],
                                     batch["token_masks"])
    cache = model.prefill(embs, valid)
    n = noise_samples
    if n > 1:
        cache = KVCache([k.repeat_interleave(n, 0) for k in cache.keys],
                        [v.repeat_interleave(n, 0) for v in cache.values])
        valid = valid.repeat_interleave(n, 0)
    actions = batch["actions"].repeat_interleave(n, 0)
    keep = (~batch["action_pad"]).repeat_interleave(n, 0)
    noise = torch.randn(actions.shape, generator=gen)
    t = sample_time(actions.shape[0], gen)
    x_t = t[:, None, None] * noise + (1.0 - t[:, None, None]) * actions
    v_t = model.denoise_step(cache, valid, x_t, t).float()
    err = (v_t - (noise - actions)).pow(2).mean(-1)
    return (err * keep).sum() / keep.sum().clamp(min=1)
