"""What the ROS path adds to a LIBERO summary.

Latency, skipped points, stale and dropped inputs, and the per-episode wall-time overhead
against the direct run of the same episodes: over all episodes, and over those that ran on an
already started bridge + node (the first episode of each session also pays process start-up
and the model's load).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from quantvla_ros.workflows.libero_summary import summarize


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None


def _total(values) -> int | None:
    values = [v for v in values if v is not None]
    return int(sum(values)) if values else None


def direct_label(label: str) -> str:
    """Return the direct run's label of a through-ROS label ("w4a8@ros-lockstep" -> "w4a8")."""
    return label.rsplit("@ros-", 1)[0]


def ros_summary(results, labels: Sequence[str]) -> dict:
    """Return latency and input counters per ROS label over its scored episodes.

    Where ``results`` hold the same policy's direct run (``direct_label``): the paired mean
    wall-time overhead per episode, how many episodes ended alike (outcome and steps) and
    the paired success difference (exact McNemar) against it.
    """
    by_key = {(r.policy, r.task, r.init, r.seed): r for r in results}
    have = {r.policy for r in results}
    out = {}
    for label in labels:
        direct = direct_label(label)
        direct = direct if direct != label and direct in have else None
        mine = [r for r in results if r.policy == label and r.ros and r.success is not None]
        if not mine:
            continue
        ros = [r.ros for r in mine]
        entry = {
            "episodes": len(mine),
            "latency_ms_p50_median": _median(x.get("latency_ms_p50") for x in ros),
            "latency_ms_max": max((x.get("latency_ms_max") or 0.0) for x in ros),
            "executed_points_mean": float(np.mean([x.get("executed_points", 0) for x in ros])),
            "skipped_points_mean": float(np.mean([x.get("skipped_points", 0) for x in ros])),
            "stopped_steps_mean": float(np.mean([x.get("stopped_steps", 0) for x in ros])),
            "dropped_observations": _total(x.get("dropped_observations") for x in ros),
            "stale_inputs": _total(x.get("stale_inputs") for x in ros),
            "bad_inputs": _total(x.get("bad_inputs") for x in ros),
            "wall_s_mean": float(np.mean([r.wall_s for r in mine])),
            "bridge_episode_s_mean": float(np.mean([x.get("wall_s", 0.0) for x in ros])),
            "sessions_started": sum(bool(x.get("session_started")) for x in ros),
            "retried": sum(r.attempts > 1 for r in mine),
        }
        if direct is not None:
            paired = [(r, by_key[(direct, r.task, r.init, r.seed)]) for r in mine
                      if (direct, r.task, r.init, r.seed) in by_key]
            if paired:
                reused = [r.wall_s - d.wall_s for r, d in paired
                          if not r.ros.get("session_started")]
                entry.update(
                    overhead_s_per_episode=float(np.mean([r.wall_s - d.wall_s
                                                          for r, d in paired])),
                    overhead_s_reused_node=float(np.mean(reused)) if reused else None,
                    same_outcome_and_steps=sum(d.success == r.success and d.steps == r.steps
                                               for r, d in paired),
                    paired_with_direct=len(paired), direct=direct,
                    vs_direct=summarize(results, [direct, label])["paired"][label])
        out[label] = entry
    return out


def ros_table(ros: dict) -> str:
    """Return a markdown table of :func:`ros_summary`."""
    if not ros:
        return ""
    lines = ["", "| through ROS | episodes (retried) | latency p50 (ms) | max (ms) "
             "| skipped points / ep | stopped steps / ep | dropped | stale | wall s / ep "
             "| overhead s / ep | on a started node | same outcome + steps as direct "
             "| success vs direct (95%; McNemar p) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(v, spec=".1f"):
        return "-" if v is None else format(v, spec)

    for label, e in ros.items():
        same = (f"{e['same_outcome_and_steps']}/{e['paired_with_direct']}"
                if "paired_with_direct" in e else "-")
        vs = e.get("vs_direct")
        vs = "-" if vs is None else (
            f"{100 * vs['difference'] + 0.0:+.1f} pts [{100 * vs['difference95'][0]:+.0f}, "
            f"{100 * vs['difference95'][1]:+.0f}]; p={vs['mcnemar_p']:.2g}")
        lines.append(
            f"| {label} | {e['episodes']} ({e.get('retried', 0)}) "
            f"| {fmt(e['latency_ms_p50_median'], '.0f')} "
            f"| {fmt(e['latency_ms_max'], '.0f')} | {e['skipped_points_mean']:.1f} "
            f"| {e['stopped_steps_mean']:.1f} | {fmt(e['dropped_observations'], 'd')} "
            f"| {fmt(e['stale_inputs'], 'd')} | {e['wall_s_mean']:.1f} "
            f"| {fmt(e.get('overhead_s_per_episode'))} "
            f"| {fmt(e.get('overhead_s_reused_node'))} | {same} | {vs} |")
    return "\n".join(lines) + "\n"
