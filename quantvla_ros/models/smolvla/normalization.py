"""SmolVLA's state / action statistics: lerobot's MEAN_STD normalizer (its default mapping).

lerobot 0.6.1 normalizes as (x - mean) / (std + eps) with eps 1e-8 and unnormalizes as
x * std + mean (no eps); images are IDENTITY. Statistics come from its pipeline's
`*normalizer_processor.safetensors` files (flat keys such as `observation.state.mean`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open

from quantvla_ros.models.statistics import ACTION_KEY, STATE_KEY

_EPS = 1e-8
STATS = "normalizer_processor.safetensors"


@dataclass
class SmolVLANormalizer:
    """Mean / std of the robot's state and actions (or the identity without statistics)."""

    mode: str  # "mean_std" | "identity"
    stats: dict[str, np.ndarray]

    def dim(self, key: str) -> int | None:
        """Return the robot's vector length for ``key``; None in identity mode."""
        return None if self.mode == "identity" else int(self.stats[f"{key}.mean"].shape[-1])

    def normalize_state(self, state) -> np.ndarray:
        """Map a raw state to model space (z-scores)."""
        x = np.asarray(state, dtype=np.float32)
        if self.mode == "identity":
            return x
        mean, std = self.stats[f"{STATE_KEY}.mean"], self.stats[f"{STATE_KEY}.std"]
        return ((x - mean) / (std + _EPS)).astype(np.float32)

    def unnormalize_actions(self, actions: np.ndarray) -> np.ndarray:
        """Actions [..., A] -> the robot's first len(stats) dims, in its units."""
        if self.mode == "identity":
            return actions
        mean, std = self.stats[f"{ACTION_KEY}.mean"], self.stats[f"{ACTION_KEY}.std"]
        return actions[..., : mean.shape[-1]] * std + mean

    def to_tensors(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Statistics vectors and the mode (for an artifact's safetensors file)."""
        return dict(self.stats), {"mode": self.mode}

    @classmethod
    def from_stats(cls, stats: dict[str, np.ndarray]) -> SmolVLANormalizer:
        """Keep the mean / std of state and action; identity when any is missing."""
        keys = [f"{k}.{s}" for k in (STATE_KEY, ACTION_KEY) for s in ("mean", "std")]
        if not all(k in stats for k in keys):
            return cls("identity", {})
        return cls("mean_std", {k: np.asarray(stats[k], np.float32) for k in keys})


def read_stats(folder) -> SmolVLANormalizer:
    """Build the normalizer from the folder's lerobot statistics files (identity if none)."""
    stats = {}
    for path in sorted(Path(folder).glob(f"*{STATS}")):
        with safe_open(str(path), "np") as f:
            stats.update({k: f.get_tensor(k) for k in f.keys()})
    return SmolVLANormalizer.from_stats(stats)
