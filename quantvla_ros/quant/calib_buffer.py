"""Calibration buffer: unlabeled robot observations stored as safetensors shards.

QuantVLA calibrates from tens to a few hundred unlabeled observations. A buffer directory holds::

    index.json                 format version, cameras, state dim, provenance, shard list
    shard-00000.safetensors    up to ``shard_size`` observations each
    shard-00001.safetensors
    ...

A shard holding ``n`` observations contains only these tensors (nothing is pickled)::

    image.<camera>             uint8   [n, H, W, 3]   one tensor per declared camera
    state                      float32 [n, D]
    timestamp                  float64 [n]            seconds
    instruction_utf8           uint8   [B]            all instructions, UTF-8, concatenated
    instruction_offsets        int64   [n + 1]        instruction i is bytes [off[i], off[i+1])

``index.json`` lists every shard with its sample count, byte size, sha256 and the distinct
instructions it holds, so ``summary()`` reads no shard. Shard and index are each written to a
temporary file in the buffer directory, fsynced and renamed over their target, shard first and
index second: an interrupted recording loses at most the shard in flight. A shard renamed into
place but never listed in the index is ignored, and overwritten by the next flush. One writer at
a time: nothing locks the directory.

Observations are the runtime Policy's dicts: ``{"images": {camera: uint8 HxWx3}, "state":
float32 [D], "instruction": str, "timestamp": float}``.
"""

from __future__ import annotations

import abc
import bisect
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

FORMAT = "quantvla_ros.calibration_buffer"
FORMAT_VERSION = 1
INDEX_NAME = "index.json"

Observation = dict[str, Any]

_OBS_KEYS = frozenset({"images", "state", "instruction", "timestamp"})
_SHARD_NAME = re.compile(r"shard-\d{5,}\.safetensors")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class CalibrationBufferError(ValueError):
    """A calibration buffer, its index or one of its shards is missing, invalid or corrupt."""


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
    """Read API shared by recorded (:class:`CalibrationBuffer`) and synthetic buffers."""

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


class CalibrationBuffer(ObservationBuffer):
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
    ) -> CalibrationBuffer:
        """Start a new, empty buffer at ``path`` (created if needed; must hold no buffer yet).

        ``cameras`` maps each camera name to its image (height, width); ``source`` is a free-form
        description of where the observations come from (robot, bag, topics).
        """
        path = Path(path)
        if (path / INDEX_NAME).exists():
            raise FileExistsError(f"{path} already holds a calibration buffer; open() it instead")
        if not isinstance(source, str):
            raise ValueError(f"source must be a str, got {type(source).__name__}")
        if not _is_positive_int(shard_size):
            raise ValueError(f"shard_size must be a positive int, got {shard_size!r}")
        index = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "cameras": {name: [h, w, 3] for name, (h, w) in check_cameras(cameras).items()},
            "state_dim": check_state_dim(state_dim),
            "synthetic": bool(synthetic),
            "source": source,
            "shard_size": shard_size,
            "shards": [],
        }
        path.mkdir(parents=True, exist_ok=True)
        _atomic_write(path / INDEX_NAME, _encode_index(index))
        return cls(path, index)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> CalibrationBuffer:
        """Open an existing buffer for reading and appending (new observations go to new shards).

        Checks the index and that every listed shard exists; shard contents (sha256, tensor
        names, shapes, dtypes) are checked as each shard is first read, or all at once by
        :meth:`verify`.
        """
        path = Path(path)
        index_path = path / INDEX_NAME
        if not path.is_dir():
            raise CalibrationBufferError(f"{path}: no such calibration buffer directory")
        if not index_path.is_file():
            raise CalibrationBufferError(f"{path}: no {INDEX_NAME}, not a calibration buffer")
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CalibrationBufferError(f"{index_path}: not valid JSON ({exc})") from exc
        _check_index(index, index_path)
        for shard in index["shards"]:
            if not (path / shard["file"]).is_file():
                raise CalibrationBufferError(
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
            return _copy_observation(self._pending[i - self._starts[-1]])
        k = bisect.bisect_right(self._starts, i) - 1
        tensors, instructions = self._shard(k)
        j = i - self._starts[k]
        return {
            "images": {name: tensors[f"image.{name}"][j].copy() for name in self.cameras},
            "state": tensors["state"][j].copy(),
            "instruction": instructions[j],
            "timestamp": float(tensors["timestamp"][j]),
        }

    def __repr__(self) -> str:
        """Return a short description."""
        return (
            f"CalibrationBuffer({str(self.path)!r}, samples={len(self)}, "
            f"cameras={list(self.cameras)}, state_dim={self.state_dim})"
        )

    def __enter__(self) -> CalibrationBuffer:
        """Return self; leaving the block calls :meth:`close`."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the buffer, writing pending observations even if the block raised."""
        self.close()

    @property
    def num_shards(self) -> int:
        """Return the number of shards written."""
        return len(self._index_data["shards"])

    def append(self, obs: Mapping[str, Any]) -> None:
        """Validate and add one observation; writes a shard once ``shard_size`` are pending.

        Raises ValueError naming the problem for a camera set, image dtype or shape, state dtype,
        shape or non-finite value, instruction or timestamp that does not fit the buffer. The
        observation is copied, so the caller may reuse its arrays.
        """
        if self._closed:
            raise ValueError(f"{self.path}: buffer is closed; open() it again to append")
        self._pending.append(_check_observation(obs, self.cameras, self.state_dim))
        if len(self._pending) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the pending observations as one new shard, then the index (both atomically)."""
        if not self._pending:
            return
        data = _encode_shard(self._pending, self.cameras)
        name = f"shard-{self.num_shards:05d}.safetensors"
        _atomic_write(self.path / name, data)
        shards = self._index_data["shards"]
        shards.append(
            {
                "file": name,
                "samples": len(self._pending),
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "instructions": sorted({obs["instruction"] for obs in self._pending}),
            }
        )
        try:
            _atomic_write(self.path / INDEX_NAME, _encode_index(self._index_data))
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
        instructions = {obs["instruction"] for obs in self._pending}
        for shard in self._index_data["shards"]:
            instructions.update(shard["instructions"])
        summary = self._summary(len(instructions))
        summary.update(path=str(self.path), shards=self.num_shards, format_version=FORMAT_VERSION)
        return summary

    def _shard(self, k: int) -> tuple[dict[str, np.ndarray], list[str]]:
        if self._cache is None or self._cache[0] != k:
            self._cache = (k, *self._read_shard(k))
        return self._cache[1], self._cache[2]

    def _read_shard(self, k: int) -> tuple[dict[str, np.ndarray], list[str]]:
        entry = self._index_data["shards"][k]
        name = entry["file"]

        def fail(problem: str) -> CalibrationBufferError:
            return CalibrationBufferError(f"shard {name} in {self.path}: {problem}")

        try:
            data = (self.path / name).read_bytes()
        except OSError as exc:
            raise fail(f"cannot be read ({exc})") from exc
        if len(data) != entry["bytes"]:
            raise fail(f"{len(data)} bytes, index says {entry['bytes']} (truncated or replaced)")
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise fail("sha256 does not match the index (corrupt or modified file)")
        try:
            tensors = safetensors.numpy.load(data)
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise fail(f"not a valid safetensors file ({exc})") from exc

        n = entry["samples"]
        expected = {f"image.{c}": (np.uint8, (n, h, w, 3)) for c, (h, w) in self.cameras.items()}
        expected["state"] = (np.float32, (n, self.state_dim))
        expected["timestamp"] = (np.float64, (n,))
        expected["instruction_offsets"] = (np.int64, (n + 1,))
        expected["instruction_utf8"] = (np.uint8, None)
        if tensors.keys() != expected.keys():
            raise fail(f"tensors: {_mismatch(expected, tensors)}")
        for key, (dtype, shape) in expected.items():
            tensor = tensors[key]
            if tensor.dtype != dtype or (shape is not None and tensor.shape != shape):
                raise fail(
                    f"tensor {key} is {tensor.dtype} {list(tensor.shape)}, expected "
                    f"{np.dtype(dtype)} {list(shape) if shape else '[bytes]'}"
                )
        return tensors, _decode_instructions(tensors, fail)


def check_cameras(cameras: Mapping[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """Return ``cameras`` as {name: (H, W)} or raise ValueError naming the bad entry."""
    if not isinstance(cameras, Mapping) or not cameras:
        raise ValueError(f"cameras must be a non-empty {{name: (H, W)}} dict, got {cameras!r}")
    checked = {}
    for name, shape in cameras.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"camera names must be non-empty strings, got {name!r}")
        if not _is_shape(shape, 2):
            raise ValueError(f"camera {name!r}: image size must be (H, W), got {shape!r}")
        checked[name] = (int(shape[0]), int(shape[1]))
    return checked


def check_state_dim(state_dim: int) -> int:
    """Return ``state_dim`` if it is a positive int, else raise ValueError."""
    if not _is_positive_int(state_dim):
        raise ValueError(f"state_dim must be a positive int, got {state_dim!r}")
    return int(state_dim)


def _check_observation(
    obs: Mapping[str, Any], cameras: Mapping[str, tuple[int, int]], state_dim: int
) -> Observation:
    """Return a validated, owned copy of ``obs`` or raise ValueError naming the problem."""
    if not isinstance(obs, Mapping):
        raise ValueError(f"observation must be a dict, got {type(obs).__name__}")
    if obs.keys() != _OBS_KEYS:
        raise ValueError(f"observation keys: {_mismatch(_OBS_KEYS, obs.keys())}")
    images = obs["images"]
    if not isinstance(images, Mapping):
        raise ValueError(f"observation images must be a dict, got {type(images).__name__}")
    if images.keys() != cameras.keys():
        raise ValueError(f"cameras do not match the buffer's: {_mismatch(cameras, images)}")
    checked_images = {}
    for name, (h, w) in cameras.items():
        image = images[name]
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            kind = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"image {name!r}: {kind}, expected a uint8 numpy array")
        if image.shape != (h, w, 3):
            raise ValueError(f"image {name!r}: shape {image.shape}, expected {(h, w, 3)} (HxWx3)")
        checked_images[name] = np.array(image, copy=True, order="C")

    state = np.asarray(obs["state"])
    if state.dtype.kind != "f":
        raise ValueError(f"state: dtype {state.dtype}, expected a float vector")
    if state.shape != (state_dim,):
        raise ValueError(f"state: shape {state.shape}, expected ({state_dim},)")
    with np.errstate(over="ignore"):  # float64 beyond float32 range becomes inf, caught below
        state = state.astype(np.float32)  # always a copy
    if not np.isfinite(state).all():
        bad = np.flatnonzero(~np.isfinite(state)).tolist()
        raise ValueError(f"state: non-finite values (or beyond float32 range) at {bad}")

    instruction = obs["instruction"]
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(f"instruction must be a non-empty str, got {instruction!r}")
    try:
        instruction.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"instruction is not encodable as UTF-8 ({exc})") from exc

    timestamp = obs["timestamp"]
    if isinstance(timestamp, bool) or not isinstance(timestamp, Real):
        raise ValueError(f"timestamp must be a number of seconds, got {timestamp!r}")
    if not math.isfinite(timestamp):
        raise ValueError(f"timestamp must be finite, got {timestamp!r}")
    return {
        "images": checked_images,
        "state": state,
        "instruction": instruction,
        "timestamp": float(timestamp),
    }


def _mismatch(expected: Iterable[str], got: Iterable[str]) -> str:
    """Describe how the key set ``got`` differs from ``expected``."""
    expected, got = set(expected), set(got)
    return f"missing {sorted(expected - got)}, unexpected {sorted(got - expected)}"


def _copy_observation(obs: Observation) -> Observation:
    return {
        "images": {name: image.copy() for name, image in obs["images"].items()},
        "state": obs["state"].copy(),
        "instruction": obs["instruction"],
        "timestamp": obs["timestamp"],
    }


def _encode_shard(observations: list[Observation], cameras: Mapping[str, Any]) -> bytes:
    encoded = [obs["instruction"].encode("utf-8") for obs in observations]
    tensors = {
        f"image.{name}": np.stack([obs["images"][name] for obs in observations])
        for name in cameras
    }
    tensors["state"] = np.stack([obs["state"] for obs in observations])
    tensors["timestamp"] = np.array([obs["timestamp"] for obs in observations], dtype=np.float64)
    tensors["instruction_utf8"] = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
    tensors["instruction_offsets"] = np.cumsum([0, *map(len, encoded)], dtype=np.int64)
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}
    return safetensors.numpy.save(tensors, metadata=metadata)


def _decode_instructions(tensors: dict[str, np.ndarray], fail: Any) -> list[str]:
    offsets = tensors["instruction_offsets"]
    raw = tensors["instruction_utf8"]
    sizes = np.diff(offsets)
    if raw.ndim != 1 or offsets[0] != 0 or offsets[-1] != raw.size or (sizes <= 0).any():
        raise fail("instruction_offsets do not partition instruction_utf8")
    raw = raw.tobytes()
    try:
        return [raw[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    except UnicodeDecodeError as exc:
        raise fail(f"instructions are not valid UTF-8 ({exc})") from exc


def _encode_index(index: dict[str, Any]) -> bytes:
    return (json.dumps(index, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _check_index(index: Any, where: Path) -> None:
    """Raise CalibrationBufferError unless ``index`` is a well-formed index of this version."""

    def require(condition: bool, problem: str) -> None:
        if not condition:
            raise CalibrationBufferError(f"{where}: {problem}")

    require(isinstance(index, dict), "the index is not a JSON object")
    require(index.get("format") == FORMAT, f"not a calibration buffer index ({FORMAT!r} expected)")
    version = index.get("format_version")
    require(
        version == FORMAT_VERSION and not isinstance(version, bool),
        f"unsupported format version {version!r} (this reader knows {FORMAT_VERSION})",
    )
    cameras = index.get("cameras")
    require(isinstance(cameras, dict) and bool(cameras), "cameras must be a non-empty object")
    for name, shape in cameras.items():
        require(
            bool(name) and _is_shape(shape, 3) and shape[2] == 3,
            f"camera {name!r}: image shape {shape!r} is not [H, W, 3]",
        )
    for key in ("state_dim", "shard_size"):
        require(_is_positive_int(index.get(key)), f"{key} must be a positive int")
    require(isinstance(index.get("synthetic"), bool), "synthetic must be true or false")
    require(isinstance(index.get("source"), str), "source must be a string")
    shards = index.get("shards")
    require(isinstance(shards, list), "shards must be a list")
    names = set()
    for i, shard in enumerate(shards):
        require(isinstance(shard, dict), f"shard entry {i} is not an object")
        name = shard.get("file")
        require(
            isinstance(name, str) and bool(_SHARD_NAME.fullmatch(name)) and name not in names,
            f"shard entry {i}: bad or duplicate file name {name!r}",
        )
        names.add(name)
        require(
            _is_positive_int(shard.get("samples")) and _is_positive_int(shard.get("bytes")),
            f"shard {name}: samples and bytes must be positive ints",
        )
        require(
            isinstance(shard.get("sha256"), str) and bool(_SHA256.fullmatch(shard["sha256"])),
            f"shard {name}: sha256 must be 64 lowercase hex digits",
        )
        instructions = shard.get("instructions")
        require(
            isinstance(instructions, list) and all(isinstance(s, str) for s in instructions),
            f"shard {name}: instructions must be a list of strings",
        )


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and value > 0


def _is_shape(shape: Any, ndim: int) -> bool:
    return (
        isinstance(shape, list | tuple)
        and len(shape) == ndim
        and all(_is_positive_int(d) for d in shape)
    )


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a fsynced temp file in the same directory and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
