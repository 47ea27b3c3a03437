"""A driver node for tests and smoke runs: streams synthetic robot inputs, collects outputs.

The stream thread publishes, at ``rate_hz``, one frame per camera and one joint state, all
stamped with the same current time. ``faults`` (a dict read every period) injects bad input:

- ``encoding``: {slot: encoding} raw image encoding to claim (e.g. "yuv422")
- ``truncate``: {slot} raw images whose data is shorter than height * step
- ``corrupt``: {slot} compressed images with garbage bytes
- ``stopped``: {slot} cameras that publish nothing
- ``joint_nan`` / ``joint_short`` / ``joint_missing``: NaN position, one position too few,
  the last joint left out
- ``stamp_offset_s``: added to every stamp (negative = old data)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from quantvla_ros.demo.lifecycle_client import LifecycleClient
from quantvla_ros.ros.convert import (
    encode_compressed,
    ns_to_sec_nsec,
    rgb_to_image_fields,
    stamp_to_ns,
)

# A latching publisher's own profile, as an operator's script would write it (not imported
# from the node: the test must not share the QoS under test).
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)


class Driver:
    """Publishers for cameras / joints / instruction, collectors for trajectories / diagnostics.

    ``cameras`` is a sequence of (topic, slot); a topic ending in /compressed gets jpeg
    CompressedImage messages. Everything runs on ``context`` (spun on a background thread).
    """

    def __init__(self, context, cameras: Sequence[tuple[str, str]], joint_names: Sequence[str],
                 *, joint_topic: str = "/joint_states", instruction_topic: str = "/instruction",
                 output_topic: str = "/quantvla/joint_trajectory", size=(48, 64),
                 target: str = "/quantvla_node", name: str = "test_driver") -> None:
        """Create the node, its publishers and subscriptions, and start spinning."""
        self.node = rclpy.create_node(name, context=context)
        self.joint_names = list(joint_names)
        self.cameras = [(t, s, t.rstrip("/").endswith("/compressed")) for t, s in cameras]
        self._image_pubs = {
            s: self.node.create_publisher(CompressedImage if c else Image, t, 10)
            for t, s, c in self.cameras}
        self._joint_pub = self.node.create_publisher(JointState, joint_topic, 10)
        self.instruction_topic = instruction_topic
        self._instruction_pub = self.node.create_publisher(String, instruction_topic,
                                                           LATCHED_QOS)
        self._live_instruction_pub = None  # made on first use: see publish_instruction
        self._lock = threading.Lock()
        self.trajectories: list[tuple[JointTrajectory, int]] = []
        self.diagnostics: list[tuple[DiagnosticArray, int]] = []
        self.node.create_subscription(JointTrajectory, output_topic, self._on_traj, 100)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 100)
        self.lifecycle = LifecycleClient(self.node, target)
        rng = np.random.default_rng(0)
        self.rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        self.jpeg = encode_compressed(self.rgb)
        self.faults: dict = {}
        self.published: list[tuple[int, int]] = []  # (publish time, stamp) per period
        self._stream: threading.Thread | None = None
        self._stop = threading.Event()
        self._executor = SingleThreadedExecutor(context=context)
        self._executor.add_node(self.node)
        self._spinner = threading.Thread(target=self._executor.spin, daemon=True)
        self._spinner.start()

    def now_ns(self) -> int:
        """Return the node clock's time in nanoseconds."""
        return self.node.get_clock().now().nanoseconds

    # ---- collection ------------------------------------------------------------------------
    def _on_traj(self, msg) -> None:
        with self._lock:
            self.trajectories.append((msg, self.now_ns()))

    def _on_diag(self, msg) -> None:
        with self._lock:
            self.diagnostics.append((msg, self.now_ns()))

    def trajectory_stamps(self) -> list[int]:
        """Header stamps (ns) of every trajectory received so far."""
        with self._lock:
            return [stamp_to_ns(m.header.stamp) for m, _ in self.trajectories]

    def statuses_since(self, t_ns: int) -> list:
        """DiagnosticStatus entries of messages received after ``t_ns``."""
        with self._lock:
            return [s for m, t in self.diagnostics if t >= t_ns for s in m.status]

    def stamps_published_between(self, t0_ns: int, t1_ns: int) -> set[int]:
        """Stamps of the periods published between ``t0_ns`` and ``t1_ns`` (send time)."""
        with self._lock:
            return {stamp for sent, stamp in self.published if t0_ns <= sent <= t1_ns}

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Poll ``predicate`` every 50 ms until it holds or ``timeout`` s pass."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()

    def wait_trajectory_after(self, stamp_ns: int, timeout: float) -> bool:
        """Wait for a trajectory whose header stamp is later than ``stamp_ns``."""
        return self.wait_for(lambda: any(s > stamp_ns for s in self.trajectory_stamps()),
                             timeout)

    # ---- publishing ------------------------------------------------------------------------
    def publish_instruction(self, text: str, *, latched: bool = True,
                            match_timeout: float = 15.0) -> None:
        """Publish an instruction.

        ``latched``: transient local, late subscribers get it too. Otherwise with the
        default QoS (``qos_profile=10``: reliable, volatile, what ``ros2 topic pub`` uses),
        once a subscription has matched (a volatile message sent before that is lost);
        TimeoutError if none matches within ``match_timeout`` s.
        """
        if latched:
            self._instruction_pub.publish(String(data=text))
            return
        if self._live_instruction_pub is None:
            self._live_instruction_pub = self.node.create_publisher(
                String, self.instruction_topic, 10)
        pub = self._live_instruction_pub
        if not self.wait_for(lambda: pub.get_subscription_count() > 0, match_timeout):
            raise TimeoutError(
                f"no subscription matched a default-QoS (volatile) publisher on "
                f"{self.instruction_topic} within {match_timeout:g} s (incompatible QoS?)")
        pub.publish(String(data=text))

    def publish_once(self, stamp_ns: int | None = None) -> int:
        """Publish one frame per camera and one joint state; return the stamp used."""
        f = dict(self.faults)
        sent_ns = self.now_ns()
        stamp_ns = sent_ns if stamp_ns is None else stamp_ns
        stamp_ns += int(f.get("stamp_offset_s", 0.0) * 1e9)
        sec, nsec = ns_to_sec_nsec(stamp_ns)
        joint = JointState(name=list(self.joint_names),
                           position=[0.1 * i for i in range(len(self.joint_names))])
        if f.get("joint_nan"):
            joint.position[0] = float("nan")
        if f.get("joint_short"):
            joint.position = list(joint.position)[:-1]
        if f.get("joint_missing"):
            joint.name, joint.position = joint.name[:-1], list(joint.position)[:-1]
        joint.header.stamp.sec, joint.header.stamp.nanosec = sec, nsec
        self._joint_pub.publish(joint)
        for _, slot, compressed in self.cameras:
            if slot in f.get("stopped", ()):
                continue
            if compressed:
                msg = CompressedImage(format="jpeg")
                msg.data = b"\x00garbage" * 8 if slot in f.get("corrupt", ()) else self.jpeg
            else:
                fields = rgb_to_image_fields(self.rgb)
                data = fields.pop("data").tobytes()
                msg = Image(**fields)
                msg.encoding = f.get("encoding", {}).get(slot, "rgb8")
                msg.data = data[: len(data) // 2] if slot in f.get("truncate", ()) else data
            msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nsec
            self._image_pubs[slot].publish(msg)
        with self._lock:
            self.published.append((sent_ns, stamp_ns))
        return stamp_ns

    def start_stream(self, rate_hz: float = 10.0) -> None:
        """Publish inputs at ``rate_hz`` on a background thread until :meth:`stop_stream`."""
        self._stop.clear()

        def run() -> None:
            period = 1.0 / rate_hz
            next_t = time.monotonic()
            while not self._stop.is_set():
                self.publish_once()
                next_t += period
                self._stop.wait(max(0.0, next_t - time.monotonic()))

        self._stream = threading.Thread(target=run, daemon=True)
        self._stream.start()

    def stop_stream(self) -> None:
        """Stop the stream thread."""
        self._stop.set()
        if self._stream is not None:
            self._stream.join(5.0)
            self._stream = None

    def close(self) -> None:
        """Stop streaming and spinning, destroy the node."""
        self.stop_stream()
        self._executor.shutdown()
        self.node.destroy_node()
        self._spinner.join(5.0)
