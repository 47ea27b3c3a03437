"""Closed-loop LIBERO through ROS 2 (``quantvla eval libero --through-ros``).

Each evaluation worker keeps one :class:`RosSession` per (policy, pace): ``libero_bridge``
(``serve``: episodes asked one JSON line at a time on its standard input) and
``quantvla_node`` as two processes on the session's own ROS domain, started once and reused
for every episode (process start-up and model loading are most of an episode's cost
otherwise). This module starts processes and reads the bridge's JSON reports (no ROS import).
Per episode the bridge sets the node's ``seed`` to the episode's seed and activates it; with
``noise: sequence`` the node's k-th chunk then takes the same start noise as the direct
evaluation's k-th chunk: in lock-step the two runs see the same observations and, up to
floating point, act alike. The node publishes its whole action horizon and is asked for a
new chunk every ``actions_per_chunk`` steps (the direct protocol's replanning): in lock-step
the next chunk always arrives before the extra points would run; in real time they keep the
robot moving while the next chunk is computed.

An episode whose node or bridge crashes or stalls, or whose trajectory the bridge refuses, ends
its session (both processes stopped); it is retried once on a fresh session and otherwise
reported with its error, never counted as a success or a failure.
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
                protocol: Protocol, noise_scale: float | None = None,
                trajectory_points: int = 0) -> dict:
    """Return quantvla_node's parameters (``cameras``: view -> slot).

    ``noise_scale`` None: the policy's declared one; ``trajectory_points`` 0: actions_per_chunk.
    """
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
        "noise_scale": -1.0 if noise_scale is None else float(noise_scale),
        "trajectory_points": int(trajectory_points),
    }


def bridge_params(protocol: Protocol, pace: str, stall_timeout_s: float) -> dict:
    """Return libero_bridge's parameters for a session (episodes come on its stdin).

    The session adds ``report_path`` and ``frames_path`` (its own folder).
    """
    return {
        "suite": protocol.suite, "serve": True,
        "resolution": protocol.resolution, "settle_steps": protocol.settle_steps,
        "max_steps": protocol.max_steps or 0, "pace": pace, "control_rate_hz": 20.0,
        "actions_per_chunk": protocol.actions_per_chunk, "managed_node": "quantvla_node",
        "stall_timeout_s": float(stall_timeout_s),
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


class RosSession:
    """One bridge and one node process serving episodes in turn (one evaluation worker's).

    ``node_cmd`` / ``bridge_cmd``: the commands (``--ros-args --params-file F`` is appended).
    Any failure stops both processes and raises RosEpisodeError; the next episode starts a
    fresh pair.
    """

    def __init__(self, node_values: dict, bridge_values: dict, domain: int, threads: int,
                 node_cmd: Sequence[str] | None = None,
                 bridge_cmd: Sequence[str] | None = None) -> None:
        """Keep the settings; nothing starts until the first episode."""
        self.node_values, self.bridge_values = node_values, bridge_values
        self.domain, self.threads = domain, threads
        self.node_cmd = list(node_cmd or [sys.executable, "-m", NODE_MODULE])
        self.bridge_cmd = list(bridge_cmd or [sys.executable, "-m", BRIDGE_MODULE])
        self.node: subprocess.Popen | None = None
        self.bridge: subprocess.Popen | None = None
        self.starts = 0
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._logs: list = []
        self._reports = 0

    @property
    def work(self) -> Path:
        """The session's folder (parameters, logs, reports, frames)."""
        return Path(self._tmp.name)

    def alive(self) -> bool:
        """Return True while both processes run."""
        return all(p is not None and p.poll() is None for p in (self.node, self.bridge))

    def start(self) -> None:
        """Start both processes (the bridge configures the node, then waits for episodes)."""
        self._tmp = tempfile.TemporaryDirectory(prefix="quantvla-ros-")
        work = self.work
        bridge_values = {**self.bridge_values, "report_path": str(work / "report.jsonl"),
                         "frames_path": str(work / "frames")}
        nparams = _params_file(work / "node.yaml", self.node_values)
        bparams = _params_file(work / "bridge.yaml", bridge_values)
        env = _environment(self.domain, work / "log", self.threads)
        self._logs = [(work / "node.log").open("wb"), (work / "bridge.log").open("wb")]
        self.node = subprocess.Popen(
            self.node_cmd + ["--ros-args", "--params-file", str(nparams)], env=env,
            stdout=self._logs[0], stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=str(REPO_ROOT))
        self.bridge = subprocess.Popen(
            self.bridge_cmd + ["--ros-args", "--params-file", str(bparams)], env=env,
            stdout=self._logs[1], stderr=subprocess.STDOUT, stdin=subprocess.PIPE,
            cwd=str(REPO_ROOT))
        self._reports, self.starts = 0, self.starts + 1

    def _reports_so_far(self) -> list[str]:
        """Return the complete report lines so far (a line being written is left out)."""
        path = self.work / "report.jsonl"
        return path.read_text().split("\n")[:-1] if path.is_file() else []

    def _failure(self) -> str:
        node_log, bridge_log = self.work / "node.log", self.work / "bridge.log"
        if self.node.poll() is not None:
            return (f"quantvla_node exited with code {self.node.returncode} during the "
                    f"episode: {_tail(node_log)}")
        return (f"libero_bridge exited with code {self.bridge.returncode} during the episode: "
                f"{_tail(bridge_log)}")

    def run(self, episode: Episode, timeout_s: float,
            keep_frames: bool = False) -> tuple[dict, Path | None]:
        """Run one episode; return (the bridge's report, its frames file or None)."""
        if not self.alive():  # first episode, or a process died since the last one
            self.close()
            self.start()
        error = None
        try:
            ask = {"task": episode.task, "init": episode.init, "seed": episode.seed,
                   "frames": keep_frames}
            self.bridge.stdin.write((json.dumps(ask) + "\n").encode())
            self.bridge.stdin.flush()
        except OSError as exc:
            error = f"libero_bridge does not take episodes: {exc!r}"
        deadline = time.monotonic() + timeout_s
        while error is None:
            lines = self._reports_so_far()
            if len(lines) > self._reports:
                self._reports = len(lines)
                result = json.loads(lines[-1])
                if result.get("error"):
                    error = result["error"]  # stalled node / refused trajectory: start afresh
                    break
                frames = self.work / f"frames_task{episode.task}_init{episode.init}.npy"
                return result, frames if frames.is_file() else None
            if not self.alive():
                time.sleep(1.0)  # a report written just before the exit still counts
                if len(self._reports_so_far()) > self._reports:
                    continue
                error = self._failure()
            elif time.monotonic() > deadline:
                error = f"episode took over {timeout_s:.0f} s"
            else:
                time.sleep(0.2)
        self.close()
        raise RosEpisodeError(error)

    def close(self) -> None:
        """End the session: the bridge shuts the node down when its input closes."""
        if self.bridge is not None and self.bridge.poll() is None:
            try:
                self.bridge.stdin.close()
                self.bridge.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                pass
        for proc in (self.bridge, self.node):
            if proc is not None:
                _stop(proc)
        for f in self._logs:
            f.close()
        self._logs, self.node, self.bridge = [], None, None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def run_episode_through_ros(session: RosSession, label: str, episode: Episode,
                            timeout_s: float = 3600.0, keep_frames: bool = False
                            ) -> EpisodeResult:
    """Run one episode on ``session``; raise RosEpisodeError when it cannot be scored."""
    start = time.perf_counter()
    starts = session.starts
    r, shots = session.run(episode, timeout_s, keep_frames)
    kept = list(np.load(shots)) if shots is not None else []
    if shots is not None:
        shots.unlink()
    ros = {k: r[k] for k in r if k not in ("task", "init", "instruction", "success", "error",
                                          "steps", "chunks")}
    ros["session_started"] = session.starts > starts  # this episode paid the process start
    return EpisodeResult(label, episode.task, episode.init, episode.seed, bool(r["success"]),
                         steps=r["steps"], chunks=r["chunks"],
                         wall_s=time.perf_counter() - start, instruction=r["instruction"],
                         frames=kept, ros=ros)


def evaluate_through_ros(sources: dict[str, tuple[str, str]], episodes: Sequence[Episode],
                         protocol: Protocol, cameras: dict[str, str], paces: Sequence[str],
                         workers: int = 1, out: Path | None = None, video_episodes: int = 0,
                         on_result: Callable[[EpisodeResult], None] | None = None,
                         threads: int = 1, domain_base: int | None = None,
                         stall_timeout_s: float = 60.0, timeout_s: float = 3600.0,
                         noise_scale: float | None = None, trajectory_points: int = 0,
                         node_cmd: Sequence[str] | None = None,
                         bridge_cmd: Sequence[str] | None = None) -> list[EpisodeResult]:
    """Run every (policy, pace) on every episode through ROS; finished ones are kept.

    ``sources``: label -> (source, precision). Each worker has one session per (policy,
    pace), reused across its episodes, each session on its own ROS domain: two nodes named
    ``quantvla_node`` on one domain would both answer one bridge's lifecycle calls and both
    publish trajectories to it.
    """
    labels = {ros_label(label, pace): (src, prec, pace)
              for label, (src, prec) in sources.items() for pace in paces}
    results, jobs = pending_jobs(labels, episodes, out, video_episodes)
    base = 120 + os.getpid() % 80 if domain_base is None else domain_base
    local, lock, counter, sessions = threading.local(), threading.Lock(), [0], []

    def session(label: str) -> RosSession:
        if not hasattr(local, "sessions"):
            local.sessions = {}
        if label not in local.sessions:
            src, prec, pace = labels[label]
            node = node_params(src, prec, cameras, 0, protocol, noise_scale, trajectory_points)
            bridge = bridge_params(protocol, pace, stall_timeout_s)
            with lock:
                domain, counter[0] = (base + counter[0]) % 230, counter[0] + 1
                local.sessions[label] = RosSession(node, bridge, domain, threads, node_cmd,
                                                   bridge_cmd)
                sessions.append(local.sessions[label])
        return local.sessions[label]

    def job(label: str, ep: Episode, keep: bool) -> EpisodeResult:
        errors = []
        for attempt in (1, 2):
            try:
                result = run_episode_through_ros(session(label), label, ep, timeout_s, keep)
                result.attempts = attempt
                if errors:  # scored on the retry: what went wrong first stays on record
                    result.ros = {**(result.ros or {}), "first_attempt_error": errors[0]}
                return result
            except Exception as exc:  # noqa: BLE001 - reported, never counted
                errors.append(f"attempt {attempt}: {type(exc).__name__}: {exc}")
        return EpisodeResult(label, ep.task, ep.init, ep.seed, None, attempts=2,
                             error=" | ".join(errors))

    try:
        return run_jobs(jobs, job, workers, out, results, on_result)
    finally:
        for s in sessions:
            s.close()
