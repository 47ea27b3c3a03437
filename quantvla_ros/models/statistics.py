"""What the layers above read of a policy's statistics, and the stand-in without any.

Each family has its own normalizer class (pi: quantiles / mean-std over lerobot keys; GR00T:
per-key modes); all answer `dim`, `normalize_state`, `unnormalize_actions`, `to_tensors`
and carry a `mode`. A random-weight model has no statistics: `IdentityStatistics`.
"""

from __future__ import annotations

import numpy as np

STATE_KEY, ACTION_KEY = "observation.state", "action"


class IdentityStatistics:
    """No statistics: state and actions pass through; the robot's widths are unknown."""

    mode = "identity"

    def dim(self, key: str) -> None:
        """Return None: without statistics the robot's width of ``key`` is not known."""
        return None

    def normalize_state(self, state) -> np.ndarray:
        """Return the state as float32, unchanged."""
        return np.asarray(state, dtype=np.float32)

    def unnormalize_actions(self, actions: np.ndarray) -> np.ndarray:
        """Return the actions unchanged."""
        return actions

    def to_tensors(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Return no vectors and the mode (an artifact stores no statistics file for it)."""
        return {}, {"mode": self.mode}
