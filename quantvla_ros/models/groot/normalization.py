"""GR00T state / action normalization per modality key, from a checkpoint's statistics.

NVIDIA stores statistics per embodiment tag and per modality key in
`experiment_cfg/metadata.json` ({tag: {"statistics": {"state": {key: {min, max, mean, std, q01,
q99}}, "action": {...}}}}), but not the normalization mode: that comes from the training data
config (LiberoDataConfig: min_max everywhere; LiberoDataConfigMeanStd: mean_std for the six pose
keys, min_max for the gripper), so the caller names it. lerobot saves one min_max vector per
modality (`observation.state.min` / `.max`, `action.min` / `.max`). GROOT.md §1.2 / §1.9 / §7.9.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open

MODES = ("min_max", "q99", "mean_std", "binary")
_NEEDS = {"min_max": ("min", "max"), "q99": ("q01", "q99"), "mean_std": ("mean", "std"),
          "binary": ()}
# LiberoDataConfigMeanStd (the goal suite): z-scores for the pose, min_max for the gripper.
_POSE = ("x", "y", "z", "roll", "pitch", "yaw")
LIBERO_MEAN_STD = {f"{m}.{k}": "mean_std" for m in ("state", "action") for k in _POSE}
_LEROBOT_STATE = "*groot_pack_inputs*.safetensors"
_LEROBOT_ACTION = "*unnormalize*.safetensors"


class StatisticsError(ValueError):
    """Statistics that cannot build the asked-for normalizer; the message says why."""


@dataclass(frozen=True)
class KeyNorm:
    """One modality key (e.g. state.gripper): its mode and statistics vectors."""

    key: str
    mode: str
    stats: dict[str, np.ndarray]
    dim: int

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Map raw values to model space; degenerate dims follow NVIDIA's Normalizer."""
        x = np.asarray(x, np.float64)
        s = self.stats
        if self.mode == "binary":
            return (x > 0.5).astype(np.float64)
        if self.mode == "min_max":
            lo, span = s["min"], s["max"] - s["min"]
            ok = span != 0
            return np.where(ok, 2.0 * (x - lo) / np.where(ok, span, 1.0) - 1.0, 0.0)
        if self.mode == "q99":
            lo, span = s["q01"], s["q99"] - s["q01"]
            ok = span != 0
            y = np.clip(2.0 * (x - lo) / np.where(ok, span, 1.0) - 1.0, -1.0, 1.0)
            return np.where(ok, y, x)
        std = s["std"]
        return np.where(std != 0, (x - s["mean"]) / np.where(std != 0, std, 1.0), x)

    def unnormalize(self, y: np.ndarray) -> np.ndarray:
        """Invert `normalize` (no clipping first: the predicted action goes in as it is)."""
        y = np.asarray(y, np.float64)
        s = self.stats
        if self.mode == "binary":
            return (y > 0.5).astype(np.float64)
        if self.mode == "min_max":
            return (y + 1.0) / 2.0 * (s["max"] - s["min"]) + s["min"]
        if self.mode == "q99":
            return (y + 1.0) / 2.0 * (s["q99"] - s["q01"]) + s["q01"]
        return y * s["std"] + s["mean"]


@dataclass(frozen=True)
class GrootNormalizer:
    """Per-key state and action normalization, keys in concatenation (data config) order."""

    state: tuple[KeyNorm, ...]
    action: tuple[KeyNorm, ...]
    mode = "per_key"  # what an artifact's statistics file records (models.registry reads it)

    def dim(self, key: str) -> int:
        """Return the robot's width of "observation.state" or "action" (the Policy asks)."""
        return self.action_dim if key == "action" else self.state_dim

    def to_tensors(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Statistics as flat float64 vectors plus the key order and modes (for safetensors)."""
        keys = [[m, k.key, k.mode] for m in ("state", "action") for k in getattr(self, m)]
        tensors = {f"{k.key}.{s}": v for m in ("state", "action") for k in getattr(self, m)
                   for s, v in k.stats.items()}
        return tensors, {"mode": self.mode, "keys": json.dumps(keys)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray], meta: dict[str, str]):
        """Invert `to_tensors` (every key's vectors, in the recorded order and modes)."""
        parts = {"state": [], "action": []}
        for modality, key, mode in json.loads(meta["keys"]):
            entry = {n[len(key) + 1:]: v for n, v in tensors.items()
                     if n.startswith(key + ".") and "." not in n[len(key) + 1:]}
            parts[modality].append(_key_norm(key, mode, entry))
        return cls(tuple(parts["state"]), tuple(parts["action"]))

    @property
    def state_dim(self) -> int:
        """The robot's state width (the sum over state keys)."""
        return sum(k.dim for k in self.state)

    @property
    def action_dim(self) -> int:
        """The robot's action width (the sum over action keys)."""
        return sum(k.dim for k in self.action)

    def normalize_state(self, state) -> np.ndarray:
        """Normalize a concatenated state [..., state_dim] or a {key: array} dict; float32."""
        parts = _split(state, self.state, "state")
        return np.concatenate([k.normalize(p) for k, p in zip(self.state, parts, strict=True)], -1
                              ).astype(np.float32)

    def unnormalize_actions(self, actions: np.ndarray) -> np.ndarray:
        """Model actions [..., >= action_dim] -> robot units; the zero padding is dropped."""
        actions = np.asarray(actions)
        if actions.shape[-1] < self.action_dim:
            raise StatisticsError(f"actions are {actions.shape[-1]} wide, the statistics "
                                  f"describe {self.action_dim}")
        out, start = [], 0
        for k in self.action:
            out.append(k.unnormalize(actions[..., start:start + k.dim]))
            start += k.dim
        return np.concatenate(out, -1).astype(np.float32)

    def split_actions(self, actions: np.ndarray) -> dict[str, np.ndarray]:
        """Unnormalized actions as {key: [..., dim]} (NVIDIA's ConcatTransform inverse)."""
        flat = self.unnormalize_actions(actions)
        bounds = np.cumsum([0] + [k.dim for k in self.action])
        pairs = zip(self.action, bounds[:-1], bounds[1:], strict=True)
        return {k.key: flat[..., a:b] for k, a, b in pairs}

    @classmethod
    def from_metadata(cls, metadata: dict, tag: str, default_mode: str = "min_max",
                      modes: dict[str, str] | None = None,
                      state_keys: list[str] | None = None,
                      action_keys: list[str] | None = None) -> GrootNormalizer:
        """Build from metadata.json's entry for embodiment ``tag``.

        Keys keep the metadata's order unless given (as `x` or `state.x`); ``modes`` maps
        `state.x` / `action.x` to a mode, others get ``default_mode``.
        """
        if tag not in metadata:
            raise StatisticsError(f"metadata has no embodiment {tag!r}; it has "
                                  f"{sorted(metadata)}")
        stats = metadata[tag].get("statistics", {})
        modes = dict(modes or {})
        built = []
        for modality, keys in (("state", state_keys), ("action", action_keys)):
            table = stats.get(modality, {})
            names = [k.removeprefix(modality + ".") for k in (keys or list(table))]
            absent = [n for n in names if n not in table]
            if absent or not names:
                raise StatisticsError(f"metadata[{tag!r}] statistics.{modality} lacks "
                                      f"{absent or 'every key'}; it has {list(table)}")
            built.append(tuple(
                _key_norm(f"{modality}.{n}", modes.pop(f"{modality}.{n}", default_mode),
                          table[n]) for n in names))
        if modes:
            raise StatisticsError(f"modes name keys the statistics lack: {sorted(modes)}")
        return cls(*built)

    @classmethod
    def from_lerobot(cls, stats: dict[str, np.ndarray]) -> GrootNormalizer:
        """Build from lerobot's min_max vectors (`observation.state.min`, ..., `action.max`)."""
        need = [f"{m}.{s}" for m in ("observation.state", "action") for s in ("min", "max")]
        absent = [k for k in need if k not in stats]
        if absent:
            raise StatisticsError(f"lerobot statistics lack {absent}")
        return cls(
            (_key_norm("state", "min_max", {s: stats[f"observation.state.{s}"]
                                            for s in ("min", "max")}),),
            (_key_norm("action", "min_max", {s: stats[f"action.{s}"]
                                             for s in ("min", "max")}),))


def read_lerobot_stats(folder) -> dict[str, np.ndarray]:
    """Read the min / max vectors of lerobot's saved GR00T pre- and post-processor steps."""
    stats = {}
    for pattern in (_LEROBOT_STATE, _LEROBOT_ACTION):
        for path in sorted(Path(folder).glob(pattern)):
            with safe_open(str(path), "np") as f:
                stats.update({k: f.get_tensor(k) for k in f.keys()})
    return stats


def _key_norm(key: str, mode: str, entry: dict) -> KeyNorm:
    if mode not in MODES:
        raise StatisticsError(f"{key}: mode {mode!r} is not one of {MODES}")
    need = _NEEDS[mode]
    have = [s for s in need or entry if s in entry]  # binary: any vector gives the dim
    if len(have) < len(need) or not have:
        raise StatisticsError(f"{key}: mode {mode} needs {list(need)}, statistics have "
                              f"{list(entry)}")
    stats = {s: np.asarray(entry[s], np.float64).reshape(-1) for s in have}
    dims = {v.shape[0] for v in stats.values()}
    if len(dims) != 1:
        raise StatisticsError(f"{key}: statistics vectors differ in length {sorted(dims)}")
    return KeyNorm(key, mode, stats, dims.pop())


def _split(values, keys: tuple[KeyNorm, ...], modality: str) -> list[np.ndarray]:
    if isinstance(values, dict):
        out = []
        for k in keys:
            v = values.get(k.key, values.get(k.key.removeprefix(modality + ".")))
            if v is None:
                raise StatisticsError(f"{modality} input lacks {k.key}; it has {list(values)}")
            out.append(np.asarray(v, np.float64))
        return out
    values = np.asarray(values, np.float64)
    total = sum(k.dim for k in keys)
    if values.shape[-1] != total:
        raise StatisticsError(f"{modality} is {values.shape[-1]} wide, the statistics "
                              f"describe {total} ({', '.join(k.key for k in keys)})")
    bounds = np.cumsum([0] + [k.dim for k in keys])
    return [values[..., a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
