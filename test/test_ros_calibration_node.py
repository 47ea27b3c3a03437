"""calibration_node in this process: live recording into a buffer, resume, quantize hook."""

import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from ros_driver import Driver  # noqa: E402

from quantvla_ros.data.buffer import RecordedBuffer  # noqa: E402
from quantvla_ros.demo.node_process import NodeProcess, pick_domain_id  # noqa: E402
from quantvla_ros.ros.calibration_node import CalibrationNode  # noqa: E402
from quantvla_ros.ros.settings import SettingsError  # noqa: E402
from quantvla_ros.runtime.policy import Policy  # noqa: E402

CAMERAS = [("/cal/base", "base_0_rgb"), ("/cal/wrist/compressed", "left_wrist_0_rgb")]
JOINTS = ["a", "b", "c"]
DOMAIN = pick_domain_id(salt=37)
PARAMS = Path(__file__).resolve().parents[1] / "config" / "calibrate.yaml"


@pytest.fixture(scope="module")
def driver():
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=DOMAIN)
    d = Driver(ctx, CAMERAS, JOINTS, name="calibration_driver")
    d.publish_instruction("stack the cups")
    d.start_stream(10.0)
    yield d
    d.close()
    rclpy.shutdown(context=ctx)


def record(driver, buffer_path, samples, quantize_fn=None, **extra):
    values = {"camera_topics": [t for t, _ in CAMERAS], "camera_slots": [s for _, s in CAMERAS],
              "joint_names": JOINTS, "buffer_path": str(buffer_path), "samples": samples,
              "record_rate_hz": 10.0, "shard_size": 2, "max_observation_age_s": 1.0, **extra}
    node = CalibrationNode(context=driver.node.context, quantize_fn=quantize_fn,
                           parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])
    executor = SingleThreadedExecutor(context=driver.node.context)
    executor.add_node(node)
    deadline = time.monotonic() + 30.0
    try:
        while not node.done and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        assert node.done, f"recorded only {node.recorded} of {samples}"
    finally:
        node.close()
        executor.shutdown()
        node.destroy_node()
    return node


def test_records_then_resumes(driver, tmp_path):
    path = tmp_path / "buffer"
    node = record(driver, path, 3)
    assert node.exit_code == 0 and node.recorded == 3
    buf = RecordedBuffer.open(path)
    buf.verify()
    assert len(buf) == 3 and buf.state_dim == 3 and buf.num_shards == 2  # shard_size 2
    assert buf.cameras == {"base_0_rgb": (48, 64), "left_wrist_0_rgb": (48, 64)}
    obs = buf[0]
    assert obs.instruction == "stack the cups"
    assert obs.state.tolist() == pytest.approx([0.0, 0.1, 0.2])
    stamps = [buf[i].stamp for i in range(3)]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3
    # Reopening appends until the buffer holds `samples`.
    assert record(driver, path, 5).recorded == 5
    assert len(RecordedBuffer.open(path)) == 5
    assert record(driver, path, 4).recorded == 5  # already full: nothing to do


def test_quantize_hook(driver, tmp_path):
    calls = []

    def hook(buffer_path, out_dir):
        calls.append((buffer_path, out_dir))
        return out_dir / "artifact"

    node = record(driver, tmp_path / "b1", 1, quantize_fn=hook, quantize=True,
                  quantize_out=str(tmp_path / "q"))
    assert node.exit_code == 0 and calls == [(tmp_path / "b1", tmp_path / "q")]
    assert node.artifact == tmp_path / "q" / "artifact"
    # The default hook quantizes `quantize_source` on the recorded buffer for real.
    node = record(driver, tmp_path / "b2", 2, quantize=True, quantize_out=str(tmp_path / "q2"),
                  quantize_bits="w8a8", quantize_preset="expert_mlp")
    assert node.exit_code == 0 and node.artifact == tmp_path / "q2"
    assert len(RecordedBuffer.open(tmp_path / "b2")) == 2
    policy = Policy.load(str(node.artifact))
    assert policy.manifest.bits == "w8a8"
    assert policy.manifest.calibration["synthetic"] is False
    # A bad format is refused at start-up, before anything is recorded.
    with pytest.raises(ValueError, match="unsupported bits 'w5a8'"):
        record(driver, tmp_path / "b3", 1, quantize=True, quantize_out=str(tmp_path / "q3"),
               quantize_bits="w5a8")


def test_invalid_parameters_raise(driver, tmp_path):
    with pytest.raises(SettingsError, match="buffer_path is required"):
        CalibrationNode(context=driver.node.context, parameter_overrides=[
            Parameter("camera_topics", value=["/x"]), Parameter("camera_slots", value=["s"]),
            Parameter("joint_names", value=["a"])])


def test_executable_records_and_exits(driver, tmp_path):
    overrides = {"camera_topics": [t for t, _ in CAMERAS], "camera_slots": [s for _, s in CAMERAS],
                 "joint_names": JOINTS, "buffer_path": str(tmp_path / "buffer"), "samples": 2,
                 "record_rate_hz": 10.0, "max_observation_age_s": 1.0}
    with NodeProcess("quantvla_ros.ros.calibration_node", params_file=PARAMS,
                     overrides=overrides, domain_id=DOMAIN, log_path=tmp_path / "node.log",
                     ros_log_dir=tmp_path) as proc:
        code = proc.wait(90.0)
        log = proc.output()
    assert code == 0, log
    assert "recorded 2/2 observations" in log
    assert len(RecordedBuffer.open(tmp_path / "buffer")) == 2


def test_quantize_hook_on_smolvla(driver, tmp_path):
    """The calibration node records into SmolVLA's camera slots and quantizes it."""
    node = record(driver, tmp_path / "b", 2, camera_slots=["camera1", "camera2"],
                  quantize=True, quantize_out=str(tmp_path / "q"), quantize_bits="w8a8",
                  quantize_source="smolvla-tiny")
    assert node.exit_code == 0 and node.artifact == tmp_path / "q"
    policy = Policy.load(str(node.artifact))
    assert policy.cfg.family == "smolvla" and policy.manifest.bits == "w8a8"
    assert policy.manifest.calibration["synthetic"] is False
