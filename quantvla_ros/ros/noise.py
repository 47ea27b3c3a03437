"""Deterministic flow-matching noise per observation.

The noise of an inference depends only on (seed, observation stamp), not on how many
inferences ran before or were dropped: a replay of the same messages, or an offline run on
the recorded observations, reproduces every published chunk exactly.
"""

from __future__ import annotations

import numpy as np
import torch


def observation_noise(seed: int, stamp_ns: int, horizon: int, action_dim: int) -> torch.Tensor:
    """Return standard normal noise [1, horizon, action_dim] for one observation."""
    state = np.random.SeedSequence([int(seed), int(stamp_ns)]).generate_state(1, np.uint64)[0]
    gen = torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)
    return torch.randn((1, horizon, action_dim), generator=gen)


def policy_noise(policy, seed: int, stamp_ns: int) -> torch.Tensor:
    """Noise shaped for ``policy`` (its action horizon and padded model action dim)."""
    return observation_noise(seed, stamp_ns, policy.cfg.action_horizon, policy.cfg.action_dim)
