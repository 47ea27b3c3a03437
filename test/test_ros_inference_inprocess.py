"""quantvla_node in this process: lifecycle fast paths through trigger_*() and one exact
end-to-end check of the published chunk against the policy run directly (pi and GR00T)."""

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
CAMERAS = [("/cam/base", "base_0_rgb"), ("/cam/wrist/compressed", "left_wrist_0_rgb")]
JOINTS = [f"j{i}" for i in range(7)]


@pytest.fixture(scope="module")
def micro(micro_checkpoint):
    return str(micro_checkpoint)


@pytest.fixture(scope="module")
def context():
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=pick_domain_id(salt=23))
    yield ctx
    rclpy.shutdown(context=ctx)


def make_node(context, source, cameras=CAMERAS, **overrides):
    values = {"policy": source, "camera_topics": [t for t, _ in cameras],
              "camera_slots": [s for _, s in cameras], "joint_names": JOINTS,
              "control_rate_hz": 20.0, "actions_per_chunk": 4, "warmup_runs": 1,
              "max_observation_age_s": 1.0, **overrides}
    return QuantVLANode(context=context,
                        parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])


@pytest.mark.parametrize("overrides, reason", [
    ({"policy": "/no/such/folder"}, "does not exist"),
    ({"policy": "pi05-tiy"}, "unknown model 'pi05-tiy'"),
    ({"camera_slots": ["base_0_rgb"]}, "parallel lists"),
    ({"camera_slots": ["base_0_rgb", "top_cam"]}, "not slots of this policy"),
    ({"joint_names": [f"j{i}" for i in range(9)]}, "action dims"),
    ({"control_rate_hz": 0.0}, "control_rate_hz must be positive"),
    ({"actions_per_chunk": 11}, "exceeds the policy's action horizon"),
    ({"precision": "int3"}, "precision must be"),
    ({"device": "cuda"}, "CUDA"),
])
def test_configure_failure_returns_failure_with_reason(context, micro, overrides, reason):
    if overrides.get("device") == "cuda":
        torch = pytest.importorskip("torch")
        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
    node = make_node(context, micro, **overrides)
    try:
        assert node.trigger_configure() == FAILURE
        assert reason in node.last_error
        assert node.policy is None
    finally:
        node.destroy_node()


def test_bad_artifact_folder_fails_configure(context, tmp_path):
    broken = tmp_path / "artifact"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    node = make_node(context, str(broken))
    try:
        assert node.trigger_configure() == FAILURE
        assert "cannot load policy" in node.last_error
    finally:
        node.destroy_node()


def test_configures_on_a_quantized_artifact(context, micro, tmp_path):
    from quantvla_ros.workflows.quantize import QuantizeRequest, quantize_policy

    artifact = tmp_path / "artifact"
    quantize_policy(QuantizeRequest(source=micro, calib="synthetic:4", bits="w8a8"), artifact,
                    log=lambda *_: None)
    node = make_node(context, str(artifact))
    try:
        assert node.trigger_configure() == SUCCESS
        assert node.policy.manifest.bits == "w8a8"
        assert node.trigger_cleanup() == SUCCESS and node.policy is None
    finally:
        node.destroy_node()


def test_missing_joint_names_fails_configure(context, micro):
    node = QuantVLANode(context=context, parameter_overrides=[Parameter("policy", value=micro)])
    try:
        assert node.trigger_configure() == FAILURE
        assert "joint_names is required" in node.last_error
    finally:
        node.destroy_node()


def test_lifecycle_in_process(context, micro):
    node = make_node(context, micro)
    try:
        assert node.trigger_configure() == SUCCESS and node.policy is not None
        assert node.trigger_activate() == SUCCESS
        assert node.trigger_deactivate() == SUCCESS
        assert node.trigger_cleanup() == SUCCESS and node.policy is None
        assert node.trigger_configure() == SUCCESS  # configure again after cleanup
        assert node.trigger_shutdown() == SUCCESS
        assert node.finalized and node.policy is None
    finally:
        node.destroy_node()


def test_activate_starts_an_episode_with_the_parameters_set_since(context, micro):
    """seed / noise_scale set while configured take effect at the next activate, without a
    reload; a bad value fails that activate (the node lives on, inactive, model loaded)."""
    import math

    import torch

    node = make_node(context, micro, noise="sequence", seed=5, trajectory_points=6)
    try:
        assert node.trigger_configure() == SUCCESS
        declared, policy = node.policy.noise_scale, node.policy
        assert node.trigger_activate() == SUCCESS and node.settings.seed == 5
        assert node.trigger_deactivate() == SUCCESS
        node.set_parameters([Parameter("seed", value=7), Parameter("noise_scale", value=0.0)])
        assert node.trigger_activate() == SUCCESS
        assert node.policy is policy and node.settings.seed == 7
        assert node.policy.noise_scale == 0.0 and node.settings.points == 6
        want = torch.Generator().manual_seed(7)
        assert torch.equal(node._noise_gen.get_state(), want.get_state())
        assert node.trigger_deactivate() == SUCCESS
        node.set_parameters([Parameter("noise_scale", value=-1.0)])
        assert node.trigger_activate() == SUCCESS and node.policy.noise_scale == declared
        assert node.trigger_deactivate() == SUCCESS
        node.set_parameters([Parameter("noise_scale", value=math.nan)])
        assert node.trigger_activate() == FAILURE and "noise_scale" in node.last_error
        assert node.policy is policy
    finally:
        node.destroy_node()


def test_work_of_an_earlier_activation_is_dropped_and_takes_no_noise(context, micro):
    """An observation submitted before deactivate but handled after the next activate must
    neither publish nor take a draw of the new episode's noise sequence."""
    node = make_node(context, micro, noise="sequence")
    try:
        assert node.trigger_configure() == SUCCESS
        assert node.trigger_activate() == SUCCESS
        earlier = node._epoch
        assert node.trigger_deactivate() == SUCCESS
        assert node.trigger_activate() == SUCCESS
        state = node._noise_gen.get_state()
        node._infer_and_publish((earlier, None))  # dropped before its observation is read
        assert node.published == 0
        assert bool((node._noise_gen.get_state() == state).all())
    finally:
        node.destroy_node()


def test_a_tick_missing_the_joint_state_is_served_when_it_arrives(context, micro):
    """The anchor frame is in, its joint state is late: the tick finds the observation
    incomplete, and the joint state's arrival (before the next tick) completes it. Lock-step
    simulation needs this: its clock waits for that very trajectory, no next tick comes."""
    from sensor_msgs.msg import Image, JointState

    from quantvla_ros.ros.bridge_io import stamp
    from quantvla_ros.ros.convert import rgb_to_image_fields

    raw = [("/cam/base", "base_0_rgb"), ("/cam/wrist", "left_wrist_0_rgb")]
    node = make_node(context, micro, raw, default_instruction="open the drawer")
    try:
        assert node.trigger_configure() == SUCCESS and node.trigger_activate() == SUCCESS
        submitted = []
        node._worker.submit = submitted.append
        now = node.get_clock().now().nanoseconds
        rgb = np.zeros((32, 32, 3), np.uint8)
        for camera in node._inputs.subscriptions[:2]:  # both cameras' frames at `now`
            msg = Image(**{k: v for k, v in rgb_to_image_fields(rgb).items() if k != "data"})
            msg.data, msg.header.stamp = rgb.tobytes(), stamp(now)
            camera.callback(msg)
        node._tick()
        assert submitted == []  # no joint state within the tolerance yet
        joints = JointState(name=JOINTS, position=[0.0] * 7)
        joints.header.stamp = stamp(now)
        node._inputs._on_joints(joints)
        assert len(submitted) == 1 and submitted[0][1].stamp_ns == now
        node._inputs._on_joints(joints)
        assert len(submitted) == 1  # served once
    finally:
        node.destroy_node()


def published_and_expected(context, policy_source, cameras, chunk, stream_hz, count,
                           timeout_s, **overrides):
    """Serve ``policy_source`` on a node, stream until ``count`` trajectories arrive; return
    the last one's points [chunk, 7] and the policy's own chunk on the same observation and
    noise (seed 3), plus the message."""
    node = make_node(context, policy_source, cameras, seed=3, actions_per_chunk=chunk,
                     **overrides)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    driver = Driver(context, cameras, JOINTS, name="inprocess_driver")
    try:
        driver.publish_instruction("open the drawer")
        assert node.trigger_configure() == SUCCESS
        assert node.trigger_activate() == SUCCESS
        driver.start_stream(stream_hz)
        assert driver.wait_for(lambda: len(driver.trajectories) >= count, timeout_s)
        driver.stop_stream()
        msg, _ = driver.trajectories[-1]
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        policy = Policy.load(policy_source, seed=3)
        wrist = compressed_to_rgb(CompressedImage(format="jpeg", data=driver.jpeg))
        (base_slot, wrist_slot) = (slot for _, slot in cameras)
        obs = {"images": {base_slot: driver.rgb, wrist_slot: wrist},
               "state": np.array([0.1 * i for i in range(7)], np.float32),
               "instruction": "open the drawer"}
        expected = policy.infer(obs, noise=policy_noise(policy, 3, stamp)).actions[:chunk, :7]
        got = np.array([p.positions for p in msg.points])
        assert node.trigger_deactivate() == SUCCESS
        return got, expected, msg
    finally:
        driver.close()
        executor.shutdown()
        node.destroy_node()
        spinner.join(5.0)


def test_published_chunk_equals_the_policy_on_the_same_observation(context, micro):
    got, expected, _ = published_and_expected(context, micro, CAMERAS, chunk=4, stream_hz=10.0,
                                              count=2, timeout_s=20.0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


# ---- GR00T N1.5: the same node on a quantized GR00T artifact ------------------------------
GROOT_CAMERAS = [("/cam/base", "video.image"), ("/cam/wrist/compressed", "video.wrist_image")]


@pytest.fixture(scope="module")
def groot_artifact(tmp_path_factory):
    from quantvla_ros.workflows.quantize import QuantizeRequest, quantize_policy

    out = tmp_path_factory.mktemp("groot") / "artifact"
    quantize_policy(QuantizeRequest(source="groot-n15-tiny", calib="synthetic:6", bits="w8a8"),
                    out, log=lambda *_: None)
    return str(out)


@pytest.mark.parametrize("cameras, overrides, reason", [
    (GROOT_CAMERAS[:1], {"warmup_runs": 0}, "GR00T needs every camera slot"),
    (GROOT_CAMERAS, {"embodiment": "5"}, "5"),
])
def test_groot_configure_failure_names_the_reason(context, groot_artifact, cameras, overrides,
                                                  reason):
    node = make_node(context, groot_artifact, cameras, actions_per_chunk=16, **overrides)
    try:
        assert node.trigger_configure() == FAILURE
        assert reason in node.last_error, node.last_error
        assert node.policy is None
    finally:
        node.destroy_node()


def test_groot_published_chunk_equals_the_policy(context, groot_artifact):
    got, expected, msg = published_and_expected(
        context, groot_artifact, GROOT_CAMERAS, chunk=16, stream_hz=5.0, count=1,
        timeout_s=60.0, max_observation_age_s=2.0)
    assert len(msg.points) == 16
    # Same artifact, same inputs, same noise on the same CPU: only float reordering.
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


# ---- SmolVLA: the same node on a quantized SmolVLA artifact --------------------------------
SMOLVLA_CAMERAS = [("/cam/base", "camera1"), ("/cam/wrist/compressed", "camera2")]


@pytest.fixture(scope="module")
def smolvla_artifact(tmp_path_factory):
    from quantvla_ros.workflows.quantize import QuantizeRequest, quantize_policy

    out = tmp_path_factory.mktemp("smolvla") / "artifact"
    quantize_policy(QuantizeRequest(source="smolvla-tiny", calib="synthetic:6", bits="w4a8"),
                    out, log=lambda *_: None)
    return str(out)


def test_smolvla_published_chunk_equals_the_policy(context, smolvla_artifact):
    got, expected, msg = published_and_expected(
        context, smolvla_artifact, SMOLVLA_CAMERAS, chunk=10, stream_hz=5.0, count=1,
        timeout_s=60.0, max_observation_age_s=2.0)
    assert len(msg.points) == 10
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
