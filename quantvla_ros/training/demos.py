"""Demonstrations on disk -> in-memory frames, quantile statistics and action chunks.

Reads the episodes ``scripts/record_libero_demos.py`` writes (one ``.npz`` per episode:
``agentview`` / ``wrist`` uint8 (F, R, R, 3) already rotated as the policy sees them,
``state`` (T, 8), ``action`` (T, 7: executed, noise included), ``expert_action`` (T, 7: the
expert's clean action), ``instruction``, and ``image_step`` (F) when the cameras rendered only
every few steps). A *frame* is a step with images, one training sample;
state and action are kept at every step (action chunks need them all). Statistics are
per-dimension 1% / 99% quantiles over every step, as lerobot and openpi normalize pi0.5
(``observation.state.q01``, ``action.q99``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantvla_ros.models.pi.normalization import ACTION_KEY, STATE_KEY, Normalizer


class DemoError(ValueError):
    """The demonstration folder is missing, empty or holds a malformed episode."""


@dataclass
class DemoSet:
    """Every step of every episode, concatenated; frames are the steps with images."""

    views: dict[str, np.ndarray]  # name -> uint8 (F, R, R, 3)
    frame_step: np.ndarray  # int64 (F,): the frame's global step index
    state: np.ndarray  # float32 (N, S), every step
    action: np.ndarray  # float32 (N, A), every step
    instructions: list[str]  # one per episode
    episode_of: np.ndarray  # int64 (N,): the step's episode
    episode_start: np.ndarray  # int64 (E,) first global step
    episode_end: np.ndarray  # int64 (E,) exclusive
    files: list[str]

    @property
    def num_frames(self) -> int:
        """Return the number of frames (steps with images)."""
        return int(self.frame_step.shape[0])

    def frame_episode(self, frames: np.ndarray) -> np.ndarray:
        """Return the episode index of each frame."""
        return self.episode_of[self.frame_step[frames]]

    def quantile_stats(self) -> dict[str, np.ndarray]:
        """Return lerobot-named q01 / q99 statistics of state and action (float32)."""
        stats = {}
        for key, values in ((STATE_KEY, self.state), (ACTION_KEY, self.action)):
            stats[f"{key}.q01"] = np.quantile(values, 0.01, axis=0).astype(np.float32)
            stats[f"{key}.q99"] = np.quantile(values, 0.99, axis=0).astype(np.float32)
        return stats

    def normalizer(self) -> Normalizer:
        """Return the quantile normalizer pi0.5 trains with."""
        return Normalizer("quantiles", self.quantile_stats())

    def chunk_steps(self, frames: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the step indices [B, H] of each frame's action chunk and its pad mask [B, H].

        Steps past the episode's end repeat its last step and are marked as padding, to be
        masked out of the loss as lerobot's ``action_is_pad``.
        """
        first = self.frame_step[frames]
        steps = first[:, None] + np.arange(horizon)[None]
        end = self.episode_end[self.episode_of[first]][:, None]
        return np.minimum(steps, end - 1), steps >= end


def _episode_files(folders: str | Path) -> list[Path]:
    """Return the episodes of one folder, or of comma-separated folders in that order."""
    parts = [Path(p.strip()) for p in str(folders).split(",") if p.strip()]
    if not parts:
        raise DemoError("no demonstration folder given")
    if len(parts) > 1:
        return [f for part in parts for f in _episode_files(part)]
    folder = parts[0]
    if not folder.is_dir():
        raise DemoError(f"demonstration folder {folder} does not exist")
    files = sorted(p for p in folder.glob("*.npz") if not p.name.endswith(".tmp.npz"))
    if not files:
        raise DemoError(f"no episodes (*.npz) in {folder}")
    return files


LABELS = ("expert_action", "action")


def demo_instructions(folder: str | Path) -> list[str]:
    """Return every episode's instruction (read alone: no images are decompressed)."""
    out = []
    for path in _episode_files(folder):
        with np.load(path) as ep:
            if "instruction" not in ep:
                raise DemoError(f"{path}: missing arrays ['instruction']")
            out.append(str(ep["instruction"]))
    return out


def load_demos(folder: str | Path, views=("agentview", "wrist"), successful_only: bool = True,
               limit: int | None = None, exclude: str = "", include: str = "",
               labels: str = "action") -> DemoSet:
    """Load the episodes in ``folder`` (sorted by name; failed expert runs skipped).

    ``folder`` may list several folders separated by commas (demonstrations and DAgger
    rollouts, say); their episodes are concatenated in that order.

    ``exclude``: a file-name glob of episodes held out (e.g. ``*_ep000[01].npz``);
    ``include``: load only the episodes matching this glob. ``labels``: the array that
    becomes ``DemoSet.action``: ``action`` (what was executed, noise included) or
    ``expert_action`` (the expert's clean action at the same state: DART-style labels).
    """
    if labels not in LABELS:
        raise DemoError(f"labels {labels!r}: expected one of {list(LABELS)}")
    parts: dict[str, list[np.ndarray]] = {v: [] for v in (*views, "state", "action")}
    instructions, lengths, files, frame_steps = [], [], [], []
    files_in = [p for p in _episode_files(folder)
                if not (exclude and p.match(exclude)) and (not include or p.match(include))]
    for path in files_in[:limit]:
        with np.load(path) as ep:
            missing = [k for k in (*views, "state", labels, "instruction") if k not in ep]
            if missing:
                raise DemoError(f"{path}: missing arrays {missing}")
            # a failed expert run is noise; a failed labelled rollout (DAgger) is the point
            labelled = "labelled" in ep and bool(ep["labelled"])
            if successful_only and "success" in ep and not bool(ep["success"]) and not labelled:
                continue
            n = ep[labels].shape[0]
            image_step = (ep["image_step"].astype(np.int64) if "image_step" in ep
                          else np.arange(n))
            if (ep["state"].shape[0] != n or n == 0
                    or any(ep[v].shape[0] != len(image_step) for v in views)
                    or (len(image_step) and not 0 <= image_step.min() <= image_step.max() < n)):
                raise DemoError(f"{path}: arrays of inconsistent lengths or an empty episode")
            frame_steps.append(image_step + sum(lengths))
            for key in parts:
                parts[key].append(ep[labels if key == "action" else key])
            instructions.append(str(ep["instruction"]))
            lengths.append(n)
            files.append(path.name)
    if not lengths:
        raise DemoError(f"no successful episode in {folder}")
    ends = np.cumsum(lengths)
    starts = ends - np.asarray(lengths)
    return DemoSet(
        views={v: np.concatenate(parts[v]) for v in views},
        frame_step=np.concatenate(frame_steps),
        state=np.concatenate(parts["state"]).astype(np.float32),
        action=np.concatenate(parts["action"]).astype(np.float32),
        instructions=instructions,
        episode_of=np.repeat(np.arange(len(lengths)), lengths),
        episode_start=starts, episode_end=ends, files=files,
    )
