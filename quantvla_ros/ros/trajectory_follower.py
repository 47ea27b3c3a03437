"""What a trajectory controller does with JointTrajectory messages, for a simulated robot.

No rclpy here: messages are read by field name, times are integer nanoseconds of the robot's
clock. A trajectory is checked whole before it may replace the current one
(:func:`parse_trajectory`): wrong or repeated joint names, a point of the wrong length, a NaN
or infinite value, times that do not increase, or no points at all refuse it, and a refused
trajectory is never executed.

:class:`Follower` executes the newest accepted trajectory. Point i is the command for the
control step that ends at ``stamp + time_from_start[i]``: at a step starting at time t the
follower takes the first point whose time is still ahead of t. Points whose time has passed
before they were executed are skipped (counted), as a joint_trajectory_controller skips a
late trajectory's past points. When no point of the newest trajectory is ahead of t, no
trajectory is current: the robot stops (motion commands 0) and holds the last executed value
of the ``hold`` dims (the gripper).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class TrajectoryRefused(ValueError):
    """A trajectory that must not be executed; the message says why."""


@dataclass(frozen=True)
class Plan:
    """A checked trajectory: absolute point times and the commands in the robot's dim order."""

    stamp_ns: int
    ends_ns: tuple[int, ...]
    commands: np.ndarray  # [points, dims], float64


def _duration_ns(d) -> int:
    return int(d.sec) * 1_000_000_000 + int(d.nanosec)


def parse_trajectory(msg, names: Sequence[str], receipt_ns: int) -> Plan:
    """Check ``msg`` (a JointTrajectory) against the robot's ``names``; return its Plan.

    A zero header stamp means "start now" (``receipt_ns``), as for a trajectory controller.
    """
    got = list(msg.joint_names)
    if len(set(got)) != len(got):
        raise TrajectoryRefused(f"joint names repeat: {got}")
    if set(got) != set(names):
        raise TrajectoryRefused(f"joint names {got} are not the robot's {list(names)}")
    if not msg.points:
        raise TrajectoryRefused("no points")
    order = [got.index(n) for n in names]
    stamp = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
    stamp = stamp or int(receipt_ns)
    rows, ends, last = [], [], -1
    for i, point in enumerate(msg.points):
        values = [float(v) for v in point.positions]
        if len(values) != len(got):
            raise TrajectoryRefused(f"point {i} has {len(values)} positions for "
                                    f"{len(got)} joints")
        if not all(math.isfinite(v) for v in values):
            raise TrajectoryRefused(f"point {i} is not finite: {values}")
        t = _duration_ns(point.time_from_start)
        if t <= last or t < 0:
            raise TrajectoryRefused(f"point {i}: time_from_start {t} ns does not increase")
        last = t
        rows.append([values[k] for k in order])
        ends.append(stamp + t)
    return Plan(stamp, tuple(ends), np.asarray(rows, np.float64))


class Follower:
    """Executes the newest Plan step by step (see the module docstring)."""

    def __init__(self, dims: int, hold: Sequence[int] = (), initial: Sequence[float] = (),
                 limit: float | None = None) -> None:
        """``hold``: dims kept at their last value when stopped; ``initial``: their start.

        ``limit`` clips every command to [-limit, limit] (the controller's input range).
        """
        self.dims, self.hold, self.limit = dims, tuple(hold), limit
        self.held = np.zeros(dims, np.float64)
        for k, v in zip(self.hold, initial, strict=False):
            self.held[k] = v
        self.plan: Plan | None = None
        self._next = 0  # first point of the plan not executed or skipped yet
        self.executed = 0
        self.skipped = 0
        self.stopped = 0

    def accept(self, plan: Plan) -> None:
        """Make ``plan`` the current trajectory (the newest received wins)."""
        self.plan, self._next = plan, 0

    def command(self, t_ns: int) -> tuple[np.ndarray, int | None]:
        """Return (command, point index) for the step starting at ``t_ns``; index None = stop."""
        plan = self.plan
        index = None
        if plan is not None and t_ns >= plan.stamp_ns:
            ahead = [i for i, end in enumerate(plan.ends_ns) if end > t_ns]
            index = ahead[0] if ahead else None
            passed = len(plan.ends_ns) if index is None else index
            self.skipped += max(0, passed - self._next)
            self._next = max(self._next, passed)
        if index is None:
            self.stopped += 1
            out = np.zeros(self.dims, np.float64)
            out[list(self.hold)] = self.held[list(self.hold)]
            return out, None
        out = plan.commands[index].copy()
        if self.limit is not None:
            out = np.clip(out, -self.limit, self.limit)
        self.held[list(self.hold)] = out[list(self.hold)]
        self._next = index + 1
        self.executed += 1
        return out, index
