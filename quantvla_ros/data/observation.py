"""The observation every layer exchanges: camera images, joint state, instruction, stamp.

An :class:`Observation` is validated once, when it is made: whoever produces one (the ROS
node inputs, the bag recorder, a buffer reader, the synthetic source, a user of the Python
API) gets the same checks and the same messages. Consumers add only what their context knows:
a buffer checks its declared cameras and state length, the policy its camera slots and the
length its normalization statistics fix.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from types import MappingProxyType
from typing import Any

import numpy as np

MAX_INSTRUCTION_CHARS = 2000
_REQUIRED_KEYS = frozenset({"images", "state", "instruction"})
_OPTIONAL_KEYS = frozenset({"timestamp"})


class ObservationError(ValueError):
    """An observation that cannot be used; the message names the field and the problem."""


@dataclass(frozen=True, eq=False)
class Observation:
    """One robot observation, validated on construction.

    ``images`` maps camera slots to uint8 HxWx3 arrays, ``state`` is a float32 vector (the
    robot's own joint values, unpadded), ``instruction`` a non-empty UTF-8 string and
    ``stamp`` the acquisition time in seconds (None when the producer has none). The arrays
    are the caller's unless ``copy=True`` is used with :meth:`make`; treat them as read-only.
    """

    images: Mapping[str, np.ndarray]
    state: np.ndarray
    instruction: str
    stamp: float | None = None

    def __post_init__(self) -> None:
        """Validate every field, converting the state to float32."""
        object.__setattr__(self, "images", MappingProxyType(check_images(self.images)))
        object.__setattr__(self, "state", check_state(self.state))
        object.__setattr__(self, "instruction", check_instruction(self.instruction))
        object.__setattr__(self, "stamp", check_stamp(self.stamp))

    @classmethod
    def make(cls, images: Mapping[str, Any], state: Any, instruction: Any,
             stamp: Any = None, *, copy: bool = False) -> Observation:
        """Build an observation; ``copy=True`` gives it arrays of its own (C-contiguous)."""
        if copy and isinstance(images, Mapping):
            images = {name: np.array(image, copy=True, order="C")
                      if isinstance(image, np.ndarray) else image
                      for name, image in images.items()}
            if isinstance(state, np.ndarray):
                state = state.copy()
        return cls(images, state, instruction, stamp)

    @classmethod
    def from_mapping(cls, obs: Mapping[str, Any] | Observation, *,
                     copy: bool = False) -> Observation:
        """Accept an Observation, or a dict of images, state, instruction [and timestamp]."""
        if isinstance(obs, Observation):
            return obs.copy() if copy else obs
        if not isinstance(obs, Mapping):
            raise ObservationError(f"observation must be a dict or an Observation, got "
                                   f"{type(obs).__name__}")
        keys = set(obs)
        missing, unexpected = _REQUIRED_KEYS - keys, keys - _REQUIRED_KEYS - _OPTIONAL_KEYS
        if missing or unexpected:
            raise ObservationError(
                f"observation keys: {mismatch(_REQUIRED_KEYS, keys - _OPTIONAL_KEYS)}")
        return cls.make(obs["images"], obs["state"], obs["instruction"], obs.get("timestamp"),
                        copy=copy)

    def copy(self) -> Observation:
        """Return an observation with arrays of its own."""
        return Observation.make(dict(self.images), self.state, self.instruction, self.stamp,
                                copy=True)

    def to_dict(self) -> dict[str, Any]:
        """Return the plain-dict form, with ``timestamp`` for the stamp (the shard's name)."""
        return {"images": dict(self.images), "state": self.state,
                "instruction": self.instruction, "timestamp": self.stamp}

    @property
    def image_sizes(self) -> dict[str, tuple[int, int]]:
        """Return {camera slot: (H, W)}."""
        return {name: image.shape[:2] for name, image in self.images.items()}


def check_images(images: Any) -> dict[str, np.ndarray]:
    """Return ``images`` as a dict of uint8 HxWx3 arrays or raise ObservationError."""
    if not isinstance(images, Mapping):
        raise ObservationError(f"observation images must be a dict, got {type(images).__name__}")
    if not images:
        raise ObservationError("observation has no camera image")
    checked = {}
    for name, image in images.items():
        if not isinstance(name, str) or not name:
            raise ObservationError(f"camera names must be non-empty strings, got {name!r}")
        if (not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3
                or image.shape[2] != 3):
            kind = (f"{image.dtype} {tuple(image.shape)}" if isinstance(image, np.ndarray)
                    else type(image).__name__)
            raise ObservationError(f"image {name!r}: got {kind}, expected a uint8 HxWx3 "
                                   "numpy array")
        if image.shape[0] < 2 or image.shape[1] < 2:
            raise ObservationError(f"image {name!r}: {image.shape[:2]} is too small")
        checked[name] = image
    return checked


def check_state(state: Any) -> np.ndarray:
    """Return ``state`` as a finite float32 vector or raise ObservationError."""
    state = np.asarray(state)
    if state.dtype.kind != "f":
        raise ObservationError(f"state: dtype {state.dtype}, expected a float vector")
    if state.ndim != 1 or state.size == 0:
        raise ObservationError(f"state: shape {state.shape}, expected a non-empty vector")
    with np.errstate(over="ignore"):  # float64 beyond float32 range becomes inf, caught below
        state = state.astype(np.float32, copy=False)
    if not np.isfinite(state).all():
        bad = np.flatnonzero(~np.isfinite(state)).tolist()
        raise ObservationError(f"state: non-finite values (NaN, inf or beyond float32 range) "
                               f"at {bad}")
    return state


def check_instruction(text: Any) -> str:
    """Return ``text`` if it is a usable instruction, else raise ObservationError."""
    if not isinstance(text, str) or not text.strip():
        raise ObservationError(f"instruction must be a non-empty str, got {text!r}")
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise ObservationError(f"instruction has {len(text)} characters "
                               f"(limit {MAX_INSTRUCTION_CHARS})")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ObservationError(f"instruction is not encodable as UTF-8 ({exc})") from exc
    return text


def check_stamp(stamp: Any) -> float | None:
    """Return ``stamp`` as float seconds (or None) or raise ObservationError."""
    if stamp is None:
        return None
    if isinstance(stamp, bool) or not isinstance(stamp, Real):
        raise ObservationError(f"timestamp must be a number of seconds, got {stamp!r}")
    if not math.isfinite(stamp):
        raise ObservationError(f"timestamp must be finite, got {stamp!r}")
    return float(stamp)


def check_cameras(cameras: Mapping[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """Return ``cameras`` as {name: (H, W)} or raise ValueError naming the bad entry."""
    if not isinstance(cameras, Mapping) or not cameras:
        raise ValueError(f"cameras must be a non-empty {{name: (H, W)}} dict, got {cameras!r}")
    checked = {}
    for name, shape in cameras.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"camera names must be non-empty strings, got {name!r}")
        if not is_shape(shape, 2):
            raise ValueError(f"camera {name!r}: image size must be (H, W), got {shape!r}")
        checked[name] = (int(shape[0]), int(shape[1]))
    return checked


def check_state_dim(state_dim: Any) -> int:
    """Return ``state_dim`` if it is a positive int, else raise ValueError."""
    if not is_positive_int(state_dim):
        raise ValueError(f"state_dim must be a positive int, got {state_dim!r}")
    return int(state_dim)


def mismatch(expected: Iterable[str], got: Iterable[str]) -> str:
    """Describe how the key set ``got`` differs from ``expected``."""
    expected, got = set(expected), set(got)
    return f"missing {sorted(expected - got)}, unexpected {sorted(got - expected)}"


def is_positive_int(value: Any) -> bool:
    """Return True for an int > 0 (bools excluded)."""
    return isinstance(value, Integral) and not isinstance(value, bool) and value > 0


def is_shape(shape: Any, ndim: int) -> bool:
    """Return True for a list or tuple of ``ndim`` positive ints."""
    return (isinstance(shape, list | tuple) and len(shape) == ndim
            and all(is_positive_int(d) for d in shape))
