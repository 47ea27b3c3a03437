"""Play a rosbag2 on live topics at its recorded pace, with header stamps moved to now.

A small stand-in for ``ros2 bag play`` (not installable here), enough for the demo: the bag is
read into memory, and message headers are shifted by (play start - bag start) so nodes that
check observation age accept the frames. At equal log times joint states go out before
images, so a frame's exactly-stamped joint state is already there when the frame arrives.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rclpy.serialization import deserialize_message
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String

from quantvla_ros.ros.convert import ns_to_sec_nsec, stamp_to_ns
from quantvla_ros.ros.inputs import LATCHED_INSTRUCTION_QOS

MSG_TYPES = {
    "sensor_msgs/msg/Image": Image,
    "sensor_msgs/msg/CompressedImage": CompressedImage,
    "sensor_msgs/msg/JointState": JointState,
    "std_msgs/msg/String": String,
}
_ORDER = {"std_msgs/msg/String": 0, "sensor_msgs/msg/JointState": 1}  # images last


@dataclass
class Played:
    """One published message with its (restamped) header stamp, or its send time if none."""

    topic: str
    stamp_ns: int
    msg: object


class BagPlayer:
    """Publishes a bag's messages from ``node`` (which a background executor may spin)."""

    def __init__(self, node, bag: str | Path) -> None:
        """Read the bag and create one publisher per supported topic (others are skipped)."""
        self.messages: list[tuple[int, str, str, bytes]] = []
        with AnyReader([Path(bag)], default_typestore=get_typestore(Stores.ROS2_KILTED)) as r:
            conns = [c for c in r.connections if c.msgtype in MSG_TYPES]
            for conn, log_ns, raw in r.messages(connections=conns):
                self.messages.append((log_ns, conn.topic, conn.msgtype, bytes(raw)))
        self.messages.sort(key=lambda m: (m[0], _ORDER.get(m[2], 2)))
        self.publishers = {}
        for _, topic, msgtype, _ in self.messages:
            if topic not in self.publishers:
                # Latched instruction: the node gets it when it subscribes (at configure).
                qos = LATCHED_INSTRUCTION_QOS if msgtype == "std_msgs/msg/String" else 10
                self.publishers[topic] = node.create_publisher(MSG_TYPES[msgtype], topic, qos)
        self.node = node

    @property
    def duration_s(self) -> float:
        """Seconds between the first and the last message."""
        if not self.messages:
            return 0.0
        return (self.messages[-1][0] - self.messages[0][0]) / 1e9

    def play(self, topics: set[str] | None = None) -> list[Played]:
        """Publish (the messages of ``topics``, or all) in real time; return what was sent."""
        chosen = [m for m in self.messages if topics is None or m[1] in topics]
        if not chosen:
            return []
        bag_start = chosen[0][0]
        wall_start = time.monotonic()
        shift = self.node.get_clock().now().nanoseconds - bag_start
        played = []
        for log_ns, topic, msgtype, raw in chosen:
            delay = (log_ns - bag_start) / 1e9 - (time.monotonic() - wall_start)
            if delay > 0:
                time.sleep(delay)
            msg = deserialize_message(raw, MSG_TYPES[msgtype])
            if hasattr(msg, "header"):
                sec, nsec = ns_to_sec_nsec(stamp_to_ns(msg.header.stamp) + shift)
                msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nsec
                stamp = stamp_to_ns(msg.header.stamp)
            else:
                stamp = self.node.get_clock().now().nanoseconds
            self.publishers[topic].publish(msg)
            played.append(Played(topic, stamp, msg))
        return played
