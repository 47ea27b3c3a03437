"""What quantvla_node publishes: the JointTrajectory of a chunk and its DiagnosticArray."""

from __future__ import annotations

import numpy as np
import torch
from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from quantvla_ros.ros import diagnostics as diag
from quantvla_ros.ros.convert import ns_to_sec_nsec


def trajectory(stamp_ns: int, joint_names, actions: np.ndarray,
               control_rate_hz: float) -> JointTrajectory:
    """Build a JointTrajectory: one point per row of ``actions`` [n, len(joint_names)]."""
    msg = JointTrajectory()
    sec, nsec = ns_to_sec_nsec(stamp_ns)
    msg.header.stamp = Time(sec=sec, nanosec=nsec)
    msg.joint_names = list(joint_names)
    dt_ns = 1e9 / control_rate_hz
    for i, row in enumerate(actions):
        sec, nsec = ns_to_sec_nsec(round((i + 1) * dt_ns))
        msg.points.append(JointTrajectoryPoint(
            positions=[float(v) for v in row], time_from_start=Duration(sec=sec, nanosec=nsec)))
    return msg


def diagnostics(node) -> DiagnosticArray:
    """Build ``node``'s (a configured QuantVLANode) diagnostics; clears the problems reported."""
    s, name = node.settings, node.get_name()
    dropped = node._worker.dropped if node._worker else 0
    values: dict[str, object] = {
        "policy": s.policy, "device": s.device, "precision": s.precision,
        "trajectories_published": node.published, "inferences": node.latency.count,
    }
    for label, stats in (("latency_ms", node.latency),
                         ("observation_to_publish_ms", node.obs_to_publish)):
        summary = stats.summary() or {}
        for k, v in summary.items():
            values[f"{label}_{k}"] = v
    if s.device.startswith("cuda") and torch.cuda.is_available():
        values["gpu_memory_allocated_mb"] = torch.cuda.memory_allocated(s.device) / 2**20
        values["gpu_memory_reserved_mb"] = torch.cuda.memory_reserved(s.device) / 2**20
    policy_problems = node.policy_problems.take()
    level = max((p.level for p in policy_problems.values()), default=diag.OK)
    lat = node.latency.summary()
    text = "; ".join(p.message for p in policy_problems.values()) or (
        f"p50 {lat['p50']:.1f} ms" if lat else "no inference yet")
    totals = node.input_problems.totals
    input_values: dict[str, object] = {
        "dropped_observations": dropped, "stale_inputs": totals["stale"],
        "bad_inputs": totals["bad"],
    }
    for slot, age in node._inputs.camera_ages().items():
        input_values[f"frame_age_s.{slot}"] = "none" if age is None else age
    now = node.get_clock().now().to_msg()
    return diag.array(now, [
        diag.status(f"{name}: policy", level, text, s.policy, values),
        diag.problems_status(f"{name}: inputs", name, node.input_problems.take(),
                             input_values),
    ])
