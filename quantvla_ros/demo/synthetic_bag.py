"""Write a small synthetic rosbag2 (sqlite3 or MCAP) for demos, tests and smoke runs.

Camera frames come from :func:`quantvla_ros.data.synthetic.synthetic_observation` (smooth
colour waves), one raw rgb8 camera and one jpeg CompressedImage camera by default; joint
states are slow sinusoids published ``joint_hz / camera_hz`` times per frame, one of them at
each frame's exact stamp; a single std_msgs/String instruction comes first. Header stamps
equal the bag's log times.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from quantvla_ros.data.synthetic import synthetic_observation
from quantvla_ros.ros.convert import encode_compressed, ns_to_sec_nsec, rgb_to_image_fields

STORAGES = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
IMAGE, COMPRESSED = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"
JOINT_STATE, STRING = "sensor_msgs/msg/JointState", "std_msgs/msg/String"
START_NS = 1_700_000_000 * 1_000_000_000  # a fixed start keeps bags reproducible


@dataclass(frozen=True)
class BagCamera:
    """A camera written to the bag: ``fmt`` is None for raw rgb8, else "jpeg" or "png"."""

    topic: str
    slot: str
    size: tuple[int, int] = (96, 128)
    fmt: str | None = None


DEFAULT_CAMERAS = (
    BagCamera("/camera/base/image_raw", "base_0_rgb"),
    BagCamera("/camera/wrist/image_raw/compressed", "left_wrist_0_rgb", fmt="jpeg"),
)
DEFAULT_JOINTS = tuple(f"joint_{i}" for i in range(1, 7)) + ("gripper",)
DEFAULT_INSTRUCTION = "pick up the red block and put it in the bowl"


def _joint_positions(t: float, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    freq, phase = rng.uniform(0.1, 0.5, n), rng.uniform(0, 2 * np.pi, n)
    return 0.8 * np.sin(2 * np.pi * freq * t + phase)


def write_synthetic_bag(
    path: str | Path,
    *,
    storage: str = "sqlite3",
    seconds: float = 3.0,
    camera_hz: float = 5.0,
    joint_hz: float = 25.0,
    cameras: tuple[BagCamera, ...] = DEFAULT_CAMERAS,
    joint_names: tuple[str, ...] = DEFAULT_JOINTS,
    joint_topic: str = "/joint_states",
    instruction_topic: str | None = "/instruction",
    instruction: str = DEFAULT_INSTRUCTION,
    seed: int = 0,
) -> dict:
    """Write the bag directory ``path`` (must not exist); return what was written.

    ``joint_hz`` must be a multiple of ``camera_hz`` so every frame has a joint state at its
    exact stamp. ``instruction_topic=None`` leaves the instruction out.
    """
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {list(STORAGES)}, got {storage!r}")
    per_frame = joint_hz / camera_hz
    if per_frame < 1 or abs(per_frame - round(per_frame)) > 1e-9:
        raise ValueError(f"joint_hz ({joint_hz}) must be a multiple of camera_hz ({camera_hz})")
    ts = get_typestore(Stores.ROS2_KILTED)
    T = ts.types
    n_frames = max(1, int(round(seconds * camera_hz)))
    frame_ns = int(round(1e9 / camera_hz))
    joint_ns = frame_ns // int(round(per_frame))
    counts: dict[str, int] = {}

    def header(ns: int):
        sec, nsec = ns_to_sec_nsec(ns)
        return T["std_msgs/msg/Header"](
            stamp=T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec), frame_id="")

    with Writer(Path(path), version=9, storage_plugin=STORAGES[storage]) as writer:
        conns = {}

        def write(topic: str, msgtype: str, ns: int, msg) -> None:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=ts)
            writer.write(conns[topic], ns, ts.serialize_cdr(msg, msgtype))
            counts[topic] = counts.get(topic, 0) + 1

        if instruction_topic is not None:
            write(instruction_topic, STRING, START_NS, T[STRING](data=instruction))
        slots = {c.slot: c.size for c in cameras}
        for k in range(n_frames * int(round(per_frame))):
            ns = START_NS + k * joint_ns
            pos = _joint_positions((ns - START_NS) / 1e9, len(joint_names), seed)
            empty = np.zeros(0, np.float64)
            write(joint_topic, JOINT_STATE, ns, T[JOINT_STATE](
                header=header(ns), name=list(joint_names), position=pos.astype(np.float64),
                velocity=empty, effort=empty))
            if k % int(round(per_frame)):
                continue
            obs = synthetic_observation(k // int(round(per_frame)), seed, slots, 1)
            for cam in cameras:
                rgb = obs.images[cam.slot]
                if cam.fmt is None:
                    msg = T[IMAGE](header=header(ns), **rgb_to_image_fields(rgb))
                    write(cam.topic, IMAGE, ns, msg)
                else:
                    data = np.frombuffer(encode_compressed(rgb, cam.fmt), np.uint8)
                    write(cam.topic, COMPRESSED, ns,
                          T[COMPRESSED](header=header(ns), format=cam.fmt, data=data))
    return {
        "path": str(path), "storage": storage, "frames": n_frames, "camera_hz": camera_hz,
        "joint_hz": joint_hz, "messages": counts, "start_ns": START_NS,
        "duration_s": (n_frames - 1) / camera_hz,
    }


def topics_config(cameras: tuple[BagCamera, ...] = DEFAULT_CAMERAS,
                  joint_names: tuple[str, ...] = DEFAULT_JOINTS,
                  joint_topic: str = "/joint_states",
                  instruction_topic: str = "/instruction",
                  default_instruction: str = "", sync_tolerance_s: float = 0.05) -> dict:
    """Return the topics-file mapping (see config/topics.yaml) that matches a synthetic bag."""
    return {
        "camera_topics": [c.topic for c in cameras],
        "camera_slots": [c.slot for c in cameras],
        "joint_state_topic": joint_topic,
        "joint_names": list(joint_names),
        "instruction_topic": instruction_topic,
        "default_instruction": default_instruction,
        "sync_tolerance_s": sync_tolerance_s,
        "max_observation_age_s": 0.5,
    }


def write_topics_file(path: str | Path, config: dict) -> Path:
    """Write a topics YAML file; return its path."""
    path = Path(path)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path
