"""State / action normalization from a checkpoint's dataset statistics.

pi0.5 uses quantiles (q01, q99 -> [-1, 1], no clipping); pi0 uses mean / std. Statistics are
read from lerobot's `*normalizer_processor.safetensors` files (`observation.state.q01`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantvla_ros.models.statistics import ACTION_KEY, STATE_KEY

_EPS = 1e-8


@dataclass
class Normalizer:
    """Dataset statistics that map robot state into model space and actions back."""

    mode: str  # "quantiles" | "mean_std" | "identity"
    stats: dict[str, np.ndarray]  # flat lerobot keys, e.g. "action.q01"

    def _pair(self, key: str):
        if self.mode == "quantiles":
            return self.stats[f"{key}.q01"], self.stats[f"{key}.q99"]
        return self.stats[f"{key}.mean"], self.stats[f"{key}.std"]

    def dim(self, key: str) -> int | None:
        """Return the robot's vector length for ``key``; None in identity mode."""
        if self.mode == "identity":
            return None
        return int(self._pair(key)[0].shape[-1])

    def _normalize(self, key: str, values) -> np.ndarray:
        values = np.asarray(values, dtype=np.float32)
        if self.mode == "identity":
            return values
        a, b = self._pair(key)
        if self.mode == "quantiles":
            return (2.0 * (values - a) / np.maximum(b - a, _EPS) - 1.0).astype(np.float32)
        return ((values - a) / (b + _EPS)).astype(np.float32)

    def normalize_state(self, state: np.ndarray) -> np.ndarray:
        """Map a raw state to model space (quantiles to [-1, 1], or z-scores)."""
        return self._normalize(STATE_KEY, state)

    def normalize_actions(self, actions: np.ndarray) -> np.ndarray:
        """Map raw actions [..., A] to model space (training targets); inverse of the next."""
        return self._normalize(ACTION_KEY, actions)

    def unnormalize_actions(self, actions: np.ndarray) -> np.ndarray:
        """Actions [..., A]: only the first len(stats) dims are the robot's."""
        if self.mode == "identity":
            return actions
        a, b = self._pair(ACTION_KEY)
        actions = actions[..., : a.shape[-1]]
        if self.mode == "quantiles":
            return (actions + 1.0) * (b - a) / 2.0 + a
        return actions * (b + _EPS) + a

    def to_tensors(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Statistics vectors and the mode (for an artifact's safetensors file)."""
        return dict(self.stats), {"mode": self.mode}

    @classmethod
    def identity(cls) -> Normalizer:
        """Return a normalizer that passes state and actions through unchanged."""
        return cls("identity", {})

    @classmethod
    def from_stats(cls, stats: dict[str, np.ndarray], variant: str) -> Normalizer:
        """Pick the mode the variant trains with; fall back to what the statistics hold."""
        want = ["quantiles", "mean_std"] if variant == "pi05" else ["mean_std", "quantiles"]
        needed = {"quantiles": ("q01", "q99"), "mean_std": ("mean", "std")}
        for mode in want:
            keys = [f"{k}.{s}" for k in (STATE_KEY, ACTION_KEY) for s in needed[mode]]
            if all(k in stats for k in keys):
                return cls(mode, {k: np.asarray(stats[k], np.float32) for k in keys})
        return cls.identity()
