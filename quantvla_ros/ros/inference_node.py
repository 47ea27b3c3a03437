"""``quantvla_node``: the lifecycle node that serves a VLA policy over ROS 2.

It turns camera frames, joint states and an instruction into trajectory_msgs/JointTrajectory
action chunks.

Lifecycle:
- configure: validate parameters, load the policy (``Policy.load``: checkpoint, artifact or
  named model), check it against the cameras and joints, warm it up, create publishers,
  subscriptions and the inference thread. Any failure returns FAILURE with the reason logged.
- activate: read ``seed``, ``noise`` and ``noise_scale`` again (a new episode sets them
  through the parameter service), forget buffered inputs, restart the noise sequence, start
  the inference timer (every actions_per_chunk / control_rate_hz seconds) and 1 Hz
  diagnostics. deactivate: stop both, discard a pending observation, wait for the chunk in
  hand and drop it (nothing is published once deactivate returns, and nothing of one
  activation reaches the next). A deactivate / activate cycle is how a robot or an
  evaluation starts a new episode on the loaded model.
- cleanup / shutdown / error: stop the thread, destroy everything, free the model.

Each trajectory holds ``trajectory_points`` points (default ``actions_per_chunk``: the steps
that run before the next inference replaces it; up to the action horizon, so a robot keeps
moving when the next trajectory is late), point i at (i + 1) / control_rate_hz, the first
len(action_names or joint_names) action dims, and the observation's anchor frame stamp in its
header. Noise comes from (seed, stamp), so a chunk can be reproduced offline (or, with
noise: sequence, from one seeded stream per activation).
"""

from __future__ import annotations

import gc
import sys
import time
from dataclasses import replace

import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from quantvla_ros.data.observation import ObservationError
from quantvla_ros.ros import diagnostics as diag
from quantvla_ros.ros import params
from quantvla_ros.ros.inputs import LATCHED_INSTRUCTION_QOS, Assembled, InputHub
from quantvla_ros.ros.node_output import diagnostics, trajectory
from quantvla_ros.ros.node_policy import (  # noqa: F401 - re-exported
    ConfigureError,
    _blank_observation,
    load_policy,
    warm_up,
)
from quantvla_ros.ros.noise import policy_noise
from quantvla_ros.ros.settings import (
    ACTIVATION_PARAMS,
    INFERENCE_PARAMS,
    InferenceSettings,
    SettingsError,
    parse_inference,
)
from quantvla_ros.ros.worker import LatestWorker
from quantvla_ros.runtime.policy import Policy

NODE_NAME = "quantvla_node"
IDLE_WAIT_S = 30.0  # deactivate waits this long at most for the chunk in hand
LOG_THROTTLE_S = 2.0  # one line per problem kind per 2 s at most
DIAGNOSTICS_PERIOD_S = 1.0

SUCCESS = TransitionCallbackReturn.SUCCESS
FAILURE = TransitionCallbackReturn.FAILURE


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
        self._traj_pub = self._diag_pub = self._instruction_pub = None
        self._timers = []
        self._loggers = {}
        self._noise_gen: torch.Generator | None = None
        self._declared_noise_scale = 1.0
        self._epoch = 0  # +1 at activate and deactivate: older work is dropped
        self._owed = False  # the last tick found no complete observation
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
            warm_up(policy, settings)
            self._declared_noise_scale = policy.noise_scale
            self.settings, self.policy = settings, policy
            self._reset_stats()
            self._traj_pub = self.create_lifecycle_publisher(
                JointTrajectory, settings.output_topic, 10)
            self._diag_pub = self.create_lifecycle_publisher(DiagnosticArray, "/diagnostics", 10)
            # The instruction the policy follows now, latched: a robot UI shows it, and the
            # LIBERO bridge waits for it before an episode's first frame.
            self._instruction_pub = self.create_publisher(
                String, "~/instruction_in_use", LATCHED_INSTRUCTION_QOS)
            self._inputs = InputHub(self, settings.inputs, self.report, self._owed_tick,
                                    self._publish_instruction_in_use)
            self._publish_instruction_in_use(self._inputs.instruction_in_use())
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

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Read the per-activation parameters, start the inference timer and diagnostics."""
        try:
            fresh = parse_inference(params.read(self, INFERENCE_PARAMS))
        except SettingsError as exc:
            self.last_error = str(exc)
            self.get_logger().error(f"activate failed: {exc}")
            return FAILURE
        s = self.settings = replace(self.settings,
                                    **{k: getattr(fresh, k) for k in ACTIVATION_PARAMS})
        self.policy.set_noise_scale(s.noise_scale if s.noise_scale >= 0
                                    else self._declared_noise_scale)
        self._inputs.reset()  # frames from before activation are stale anyway
        # noise "sequence": the k-th inference after activate takes the k-th draw (as the
        # direct LIBERO evaluation does), so a lock-step run pairs with it chunk for chunk.
        self._noise_gen = torch.Generator().manual_seed(s.seed)
        self._epoch += 1
        self._owed = False
        self._active = True
        self._timers = [self.create_timer(s.inference_period_s, self._guarded_tick),
                        self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)]
        self.get_logger().info(
            f"active: inference every {s.inference_period_s:.3f} s, {s.points}-point "
            f"trajectories on {s.output_topic}, seed {s.seed}, noise {s.noise}, noise scale "
            f"{self.policy.noise_scale:g}")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop inferring and publishing now."""
        self._active = False  # checked by the worker right before it publishes
        self._epoch += 1
        self._destroy_timers()
        if self._worker is not None:
            self._worker.clear()
            if not self._worker.wait_idle(IDLE_WAIT_S):
                self.get_logger().warning(f"inference still busy after {IDLE_WAIT_S:g} s")
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
        if self._instruction_pub is not None:
            self.destroy_publisher(self._instruction_pub)
        self._traj_pub = self._diag_pub = self._instruction_pub = None
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
        self._owed = assembled is None
        if assembled is not None:
            self._worker.submit((self._epoch, assembled))

    def _publish_instruction_in_use(self, text: str) -> None:
        if self._instruction_pub is not None:
            self._instruction_pub.publish(String(data=text))

    def _owed_tick(self) -> None:
        """Serve, as an input arrives, a tick that found its observation incomplete.

        Until the next tick, each new frame or joint state retries (quietly) the tick that
        found the anchor frame's partners, or a new anchor frame, missing: a message late by a
        few milliseconds does not cost a whole period (and in lock-step simulation, where the
        clock waits for this trajectory, it would cost the episode).
        """
        if not (self._owed and self._active):
            return
        try:
            assembled = self._inputs.assemble(quiet=True)
        except Exception as exc:  # a subscription callback must never raise either
            self.report("tick", diag.ERROR, f"internal error assembling an observation: "
                        f"{exc!r}", "bad")
            return
        if assembled is not None:
            self._owed = False
            self._worker.submit((self._epoch, assembled))

    def _infer_and_publish(self, job: tuple[int, Assembled]) -> None:
        """Worker thread: one chunk for one observation, published if still active."""
        epoch, item = job
        policy, s = self.policy, self.settings
        if policy is None or s is None or not self._active or epoch != self._epoch:
            return  # from an earlier activation: must not take this one's noise
        try:
            out = policy.infer(item.obs, noise=self._noise(policy, s, item.stamp_ns))
        except ObservationError as exc:
            self.report("observation", diag.ERROR, f"observation rejected: {exc}", "bad")
            return
        self.latency.add(out.timing_ms["total"])
        names = s.output_names
        msg = trajectory(item.stamp_ns, names,
                         out.actions[: s.points, : len(names)], s.control_rate_hz)
        if not self._active or epoch != self._epoch:  # deactivated while inferring: drop it
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
        return diagnostics(self)


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
