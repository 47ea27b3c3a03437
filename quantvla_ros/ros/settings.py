"""Parameters of the nodes and the bag topics file: one table, one validation (no ROS).

Each :class:`Param` carries its type, default and description: the nodes declare ROS
parameters from it and the YAML files under config/ document the same names. ``parse_*``
turn a plain ``{name: value}`` dict into frozen settings, or raise :class:`SettingsError`
listing every problem at once.

Compressed cameras follow the image_transport naming convention: a camera topic that ends in
``/compressed`` carries sensor_msgs/CompressedImage, any other topic sensor_msgs/Image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from quantvla_ros.runtime.families import all_options, presets_help
from quantvla_ros.runtime.family import UNSET

COMPRESSED_SUFFIX = "/compressed"


class SettingsError(ValueError):
    """Invalid parameters; the message lists every problem found."""


@dataclass(frozen=True)
class Param:
    """One parameter: ``kind`` is str, str[], float, int or bool; default None = required."""

    name: str
    kind: str
    default: Any
    description: str


def _option_params(prefix: str) -> tuple[Param, ...]:
    """One str parameter per family option (`PolicyFamily.options`), named prefix + name."""
    return tuple(Param(prefix + name, "str", "auto", f"{spec.help} [{', '.join(families)}]")
                 for name, (spec, families) in all_options().items())


def _options(v: dict, prefix: str, problems: list[str]) -> dict[str, str]:
    """Return the set options (auto / empty left out); a value outside its choices is a problem."""
    out = {}
    for name, (spec, _) in all_options().items():
        value = v.get(prefix + name, "auto").strip()
        if spec.choices and value not in (*UNSET, *spec.choices):
            problems.append(f"{prefix + name} must be auto, {', '.join(spec.choices[:-1])} or "
                            f"{spec.choices[-1]}, got {value!r}")
        elif value not in UNSET:
            out[name] = value
    return out


INPUT_PARAMS = (
    Param("camera_topics", "str[]", None,
          "Image topics, one per camera. A topic ending in /compressed carries "
          "sensor_msgs/CompressedImage (jpeg or png), any other sensor_msgs/Image."),
    Param("camera_slots", "str[]", None,
          "Model camera slot for each entry of camera_topics (same length). The first is "
          "the anchor camera: observations are stamped with its frames."),
    Param("joint_state_topic", "str", "/joint_states", "sensor_msgs/JointState topic."),
    Param("joint_names", "str[]", None,
          "Joints in the order of the policy's state vector and of the published action "
          "dimensions."),
    Param("instruction_topic", "str", "/instruction",
          "std_msgs/String with the task, from any reliable publisher: volatile (e.g. "
          "ros2 topic pub) or transient local (its last message reaches late starters). "
          "The newest message wins."),
    Param("default_instruction", "str", "",
          "Instruction used until one arrives on instruction_topic; empty = wait for one."),
    Param("sync_tolerance_s", "float", 0.05,
          "Largest time difference between the anchor frame and the other cameras' frames "
          "or the joint state paired with it."),
    Param("max_observation_age_s", "float", 0.5,
          "Observations (anchor frame stamp) older than this are stale: not used."),
)

INFERENCE_PARAMS = (
    Param("policy", "str", "pi05-tiny",
          "Checkpoint folder, quantized artifact folder, or a named model (random weights)."),
    Param("device", "str", "cpu", "Torch device: cpu, cuda or cuda:N."),
    Param("precision", "str", "fp32", "Floating-point precision: fp32, bf16 or fp16."),
    *_option_params(""),
    *INPUT_PARAMS,
    Param("output_topic", "str", "/quantvla/joint_trajectory",
          "trajectory_msgs/JointTrajectory output."),
    Param("control_rate_hz", "float", 10.0,
          "Rate at which the robot executes action steps; spaces time_from_start."),
    Param("actions_per_chunk", "int", 10,
          "Action steps executed before the next inference: inference runs every "
          "actions_per_chunk / control_rate_hz seconds and each trajectory holds this many "
          "points."),
    Param("warmup_runs", "int", 2, "Inferences run at configure time before serving."),
    Param("seed", "int", 0,
          "Seed of the flow-matching noise (and of random weights for named models); the "
          "noise of an observation depends only on (seed, observation stamp). Read again at "
          "every activate (a new episode can set it through the parameter service)."),
    Param("action_names", "str[]", [],
          "Names of the published action dims, when they are not the joints of the state "
          "(e.g. end-effector deltas); empty = joint_names."),
    Param("noise", "str", "stamp",
          "stamp: an observation's noise comes from (seed, its stamp); sequence: the k-th "
          "inference after activate takes the k-th draw of a generator seeded with seed "
          "(the direct LIBERO evaluation's noise, for paired comparisons). Read again at "
          "every activate."),
    Param("noise_scale", "float", -1.0,
          "Scale of the flow-matching start noise: 1 samples, 0 starts every chunk from the "
          "noise's mean; negative = what the policy declares. Read again at every activate."),
    Param("trajectory_points", "int", 0,
          "Points per trajectory: 0 = actions_per_chunk; more (up to the policy's action "
          "horizon) also publish the chunk beyond the next inference, so a robot keeps moving "
          "when that inference is late (each new trajectory replaces the current one)."),
)
# Read at every activate, not only at configure (a deactivate / activate cycle starts an
# episode with them: no reload of the model).
ACTIVATION_PARAMS = ("seed", "noise", "noise_scale")
NOISE_MODES = ("stamp", "sequence")

CALIBRATION_PARAMS = (
    *INPUT_PARAMS,
    Param("buffer_path", "str", None,
          "Calibration buffer directory: created, or reopened and appended to (resume)."),
    Param("samples", "int", 128,
          "Observations the buffer should hold; recording stops when it does."),
    Param("record_rate_hz", "float", 2.0,
          "Observations recorded per second at most (consecutive frames are near duplicates)."),
    Param("shard_size", "int", 32, "Observations per buffer shard file."),
    Param("quantize", "bool", False,
          "After recording, quantize `quantize_source` on the buffer and write an artifact."),
    Param("quantize_out", "str", "", "Output folder of the quantized artifact."),
    Param("quantize_source", "str", "pi05-tiny",
          "Float policy to quantize: a checkpoint folder or a named model (random weights)."),
    Param("quantize_bits", "str", "w4a8", "Integer format: w8a8, w4a8 or w4a4."),
    Param("quantize_preset", "str", "quantvla",
          f"Layout, a preset of the source's family: {presets_help()}."),
    Param("quantize_device", "str", "cpu", "Torch device for calibration: cpu or cuda."),
    *_option_params("quantize_"),
    Param("seed", "int", 0, "Weights seed of a named quantize_source."),
)

TOPICS_FILE_KEYS = tuple(p.name for p in INPUT_PARAMS)


@dataclass(frozen=True)
class Camera:
    """One camera input: its topic, the model slot it fills, and its message type."""

    topic: str
    slot: str
    compressed: bool


@dataclass(frozen=True)
class InputSettings:
    """Where observations come from and how they are paired."""

    cameras: tuple[Camera, ...]
    joint_state_topic: str
    joint_names: tuple[str, ...]
    instruction_topic: str
    default_instruction: str
    sync_tolerance_s: float
    max_observation_age_s: float

    @property
    def slots(self) -> tuple[str, ...]:
        """Camera slots in configuration order (the first is the anchor)."""
        return tuple(c.slot for c in self.cameras)


@dataclass(frozen=True)
class InferenceSettings:
    """Everything quantvla_node reads at configure time."""

    inputs: InputSettings
    policy: str
    device: str
    precision: str
    output_topic: str
    control_rate_hz: float
    actions_per_chunk: int
    warmup_runs: int
    seed: int
    options: dict = field(default_factory=dict)  # the family's deployment choices, set ones
    action_names: tuple[str, ...] = ()
    noise: str = "stamp"
    noise_scale: float = -1.0  # negative: the policy's declared scale
    trajectory_points: int = 0  # 0: actions_per_chunk

    @property
    def points(self) -> int:
        """Points per published trajectory."""
        return self.trajectory_points or self.actions_per_chunk

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of the published action dims (the joints unless action_names says)."""
        return self.action_names or self.inputs.joint_names

    @property
    def inference_period_s(self) -> float:
        """Seconds between inferences: one chunk's executed steps at the control rate."""
        return self.actions_per_chunk / self.control_rate_hz


@dataclass(frozen=True)
class CalibrationSettings:
    """Everything calibration_node reads at start-up."""

    inputs: InputSettings
    buffer_path: str
    samples: int
    record_rate_hz: float
    shard_size: int
    quantize: bool
    quantize_out: str
    quantize_source: str = "pi05-tiny"
    quantize_bits: str = "w4a8"
    quantize_preset: str = "quantvla"
    quantize_device: str = "cpu"
    seed: int = 0
    quantize_options: dict = field(default_factory=dict)  # the source's deployment choices


def defaults(params: tuple[Param, ...]) -> dict[str, Any]:
    """Return {name: default} for the parameters that have one."""
    return {p.name: p.default for p in params if p.default is not None}


def _collect(values: dict[str, Any], params: tuple[Param, ...], problems: list[str]) -> dict:
    """Fill defaults, check presence and types; append problems instead of raising."""
    out = {}
    for p in params:
        value = values.get(p.name, p.default)
        if value is None:
            problems.append(f"{p.name} is required ({p.description})")
            continue
        ok = {
            "str": lambda v: isinstance(v, str),
            "str[]": lambda v: isinstance(v, list | tuple) and all(isinstance(s, str) for s in v),
            "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
            "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "bool": lambda v: isinstance(v, bool),
        }[p.kind](value)
        if not ok:
            problems.append(f"{p.name} must be {p.kind}, got {value!r}")
            continue
        out[p.name] = float(value) if p.kind == "float" else value
    return out


def _positive(v: dict, name: str, problems: list[str]) -> None:
    if name in v and not (v[name] > 0 and math.isfinite(v[name])):
        problems.append(f"{name} must be positive and finite, got {v[name]!r}")


def _inputs(v: dict, problems: list[str]) -> InputSettings | None:
    topics, slots = list(v.get("camera_topics", [])), list(v.get("camera_slots", []))
    if "camera_topics" in v and not topics:
        problems.append("camera_topics must name at least one camera topic")
    if "camera_topics" in v and "camera_slots" in v and len(topics) != len(slots):
        problems.append(
            f"camera_topics ({len(topics)}) and camera_slots ({len(slots)}) must be parallel "
            "lists of the same length"
        )
    for label, items in (("camera_topics", topics), ("camera_slots", slots),
                         ("joint_names", list(v.get("joint_names", [])))):
        dup = sorted({s for s in items if items.count(s) > 1})
        if dup:
            problems.append(f"{label} lists {dup} more than once")
        if any(not s.strip() for s in items):
            problems.append(f"{label} contains an empty name")
    if "joint_names" in v and not v["joint_names"]:
        problems.append("joint_names must name at least one joint")
    for name in ("joint_state_topic", "instruction_topic"):
        if name in v and not v[name].strip():
            problems.append(f"{name} must not be empty")
    _positive(v, "max_observation_age_s", problems)
    if "sync_tolerance_s" in v and not (0 <= v["sync_tolerance_s"] < math.inf):
        problems.append(f"sync_tolerance_s must be >= 0, got {v['sync_tolerance_s']!r}")
    if problems:
        return None
    cameras = tuple(Camera(t, s, t.rstrip("/").endswith(COMPRESSED_SUFFIX))
                    for t, s in zip(topics, slots, strict=True))
    return InputSettings(
        cameras=cameras, joint_state_topic=v["joint_state_topic"],
        joint_names=tuple(v["joint_names"]), instruction_topic=v["instruction_topic"],
        default_instruction=v["default_instruction"], sync_tolerance_s=v["sync_tolerance_s"],
        max_observation_age_s=v["max_observation_age_s"],
    )


def _raise(problems: list[str], what: str) -> None:
    if problems:
        raise SettingsError(f"invalid {what}: " + "; ".join(problems))


def parse_inference(values: dict[str, Any]) -> InferenceSettings:
    """Validate quantvla_node parameters."""
    problems: list[str] = []
    v = _collect(values, INFERENCE_PARAMS, problems)
    _positive(v, "control_rate_hz", problems)
    for name, low in (("actions_per_chunk", 1), ("warmup_runs", 0), ("seed", 0)):
        if name in v and v[name] < low:
            problems.append(f"{name} must be >= {low}, got {v[name]}")
    if "precision" in v and v["precision"] not in ("fp32", "bf16", "fp16"):
        problems.append(f"precision must be fp32, bf16 or fp16, got {v['precision']!r}")
    if "device" in v and not (v["device"] == "cpu" or v["device"].startswith("cuda")):
        problems.append(f"device must be cpu, cuda or cuda:N, got {v['device']!r}")
    options = _options(v, "", problems)
    if "policy" in v and not v["policy"].strip():
        problems.append("policy must name a checkpoint / artifact folder or a model")
    if "noise" in v and v["noise"] not in NOISE_MODES:
        problems.append(f"noise must be stamp or sequence, got {v['noise']!r}")
    if "noise_scale" in v and not math.isfinite(v["noise_scale"]):
        problems.append(f"noise_scale must be finite, got {v['noise_scale']!r}")
    points = v.get("trajectory_points", 0)
    if points and points < v.get("actions_per_chunk", 1):
        problems.append(f"trajectory_points must be 0 or >= actions_per_chunk "
                        f"({v.get('actions_per_chunk')}), got {points}: the robot would stop "
                        "between trajectories")
    if points < 0:
        problems.append(f"trajectory_points must be >= 0, got {points}")
    actions = list(v.get("action_names", []))
    if len(set(actions)) != len(actions) or any(not a.strip() for a in actions):
        problems.append(f"action_names must be distinct non-empty names, got {actions}")
    inputs = _inputs(v, problems)
    _raise(problems, "quantvla_node parameters")
    return InferenceSettings(
        inputs=inputs, policy=v["policy"], device=v["device"], precision=v["precision"],
        output_topic=v["output_topic"], control_rate_hz=v["control_rate_hz"],
        actions_per_chunk=v["actions_per_chunk"], warmup_runs=v["warmup_runs"], seed=v["seed"],
        options=options, action_names=tuple(actions), noise=v["noise"],
        noise_scale=v["noise_scale"], trajectory_points=v["trajectory_points"],
    )


def parse_calibration(values: dict[str, Any]) -> CalibrationSettings:
    """Validate calibration_node parameters."""
    problems: list[str] = []
    v = _collect(values, CALIBRATION_PARAMS, problems)
    _positive(v, "record_rate_hz", problems)
    for name in ("samples", "shard_size"):
        if name in v and v[name] < 1:
            problems.append(f"{name} must be >= 1, got {v[name]}")
    if "buffer_path" in v and not v["buffer_path"].strip():
        problems.append("buffer_path must not be empty")
    if v.get("quantize") and not v.get("quantize_out", "").strip():
        problems.append("quantize is true but quantize_out is empty")
    options = _options(v, "quantize_", problems)
    inputs = _inputs(v, problems)
    _raise(problems, "calibration_node parameters")
    return CalibrationSettings(
        inputs=inputs, buffer_path=v["buffer_path"], samples=v["samples"],
        record_rate_hz=v["record_rate_hz"], shard_size=v["shard_size"],
        quantize=v["quantize"], quantize_out=v["quantize_out"],
        quantize_source=v["quantize_source"], quantize_bits=v["quantize_bits"],
        quantize_preset=v["quantize_preset"], quantize_device=v["quantize_device"],
        seed=v["seed"], quantize_options=options,
    )


def load_topics_file(path: str | Path) -> InputSettings:
    """Read a topics YAML file (the input parameters as a flat mapping) for bag reading."""
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"topics file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SettingsError(f"topics file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"topics file {path} must hold a mapping of {TOPICS_FILE_KEYS}")
    unknown = sorted(set(data) - set(TOPICS_FILE_KEYS))
    problems = [f"unknown key(s) {unknown}; expected {list(TOPICS_FILE_KEYS)}"] if unknown else []
    v = _collect(data, INPUT_PARAMS, problems)
    inputs = _inputs(v, problems)
    _raise(problems, f"topics file {path}")
    return inputs
