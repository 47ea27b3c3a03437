"""Closed-loop LIBERO through ROS 2 (``quantvla eval libero --through-ros``).

Each episode runs ``libero_bridge`` and ``quantvla_node`` as two processes on their own ROS
domain. This module starts processes and reads the bridge's JSON report (no ROS import). The
node gets the episode's seed with ``noise: sequence``, so its k-th chunk uses the same start noise
as the direct evaluation's k-th chunk: in lock-step the two runs see the same observations
and, up to floating point, act alike. An episode whose node crashes or stalls, or whose
trajectory the bridge refuses, is retried once and otherwise reported with its error, never
counted as a success or a failure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import yaml

from quantvla_ros.workflows import libero_ros_protocol as proto
from quantvla_ros.workflows.libero_eval import (
    Episode,
    EpisodeResult,
    Protocol,
    pending_jobs,
    run_jobs,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_MODULE = "quantvla_ros.ros.inference_node"
BRIDGE_MODULE = "quantvla_ros.ros.libero_bridge"


def ros_label(label: str, pace: str) -> str:
    """Return the result label of a policy run through ROS at ``pace``."""
    return f"{label}@ros-{pace}"


def node_params(source: str, precision: str, cameras: dict[str, str], seed: int,
                protocol: Protocol) -> dict:
    """Return quantvla_node's parameters for one episode (``cameras``: view -> slot)."""
    return {
        "use_sim_time": True, "policy": source, "precision": precision, "device": "cpu",
        "camera_topics": [proto.CAMERA_TOPICS[view] for view in cameras],
        "camera_slots": list(cameras.values()),
        "joint_state_topic": proto.JOINT_STATE_TOPIC, "joint_names": list(proto.STATE_NAMES),
        "action_names": list(proto.ACTION_NAMES), "instruction_topic": proto.INSTRUCTION_TOPIC,
        "output_topic": proto.TRAJECTORY_TOPIC, "control_rate_hz": 20.0,
        "actions_per_chunk": protocol.actions_per_chunk, "warmup_runs": 1,
        "sync_tolerance_s": 0.025, "max_observation_age_s": 0.5,
        "seed": int(seed), "noise": "sequence",
    }


def bridge_params(episode: Episode, protocol: Protocol, pace: str, report: Path,
                  frames: Path | None, stall_timeout_s: float) -> dict:
    """Return libero_bridge's parameters for one episode."""
    return {
        "suite": protocol.suite, "task": episode.task, "inits": str(episode.init),
        "resolution": protocol.resolution, "settle_steps": protocol.settle_steps,
        "max_steps": protocol.max_steps or 0, "pace": pace, "control_rate_hz": 20.0,
        "actions_per_chunk": protocol.actions_per_chunk, "managed_node": "quantvla_node",
        "stall_timeout_s": float(stall_timeout_s), "report_path": str(report),
        "frames_path": "" if frames is None else str(frames),
    }


def _params_file(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": values}}))
    return path


def _environment(domain: int, log_dir: Path, threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               ROS_LOG_DIR=str(log_dir), OMP_NUM_THREADS=str(threads),
               PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGINT (a ROS node's Ctrl-C), then kill after ``grace_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _tail(path: Path, lines: int = 6) -> str:
    try:
        return " / ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


class RosEpisodeError(RuntimeError):
    """The episode could not be scored (crash, stall, refused trajectory, timeout)."""


def run_processes(node_cmd: Sequence[str], bridge_cmd: Sequence[str], env: dict, work: Path,
                  report: Path, timeout_s: float) -> dict:
    """Run node and bridge until the bridge ends; return its report or raise RosEpisodeError."""
    node_log, bridge_log = work / "node.log", work / "bridge.log"
    with node_log.open("wb") as nlog, bridge_log.open("wb") as blog:
        node = subprocess.Popen(list(node_cmd), env=env, stdout=nlog, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=str(REPO_ROOT))
        bridge = subprocess.Popen(list(bridge_cmd), env=env, stdout=blog,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  cwd=str(REPO_ROOT))
        deadline, error = time.monotonic() + timeout_s, None
        try:
            while bridge.poll() is None:
                if node.poll() is not None:  # the bridge shuts the node down last: wait
                    try:
                        bridge.wait(15)
                    except subprocess.TimeoutExpired:
                        error = (f"quantvla_node exited with code {node.returncode} during "
                                 f"the episode: {_tail(node_log)}")
                    break
                if time.monotonic() > deadline:
                    error = f"episode took over {timeout_s:.0f} s"
                    break
                time.sleep(0.2)
        finally:
            _stop(bridge)
            _stop(node)
    lines = report.read_text().splitlines() if report.is_file() else []
    if error is None and lines:
        result = json.loads(lines[-1])
        if result.get("error"):
            raise RosEpisodeError(result["error"])
        return result
    if error is None:
        code = bridge.returncode
        error = f"libero_bridge ended with code {code} and no report: {_tail(bridge_log)}"
        if node.returncode not in (0, None, -signal.SIGINT):
            error += f" (quantvla_node code {node.returncode}: {_tail(node_log)})"
    raise RosEpisodeError(error)


def run_episode_through_ros(source: str, precision: str, label: str, episode: Episode,
                            protocol: Protocol, pace: str, cameras: dict[str, str],
                            domain: int, keep_frames: bool = False, threads: int = 1,
                            stall_timeout_s: float = 60.0, timeout_s: float = 3600.0,
                            node_cmd: Sequence[str] | None = None) -> EpisodeResult:
    """Run one episode through ROS; raise RosEpisodeError when it cannot be scored."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="quantvla-ros-") as tmp:
        work = Path(tmp)
        report, frames = work / "report.jsonl", (work / "frames" if keep_frames else None)
        nparams = _params_file(work / "node.yaml", node_params(
            source, precision, cameras, episode.seed, protocol))
        bparams = _params_file(work / "bridge.yaml", bridge_params(
            episode, protocol, pace, report, frames, stall_timeout_s))
        node_cmd = list(node_cmd or [sys.executable, "-m", NODE_MODULE])
        env = _environment(domain, work / "log", threads)
        r = run_processes(node_cmd + ["--ros-args", "--params-file", str(nparams)],
                          [sys.executable, "-m", BRIDGE_MODULE, "--ros-args",
                           "--params-file", str(bparams)], env, work, report, timeout_s)
        shots = Path(f"{frames}_init{episode.init}.npy") if frames else None
        kept = list(np.load(shots)) if shots is not None and shots.is_file() else []
    ros = {k: r[k] for k in r if k not in ("task", "init", "instruction", "success", "error",
                                          "steps", "chunks")}
    return EpisodeResult(label, episode.task, episode.init, episode.seed, bool(r["success"]),
                         steps=r["steps"], chunks=r["chunks"],
                         wall_s=time.perf_counter() - start, instruction=r["instruction"],
                         frames=kept, ros=ros)


def evaluate_through_ros(sources: dict[str, tuple[str, str]], episodes: Sequence[Episode],
                         protocol: Protocol, cameras: dict[str, str], paces: Sequence[str],
                         workers: int = 1, out: Path | None = None, video_episodes: int = 0,
                         on_result: Callable[[EpisodeResult], None] | None = None,
                         threads: int = 1, domain_base: int | None = None,
                         **episode_options) -> list[EpisodeResult]:
    """Run every (policy, pace) on every episode through ROS; finished ones are kept.

    ``sources``: label -> (source, precision). Each worker has its own ROS domain.
    """
    labels = {ros_label(label, pace): (src, prec, pace)
              for label, (src, prec) in sources.items() for pace in paces}
    results, jobs = pending_jobs(labels, episodes, out, video_episodes)
    base = 120 + os.getpid() % 80 if domain_base is None else domain_base
    local, lock, counter = threading.local(), threading.Lock(), [0]

    def domain() -> int:
        if not hasattr(local, "domain"):
            with lock:
                local.domain, counter[0] = (base + counter[0]) % 230, counter[0] + 1
        return local.domain

    def job(label: str, ep: Episode, keep: bool) -> EpisodeResult:
        src, prec, pace = labels[label]
        errors = []
        for attempt in (1, 2):
            try:
                result = run_episode_through_ros(src, prec, label, ep, protocol, pace, cameras,
                                                 domain(), keep, threads, **episode_options)
                result.attempts = attempt
                return result
            except Exception as exc:  # noqa: BLE001 - reported, never counted
                errors.append(f"attempt {attempt}: {type(exc).__name__}: {exc}")
        return EpisodeResult(label, ep.task, ep.init, ep.seed, None, attempts=2,
                             error=" | ".join(errors))

    return run_jobs(jobs, job, workers, out, results, on_result)
