"""Observation buffers: the read API, and the recorded buffer (a folder of shards).

QuantVLA calibrates from tens to a few hundred unlabeled observations. A
:class:`RecordedBuffer` stores them as described in :mod:`.shard_format`; a
:class:`~quantvla_ros.data.synthetic.SyntheticBuffer` makes them on demand. Both yield
:class:`~quantvla_ros.data.observation.Observation` objects.
"""

from __future__ import annotations

import abc
import bisect
import os
from collections.abc import Iterator, Mapping
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np

from quantvla_ros.data.atomic import write_file_atomic
from quantvla_ros.data.observation import (
    Observation,
    ObservationError,
    check_cameras,
    check_state_dim,
    is_positive_int,
    mismatch,
)
from quantvla_ros.data.shard_format import (
    FORMAT_VERSION,
    INDEX_NAME,
    BufferFormatError,
    decode_shard,
    encode_index,
    encode_shard,
    new_index,
    read_index,
    shard_entry,
    shard_name,
)


def split_indices(n: int, holdout: int) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` into (calibration, held-out) indices: the last ``holdout`` are held out.

    Consecutive robot frames are near duplicates, so the held-out set is the tail of the
    recording rather than a random subset, which would leave a neighbour of almost every
    held-out frame in the calibration set.
    """
    if isinstance(holdout, bool) or not isinstance(holdout, Integral) or holdout < 0:
        raise ValueError(f"holdout must be a non-negative int, got {holdout!r}")
    if holdout >= n:
        raise ValueError(f"holdout={holdout} leaves no calibration samples out of {n}")
    cut = n - int(holdout)
    return list(range(cut)), list(range(cut, n))


class ObservationBuffer(abc.ABC):
    """Read API shared by recorded and synthetic buffers."""

    cameras: dict[str, tuple[int, int]]
    state_dim: int
    synthetic: bool
    source: str

    @abc.abstractmethod
    def __len__(self) -> int:
        """Return the number of observations."""

    @abc.abstractmethod
    def __getitem__(self, index: int) -> Observation:
        """Return observation ``index`` (negative indices count from the end) as a fresh copy."""

    @abc.abstractmethod
    def summary(self) -> dict[str, Any]:
        """Describe the buffer for manifests and reports (JSON-serializable).

        Keys common to every buffer: ``samples``, ``cameras`` ({name: [H, W]}), ``state_dim``,
        ``synthetic``, ``source`` and ``instructions`` (number of distinct instructions).
        """

    def __iter__(self) -> Iterator[Observation]:
        """Yield the observations in order."""
        for i in range(len(self)):
            yield self[i]

    def split(self, holdout: int) -> tuple[list[int], list[int]]:
        """Return (calibration indices, held-out indices); see :func:`split_indices`."""
        return split_indices(len(self), holdout)

    def _position(self, index: int) -> int:
        if isinstance(index, bool) or not isinstance(index, Integral):
            raise TypeError(f"buffer index must be an int, got {type(index).__name__}")
        n = len(self)
        i = int(index) + n if index < 0 else int(index)
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for a buffer of {n} observations")
        return i

    def _summary(self, instructions: int) -> dict[str, Any]:
        return {
            "samples": len(self),
            "cameras": {name: [h, w] for name, (h, w) in self.cameras.items()},
            "state_dim": self.state_dim,
            "synthetic": self.synthetic,
            "source": self.source,
            "instructions": instructions,
        }


class RecordedBuffer(ObservationBuffer):
    """A directory of safetensors shards of observations, appendable and lazily readable.

    Make one with :meth:`create` or :meth:`open`, not with the constructor. Appended
    observations are kept in memory until ``shard_size`` of them are pending, then written as
    one shard; :meth:`flush`, :meth:`close` or leaving a ``with`` block writes a partial shard.
    Reading covers written and pending observations alike and keeps one decoded shard cached.
    """

    def __init__(self, path: Path, index: dict[str, Any]) -> None:
        """Wrap an already validated index; use :meth:`create` or :meth:`open` instead."""
        self.path = path
        self.cameras = {name: (h, w) for name, (h, w, _) in index["cameras"].items()}
        self.state_dim: int = index["state_dim"]
        self.synthetic: bool = index["synthetic"]
        self.source: str = index["source"]
        self.shard_size: int = index["shard_size"]
        self._index_data = index
        self._pending: list[Observation] = []
        self._closed = False
        self._cache: tuple[int, dict[str, np.ndarray], list[str]] | None = None
        self._starts = [0]
        for shard in index["shards"]:
            self._starts.append(self._starts[-1] + shard["samples"])

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        cameras: Mapping[str, tuple[int, int]],
        state_dim: int,
        *,
        source: str,
        synthetic: bool = False,
        shard_size: int = 32,
    ) -> RecordedBuffer:
        """Start a new, empty buffer at ``path`` (created if needed; must hold no buffer yet).

        ``cameras`` maps each camera name to its image (height, width); ``source`` is a free-form
        description of where the observations come from (robot, bag, topics).
        """
        path = Path(path)
        if (path / INDEX_NAME).exists():
            raise FileExistsError(f"{path} already holds a calibration buffer; open() it instead")
        if not isinstance(source, str):
            raise ValueError(f"source must be a str, got {type(source).__name__}")
        if not is_positive_int(shard_size):
            raise ValueError(f"shard_size must be a positive int, got {shard_size!r}")
        index = new_index(check_cameras(cameras), check_state_dim(state_dim), source=source,
                          synthetic=synthetic, shard_size=shard_size)
        path.mkdir(parents=True, exist_ok=True)
        write_file_atomic(path / INDEX_NAME, encode_index(index))
        return cls(path, index)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RecordedBuffer:
        """Open an existing buffer for reading and appending (new observations go to new shards).

        Checks the index and that every listed shard exists; shard contents (sha256, tensor
        names, shapes, dtypes) are checked as each shard is first read, or all at once by
        :meth:`verify`.
        """
        path = Path(path)
        index_path = path / INDEX_NAME
        if not path.is_dir():
            raise BufferFormatError(f"{path}: no such calibration buffer directory")
        if not index_path.is_file():
            raise BufferFormatError(f"{path}: no {INDEX_NAME}, not a calibration buffer")
        index = read_index(index_path)
        for shard in index["shards"]:
            if not (path / shard["file"]).is_file():
                raise BufferFormatError(
                    f"shard {shard['file']} is listed in {index_path} but missing"
                )
        return cls(path, index)

    def __len__(self) -> int:
        """Return the number of observations, written and pending."""
        return self._starts[-1] + len(self._pending)

    def __getitem__(self, index: int) -> Observation:
        """Return observation ``index`` as a fresh copy (safe to modify)."""
        i = self._position(index)
        if i >= self._starts[-1]:
            return self._pending[i - self._starts[-1]].copy()
        k = bisect.bisect_right(self._starts, i) - 1
        tensors, instructions = self._shard(k)
        j = i - self._starts[k]
        return Observation(
            {name: tensors[f"image.{name}"][j].copy() for name in self.cameras},
            tensors["state"][j].copy(),
            instructions[j],
            float(tensors["timestamp"][j]),
        )

    def __repr__(self) -> str:
        """Return a short description."""
        return (
            f"RecordedBuffer({str(self.path)!r}, samples={len(self)}, "
            f"cameras={list(self.cameras)}, state_dim={self.state_dim})"
        )

    def __enter__(self) -> RecordedBuffer:
        """Return self; leaving the block calls :meth:`close`."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the buffer, writing pending observations even if the block raised."""
        self.close()

    @property
    def num_shards(self) -> int:
        """Return the number of shards written."""
        return len(self._index_data["shards"])

    def append(self, obs: Observation | Mapping[str, Any]) -> None:
        """Validate and add one observation; writes a shard once ``shard_size`` are pending.

        Raises ValueError naming the problem for a camera set, image dtype or shape, state dtype,
        shape or non-finite value, instruction or timestamp that does not fit the buffer. The
        observation is copied, so the caller may reuse its arrays.
        """
        if self._closed:
            raise ValueError(f"{self.path}: buffer is closed; open() it again to append")
        self._pending.append(self._fit(Observation.from_mapping(obs, copy=True)))
        if len(self._pending) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the pending observations as one new shard, then the index (both atomically)."""
        if not self._pending:
            return
        data = encode_shard(self._pending, self.cameras)
        name = shard_name(self.num_shards)
        write_file_atomic(self.path / name, data)
        shards = self._index_data["shards"]
        shards.append(shard_entry(name, data, self._pending))
        try:
            write_file_atomic(self.path / INDEX_NAME, encode_index(self._index_data))
        except BaseException:
            shards.pop()  # the shard stays unlisted; pending observations are kept for a retry
            raise
        self._starts.append(self._starts[-1] + len(self._pending))
        self._pending = []

    def close(self) -> None:
        """Flush pending observations and refuse further appends (reading still works)."""
        if not self._closed:
            self.flush()
            self._closed = True

    def verify(self) -> None:
        """Read and check every shard now (sha256, tensor names, shapes and dtypes)."""
        for k in range(self.num_shards):
            self._read_shard(k)

    def summary(self) -> dict[str, Any]:
        """Describe the buffer: the base keys plus ``path``, ``shards`` and ``format_version``."""
        instructions = {obs.instruction for obs in self._pending}
        for shard in self._index_data["shards"]:
            instructions.update(shard["instructions"])
        summary = self._summary(len(instructions))
        summary.update(path=str(self.path), shards=self.num_shards, format_version=FORMAT_VERSION)
        return summary

    def _fit(self, obs: Observation) -> Observation:
        """Return ``obs`` if it matches this buffer's cameras, sizes and state, else raise."""
        if obs.images.keys() != self.cameras.keys():
            raise ObservationError(
                f"cameras do not match the buffer's: {mismatch(self.cameras, obs.images)}")
        for name, (h, w) in self.cameras.items():
            shape = obs.images[name].shape
            if shape != (h, w, 3):
                raise ObservationError(
                    f"image {name!r}: shape {shape}, expected {(h, w, 3)} (HxWx3)")
        if obs.state.shape != (self.state_dim,):
            raise ObservationError(
                f"state: shape {obs.state.shape}, expected ({self.state_dim},)")
        if obs.stamp is None:
            raise ObservationError("timestamp must be a number of seconds, got None")
        return obs

    def _shard(self, k: int) -> tuple[dict[str, np.ndarray], list[str]]:
        if self._cache is None or self._cache[0] != k:
            self._cache = (k, *self._read_shard(k))
        return self._cache[1], self._cache[2]

    def _read_shard(self, k: int) -> tuple[dict[str, np.ndarray], list[str]]:
        entry = self._index_data["shards"][k]
        name = entry["file"]

        def fail(problem: str) -> BufferFormatError:
            return BufferFormatError(f"shard {name} in {self.path}: {problem}")

        try:
            data = (self.path / name).read_bytes()
        except OSError as exc:
            raise fail(f"cannot be read ({exc})") from exc
        return decode_shard(data, entry, self.cameras, self.state_dim, fail)
