"""Synthetic observations: a seeded, deterministic stand-in for a recorded buffer.

Synthetic observations stand in for a recorded buffer in tests, smoke runs and demos: seeded
and deterministic, images made of a few low-frequency colour waves plus mild noise (so they
are not pure noise), states uniform in [-1.5, 1.5], instructions from a fixed list of robot
tasks, timestamps at 10 Hz. Observation ``i`` depends only on (seed, i, cameras, state_dim), so
a longer run extends a shorter one (bit-identical on one machine; another BLAS may round an
odd pixel differently). Calibrating on them checks plumbing, not accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from quantvla_ros.data.buffer import ObservationBuffer
from quantvla_ros.data.observation import Observation, check_cameras, check_state_dim

DEFAULT_CAMERAS: Mapping[str, tuple[int, int]] = MappingProxyType({"base_0_rgb": (224, 224)})
DEFAULT_STATE_DIM = 8
CONTROL_HZ = 10.0
SYNTHETIC_PREFIX = "synthetic:"
TASKS = (
    "pick up the red block and put it in the bowl",
    "open the top drawer of the cabinet",
    "push the plate to the left side of the table",
    "put the sponge in the sink",
    "close the microwave door",
    "stack the green cup on top of the blue cup",
    "turn on the stove",
    "place the banana on the plate",
)

_WAVES = 4  # low-frequency sinusoids per image
_NOISE_STD = 6.0  # pixel noise, in uint8 levels


class SyntheticBuffer(ObservationBuffer):
    """``n`` synthetic observations with the read API of a calibration buffer (made on demand)."""

    synthetic = True

    def __init__(
        self,
        n: int,
        seed: int = 0,
        cameras: Mapping[str, tuple[int, int]] | None = None,
        state_dim: int = DEFAULT_STATE_DIM,
    ) -> None:
        """Describe ``n`` observations; each is generated when indexed."""
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"synthetic sample count must be a positive int, got {n!r}")
        self.n = n
        self.seed = _check_seed(seed)
        self.cameras = check_cameras(DEFAULT_CAMERAS if cameras is None else cameras)
        self.state_dim = check_state_dim(state_dim)
        self.source = f"{SYNTHETIC_PREFIX}{n} seed {self.seed}"

    def __len__(self) -> int:
        """Return the number of observations."""
        return self.n

    def __getitem__(self, index: int) -> Observation:
        """Generate observation ``index``."""
        i = self._position(index)
        return synthetic_observation(i, self.seed, self.cameras, self.state_dim)

    def __repr__(self) -> str:
        """Return a short description."""
        return f"SyntheticBuffer({self.source!r}, cameras={list(self.cameras)})"

    def summary(self) -> dict[str, Any]:
        """Describe the buffer (``synthetic`` is True, ``source`` is "synthetic:N seed S")."""
        tasks = {_task(_rng(self.seed, i)) for i in range(self.n)}
        summary = self._summary(len(tasks))
        summary["seed"] = self.seed
        return summary


def synthetic_observation(
    index: int,
    seed: int,
    cameras: Mapping[str, tuple[int, int]] | None = None,
    state_dim: int = DEFAULT_STATE_DIM,
) -> Observation:
    """Return synthetic observation number ``index`` of the stream seeded with ``seed``."""
    cameras = check_cameras(DEFAULT_CAMERAS if cameras is None else cameras)
    rng = _rng(_check_seed(seed), index)
    instruction = _task(rng)  # drawn first: SyntheticBuffer.summary() relies on it
    state = rng.uniform(-1.5, 1.5, size=check_state_dim(state_dim)).astype(np.float32)
    images = {name: _smooth_image(rng, h, w) for name, (h, w) in cameras.items()}
    return Observation(images, state, instruction, index / CONTROL_HZ)


def synthetic_observations(
    n: int,
    seed: int,
    cameras: Mapping[str, tuple[int, int]] | None = None,
    state_dim: int = DEFAULT_STATE_DIM,
) -> list[Observation]:
    """Return ``n`` seeded synthetic observations (cameras default to one 224x224 base camera)."""
    return list(SyntheticBuffer(n, seed, cameras, state_dim))


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return seed


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def _task(rng: np.random.Generator) -> str:
    return TASKS[int(rng.integers(len(TASKS)))]


def _smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Return a uint8 HxWx3 image: base colour + a few low-frequency waves + mild noise."""
    base = rng.uniform(60.0, 190.0, size=3)
    freq = 2.0 * np.pi * rng.uniform(-3.0, 3.0, size=(_WAVES, 2))  # <= 3 periods per frame
    phase = rng.uniform(0.0, 2.0 * np.pi, size=(_WAVES, 3))
    amplitude = rng.uniform(10.0, 35.0, size=(_WAVES, 3))
    # sin(u + v) = sin(u) cos(v) + cos(u) sin(v), u over rows (+ phase), v over columns:
    # one [3, h, 2K] @ [2K, w] product sums all K waves.
    u = freq[:, 0, None, None] * np.linspace(0.0, 1.0, h)[:, None] + phase[:, None, :]  # K,h,3
    v = freq[:, 1, None] * np.linspace(0.0, 1.0, w)  # K,w
    rows = np.concatenate([amplitude[:, None] * np.sin(u), amplitude[:, None] * np.cos(u)])
    cols = np.concatenate([np.cos(v), np.sin(v)])
    rows, cols = rows.astype(np.float32).transpose(2, 1, 0), cols.astype(np.float32)
    waves = (rows @ cols).transpose(1, 2, 0)  # [h, w, 3]
    noise = rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(_NOISE_STD)
    image = waves + noise + base.astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
