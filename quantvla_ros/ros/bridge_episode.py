"""One bridge episode's bookkeeping: trajectories received, latency, counters, the report."""

from __future__ import annotations

import time

import numpy as np

from quantvla_ros.ros.trajectory_follower import Follower, Plan


class EpisodeAborted(RuntimeError):
    """The episode cannot be scored: a stalled node or a refused trajectory."""


class EpisodeRecord:
    """What the bridge measures during one episode (plain Python, no ROS)."""

    def __init__(self, task: int, init: int, instruction: str,
                 counters_at_start: dict[str, int] | None, step_ns: int) -> None:
        """Start the record; ``counters_at_start``: the node's input counters so far."""
        self.task, self.init, self.instruction = task, init, instruction
        self.step_ns = step_ns
        self.success: bool | None = None
        self.error: str | None = None
        self.steps = 0
        self.plans = 0
        self.refused = 0
        self.follower: Follower | None = None
        self.frame_walls: dict[int, float] = {}  # frame stamp ns -> wall time published
        self.frames: list = []
        self.latency_ms: list[float] = []  # frame publish -> trajectory receipt, wall clock
        self.late_steps: list[int] = []  # simulated steps between a frame and its trajectory
        self.realtime_lag_s = 0.0
        self._start_counters = counters_at_start
        self._counters: dict[str, int] | None = None
        self._wall0 = time.perf_counter()
        self._last_plan_wall = self._wall0
        self._stamps: set[int] = set()

    def receive(self, plan: Plan, wall: float, sim_ns: int) -> None:
        """Take an arrived trajectory: frames of earlier episodes are ignored."""
        if plan.stamp_ns not in self.frame_walls:
            return
        self.plans += 1
        self._stamps.add(plan.stamp_ns)
        self._last_plan_wall = wall
        self.latency_ms.append((wall - self.frame_walls[plan.stamp_ns]) * 1000.0)
        self.late_steps.append(max(0, (sim_ns - plan.stamp_ns) // self.step_ns))
        self.follower.accept(plan)

    def has_plan_for(self, stamp_ns: int) -> bool:
        """Return True once the trajectory for the frame at ``stamp_ns`` has arrived."""
        return stamp_ns in self._stamps

    def check_stall(self, timeout_s: float) -> None:
        """Real time: abort when no trajectory came for ``timeout_s`` wall seconds."""
        quiet = time.perf_counter() - self._last_plan_wall
        if quiet > timeout_s:
            raise EpisodeAborted(f"no trajectory for {quiet:.1f} s: the node stopped publishing")

    def finish(self, counters_at_end: dict[str, int] | None) -> None:
        """Close the record with the node's input counters at the end."""
        self.wall_s = time.perf_counter() - self._wall0
        self._counters = counters_at_end

    def report(self) -> dict:
        """Return the episode's JSON report."""
        lat = np.asarray(self.latency_ms, np.float64)
        f = self.follower
        counters = {}
        if self._counters is not None:
            start = self._start_counters or {}
            counters = {k: v - start.get(k, 0) for k, v in self._counters.items()}
        return {
            "task": self.task, "init": self.init, "instruction": self.instruction,
            "success": None if self.error else bool(self.success), "error": self.error,
            "steps": self.steps, "chunks": self.plans, "wall_s": round(self.wall_s, 3),
            "latency_ms_p50": float(np.median(lat)) if lat.size else None,
            "latency_ms_mean": float(lat.mean()) if lat.size else None,
            "latency_ms_max": float(lat.max()) if lat.size else None,
            "late_steps_mean": float(np.mean(self.late_steps)) if self.late_steps else None,
            "executed_points": f.executed if f else 0, "skipped_points": f.skipped if f else 0,
            "stopped_steps": f.stopped if f else 0, "refused": self.refused,
            "realtime_lag_s": round(self.realtime_lag_s, 3),
            "dropped_observations": counters.get("dropped_observations"),
            "stale_inputs": counters.get("stale_inputs"),
            "bad_inputs": counters.get("bad_inputs"),
        }
