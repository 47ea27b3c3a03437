"""The LIBERO bridge's parameters, its outgoing messages and its lifecycle / diagnostics reads.

Kept apart from the bridge's episode loop (``libero_bridge.py``) so each stays one job.
"""

from __future__ import annotations

import threading
import time

import numpy as np
from builtin_interfaces.msg import Time
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from quantvla_ros.ros.convert import ns_to_sec_nsec, rgb_to_image_fields
from quantvla_ros.ros.inputs import LATCHED_INSTRUCTION_QOS
from quantvla_ros.ros.settings import Param
from quantvla_ros.workflows import libero_ros_protocol as proto

BRIDGE_PARAMS = (
    Param("suite", "str", "libero_object", "LIBERO suite."),
    Param("task", "int", 0, "Task index in the suite."),
    Param("inits", "str", "0", "Fixed init states to run, one episode each: 0,3,7 or 0-4."),
    Param("resolution", "int", 112, "Camera images are resolution x resolution pixels."),
    Param("settle_steps", "int", 10, "No-op steps after the reset (not counted)."),
    Param("max_steps", "int", 0, "Step limit per episode; 0: the suite's."),
    Param("pace", "str", "lockstep",
          "lockstep: simulated time waits for the trajectory of each observation; realtime: "
          "it advances at control_rate_hz against the wall clock whatever the node does."),
    Param("control_rate_hz", "float", 20.0, "Control steps per simulated second."),
    Param("actions_per_chunk", "int", 5,
          "Control steps between camera frames: the node's actions_per_chunk (its tick)."),
    Param("agentview_topic", "str", proto.CAMERA_TOPICS["agentview"], "Scene camera."),
    Param("wrist_topic", "str", proto.CAMERA_TOPICS["wrist"], "Wrist camera."),
    Param("joint_state_topic", "str", proto.JOINT_STATE_TOPIC, "State as JointState."),
    Param("instruction_topic", "str", proto.INSTRUCTION_TOPIC, "Task instruction."),
    Param("trajectory_topic", "str", proto.TRAJECTORY_TOPIC, "JointTrajectory to execute."),
    Param("managed_node", "str", "quantvla_node",
          "Lifecycle node the bridge configures once, activates for each episode and "
          "deactivates after it, and shuts down at the end; empty: none (the trajectories "
          "come from elsewhere)."),
    Param("serve", "bool", False,
          "Run the episodes given on standard input, one JSON object a line "
          '({"task": T, "init": N, "seed": S}), until it closes (task and inits are '
          "then unused): one simulator and one configured node serve them all; each episode "
          "sets the node's seed through its parameter service and activates it."),
    Param("autostarted", "bool", False,
          "The managed node is configured and activated by someone else (a launch file): "
          "only wait until it is active, and leave it running at the end."),
    Param("node_timeout_s", "float", 600.0, "Longest wait for the node to become active."),
    Param("stall_timeout_s", "float", 60.0,
          "Wall seconds without a trajectory after which the episode is reported as a "
          "stalled node (never counted as success or failure)."),
    Param("frame_delay_s", "float", 0.02,
          "Lock-step: wall seconds between publishing a frame and the clock tick that makes "
          "the node read it (the tick must not overtake the frame)."),
    Param("report_path", "str", "", "Append one JSON line per episode here (empty: log only)."),
    Param("frames_path", "str", "",
          "Save each episode's scene frames as <frames_path>_task<T>_init<N>.npy (empty: "
          "none)."),
)


def parse_inits(text: str) -> list[int]:
    """Parse '0,3,7' or '0-4' into init indices."""
    out: list[int] = []
    for part in str(text).split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"inits {text!r}: expected N, N-M or a comma list")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def stamp(t_ns: int) -> Time:
    """Return a builtin_interfaces/Time."""
    sec, nsec = ns_to_sec_nsec(t_ns)
    return Time(sec=sec, nanosec=nsec)


def clock_msg(t_ns: int) -> Clock:
    """Return a rosgraph_msgs/Clock."""
    return Clock(clock=stamp(t_ns))


def image_msg(rgb: np.ndarray, t_ns: int, frame_id: str) -> Image:
    """Return an rgb8 sensor_msgs/Image of an upright HxWx3 frame."""
    msg = Image(**{k: v for k, v in rgb_to_image_fields(rgb).items() if k != "data"})
    msg.data = np.ascontiguousarray(rgb).tobytes()
    msg.header.stamp = stamp(t_ns)
    msg.header.frame_id = frame_id
    return msg


def joint_state_msg(state: np.ndarray, t_ns: int) -> JointState:
    """Return the simulator's 8-value state as a JointState with named components."""
    msg = JointState(name=list(proto.STATE_NAMES),
                     position=[float(v) for v in np.asarray(state).reshape(-1)])
    msg.header.stamp = stamp(t_ns)
    return msg


INPUT_COUNTERS = ("dropped_observations", "stale_inputs", "bad_inputs")


def input_counters(msg) -> dict[str, int] | None:
    """Return the node's cumulative input counters from a DiagnosticArray, or None."""
    for status in msg.status:
        if status.name.endswith(": inputs"):
            values = {kv.key: kv.value for kv in status.values}
            try:
                return {k: int(values[k]) for k in INPUT_COUNTERS}
            except (KeyError, ValueError):
                return None
    return None


class Lifecycle:
    """change_state / get_state of another process's lifecycle node (spun elsewhere)."""

    def __init__(self, node, target: str) -> None:
        """Create the service clients for ``target``."""
        target = target if target.startswith("/") else "/" + target
        self._change = node.create_client(ChangeState, f"{target}/change_state")
        self._get = node.create_client(GetState, f"{target}/get_state")
        self._set = node.create_client(SetParameters, f"{target}/set_parameters")

    def change(self, label: str, timeout: float) -> bool:
        """Request a transition by label; return the node's success flag."""
        request = ChangeState.Request()
        request.transition.label = label
        return bool(self._call(self._change, request, timeout).success)

    def set_parameters(self, values: dict, timeout: float) -> None:
        """Set the node's parameters through its parameter service; raise if one is refused."""
        request = SetParameters.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        results = self._call(self._set, request, timeout).results
        refused = [f"{k}: {r.reason}" for k, r in zip(values, results, strict=True)
                   if not r.successful]
        if refused:
            raise RuntimeError(f"parameters refused: {'; '.join(refused)}")

    def state(self, timeout: float) -> str:
        """Return the node's state label."""
        return str(self._call(self._get, GetState.Request(), timeout).current_state.label)

    @staticmethod
    def _call(client, request, timeout: float):
        deadline = time.monotonic() + timeout
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"{client.srv_name} not available after {timeout:.0f} s")
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _: done.set())
        if not done.wait(max(0.0, deadline - time.monotonic())):
            client.remove_pending_request(future)
            raise TimeoutError(f"{client.srv_name} did not answer within {timeout:.0f} s")
        return future.result()


class NodeInstruction:
    """The instruction the managed node says it follows (its latched ``~/instruction_in_use``)."""

    def __init__(self, node, managed_node: str) -> None:
        """Subscribe on ``node`` to ``managed_node``'s instruction in use."""
        self.text: str | None = None
        self._changed = threading.Condition()
        node.create_subscription(String, f"/{managed_node.strip('/')}/instruction_in_use",
                                 self._on_text, LATCHED_INSTRUCTION_QOS)

    def _on_text(self, msg) -> None:
        with self._changed:
            self.text = msg.data
            self._changed.notify_all()

    def wait_for(self, text: str, timeout_s: float, check=lambda: None) -> bool:
        """Wait until the node follows ``text``; False after ``timeout_s``.

        ``check`` runs at least every 0.5 s while waiting (it may raise to give up).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            check()
            with self._changed:
                left = deadline - time.monotonic()
                if self.text == text or left <= 0:
                    return self.text == text
                self._changed.wait(min(left, 0.5))
