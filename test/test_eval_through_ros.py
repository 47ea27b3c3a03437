"""The through-ROS evaluation's message path is exact, and its node gets the direct noise.

The same observation, once given to the Policy directly and once carried as the bridge's
sensor_msgs/Image and JointState and read back the way quantvla_node reads them, by a policy
loaded and warmed up as the node does with the episode's parameters, gives the same chunk to
the last bit when both take the direct evaluation's first noise draw (``noise: sequence``).
"""

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("rclpy")

from quantvla_ros.data.observation import Observation  # noqa: E402
from quantvla_ros.ros.bridge_io import image_msg, joint_state_msg  # noqa: E402
from quantvla_ros.ros.convert import joint_positions, to_rgb  # noqa: E402
from quantvla_ros.ros.inference_node import _blank_observation, load_policy  # noqa: E402
from quantvla_ros.ros.noise import policy_noise  # noqa: E402
from quantvla_ros.ros.settings import parse_inference  # noqa: E402
from quantvla_ros.runtime.policy import Policy  # noqa: E402
from quantvla_ros.workflows.libero_eval import Protocol  # noqa: E402
from quantvla_ros.workflows.libero_ros_eval import node_params  # noqa: E402

CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "pi05-libero-object"
CAMERAS = {"agentview": "base_0_rgb", "wrist": "left_wrist_0_rgb"}


@pytest.mark.skipif(not CHECKPOINT.is_dir(), reason="the committed LIBERO checkpoint is absent")
def test_the_ros_message_path_gives_the_direct_chunk_bit_for_bit():
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    images = {v: rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for v in CAMERAS}
    state = rng.normal(size=8).astype(np.float32)
    text = "pick up the cream cheese and place it in the basket"
    seed = 1000

    direct = Policy.load(str(CHECKPOINT), device="cpu", precision="fp32")
    shape = (1, direct.cfg.action_horizon, direct.cfg.action_dim)
    first_draw = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    want = direct.infer(Observation({CAMERAS[v]: images[v] for v in CAMERAS}, state, text),
                        noise=first_draw).actions

    values = node_params(str(CHECKPOINT), "fp32", CAMERAS, seed, Protocol())
    values.pop("use_sim_time")  # a ROS parameter of every node, not in the node's table
    settings = parse_inference(values)
    assert settings.noise == "sequence" and settings.seed == seed
    node_policy = load_policy(settings)
    for i in range(settings.warmup_runs):  # as configure does: must not disturb the stream
        node_policy.infer(_blank_observation(node_policy, settings),
                          noise=policy_noise(node_policy, settings.seed, i))
    stamp = 2_000_000_000
    got_images = {CAMERAS[v]: to_rgb(image_msg(images[v], stamp, v)) for v in CAMERAS}
    got_state = joint_positions(joint_state_msg(state, stamp), settings.inputs.joint_names)
    stream = torch.Generator().manual_seed(settings.seed)  # what activate makes
    got = node_policy.infer(
        Observation(got_images, np.asarray(got_state, np.float32), text, stamp / 1e9),
        noise=torch.randn(shape, generator=stream)).actions
    assert np.array_equal(np.asarray(got), np.asarray(want))
    assert len(settings.output_names) == 7 and settings.output_names[-1] == "gripper"
