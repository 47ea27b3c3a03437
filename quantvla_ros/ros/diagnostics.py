"""Rolling latency statistics, an input-problem board, and DiagnosticArray building.

The board collects the problems reported since the last diagnostics message (per key: worst
level, latest text, count) plus running totals by category; the node publishes and clears it
at 1 Hz, so a problem shows up in the next message and a healthy interval reads OK again.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

OK, WARN, ERROR = 0, 1, 2  # DiagnosticStatus.OK / WARN / ERROR
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR"}


class RollingStats:
    """Percentiles over the last ``window`` samples (milliseconds, typically)."""

    def __init__(self, window: int = 200) -> None:
        """Keep the most recent ``window`` samples."""
        self._values: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()
        self.count = 0

    def add(self, value: float) -> None:
        """Record one sample."""
        with self._lock:
            self._values.append(float(value))
            self.count += 1

    def summary(self) -> dict[str, float] | None:
        """Return p50 / p90 / max of the window, or None before the first sample."""
        with self._lock:
            if not self._values:
                return None
            v = np.asarray(self._values)
        return {"p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90)),
                "max": float(v.max())}


@dataclass
class Problem:
    """The worst level and the latest message of one problem key since the last report."""

    level: int
    message: str
    count: int = 1


class ProblemBoard:
    """Thread-safe record of input and inference problems (see module docstring)."""

    def __init__(self) -> None:
        """Start empty."""
        self._lock = threading.Lock()
        self._open: dict[str, Problem] = {}
        self.totals: Counter[str] = Counter()

    def report(self, key: str, level: int, message: str, category: str) -> None:
        """Record a problem under (``key``, ``category``); ``category`` feeds the totals.

        Keeping categories apart stops a later "stale" report from hiding the "bad" one that
        caused it (a NaN joint state, then no valid joint state to pair).
        """
        with self._lock:
            self.totals[category] += 1
            key = f"{key}.{category}"
            old = self._open.get(key)
            if old is None:
                self._open[key] = Problem(level, message)
            else:
                old.level, old.message, old.count = max(old.level, level), message, old.count + 1

    def take(self) -> dict[str, Problem]:
        """Return and clear the problems reported since the last call."""
        with self._lock:
            out, self._open = self._open, {}
        return out


def status(name: str, level: int, message: str, hardware_id: str,
           values: dict[str, object]) -> DiagnosticStatus:
    """Build one DiagnosticStatus; values are stringified (floats with 3 decimals)."""
    def fmt(v: object) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    return DiagnosticStatus(
        level=bytes([level]), name=name, message=message, hardware_id=hardware_id,
        values=[KeyValue(key=k, value=fmt(v)) for k, v in values.items()],
    )


def array(stamp, statuses: list[DiagnosticStatus]) -> DiagnosticArray:
    """Wrap statuses in a DiagnosticArray stamped ``stamp`` (a builtin_interfaces/Time)."""
    msg = DiagnosticArray()
    msg.header.stamp = stamp
    msg.status = statuses
    return msg


def problems_status(name: str, hardware_id: str, problems: dict[str, Problem],
                    values: dict[str, object]) -> DiagnosticStatus:
    """Summarize a board's problems: worst level, messages joined by '; ' (or 'inputs ok')."""
    level = max((p.level for p in problems.values()), default=OK)
    text = "; ".join(
        f"{p.message}" + (f" (x{p.count})" if p.count > 1 else "")
        for _, p in sorted(problems.items())
    )
    return status(name, level, text or "inputs ok", hardware_id, values)
