"""``quantvla_node``: the lifecycle node that serves a VLA policy over ROS 2.

It turns camera frames, joint states and an instruction into trajectory_msgs/JointTrajectory
action chunks.

Lifecycle:
- configure: validate parameters, load the policy (``Policy.load``: checkpoint, artifact or
  named model), check it against the cameras and joints, warm it up, create publishers,
  subscriptions and the inference thread. Any failure returns FAILURE with the reason logged.
- activate: start the inference timer (every actions_per_chunk / control_rate_hz seconds) and
  1 Hz diagnostics. deactivate: stop both, discard a pending observation and any chunk still
  in flight (nothing is published once deactivate returns).
- cleanup / shutdown / error: stop the thread, destroy everything, free the model.

Each trajectory holds ``actions_per_chunk`` points (the steps that run before the next
inference replaces it), point i at (i + 1) / control_rate_hz, the first
len(action_names or joint_names) action dims, and the observation's anchor frame stamp in its
header. Noise comes from (seed, stamp), so a chunk can be reproduced offline (or, with
noise: sequence, from one seeded stream per activation).
"""

from __future__ import annotations

import gc
import sys
import time

import numpy as np
import rclpy
import torch
from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from quantvla_ros.data.observation import Observation, ObservationError
from quantvla_ros.ros import diagnostics as diag
from quantvla_ros.ros import params
from quantvla_ros.ros.convert import ns_to_sec_nsec
from quantvla_ros.ros.inputs import Assembled, InputHub
from quantvla_ros.ros.noise import policy_noise
from quantvla_ros.ros.settings import (
    INFERENCE_PARAMS,
    InferenceSettings,
    SettingsError,
    parse_inference,
)
from quantvla_ros.ros.worker import LatestWorker
from quantvla_ros.runtime.policy import Policy
from quantvla_ros.runtime.source import PolicySource, PolicySourceError
from quantvla_ros.workflows.memory_fit import check_fits, load_need

NODE_NAME = "quantvla_node"
LOG_THROTTLE_S = 2.0  # one line per problem kind per 2 s at most
DIAGNOSTICS_PERIOD_S = 1.0

SUCCESS = TransitionCallbackReturn.SUCCESS
FAILURE = TransitionCallbackReturn.FAILURE


class ConfigureError(Exception):
    """A reason to fail the configure transition (logged, never raised out of it)."""


def load_policy(s: InferenceSettings) -> Policy:
    """Load and check the policy for these settings, or raise ConfigureError saying why."""
    try:
        source = PolicySource.resolve(s.policy, seed=s.seed)
    except PolicySourceError as exc:
        raise ConfigureError(f"cannot load policy {s.policy!r}: {exc}") from exc
    if s.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigureError(f"device {s.device!r} requested but CUDA is not available")
    try:
        # refused before loading when it cannot fit (MemoryFitError says need and free)
        check_fits(load_need(source, s.precision, infer=True), s.device,
                   f"loading {s.policy!r} and running it")
        policy = Policy.load(source, device=s.device, precision=s.precision, **s.options)
    except Exception as exc:  # CheckpointError, KeyError (unknown model), artifact errors, ...
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise ConfigureError(f"cannot load policy {s.policy!r}: {msg}") from exc
    joints = len(s.inputs.joint_names)
    unknown = [c.slot for c in s.inputs.cameras if c.slot not in policy.cfg.cameras]
    if unknown:
        raise ConfigureError(f"camera_slots {unknown} are not slots of this policy; it has "
                             f"{list(policy.cfg.cameras)}")
    outputs = len(s.output_names)
    if policy.action_dim < outputs:
        what = "action_names" if s.action_names else "joint_names"
        raise ConfigureError(f"the policy outputs {policy.action_dim} action dims but "
                             f"{what} lists {outputs}")
    # Statistics fix the robot's state length; without them the policy zero-pads any length
    # up to the model's state width.
    if policy.state_dim is not None and policy.state_dim != joints:
        raise ConfigureError(f"the policy's statistics describe a {policy.state_dim}-dim state "
                             f"but joint_names lists {joints} joints")
    if joints > policy.max_state_dim:
        raise ConfigureError(f"the policy takes at most {policy.max_state_dim} state values but "
                             f"joint_names lists {joints} joints")
    if s.actions_per_chunk > policy.cfg.action_horizon:
        raise ConfigureError(f"actions_per_chunk {s.actions_per_chunk} exceeds the policy's "
                             f"action horizon {policy.cfg.action_horizon}")
    # A family that needs every slot (GR00T) rejects a partial mapping here, not per message.
    try:
        policy.prepare(_blank_observation(policy, s))
    except ObservationError as exc:
        raise ConfigureError(f"camera_slots {list(s.inputs.slots)} do not suit this policy: "
                             f"{exc}") from exc
    return policy


def _blank_observation(policy: Policy, s: InferenceSettings) -> Observation:
    size = policy.cfg.vision.image_size
    return Observation({c.slot: np.full((size, size, 3), 128, np.uint8) for c in s.inputs.cameras},
                       np.zeros(len(s.inputs.joint_names), np.float32),
                       s.inputs.default_instruction.strip() or "warm up")


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


class QuantVLANode(LifecycleNode):
    """The inference lifecycle node (see the module docstring)."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs) -> None:
        """Declare parameters; nothing else happens until configure."""
        super().__init__(node_name, **kwargs)
        params.declare(self, INFERENCE_PARAMS)
        self.settings: InferenceSettings | None = None
        self.policy: Policy | None = None
        self.finalized = False
        self.last_error = ""
        self._active = False
        self._inputs: InputHub | None = None
        self._worker: LatestWorker | None = None
        self._traj_pub = self._diag_pub = None
        self._timers = []
        self._loggers = {}
        self._noise_gen: torch.Generator | None = None
        self._reset_stats()

    def _reset_stats(self) -> None:
        self.input_problems = diag.ProblemBoard()
        self.policy_problems = diag.ProblemBoard()
        self.latency = diag.RollingStats()  # policy inference time
        self.obs_to_publish = diag.RollingStats()  # anchor stamp -> publish
        self.published = 0

    # ---- problem reporting -----------------------------------------------------------------
    def report(self, key: str, level: int, message: str, category: str) -> None:
        """Record a problem for diagnostics and log it, rate-limited per problem key."""
        board = self.policy_problems if category == "inference" else self.input_problems
        board.report(key, level, message, category)
        # rclpy throttles per call site and logger object: a child logger per key keeps one
        # noisy input from silencing the others.
        logger = self._loggers.get((key, category))
        if logger is None:
            logger = self.get_logger().get_child(f"{key}.{category}")
            self._loggers[(key, category)] = logger
        if level >= diag.ERROR:
            logger.error(message, throttle_duration_sec=LOG_THROTTLE_S)
        else:
            logger.warning(message, throttle_duration_sec=LOG_THROTTLE_S)

    # ---- lifecycle -------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Validate parameters, load and warm up the policy, create the ROS entities."""
        t0 = time.perf_counter()
        try:
            settings = parse_inference(params.read(self, INFERENCE_PARAMS))
            policy = load_policy(settings)
            self._warm_up(policy, settings)
            self.settings, self.policy = settings, policy
            self._reset_stats()
            self._traj_pub = self.create_lifecycle_publisher(
                JointTrajectory, settings.output_topic, 10)
            self._diag_pub = self.create_lifecycle_publisher(DiagnosticArray, "/diagnostics", 10)
            self._inputs = InputHub(self, settings.inputs, self.report)
            self._worker = LatestWorker(self._infer_and_publish, self._on_worker_error)
        except (SettingsError, ConfigureError, ObservationError) as exc:
            return self._fail_configure(str(exc))
        except Exception as exc:  # anything else must fail the transition, not the process
            return self._fail_configure(f"unexpected error: {exc!r}")
        self.last_error = ""
        joints = len(settings.inputs.joint_names)
        if policy.action_dim > len(settings.output_names):
            self.get_logger().info(f"publishing the first {len(settings.output_names)} of "
                                   f"{policy.action_dim} action dims")
        self.get_logger().info(
            f"configured: policy {policy.source} on {settings.device} ({settings.precision}), "
            f"cameras {list(settings.inputs.slots)}, {joints} joints, "
            f"{time.perf_counter() - t0:.1f} s")
        return SUCCESS

    def _fail_configure(self, reason: str) -> TransitionCallbackReturn:
        self.last_error = reason
        self.get_logger().error(f"configure failed: {reason}")
        self._teardown()
        return FAILURE

    def _warm_up(self, policy: Policy, s: InferenceSettings) -> None:
        obs = _blank_observation(policy, s)
        for i in range(s.warmup_runs):
            policy.infer(obs, noise=policy_noise(policy, s.seed, i))

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Start the inference timer and diagnostics."""
        s = self.settings
        self._inputs.reset()  # frames from before activation are stale anyway
        # noise "sequence": the k-th inference after activate takes the k-th draw (as the
        # direct LIBERO evaluation does), so a lock-step run pairs with it chunk for chunk.
        self._noise_gen = torch.Generator().manual_seed(s.seed)
        self._active = True
        self._timers = [self.create_timer(s.inference_period_s, self._guarded_tick),
                        self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)]
        self.get_logger().info(
            f"active: inference every {s.inference_period_s:.3f} s, trajectories on "
            f"{s.output_topic}")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop inferring and publishing now."""
        self._active = False  # checked by the worker right before it publishes
        self._destroy_timers()
        if self._worker is not None:
            self._worker.clear()
        self.get_logger().info("inactive: no more trajectories")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free the model and every ROS entity made by configure."""
        self._teardown()
        self.get_logger().info("cleaned up: model freed")
        return SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free everything; the executable exits after this."""
        self._teardown()
        self.finalized = True
        return SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free everything and go back to unconfigured."""
        self._teardown()
        return SUCCESS

    def _destroy_timers(self) -> None:
        for timer in self._timers:
            self.destroy_timer(timer)
        self._timers = []

    def _teardown(self) -> None:
        self._active = False
        self._destroy_timers()
        if self._worker is not None:
            if not self._worker.stop(timeout=30.0):
                self.get_logger().warning("inference thread still busy after 30 s")
            self._worker = None
        if self._inputs is not None:
            self._inputs.destroy()
            self._inputs = None
        for pub in (self._traj_pub, self._diag_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._traj_pub = self._diag_pub = None
        device = self.settings.device if self.settings else "cpu"
        self.policy = None
        self.settings = None
        gc.collect()
        if device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ---- inference -------------------------------------------------------------------------
    def _guarded_tick(self) -> None:
        try:
            self._tick()
        except Exception as exc:  # a timer callback must never raise into the executor
            self.report("tick", diag.ERROR, f"internal error assembling an observation: {exc!r}",
                        "bad")

    def _tick(self) -> None:
        if not self._active:
            return
        assembled = self._inputs.assemble()
        if assembled is not None:
            self._worker.submit(assembled)

    def _infer_and_publish(self, item: Assembled) -> None:
        """Worker thread: one chunk for one observation, published if still active."""
        policy, s = self.policy, self.settings
        if policy is None or s is None or not self._active:
            return
        try:
            out = policy.infer(item.obs, noise=self._noise(policy, s, item.stamp_ns))
        except ObservationError as exc:
            self.report("observation", diag.ERROR, f"observation rejected: {exc}", "bad")
            return
        self.latency.add(out.timing_ms["total"])
        names = s.output_names
        msg = trajectory(item.stamp_ns, names,
                         out.actions[: s.actions_per_chunk, : len(names)], s.control_rate_hz)
        if not self._active:  # deactivated while inferring: drop the chunk
            return
        self._traj_pub.publish(msg)
        self.published += 1
        now = self.get_clock().now().nanoseconds
        self.obs_to_publish.add((now - item.stamp_ns) / 1e6)

    def _noise(self, policy: Policy, s: InferenceSettings, stamp_ns: int) -> torch.Tensor:
        if s.noise == "sequence":
            shape = (1, policy.cfg.action_horizon, policy.cfg.action_dim)
            return torch.randn(shape, generator=self._noise_gen)
        return policy_noise(policy, s.seed, stamp_ns)

    def _on_worker_error(self, exc: BaseException) -> None:
        self.report("inference", diag.ERROR, f"inference failed: {exc!r}", "inference")

    # ---- diagnostics -----------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        try:
            if self._active and self._diag_pub is not None:
                self._diag_pub.publish(self.diagnostics())
        except Exception as exc:
            self.get_logger().error(f"diagnostics failed: {exc!r}",
                                    throttle_duration_sec=LOG_THROTTLE_S)

    def diagnostics(self) -> DiagnosticArray:
        """Build the diagnostics message and clear the problems it reports."""
        s, name = self.settings, self.get_name()
        dropped = self._worker.dropped if self._worker else 0
        values: dict[str, object] = {
            "policy": s.policy, "device": s.device, "precision": s.precision,
            "trajectories_published": self.published, "inferences": self.latency.count,
        }
        for label, stats in (("latency_ms", self.latency),
                             ("observation_to_publish_ms", self.obs_to_publish)):
            summary = stats.summary() or {}
            for k, v in summary.items():
                values[f"{label}_{k}"] = v
        if s.device.startswith("cuda") and torch.cuda.is_available():
            values["gpu_memory_allocated_mb"] = torch.cuda.memory_allocated(s.device) / 2**20
            values["gpu_memory_reserved_mb"] = torch.cuda.memory_reserved(s.device) / 2**20
        policy_problems = self.policy_problems.take()
        level = max((p.level for p in policy_problems.values()), default=diag.OK)
        lat = self.latency.summary()
        text = "; ".join(p.message for p in policy_problems.values()) or (
            f"p50 {lat['p50']:.1f} ms" if lat else "no inference yet")
        totals = self.input_problems.totals
        input_values: dict[str, object] = {
            "dropped_observations": dropped, "stale_inputs": totals["stale"],
            "bad_inputs": totals["bad"],
        }
        for slot, age in self._inputs.camera_ages().items():
            input_values[f"frame_age_s.{slot}"] = "none" if age is None else age
        now = self.get_clock().now().to_msg()
        return diag.array(now, [
            diag.status(f"{name}: policy", level, text, s.policy, values),
            diag.problems_status(f"{name}: inputs", name, self.input_problems.take(),
                                 input_values),
        ])


def main(argv: list[str] | None = None) -> int:
    """Run the node until shutdown (lifecycle transition or Ctrl-C)."""
    rclpy.init(args=argv if argv is not None else sys.argv)
    node = QuantVLANode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while rclpy.ok() and not node.finalized:
            executor.spin_once(timeout_sec=0.2)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node._teardown()
        executor.shutdown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
