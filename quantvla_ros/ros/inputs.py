"""Input side shared by both nodes: subscriptions, bounded buffers, observation assembly.

Callbacks only validate cheap metadata and buffer messages; pixels are decoded when an
observation is assembled (a few times per second, not at camera rate). Every problem goes to
``report(key, level, message, category)`` and the data is dropped: nothing raises out of a
callback. Categories: ``bad`` (invalid data, level ERROR) and ``stale`` (missing, late or
unpaired data, level WARN).

An invalid instruction invalidates the current one: the operator meant to change the task,
so the node waits for a valid instruction instead of going on with the old one (or with
``default_instruction``).

The instruction is read from any reliable publisher, volatile (``ros2 topic pub``'s default)
or transient local (latched: its last message reaches a node that subscribes later); see
``LIVE_INSTRUCTION_QOS``. The newest message wins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String

from quantvla_ros.data.observation import Observation, ObservationError, check_instruction
from quantvla_ros.ros.convert import (
    ImageError,
    JointStateError,
    check_image_header,
    compressed_format,
    joint_positions,
    stamp_to_ns,
    to_rgb,
)
from quantvla_ros.ros.diagnostics import ERROR, WARN
from quantvla_ros.ros.pairing import TimedBuffer
from quantvla_ros.ros.settings import InputSettings

Report = Callable[[str, int, str, str], None]

# The instruction must come from an ordinary (volatile) publisher at any time AND from a
# latched (transient-local) one that published before the node subscribed. One DDS reader
# cannot do both: a transient-local reader is incompatible with a volatile writer (nothing is
# ever delivered), and a volatile reader never gets a writer's earlier, historical samples.
# DurabilityPolicy.BEST_AVAILABLE does not solve it for a subscription: rmw_dds_common
# resolves it once, when the subscription is created, to transient local if every publisher
# known then is (also when there is none) and to volatile otherwise; a volatile publisher
# that shows up later stays incompatible. So the hub keeps two reliable subscriptions on the
# topic feeding one handler: LIVE_INSTRUCTION_QOS gets every live message of every reliable
# publisher, LATCHED_INSTRUCTION_QOS the latched one of a transient-local publisher (and a
# second copy of its live ones, dropped by the handler). Depth 1: the newest message wins.
LIVE_INSTRUCTION_QOS = QoSProfile(
    depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
# Also the profile for a publisher that wants late starters to get its last instruction.
LATCHED_INSTRUCTION_QOS = QoSProfile(
    depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
_FRAMES_KEPT = 16  # per camera: covers the sync tolerance at any usual frame rate
_JOINTS_KEPT = 256  # joint states come faster (up to ~1 kHz): keep ~0.25 s or more


@dataclass
class Assembled:
    """One paired observation and its anchor stamp in ns (``obs.stamp`` is it in seconds)."""

    stamp_ns: int
    obs: Observation


def _silent(*_) -> None:
    pass


class InputHub:
    """Subscribes to one InputSettings' topics and assembles paired observations."""

    def __init__(self, node, settings: InputSettings, report: Report,
                 on_input: Callable[[], None] | None = None,
                 on_instruction: Callable[[str], None] | None = None) -> None:
        """Create the subscriptions on ``node`` (any rclpy Node).

        ``on_input`` is called after each frame or joint state is stored (executor thread);
        ``on_instruction`` with :meth:`instruction_in_use` after each instruction message.
        """
        self.node, self.settings, self._report = node, settings, report
        self._on_input, self._on_instruction_taken = on_input, on_instruction
        self._tol = int(settings.sync_tolerance_s * 1e9)
        self.frames = {c.slot: TimedBuffer(_FRAMES_KEPT) for c in settings.cameras}
        self.joints = TimedBuffer(_JOINTS_KEPT)
        self.instruction: str | None = None
        self._instruction_problem: str | None = None
        # Publisher gid + sequence number and source timestamp of the last instruction taken.
        self._instruction_id: tuple | None = None
        self._instruction_ns = 0
        self._last_stamp: int | None = None
        self.subscriptions = []
        for cam in settings.cameras:
            msg_type = CompressedImage if cam.compressed else Image
            self.subscriptions.append(node.create_subscription(
                msg_type, cam.topic, self._camera_callback(cam.slot, cam.topic),
                qos_profile_sensor_data))
        self.subscriptions.append(node.create_subscription(
            JointState, settings.joint_state_topic, self._on_joints, qos_profile_sensor_data))
        topic = settings.instruction_topic
        self.subscriptions.append(node.create_subscription(
            String, topic, self._instruction_callback(latched=False), LIVE_INSTRUCTION_QOS))
        # A volatile publisher is incompatible with this one by design (the live subscription
        # serves it): no "incompatible QoS" warning for that.
        quiet = SubscriptionEventCallbacks(incompatible_qos=self._on_latched_incompatible)
        self.subscriptions.append(node.create_subscription(
            String, topic, self._instruction_callback(latched=True), LATCHED_INSTRUCTION_QOS,
            event_callbacks=quiet))

    def destroy(self) -> None:
        """Destroy the subscriptions and forget buffered data."""
        for sub in self.subscriptions:
            self.node.destroy_subscription(sub)
        self.subscriptions = []
        self.reset()

    def reset(self) -> None:
        """Forget buffered frames and joint states (not the instruction)."""
        for buf in self.frames.values():
            buf.clear()
        self.joints.clear()
        self._last_stamp = None

    # ---- callbacks (executor thread) -------------------------------------------------------
    def _now_ns(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def _stamp(self, msg) -> int:
        """Return the header stamp, or the receipt time when the publisher left it zero."""
        ns = stamp_to_ns(msg.header.stamp)
        return ns if ns > 0 else self._now_ns()

    def _camera_callback(self, slot: str, topic: str):
        def callback(msg) -> None:
            try:
                if hasattr(msg, "format"):
                    compressed_format(msg)
                else:
                    check_image_header(msg)
                self.frames[slot].add(self._stamp(msg), msg)
                if self._on_input is not None:
                    self._on_input()
            except ImageError as exc:
                self._report(f"camera_{slot}", ERROR, f"camera {slot} ({topic}): {exc}", "bad")
            except Exception as exc:  # never let a callback raise into the executor
                self._report(f"camera_{slot}", ERROR,
                             f"camera {slot} ({topic}): unexpected error {exc!r}", "bad")
        return callback

    def _on_joints(self, msg) -> None:
        try:
            positions = joint_positions(msg, self.settings.joint_names)
            self.joints.add(self._stamp(msg), positions)
            if self._on_input is not None:
                self._on_input()
        except JointStateError as exc:
            self._report("joint_states", ERROR,
                         f"joint states ({self.settings.joint_state_topic}): {exc}", "bad")
        except Exception as exc:
            self._report("joint_states", ERROR, f"joint states: unexpected error {exc!r}", "bad")

    def _instruction_callback(self, latched: bool):
        def callback(msg, info) -> None:
            try:
                if self._instruction_is_news(info, latched):
                    self._on_instruction(msg)
            except Exception as exc:
                self._report("instruction", ERROR, f"instruction: unexpected error {exc!r}",
                             "bad")
        return callback

    def _instruction_is_news(self, info, latched: bool) -> bool:
        """Tell whether a message is not a copy of, nor (if latched) older than, the current one.

        A transient-local publisher's message arrives on both subscriptions: the second copy
        (same publisher gid and sequence number) is dropped. The live subscription delivers in
        arrival order, so its messages always count; a latched-subscription message older
        (source timestamp) than the instruction taken last is stale -- a latched instruction
        handed over at subscription time, or the late second copy of a message that a newer
        one has replaced -- and is dropped.
        """
        gid = info.get("publisher_gid") or {}
        seq = info.get("publication_sequence_number")
        ident = None if not gid.get("data") or seq is None else (bytes(gid["data"]), seq)
        stamp = int(info.get("source_timestamp") or 0)
        if ident is not None and ident == self._instruction_id:
            return False
        if latched and stamp and stamp < self._instruction_ns:
            return False
        self._instruction_id, self._instruction_ns = ident, stamp
        return True

    def _on_latched_incompatible(self, event) -> None:
        self.node.get_logger().debug(
            f"{self.settings.instruction_topic}: a publisher is incompatible with the "
            f"transient-local subscription ({event.last_policy_kind}); a volatile one is read "
            "by the volatile subscription")

    def _on_instruction(self, msg) -> None:
        try:
            self.instruction = check_instruction(msg.data)
            self._instruction_problem = None
        except ObservationError as exc:
            self.instruction, self._instruction_problem = None, str(exc)
            self._report("instruction", ERROR, f"instruction rejected: {exc}", "bad")
        except Exception as exc:
            self.instruction, self._instruction_problem = None, repr(exc)
            self._report("instruction", ERROR, f"instruction: unexpected error {exc!r}", "bad")
        if self._on_instruction_taken is not None:
            self._on_instruction_taken(self.instruction_in_use())

    def instruction_in_use(self) -> str:
        """Return the instruction the next observation gets, or "" while there is none."""
        if self.instruction is not None:
            return self.instruction
        default = self.settings.default_instruction
        return default if self._instruction_problem is None and default.strip() else ""

    # ---- assembly (executor thread, from a timer) -------------------------------------------
    def camera_ages(self, now_ns: int | None = None) -> dict[str, float | None]:
        """Age in seconds of each camera's newest frame (None before the first one)."""
        now_ns = self._now_ns() if now_ns is None else now_ns
        out = {}
        for slot, buf in self.frames.items():
            latest = buf.latest()
            out[slot] = None if latest is None else (now_ns - latest[0]) / 1e9
        return out

    def current_instruction(self) -> str | None:
        """Return the instruction to use now, or None (after reporting why there is none)."""
        text = self.instruction_in_use()
        if text:
            return text
        if self._instruction_problem is not None:
            self._report("instruction", WARN, "no valid instruction: the last one was rejected "
                         f"({self._instruction_problem}); waiting for a new one", "stale")
        else:
            self._report("instruction", WARN, "no instruction yet on "
                         f"{self.settings.instruction_topic} and default_instruction is empty",
                         "stale")
        return None

    def assemble(self, now_ns: int | None = None, quiet: bool = False) -> Assembled | None:
        """Pair the newest unused anchor frame with the other inputs, or report why not.

        Returns None when nothing new arrived, or when the observation is stale, unpaired or
        invalid (reported unless ``quiet``: a retry does not count a problem twice). A frame
        is retried on the next call if only its partners were missing: a joint state may
        still be in flight.
        """
        if quiet:
            report, self._report = self._report, _silent
            try:
                return self.assemble(now_ns)
            finally:
                self._report = report
        now_ns = self._now_ns() if now_ns is None else now_ns
        s = self.settings
        anchor = s.cameras[0]
        latest = self.frames[anchor.slot].latest()
        if latest is None:
            self._report(f"camera_{anchor.slot}", WARN,
                         f"no frame yet from camera {anchor.slot} ({anchor.topic})", "stale")
            return None
        stamp, anchor_msg = latest
        age = (now_ns - stamp) / 1e9
        if age > s.max_observation_age_s:
            self._report(f"camera_{anchor.slot}", WARN,
                         f"camera {anchor.slot} ({anchor.topic}): newest frame is {age:.2f} s "
                         f"old (max_observation_age_s {s.max_observation_age_s:g})", "stale")
            return None
        if stamp == self._last_stamp:
            return None  # no new frame since the last observation: not a problem
        msgs = {anchor.slot: anchor_msg}
        for cam in s.cameras[1:]:
            hit = self.frames[cam.slot].nearest(stamp, self._tol)
            if hit is None:
                newest = self.frames[cam.slot].latest()
                when = "no frame yet" if newest is None else (
                    f"newest frame is {(now_ns - newest[0]) / 1e9:.2f} s old")
                self._report(f"camera_{cam.slot}", WARN,
                             f"camera {cam.slot} ({cam.topic}): no frame within "
                             f"{s.sync_tolerance_s:g} s of the anchor frame ({when})", "stale")
                return None
            msgs[cam.slot] = hit[1]
        joint = self.joints.nearest(stamp, self._tol)
        if joint is None:
            newest = self.joints.latest()
            when = "none yet" if newest is None else (
                f"newest valid one is {(now_ns - newest[0]) / 1e9:.2f} s old")
            self._report("joint_states", WARN,
                         f"joint states ({s.joint_state_topic}): none within "
                         f"{s.sync_tolerance_s:g} s of the anchor frame ({when})", "stale")
            return None
        instruction = self.current_instruction()
        if instruction is None:
            return None
        self._last_stamp = stamp  # decoding is deterministic: a bad frame is not retried
        images = {}
        for cam in s.cameras:
            try:
                images[cam.slot] = to_rgb(msgs[cam.slot])
            except ImageError as exc:
                self._report(f"camera_{cam.slot}", ERROR,
                             f"camera {cam.slot} ({cam.topic}): {exc}", "bad")
                return None
        state = np.asarray(joint[1], dtype=np.float32)
        try:
            obs = Observation(images, state, instruction, stamp / 1e9)
        except ObservationError as exc:
            self._report("observation", ERROR, f"observation rejected: {exc}", "bad")
            return None
        return Assembled(stamp, obs)
