"""On-disk format of a recorded observation buffer (format version 1).

A buffer directory holds::

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
instructions it holds, so a summary reads no shard. Shard and index are each written to a
temporary file in the buffer directory, fsynced and renamed over their target, shard first and
index second: an interrupted recording loses at most the shard in flight. A shard renamed into
place but never listed in the index is ignored, and overwritten by the next flush. One writer at
a time: nothing locks the directory.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from quantvla_ros.data.observation import Observation, is_positive_int, is_shape, mismatch

FORMAT = "quantvla_ros.calibration_buffer"
FORMAT_VERSION = 1
INDEX_NAME = "index.json"

_SHARD_NAME = re.compile(r"shard-\d{5,}\.safetensors")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class BufferFormatError(ValueError):
    """A buffer directory, its index or one of its shards is missing, invalid or corrupt."""


def shard_name(k: int) -> str:
    """Return the file name of shard number ``k``."""
    return f"shard-{k:05d}.safetensors"


def encode_shard(observations: Sequence[Observation], cameras: Mapping[str, Any]) -> bytes:
    """Return the safetensors bytes of one shard holding ``observations``."""
    encoded = [obs.instruction.encode("utf-8") for obs in observations]
    tensors = {
        f"image.{name}": np.stack([obs.images[name] for obs in observations])
        for name in cameras
    }
    tensors["state"] = np.stack([obs.state for obs in observations])
    tensors["timestamp"] = np.array([obs.stamp for obs in observations], dtype=np.float64)
    tensors["instruction_utf8"] = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
    tensors["instruction_offsets"] = np.cumsum([0, *map(len, encoded)], dtype=np.int64)
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}
    return safetensors.numpy.save(tensors, metadata=metadata)


def decode_shard(
    data: bytes,
    entry: Mapping[str, Any],
    cameras: Mapping[str, tuple[int, int]],
    state_dim: int,
    fail: Callable[[str], Exception],
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Check one shard's bytes against its index ``entry``; return (tensors, instructions).

    ``fail(problem)`` builds the exception raised for the first problem found.
    """
    if len(data) != entry["bytes"]:
        raise fail(f"{len(data)} bytes, index says {entry['bytes']} (truncated or replaced)")
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise fail("sha256 does not match the index (corrupt or modified file)")
    try:
        tensors = safetensors.numpy.load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise fail(f"not a valid safetensors file ({exc})") from exc
    n = entry["samples"]
    expected = {f"image.{c}": (np.uint8, (n, h, w, 3)) for c, (h, w) in cameras.items()}
    expected["state"] = (np.float32, (n, state_dim))
    expected["timestamp"] = (np.float64, (n,))
    expected["instruction_offsets"] = (np.int64, (n + 1,))
    expected["instruction_utf8"] = (np.uint8, None)
    if tensors.keys() != expected.keys():
        raise fail(f"tensors: {mismatch(expected, tensors)}")
    for key, (dtype, shape) in expected.items():
        tensor = tensors[key]
        if tensor.dtype != dtype or (shape is not None and tensor.shape != shape):
            raise fail(
                f"tensor {key} is {tensor.dtype} {list(tensor.shape)}, expected "
                f"{np.dtype(dtype)} {list(shape) if shape else '[bytes]'}"
            )
    return tensors, _decode_instructions(tensors, fail)


def shard_entry(name: str, data: bytes, observations: Sequence[Observation]) -> dict[str, Any]:
    """Return the index entry describing shard ``name`` with contents ``data``."""
    return {
        "file": name,
        "samples": len(observations),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "instructions": sorted({obs.instruction for obs in observations}),
    }


def new_index(cameras: Mapping[str, tuple[int, int]], state_dim: int, *, source: str,
              synthetic: bool, shard_size: int) -> dict[str, Any]:
    """Return the index of an empty buffer."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "cameras": {name: [h, w, 3] for name, (h, w) in cameras.items()},
        "state_dim": state_dim,
        "synthetic": bool(synthetic),
        "source": source,
        "shard_size": shard_size,
        "shards": [],
    }


def encode_index(index: Mapping[str, Any]) -> bytes:
    """Return ``index`` as UTF-8 JSON bytes."""
    return (json.dumps(index, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def read_index(index_path: Path) -> dict[str, Any]:
    """Read and check ``index.json``; raise BufferFormatError naming the first problem."""
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BufferFormatError(f"{index_path}: not valid JSON ({exc})") from exc
    check_index(index, index_path)
    return index


def check_index(index: Any, where: Path) -> None:
    """Raise BufferFormatError unless ``index`` is a well-formed index of this version."""

    def require(condition: bool, problem: str) -> None:
        if not condition:
            raise BufferFormatError(f"{where}: {problem}")

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
            bool(name) and is_shape(shape, 3) and shape[2] == 3,
            f"camera {name!r}: image shape {shape!r} is not [H, W, 3]",
        )
    for key in ("state_dim", "shard_size"):
        require(is_positive_int(index.get(key)), f"{key} must be a positive int")
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
            is_positive_int(shard.get("samples")) and is_positive_int(shard.get("bytes")),
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


def _decode_instructions(tensors: dict[str, np.ndarray], fail: Callable) -> list[str]:
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
