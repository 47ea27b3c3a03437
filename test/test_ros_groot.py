"""quantvla_node on a quantized GR00T N1.5 artifact: configure checks and the published chunk."""

import threading

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from ros_driver import Driver  # noqa: E402
from sensor_msgs.msg import CompressedImage  # noqa: E402

from quantvla_ros.demo.node_process import pick_domain_id  # noqa: E402
from quantvla_ros.ros.convert import compressed_to_rgb  # noqa: E402
from quantvla_ros.ros.inference_node import QuantVLANode  # noqa: E402
from quantvla_ros.ros.noise import policy_noise  # noqa: E402
from quantvla_ros.runtime.policy import Policy  # noqa: E402

SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE
CAMERAS = [("/cam/base", "video.image"), ("/cam/wrist/compressed", "video.wrist_image")]
JOINTS = [f"j{i}" for i in range(7)]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from quantvla_ros.workflows.quantize import QuantizeRequest, quantize_policy

    out = tmp_path_factory.mktemp("groot") / "artifact"
    quantize_policy(QuantizeRequest(source="groot-n15-tiny", calib="synthetic:6", bits="w8a8"),
                    out, log=lambda *_: None)
    return str(out)


@pytest.fixture(scope="module")
def context():
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=pick_domain_id(salt=41))
    yield ctx
    rclpy.shutdown(context=ctx)


def make_node(context, policy, cameras=CAMERAS, **overrides):
    values = {"policy": policy, "camera_topics": [t for t, _ in cameras],
              "camera_slots": [s for _, s in cameras], "joint_names": JOINTS,
              "control_rate_hz": 20.0, "actions_per_chunk": 16, "warmup_runs": 1,
              "max_observation_age_s": 2.0, **overrides}
    return QuantVLANode(context=context,
                        parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])


@pytest.mark.parametrize("cameras, overrides, reason", [
    (CAMERAS[:1], {"warmup_runs": 0}, "GR00T needs every camera slot"),
    (CAMERAS, {"embodiment": "5"}, "5"),
])
def test_groot_configure_failure_names_the_reason(context, artifact, cameras, overrides,
                                                  reason):
    node = make_node(context, artifact, cameras, **overrides)
    try:
        assert node.trigger_configure() == FAILURE
        assert reason in node.last_error, node.last_error
        assert node.policy is None
    finally:
        node.destroy_node()


def test_groot_published_chunk_equals_the_policy(context, artifact):
    node = make_node(context, artifact, seed=3)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    driver = Driver(context, CAMERAS, JOINTS, name="groot_driver")
    try:
        driver.publish_instruction("open the drawer")
        assert node.trigger_configure() == SUCCESS
        assert node.trigger_activate() == SUCCESS
        driver.start_stream(5.0)
        assert driver.wait_for(lambda: len(driver.trajectories) >= 1, 60.0)
        driver.stop_stream()
        msg, _ = driver.trajectories[-1]
        assert len(msg.points) == 16
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        policy = Policy.load(artifact, seed=3)
        wrist = compressed_to_rgb(CompressedImage(format="jpeg", data=driver.jpeg))
        obs = {"images": {"video.image": driver.rgb, "video.wrist_image": wrist},
               "state": np.array([0.1 * i for i in range(7)], np.float32),
               "instruction": "open the drawer"}
        expected = policy.infer(obs, noise=policy_noise(policy, 3, stamp)).actions[:16, :7]
        got = np.array([p.positions for p in msg.points])
        # Same artifact, same inputs, same noise on the same CPU: only float reordering.
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        assert node.trigger_deactivate() == SUCCESS
    finally:
        driver.close()
        executor.shutdown()
        node.destroy_node()
        spinner.join(5.0)
