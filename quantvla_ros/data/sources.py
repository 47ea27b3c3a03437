"""Open an observation source by spec: ``"synthetic:N"`` or the path of a recorded buffer."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from quantvla_ros.data.buffer import ObservationBuffer, RecordedBuffer
from quantvla_ros.data.shard_format import BufferFormatError
from quantvla_ros.data.synthetic import DEFAULT_STATE_DIM, SYNTHETIC_PREFIX, SyntheticBuffer


def open_observations(
    spec: str | os.PathLike[str],
    *,
    seed: int = 0,
    cameras: Mapping[str, tuple[int, int]] | None = None,
    state_dim: int = DEFAULT_STATE_DIM,
) -> ObservationBuffer:
    """Open an observation source: ``"synthetic:N"`` or the path of a buffer directory.

    ``seed``, ``cameras`` and ``state_dim`` shape synthetic observations only; a recorded
    buffer brings its own cameras and state dim. Raises BufferFormatError (a ValueError)
    for a malformed synthetic spec or a path that holds no buffer.
    """
    if isinstance(spec, str) and spec.startswith(SYNTHETIC_PREFIX):
        count = spec[len(SYNTHETIC_PREFIX):]
        if not count:
            raise BufferFormatError(f"{spec!r}: give a sample count, e.g. '{SYNTHETIC_PREFIX}64'")
        if not re.fullmatch(r"[0-9]+", count):
            raise BufferFormatError(f"{spec!r}: sample count {count!r} is not a positive integer")
        if int(count) == 0:
            raise BufferFormatError(f"{spec!r}: sample count must be positive")
        return SyntheticBuffer(int(count), seed, cameras, state_dim)
    path = Path(spec)
    if not path.is_dir():
        raise BufferFormatError(
            f"{spec!s}: no such calibration buffer directory "
            f"(give a directory recorded with RecordedBuffer, or '{SYNTHETIC_PREFIX}N')"
        )
    return RecordedBuffer.open(path)
