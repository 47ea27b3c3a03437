"""Rosbag2 (sqlite3 or MCAP) -> calibration buffer, with the live nodes' pairing rules.

Two passes per bag through ``rosbags.highlevel.AnyReader``: the first reads joint states,
instructions and the stamps of every frame, pairs anchor frames (at most ``rate_hz`` per
second) with the other cameras and the nearest joint state within the tolerance, and with
the last instruction logged before the frame; the second decodes only the frames of the
observations kept. With more pairable observations than ``samples``, the kept ones are spread
evenly over all bags. Each bag is paired on its own (recordings are never mixed).

Nothing partial is left behind: the buffer is written into a temporary directory next to
``out`` and swapped into place at the end (appending copies the existing buffer first); see
:func:`quantvla_ros.data.atomic.folder_atomic`.
"""

from __future__ import annotations

import bisect
import os
import shutil
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.rosbag2.errors import ReaderError
from rosbags.typesys import Stores, get_typestore
from tqdm import tqdm

from quantvla_ros.data.atomic import folder_atomic
from quantvla_ros.data.buffer import RecordedBuffer
from quantvla_ros.data.observation import Observation, ObservationError, check_instruction
from quantvla_ros.data.shard_format import BufferFormatError
from quantvla_ros.ros.convert import (
    ImageError,
    JointStateError,
    joint_positions,
    stamp_to_ns,
    to_rgb,
)
from quantvla_ros.ros.pairing import nearest_index, select_by_rate, spread
from quantvla_ros.ros.settings import InputSettings, load_topics_file

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
JOINT_TYPE, STRING_TYPE = "sensor_msgs/msg/JointState", "std_msgs/msg/String"
_READ_ERRORS = (AnyReaderError, ReaderError, sqlite3.DatabaseError, OSError, KeyError,
                ValueError, IndexError, AssertionError)


class BagError(ValueError):
    """A bag that cannot be calibrated from: missing, corrupt, lacking topics or pairs."""


@dataclass
class Candidate:
    """A pairable observation: frame index per slot, state, instruction, anchor stamp."""

    bag: Path
    stamp_ns: int
    frames: dict[str, int]
    state: object
    instruction: str


@dataclass
class Scan:
    """Pass-one result of one bag."""

    candidates: list[Candidate] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    frames: int = 0


def _open(path: Path) -> AnyReader:
    if not path.exists():
        raise BagError(f"bag {path} does not exist")
    try:
        reader = AnyReader([path], default_typestore=get_typestore(Stores.ROS2_KILTED))
        reader.open()
    except _READ_ERRORS as exc:
        raise BagError(f"cannot open bag {path} (not a rosbag2 or corrupt): {exc}") from exc
    return reader


def _connections(reader: AnyReader, path: Path, inputs: InputSettings) -> dict[str, object]:
    """Map each needed topic to its connection, or raise BagError naming what is missing."""
    by_topic = {c.topic: c for c in reader.connections}
    have = ", ".join(f"{t} ({c.msgtype})" for t, c in sorted(by_topic.items())) or "none"
    need = {c.topic: IMAGE_TYPES for c in inputs.cameras}
    need[inputs.joint_state_topic] = (JOINT_TYPE,)
    optional = bool(inputs.default_instruction.strip())
    if inputs.instruction_topic in by_topic or not optional:
        need[inputs.instruction_topic] = (STRING_TYPE,)
    out = {}
    for topic, types in need.items():
        conn = by_topic.get(topic)
        if conn is None:
            hint = (" (or set default_instruction)" if topic == inputs.instruction_topic
                    else "")
            raise BagError(f"bag {path} has no topic {topic}{hint}; its topics: {have}")
        if conn.msgtype not in types:
            raise BagError(f"bag {path}: topic {topic} is {conn.msgtype}, expected "
                           f"{' or '.join(types)}")
        out[topic] = conn
    return out


def _progress(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, unit="msg", disable=not enabled, leave=False)


def scan_bag(path: Path, inputs: InputSettings, rate_hz: float, progress: bool = False) -> Scan:
    """Pass one: pair anchor frames of one bag (see module docstring)."""
    tol = int(inputs.sync_tolerance_s * 1e9)
    reader = _open(path)
    try:
        conns = _connections(reader, path, inputs)
        slot_of = {c.topic: c.slot for c in inputs.cameras}
        frame_stamps: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
        joints: list[tuple[int, object]] = []
        instructions: list[tuple[int, str | None]] = []
        skipped: Counter = Counter()
        total = sum(c.msgcount for c in conns.values())
        with _progress(total, f"scan {path.name}", progress) as bar:
            for conn, log_ns, raw in reader.messages(connections=list(conns.values())):
                bar.update(1)
                msg = reader.deserialize(raw, conn.msgtype)
                if conn.topic in slot_of:
                    stamp = stamp_to_ns(msg.header.stamp) or log_ns
                    frames = frame_stamps[slot_of[conn.topic]]
                    frames.append((stamp, log_ns, len(frames)))
                elif conn.topic == inputs.joint_state_topic:
                    try:
                        state = joint_positions(msg, inputs.joint_names)
                    except JointStateError as exc:
                        skipped[f"invalid joint state ({exc})"] += 1
                        continue
                    joints.append((stamp_to_ns(msg.header.stamp) or log_ns, state))
                else:
                    try:
                        instructions.append((log_ns, check_instruction(msg.data)))
                    except ObservationError:
                        instructions.append((log_ns, None))
    except BagError:
        raise
    except _READ_ERRORS as exc:
        raise BagError(f"bag {path} is corrupt or truncated: {exc}") from exc
    finally:
        reader.close()
    return _pair(path, inputs, frame_stamps, joints, instructions, skipped, rate_hz, tol)


def _pair(path, inputs, frame_stamps, joints, instructions, skipped, rate_hz, tol) -> Scan:
    for frames in frame_stamps.values():
        frames.sort()
    joints.sort(key=lambda j: j[0])
    joint_stamps = [j[0] for j in joints]
    other = {slot: [f[0] for f in frame_stamps[slot]] for slot in inputs.slots[1:]}
    instr_times = [i[0] for i in instructions]
    anchor = frame_stamps[inputs.slots[0]]
    scan = Scan(skipped=skipped, frames=len(anchor))
    for i in select_by_rate([f[0] for f in anchor], int(1e9 / rate_hz)):
        stamp, log_ns, index = anchor[i]
        picked = {inputs.slots[0]: index}
        for slot, stamps in other.items():
            k = nearest_index(stamps, stamp, tol)
            if k is not None:
                picked[slot] = frame_stamps[slot][k][2]
        unpaired = [slot for slot in inputs.slots if slot not in picked]
        if unpaired:
            scan.skipped[f"no {unpaired[0]} frame within {inputs.sync_tolerance_s:g} s"] += 1
            continue
        k = nearest_index(joint_stamps, stamp, tol)
        if k is None:
            scan.skipped[f"no joint state within {inputs.sync_tolerance_s:g} s"] += 1
            continue
        j = _last_at_or_before(instr_times, log_ns)
        text = instructions[j][1] if j is not None else (inputs.default_instruction or None)
        if text is None:
            reason = "instruction rejected" if j is not None else "no instruction yet"
            scan.skipped[reason] += 1
            continue
        scan.candidates.append(Candidate(path, stamp, picked, joints[k][1], text))
    return scan


def _last_at_or_before(times: Sequence[int], t: int) -> int | None:
    i = bisect.bisect_right(times, t) - 1
    return i if i >= 0 else None


def load_observations(path: Path, inputs: InputSettings, candidates: list[Candidate],
                      skipped: Counter, progress: bool = False) -> Iterator[Observation]:
    """Pass two: decode the frames of ``candidates`` (all from bag ``path``).

    Yields buffer observations as each becomes complete; frames that fail to decode are
    counted in ``skipped`` and drop their observations.
    """
    wanted: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for n, cand in enumerate(candidates):
        for slot, index in cand.frames.items():
            wanted[slot][index].append(n)
    images: list[dict] = [{} for _ in candidates]
    failed: set[int] = set()
    slot_of = {c.topic: c.slot for c in inputs.cameras}
    reader = _open(path)
    try:
        conns = [c for c in _connections(reader, path, inputs).values() if c.topic in slot_of]
        seen: Counter = Counter()
        with _progress(sum(c.msgcount for c in conns), f"read {path.name}", progress) as bar:
            for conn, _, raw in reader.messages(connections=conns):
                bar.update(1)
                slot = slot_of[conn.topic]
                index, seen[slot] = seen[slot], seen[slot] + 1
                users = wanted[slot].get(index)
                if not users:
                    continue
                try:
                    rgb = to_rgb(reader.deserialize(raw, conn.msgtype))
                except ImageError as exc:
                    skipped[f"camera {slot}: {exc}"] += len(users)
                    failed.update(users)
                    continue
                for n in users:
                    images[n][slot] = rgb
                    if n not in failed and len(images[n]) == len(inputs.slots):
                        cand = candidates[n]
                        try:
                            yield Observation(images[n], cand.state, cand.instruction,
                                              cand.stamp_ns / 1e9)
                        except ObservationError as exc:
                            skipped[f"invalid observation ({exc})"] += 1
                        images[n] = {}
    except BagError:
        raise
    except _READ_ERRORS as exc:
        raise BagError(f"bag {path} is corrupt or truncated: {exc}") from exc
    finally:
        reader.close()


def record_from_bags(
    bags: Sequence[str | os.PathLike[str]],
    topics: InputSettings | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    samples: int = 128,
    rate_hz: float = 2.0,
    append: bool = False,
    shard_size: int = 32,
    progress: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """Record observations from ``bags`` into the calibration buffer ``out``; return a summary.

    Raises BagError (a ValueError) for a missing or corrupt bag, a missing topic, zero
    pairable frames, or an ``out`` that exists (without ``append``); ``out`` is then untouched.
    """
    if not bags:
        raise BagError("give at least one bag")
    if samples < 1 or not rate_hz > 0:
        raise BagError(f"samples must be >= 1 and rate positive (got {samples}, {rate_hz})")
    inputs = topics if isinstance(topics, InputSettings) else load_topics_file(topics)
    out = Path(out)
    if out.exists() and not append:
        raise BagError(f"{out} exists; choose a new path, or append to the buffer with --append")
    if append and out.exists():
        try:
            existing = RecordedBuffer.open(out)
        except BufferFormatError as exc:
            raise BagError(f"cannot append to {out}: {exc}") from exc
        if set(existing.cameras) != set(inputs.slots):
            raise BagError(f"{out} holds cameras {sorted(existing.cameras)}, the topics file "
                           f"maps {sorted(inputs.slots)}")
    paths = [Path(b) for b in bags]
    scans = [scan_bag(p, inputs, rate_hz, progress) for p in paths]
    everything = [c for s in scans for c in s.candidates]
    skipped = sum((s.skipped for s in scans), Counter())
    if not everything:
        frames = sum(s.frames for s in scans)
        reasons = ", ".join(f"{n} x {r}" for r, n in skipped.most_common()) or "no anchor frames"
        raise BagError(f"no pairable observations in {', '.join(map(str, paths))} "
                       f"({frames} anchor frames on {inputs.cameras[0].topic}): {reasons}")
    keep = [everything[i] for i in spread(len(everything), samples)]
    log(f"{len(everything)} pairable observations in {len(paths)} bag(s); keeping {len(keep)}")
    return _write(out, paths, inputs, keep, skipped, append, shard_size, progress, log)


def _write(out, paths, inputs, keep, skipped, append, shard_size, progress, log) -> dict:
    with folder_atomic(out) as target:
        buffer = None
        if append and out.exists():
            shutil.rmtree(target)
            shutil.copytree(out, target)
            buffer = RecordedBuffer.open(target)
        before = len(buffer) if buffer is not None else 0
        for path in paths:
            mine = [c for c in keep if c.bag == path]
            for obs in load_observations(path, inputs, mine, skipped, progress):
                if buffer is None:
                    source = (f"rosbag {', '.join(p.name for p in paths)}: " + ", ".join(
                        f"{c.topic} -> {c.slot}" for c in inputs.cameras)
                        + f", joints {inputs.joint_state_topic}")
                    buffer = RecordedBuffer.create(target, obs.image_sizes,
                                                   len(inputs.joint_names), source=source,
                                                   shard_size=shard_size)
                try:
                    buffer.append(obs)
                except ValueError as exc:  # e.g. a camera that changed resolution mid-bag
                    skipped[f"not appended ({exc})"] += 1
        if buffer is None or len(buffer) == before:
            raise BagError("no observation could be decoded: " + ", ".join(
                f"{n} x {r}" for r, n in skipped.most_common()))
        buffer.close()
        summary = buffer.summary()
    summary.update(path=str(out), added=len(buffer) - before,
                   skipped={r: n for r, n in skipped.most_common()})
    log(f"wrote {summary['added']} observations to {out} ({summary['samples']} in total)")
    return summary
