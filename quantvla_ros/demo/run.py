"""End-to-end demo: synthetic rosbag -> calibration buffer -> [quantize] -> quantvla_node.

:func:`run_demo` writes a small synthetic bag, calibrates a buffer from it, optionally turns
the buffer into a quantized artifact through ``quantize_fn`` (otherwise the float model is
served), starts quantvla_node as a child process on its own ROS domain, configures and
activates it through its change_state service, plays the bag, collects the trajectories,
deactivates and shuts it down. Each published chunk is then recomputed in this process by the
float policy on the same observation with the same noise (the node draws noise from (seed,
stamp) and stamps each trajectory with its observation), giving ``action_error``
(workflows/action_metrics.py): about 0 when the float model is served, the quantization error
otherwise. ``action_rel_error`` is its relative L2 against the float policy's displacement
(actions minus the shared noise, model space; ``action_rel_error_max`` the worst chunk's):
against the actions themselves most of the size is that shared noise.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from trajectory_msgs.msg import JointTrajectory

from quantvla_ros.data.observation import Observation
from quantvla_ros.demo.lifecycle_client import LifecycleClient
from quantvla_ros.demo.node_process import NodeProcess, pick_domain_id
from quantvla_ros.demo.player import BagPlayer, Played
from quantvla_ros.demo.synthetic_bag import (
    DEFAULT_CAMERAS,
    topics_config,
    write_synthetic_bag,
    write_topics_file,
)
from quantvla_ros.ros.bag_recorder import record_from_bags
from quantvla_ros.ros.convert import joint_positions, stamp_to_ns, to_rgb
from quantvla_ros.ros.noise import policy_noise
from quantvla_ros.ros.pairing import nearest_index
from quantvla_ros.ros.settings import InputSettings, load_topics_file
from quantvla_ros.runtime.policy import Policy
from quantvla_ros.runtime.source import PolicySource
from quantvla_ros.workflows.action_metrics import robot_space_error

NODE_MODULE = "quantvla_ros.ros.inference_node"
LATENCY_SOURCE = "observation stamp -> trajectory receipt, measured in the demo process"


def run_demo(
    workdir: str | Path,
    *,
    quantize_fn: Callable[[Path, Path], Path] | None = None,
    model: str = "pi05-tiny",
    seed: int = 0,
    storage: str = "sqlite3",
    seconds: float = 3.0,
    camera_hz: float = 5.0,
    control_rate_hz: float = 10.0,
    actions_per_chunk: int = 5,
    samples: int = 16,
    domain_id: int | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """Run the demo in ``workdir`` (created; must not hold an earlier run) and summarize it.

    ``quantize_fn(buffer_path, out_dir) -> artifact path`` must quantize ``model`` with
    ``seed``, the float policy the chunks are compared against.
    """
    t_start = time.monotonic()
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    bag = work / f"bag_{storage}"
    if bag.exists():
        raise ValueError(f"{work} holds an earlier demo run; give an empty or new workdir")
    cfg = PolicySource.resolve(model).config()
    cameras = model_cameras(cfg.cameras)
    actions_per_chunk = min(actions_per_chunk, cfg.action_horizon)
    info = write_synthetic_bag(bag, storage=storage, seconds=seconds, camera_hz=camera_hz,
                               joint_hz=camera_hz * 5, cameras=cameras, seed=seed)
    topics_file = write_topics_file(work / "topics.yaml", topics_config(cameras))
    inputs = load_topics_file(topics_file)
    log(f"wrote {bag} ({info['frames']} frames per camera, {storage})")
    buffer = record_from_bags([bag], inputs, work / "calibration", samples=samples,
                                 rate_hz=camera_hz, log=log)
    policy_source = model
    if quantize_fn is not None:
        policy_source = str(quantize_fn(Path(buffer["path"]), work / "artifact"))
        log(f"quantized artifact: {policy_source}")
    params_file = _write_params(work / "quantvla_demo.yaml", inputs, seed=seed,
                                control_rate_hz=control_rate_hz,
                                actions_per_chunk=actions_per_chunk)
    run = _run_node(work, params_file, policy_source, bag, inputs.instruction_topic,
                    domain_id, log)
    log(f"{len(run['trajectories'])} trajectories; recomputing them with the float policy")
    reference = Policy.load(model, seed=seed)
    errors = _compare(reference, seed, inputs, run["played"], run["trajectories"])
    latency = [(recv - stamp_to_ns(t.header.stamp)) / 1e6 for t, recv in run["trajectories"]]
    n_points = {len(t.points) for t, _ in run["trajectories"]}
    return {
        "workdir": str(work),
        "bag": {"path": str(bag), "storage": storage, "frames": info["frames"],
                "duration_s": info["duration_s"]},
        "buffer": {"path": buffer["path"], "samples": buffer["samples"]},
        "policy": policy_source,
        "quantized": quantize_fn is not None,
        "lifecycle": run["lifecycle"],
        "trajectories": len(run["trajectories"]),
        "points_per_trajectory": sorted(n_points),
        "joint_names": list(inputs.joint_names),
        "latency_ms": {**_percentiles(latency), "source": LATENCY_SOURCE},
        "node_latency_ms": run["node_latency_ms"],
        "action_rel_error": errors["rel_l2_vs_displacement"],
        "action_rel_error_max": errors["worst_chunk_rel_l2_vs_displacement"],
        "action_error": errors,
        "reference": f"float {model} (seed {seed}) in-process, same observations and noise",
        "elapsed_s": round(time.monotonic() - t_start, 2),
    }


def model_cameras(slots) -> tuple:
    """Return the default bag cameras mapped, in order, onto the model's first camera slots."""
    if len(slots) < len(DEFAULT_CAMERAS):
        raise ValueError(f"the model has {len(slots)} camera slots; the demo needs "
                         f"{len(DEFAULT_CAMERAS)}")
    return tuple(replace(c, slot=s) for c, s in zip(DEFAULT_CAMERAS, slots, strict=False))


def _write_params(path: Path, inputs: InputSettings, **extra) -> Path:
    values = {
        "camera_topics": [c.topic for c in inputs.cameras],
        "camera_slots": list(inputs.slots),
        "joint_state_topic": inputs.joint_state_topic,
        "joint_names": list(inputs.joint_names),
        "instruction_topic": inputs.instruction_topic,
        "sync_tolerance_s": inputs.sync_tolerance_s,
        # The machine may be busy: frames wait for a free inference slot up to a second.
        "max_observation_age_s": 1.0,
        "warmup_runs": 1,
        **extra,
    }
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": values}}), encoding="utf-8")
    return path


def _run_node(work: Path, params_file: Path, policy: str, bag: Path, instruction_topic: str,
              domain_id: int | None, log) -> dict:
    """Start the node, drive its lifecycle, play the bag, and collect what it publishes."""
    domain = pick_domain_id() if domain_id is None else domain_id
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = rclpy.create_node("quantvla_demo", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    received: list[tuple[JointTrajectory, int]] = []
    diagnostics: list[DiagnosticArray] = []
    node.create_subscription(
        JointTrajectory, "/quantvla/joint_trajectory",
        lambda m: received.append((m, node.get_clock().now().nanoseconds)), 100)
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 100)
    lifecycle: list[dict] = []
    client = LifecycleClient(node, "/quantvla_node")
    player = BagPlayer(node, bag)
    spinner.start()
    proc = NodeProcess(NODE_MODULE, params_file=params_file, overrides={"policy": policy},
                       domain_id=domain, log_path=work / "quantvla_node.log",
                       ros_log_dir=work / "ros_log")

    def transition(label: str, timeout: float = 180.0) -> None:
        t0 = time.monotonic()
        ok = client.change_state(label, timeout)
        lifecycle.append({"transition": label, "success": ok,
                          "seconds": round(time.monotonic() - t0, 3)})
        log(f"{label}: {'ok' if ok else 'FAILED'}")
        if not ok:
            raise RuntimeError(f"{label} failed; node log:\n{proc.output()[-3000:]}")

    try:
        if not client.wait_for_services(120.0):
            raise RuntimeError(f"quantvla_node did not come up; log:\n{proc.output()[-3000:]}")
        # The instruction goes first: transient-local QoS hands it to the node at configure.
        played = player.play(topics={instruction_topic})
        transition("configure")
        transition("activate", 30.0)
        played += player.play(topics=set(player.publishers) - {instruction_topic})
        # Let the last observation's chunk arrive: inference takes up to seconds on a CPU.
        _wait_quiet(received, settle_s=3.0, limit_s=20.0)
        transition("deactivate", 30.0)
        node_latency = _node_latency(diagnostics)
        transition("shutdown", 30.0)
        code = proc.wait(20.0)
        lifecycle.append({"transition": "process exit", "success": code == 0, "code": code})
    finally:
        proc.stop()
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
        spinner.join(5.0)
    return {"played": played, "trajectories": list(received), "lifecycle": lifecycle,
            "node_latency_ms": node_latency}


def _wait_quiet(received: list, settle_s: float, limit_s: float) -> None:
    """Wait until no trajectory arrived for ``settle_s`` (at most ``limit_s``)."""
    deadline = time.monotonic() + limit_s
    count, since = len(received), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if len(received) != count:
            count, since = len(received), time.monotonic()
        elif time.monotonic() - since >= settle_s:
            return


def _node_latency(diagnostics: list[DiagnosticArray]) -> dict:
    """Return the node's own inference latency percentiles from its last diagnostics message."""
    for msg in reversed(diagnostics):
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if "latency_ms_p50" in values:
                return {k: float(values[f"latency_ms_{k}"]) for k in ("p50", "p90", "max")}
    return {}


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p90": None, "max": None}
    v = np.asarray(values)
    return {"p50": round(float(np.percentile(v, 50)), 2),
            "p90": round(float(np.percentile(v, 90)), 2), "max": round(float(v.max()), 2)}


def _compare(policy: Policy, seed: int, inputs: InputSettings, played: list[Played],
             trajectories: list) -> dict:
    """Error of the published chunks against ``policy`` on the same inputs and noise.

    Returns `action_metrics.robot_space_error`'s figures over all chunks (None where there
    are none) and the worst chunk's relative L2 against the displacement.
    """
    slot_of = {c.topic: c.slot for c in inputs.cameras}
    frames: dict[str, list[Played]] = {slot: [] for slot in inputs.slots}
    joints: list[Played] = []
    instruction = inputs.default_instruction
    for p in played:
        if p.topic in slot_of:
            frames[slot_of[p.topic]].append(p)
        elif p.topic == inputs.joint_state_topic:
            joints.append(p)
        elif p.topic == inputs.instruction_topic:
            instruction = p.msg.data
    tol = int(inputs.sync_tolerance_s * 1e9)
    refs, gots, noises = [], [], []
    for traj, _ in trajectories:
        stamp = stamp_to_ns(traj.header.stamp)
        images = {}
        for slot, items in frames.items():
            k = nearest_index([p.stamp_ns for p in items], stamp, tol)
            if k is None:
                raise RuntimeError(f"no played {slot} frame matches trajectory stamp {stamp}")
            images[slot] = to_rgb(items[k].msg)
        k = nearest_index([p.stamp_ns for p in joints], stamp, tol)
        if k is None:
            raise RuntimeError(f"no played joint state matches trajectory stamp {stamp}")
        obs = Observation(images, joint_positions(joints[k].msg, inputs.joint_names),
                          instruction)
        noise = policy_noise(policy, seed, stamp)
        ref = policy.infer(obs, noise=noise).actions
        got = np.array([p.positions for p in traj.points], dtype=np.float64)
        refs.append(ref[: got.shape[0], : got.shape[1]].astype(np.float64))
        gots.append(got)
        noises.append(noise[0].numpy())
    if not refs:
        return {"rel_l2_vs_displacement": None, "worst_chunk_rel_l2_vs_displacement": None}
    errors = robot_space_error(np.stack(refs), np.stack(gots), np.stack(noises),
                               policy.normalizer)
    per_chunk = [s["rel_l2_vs_displacement"] for s in errors["per_sample"]]
    errors["worst_chunk_rel_l2_vs_displacement"] = max(
        (x for x in per_chunk if x is not None), default=None)
    return errors
