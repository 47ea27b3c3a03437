"""``libero_bridge``: a LIBERO task as a ROS 2 robot, for ``quantvla_node`` in closed loop.

It runs the task in the simulator process the project already has (``.venv-libero`` behind a
pipe), and is the robot a deployment would talk to:

- publishes both cameras as upright rgb8 ``sensor_msgs/Image`` (the simulator side applies
  LIBERO's 180-degree rotation, so the node applies none), every step the state as a
  ``sensor_msgs/JointState`` named ``STATE_NAMES``, the task instruction (default QoS) once
  the node listens, and ``/clock`` (the node runs on simulated time);
- executes the newest ``JointTrajectory`` (``ACTION_NAMES``) point by point at its
  ``time_from_start`` after the header stamp, skipping points whose time has passed, and
  stops (gripper held) when no trajectory is current; a malformed trajectory is refused and
  never executed (``trajectory_follower``);
- reports each episode (success, steps, timing, latency from observation to trajectory
  receipt, skipped points, the node's stale and dropped inputs) as one JSON line;
- runs the episodes of its parameters (one task, several inits), or with ``serve`` those
  asked on standard input (one process and one node for many episodes). The node is
  configured once; each episode sets its seed (parameter service), activates it and
  deactivates it at the end: activate is where the node starts an episode's state (noise
  sequence, inputs), deactivate guarantees nothing of it is published afterwards. If the
  process that started the bridge dies, the bridge abandons the episode at its next step and
  shuts the node down (neither outlives a killed evaluation).

Pacing: ``lockstep`` holds simulated time at each camera frame until the trajectory for it
has arrived (the direct evaluation's protocol); ``realtime`` advances one control step per
1 / control_rate_hz wall seconds whatever the node does, so inference latency costs steps.
The clock arithmetic is in ``workflows.libero_ros_protocol``.

    python -m quantvla_ros.ros.libero_bridge --ros-args -p task:=0 -p inits:=0-4
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.event_handler import PublisherEventCallbacks
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from quantvla_ros.ros import params
from quantvla_ros.ros.bridge_episode import EpisodeAborted, EpisodeRecord
from quantvla_ros.ros.bridge_io import (
    BRIDGE_PARAMS,
    Lifecycle,
    NodeInstruction,
    clock_msg,
    image_msg,
    input_counters,
    joint_state_msg,
    parse_inits,
)
from quantvla_ros.ros.trajectory_follower import Follower, TrajectoryRefused, parse_trajectory
from quantvla_ros.workflows import libero_ros_protocol as proto

NODE_NAME = "libero_bridge"
CLOCK_REPEAT_S = 0.5  # lock-step: the clock is re-sent while waiting (it is best effort)


class ParentGone(RuntimeError):
    """The process that started the bridge is gone: stop everything, report to no one."""


class LiberoBridge(Node):
    """The simulated robot (see the module docstring); episodes run on the caller's thread."""

    def __init__(self, sim_factory=None, **kwargs) -> None:
        """Declare parameters, create publishers and subscriptions."""
        super().__init__(NODE_NAME, **kwargs)
        params.declare(self, BRIDGE_PARAMS)
        v = params.read(self, BRIDGE_PARAMS)
        self.v = v
        self.clock = proto.Clock(v["control_rate_hz"], v["actions_per_chunk"], v["pace"])
        self.clock.check()
        self._sim_factory = sim_factory or proto.LiberoClient
        self._pubs = {view: self.create_publisher(Image, v[f"{view}_topic"], 10)
                      for view in proto.VIEWS}
        self._joint_pub = self.create_publisher(JointState, v["joint_state_topic"], 10)
        # Default QoS, as `ros2 topic pub`: the node's transient-local subscription cannot
        # match it by design (its volatile one reads it), which is not worth a warning.
        self._instruction_pub = self.create_publisher(
            String, v["instruction_topic"], 10,
            event_callbacks=PublisherEventCallbacks(incompatible_qos=lambda _event: None))
        self._clock_pub = self.create_publisher(Clock, "/clock", 10)
        self.create_subscription(JointTrajectory, v["trajectory_topic"], self._on_trajectory, 10)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._inbox: list = []  # (plan, receipt wall s, receipt sim ns)
        self._refusals: list[str] = []
        self.counters: dict[str, int] | None = None
        self.clock_ns = 0
        self.lifecycle = Lifecycle(self, v["managed_node"]) if v["managed_node"] else None
        self.node_instruction = (NodeInstruction(self, v["managed_node"])
                                 if self.lifecycle is not None else None)
        self._parent = os.getppid()  # the evaluation (or launch) that started this process

    # ---- callbacks (executor thread) -------------------------------------------------------
    def _on_trajectory(self, msg) -> None:
        wall, sim_ns = time.perf_counter(), self.clock_ns
        try:
            plan = parse_trajectory(msg, proto.ACTION_NAMES, sim_ns)
        except TrajectoryRefused as exc:
            self.get_logger().error(f"refused trajectory: {exc}", throttle_duration_sec=2.0)
            with self._arrived:
                self._refusals.append(str(exc))
                self._arrived.notify_all()
            return
        with self._arrived:
            self._inbox.append((plan, wall, sim_ns))
            self._arrived.notify_all()

    def _on_diagnostics(self, msg) -> None:
        counters = input_counters(msg)
        if counters is not None:
            self.counters = counters

    # ---- publishing ------------------------------------------------------------------------
    def publish_clock(self, t_ns: int) -> None:
        """Advance the simulated clock (never backwards)."""
        self.clock_ns = max(self.clock_ns, t_ns)
        self._clock_pub.publish(clock_msg(self.clock_ns))

    def publish_observation(self, obs: dict, t_ns: int) -> bool:
        """Publish the state, and the cameras when ``obs`` has images; return True if it did."""
        framed = all(view in obs for view in proto.VIEWS)
        if framed:
            for view in proto.VIEWS:
                self._pubs[view].publish(image_msg(obs[view], t_ns, view))
        self._joint_pub.publish(joint_state_msg(obs["state"], t_ns))
        return framed

    def publish_instruction(self, text: str, timeout: float = 30.0) -> None:
        """Publish the instruction once the node's subscription is matched."""
        deadline = time.monotonic() + timeout
        while self._instruction_pub.get_subscription_count() == 0:
            if time.monotonic() > deadline:
                raise EpisodeAborted(f"no subscriber on {self.v['instruction_topic']} "
                                     f"after {timeout:.0f} s")
            time.sleep(0.05)
        self._instruction_pub.publish(String(data=text))

    # ---- the node's lifecycle --------------------------------------------------------------
    def bring_up_node(self) -> None:
        """Configure the managed node at the activation clock, or wait until it is active."""
        timeout = self.v["node_timeout_s"]
        deadline = time.monotonic() + timeout
        while self._clock_pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.publish_clock(self.clock.activation_clock_ns)
        if self.lifecycle is None:
            return
        if self.v["autostarted"]:
            while self.lifecycle.state(timeout) != "active":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.v['managed_node']} not active after {timeout} s")
                time.sleep(0.5)
            return
        if not self.lifecycle.change("configure", timeout):
            raise RuntimeError(f"{self.v['managed_node']} failed to configure (see its log)")

    def start_node(self, seed: int | None) -> None:
        """Episode start: set the node's seed (if given) and activate it on a tick-grid clock.

        The node reads seed / noise / noise_scale and restarts its noise sequence at activate,
        and its timer counts from the clock it holds then: a grid point, so the ticks stay
        where ``Clock`` expects them.
        """
        if self.lifecycle is None or self.v["autostarted"]:
            return
        if seed is not None:
            self.lifecycle.set_parameters({"seed": int(seed)}, 30.0)
        self.publish_clock(self.clock.first_tick_after(self.clock_ns, 1))
        time.sleep(0.2)  # the node must hold that clock when its timer is made
        if not self.lifecycle.change("activate", 60.0):
            raise RuntimeError(f"{self.v['managed_node']} failed to activate (see its log)")

    def stop_node(self) -> None:
        """Episode end: deactivate the node (it drops its inputs and any chunk in hand)."""
        if self.lifecycle is None or self.v["autostarted"]:
            return
        if not self.lifecycle.change("deactivate", 60.0):
            raise RuntimeError(f"{self.v['managed_node']} failed to deactivate")

    def shut_down_node(self) -> None:
        """Shut the managed node down (its process then exits)."""
        if self.lifecycle is None or self.v["autostarted"]:
            return
        try:
            self.lifecycle.change("shutdown", 30.0)
        except TimeoutError as exc:
            self.get_logger().warning(f"shutdown: {exc}")

    # ---- plans -------------------------------------------------------------------------------
    def _take(self, episode) -> None:
        """Move arrived trajectories into the episode; a refusal aborts it."""
        with self._lock:
            inbox, self._inbox = self._inbox, []
            refusals, self._refusals = self._refusals, []
        if refusals:
            episode.refused += len(refusals)
            raise EpisodeAborted(f"refused trajectory: {refusals[0]}")
        for plan, wall, sim_ns in inbox:
            episode.receive(plan, wall, sim_ns)

    def _wait_for_plan(self, episode, stamp_ns: int) -> None:
        """Lock-step: hold simulated time until the trajectory for ``stamp_ns`` is here."""
        deadline = time.monotonic() + self.v["stall_timeout_s"]
        while True:
            self._take(episode)
            if episode.has_plan_for(stamp_ns):
                return
            self._check_parent()
            left = deadline - time.monotonic()
            if left <= 0:
                raise EpisodeAborted(
                    f"no trajectory for the observation at {stamp_ns / 1e9:.3f} s within "
                    f"{self.v['stall_timeout_s']:g} s: the node stopped publishing")
            with self._arrived:
                if not self._inbox and not self._refusals:
                    self._arrived.wait(min(left, CLOCK_REPEAT_S))
            self.publish_clock(stamp_ns)  # the tick again, in case a best-effort copy was lost

    def _wait_for_instruction(self, text: str) -> None:
        """Hold the first frame until the node says it follows ``text``.

        Else, when the message is slow, the previous episode's instruction serves the first
        chunk. Without a managed node a fixed 0.2 s has to do.
        """
        if self.node_instruction is None:
            time.sleep(0.2)
            return
        if not self.node_instruction.wait_for(text, self.v["stall_timeout_s"],
                                              self._check_parent):
            raise EpisodeAborted(
                f"{self.v['managed_node']} did not take the instruction {text!r} within "
                f"{self.v['stall_timeout_s']:g} s (it follows {self.node_instruction.text!r})")

    def _check_parent(self) -> None:
        """Abandon the episode once the process that started the bridge is gone.

        However it died (even killed), its children are re-parented: the bridge then stops
        and, on its way out, shuts its node down instead of leaving both serving no one.
        """
        if os.getppid() != self._parent:
            raise ParentGone(f"the process that started the bridge (pid {self._parent}) is "
                             "gone: episode abandoned, node shut down")

    # ---- one episode -------------------------------------------------------------------------
    def run_episode(self, sim, init: int, task: int | None = None) -> EpisodeRecord:
        """Run one episode of ``task`` (default: the parameter) from init state ``init``."""
        v, clock = self.v, self.clock
        task = v["task"] if task is None else task
        limit = proto.step_limit(v["suite"], v["max_steps"])
        obs = sim.reset(v["suite"], task, init=init, resolution=v["resolution"],
                        settle=v["settle_steps"])
        rec = EpisodeRecord(task, init, str(obs["instruction"]), self.counters, clock.step_ns)
        with self._lock:
            self._inbox, self._refusals = [], []
        follower = Follower(len(proto.ACTION_NAMES), hold=(proto.GRIPPER_INDEX,),
                            initial=(proto.INITIAL_GRIPPER,), limit=proto.ACTION_LIMIT)
        rec.follower = follower
        self.publish_instruction(rec.instruction)
        t = clock.first_tick_after(self.clock_ns) - clock.frame_lead_ns
        first_frame, frame_every = t, clock.actions_per_chunk * clock.step_ns
        lockstep = clock.pace == "lockstep"
        try:
            self._wait_for_instruction(rec.instruction)
            self._frame(obs, t, rec, lockstep)
            wall0, done = time.perf_counter(), bool(obs["done"])
            while rec.steps < limit and not done:
                self._check_parent()
                if lockstep and t in rec.frame_walls:
                    self._wait_for_plan(rec, t)
                elif not lockstep:
                    time.sleep(max(0.0, wall0 + (t - first_frame) / 1e9 - time.perf_counter()))
                    self._take(rec)
                    rec.check_stall(v["stall_timeout_s"])
                action, _ = follower.command(t)
                render = (t + clock.step_ns - first_frame) % frame_every == 0
                obs = sim.step(action, render=render)
                rec.steps, t, done = rec.steps + 1, t + clock.step_ns, bool(obs["done"])
                if render:
                    self._frame(obs, t, rec, lockstep)
                else:
                    self.publish_observation(obs, t)
                    self.publish_clock(t)
            rec.success = done
            rec.realtime_lag_s = (time.perf_counter() - wall0) - (t - first_frame) / 1e9
        except EpisodeAborted as exc:
            rec.error = str(exc)
            self.get_logger().error(f"task {task} init {init}: {exc}")
        rec.finish(self.counters)
        return rec

    def _frame(self, obs: dict, t: int, rec, lockstep: bool) -> None:
        """Publish a camera frame (and the state), then the clock."""
        self.publish_observation(obs, t)
        rec.frame_walls[t] = time.perf_counter()
        rec.frames.append(obs[proto.VIEWS[0]])
        if lockstep:
            time.sleep(self.v["frame_delay_s"])
        self.publish_clock(t)

    def episodes(self):
        """Yield (task, init, seed, keep frames): from stdin when serving, else the parameters."""
        keep = bool(self.v["frames_path"])
        if not self.v["serve"]:
            for init in parse_inits(self.v["inits"]):
                yield self.v["task"], init, None, keep
            return
        for line in sys.stdin:
            if line.strip():
                cmd = json.loads(line)  # a malformed request ends the bridge (exit code 1)
                seed = cmd.get("seed")
                yield (int(cmd["task"]), int(cmd["init"]), None if seed is None else int(seed),
                       keep and bool(cmd.get("frames")))

    def run(self) -> list[dict]:
        """Bring the node up, run every episode, write the reports; return them."""
        v = self.v
        reports = []
        sim = self._sim_factory()
        try:
            self.bring_up_node()
            for task, init, seed, keep in self.episodes():
                t0 = time.perf_counter()
                self.start_node(seed)
                started = time.perf_counter()
                try:
                    rec = self.run_episode(sim, init, task)
                finally:
                    ended = time.perf_counter()
                    self.stop_node()
                if keep and rec.frames:  # before the report: a reader waits for that
                    np.save(Path(f"{v['frames_path']}_task{task}_init{init}.npy"),
                            np.stack(rec.frames))
                report = rec.report()
                report["node_cycle_s"] = round(started - t0 + time.perf_counter() - ended, 3)
                reports.append(report)
                self.get_logger().info(json.dumps(report))
                if v["report_path"]:
                    with open(v["report_path"], "a", encoding="utf-8") as f:
                        f.write(json.dumps(report) + "\n")
        finally:
            self.shut_down_node()
            sim.close()
        return reports


def main(argv: list[str] | None = None) -> int:
    """Run the bridge's episodes; exit 0 when every episode has a report."""
    rclpy.init(args=argv if argv is not None else sys.argv)
    node = LiberoBridge()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    code = 0
    try:
        node.run()
    except (KeyboardInterrupt, ExternalShutdownException):
        code = 130
    except ParentGone as exc:
        node.get_logger().warning(str(exc))
        code = 1
    except Exception as exc:  # reported, and the exit code tells the caller
        node.get_logger().error(f"bridge failed: {exc!r}")
        code = 1
    finally:
        executor.shutdown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
