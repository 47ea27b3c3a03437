"""Time pairing of camera frames and joint states (plain Python, no ROS).

One camera is the anchor (the first configured slot): every observation is stamped with an
anchor frame's time. The other cameras and the joint state contribute their sample nearest to
that time, if it lies within a tolerance; otherwise the observation is not pairable. The same
rules serve the live nodes (bounded :class:`TimedBuffer` per input) and the bag reader (sorted
stamp lists), so a recording and a live run pair alike.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import numpy as np


def nearest_index(stamps: Sequence[int], t: int, tolerance: int) -> int | None:
    """Index of the stamp nearest ``t`` in sorted ``stamps`` if within ``tolerance``, else None.

    Ties go to the earlier sample (it had certainly arrived when ``t`` was observed).
    """
    if not stamps:
        return None
    i = bisect.bisect_left(stamps, t)
    best = None
    for j in (i - 1, i):
        if 0 <= j < len(stamps):
            d = abs(stamps[j] - t)
            if d <= tolerance and (best is None or d < abs(stamps[best] - t)):
                best = j
    return best


def select_by_rate(stamps: Sequence[int], min_interval: int) -> list[int]:
    """Return the indices of sorted ``stamps`` to keep, at most one per ``min_interval``."""
    keep: list[int] = []
    last = None
    for i, t in enumerate(stamps):
        if last is None or t - last >= min_interval:
            keep.append(i)
            last = t
    return keep


def spread(n: int, k: int) -> list[int]:
    """``min(n, k)`` indices evenly spread over ``range(n)``, first and last included."""
    if k >= n:
        return list(range(n))
    if k <= 0:
        return []
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, k)})


class TimedBuffer:
    """The most recent ``maxlen`` (stamp ns, item) samples of one input, kept in stamp order."""

    def __init__(self, maxlen: int = 32) -> None:
        """Keep at most ``maxlen`` samples; the oldest are dropped first."""
        if maxlen < 1:
            raise ValueError(f"maxlen must be positive, got {maxlen}")
        self.maxlen = maxlen
        self._stamps: list[int] = []
        self._items: list[Any] = []

    def __len__(self) -> int:
        """Return the number of samples held."""
        return len(self._stamps)

    def add(self, stamp: int, item: Any) -> None:
        """Insert a sample (out-of-order stamps are placed where they belong)."""
        i = bisect.bisect_right(self._stamps, stamp)
        self._stamps.insert(i, stamp)
        self._items.insert(i, item)
        if len(self._stamps) > self.maxlen:
            del self._stamps[0], self._items[0]

    def clear(self) -> None:
        """Drop every sample."""
        self._stamps.clear()
        self._items.clear()

    def latest(self) -> tuple[int, Any] | None:
        """Return the newest (stamp, item), or None when empty."""
        return (self._stamps[-1], self._items[-1]) if self._stamps else None

    def nearest(self, stamp: int, tolerance: int) -> tuple[int, Any] | None:
        """Return the (stamp, item) nearest ``stamp`` within ``tolerance``, or None."""
        i = nearest_index(self._stamps, stamp, tolerance)
        return None if i is None else (self._stamps[i], self._items[i])
