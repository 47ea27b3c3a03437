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


class ClosedLoopSim:
    """A simulator whose state and images follow the executed actions (deterministically)."""

    def __init__(self):
        self.actions = []

    def reset(self, suite, task, *, init, resolution, settle):
        rng = np.random.default_rng(100 * task + init)
        self.base = rng.integers(40, 216, (112, 112, 3)).astype(np.float32)
        self.state = rng.normal(scale=0.1, size=8).astype(np.float32)
        self.start, self.actions = self.state.copy(), []
        return self._obs(True)

    def step(self, action, render=True):
        a = np.asarray(action, np.float64)
        self.actions.append(a)
        self.state = (self.state + 0.05 * np.concatenate([a, a[-1:]])).astype(np.float32)
        return self._obs(render)

    def _obs(self, render):
        obs = {"state": self.state.copy(), "instruction": "pick up the ketchup and place it in "
               "the basket", "done": bool(self.state[2] - self.start[2] > 0.04)}
        if render:
            shift = np.resize(self.state[:3] * 40.0, 3)
            obs["agentview"] = np.clip(self.base + shift, 0, 255).astype(np.uint8)
            obs["wrist"] = np.clip(self.base[::-1] - shift, 0, 255).astype(np.uint8)
        return obs

    def close(self):
        pass


@pytest.mark.skipif(not CHECKPOINT.is_dir(), reason="the committed LIBERO checkpoint is absent")
def test_lockstep_on_one_reused_node_executes_the_direct_episodes_exactly():
    """Two episodes (own seeds) on one node, 10-point trajectories, replanning every 5.

    The node is configured once; the bridge sets each episode's seed and cycles it through
    deactivate / activate. Every executed action equals the direct evaluation's, at noise
    scale 1 (the checkpoint declares 0: the override must reach the node, and each
    episode's noise sequence must start afresh with its own seed).
    """
    import threading

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from quantvla_ros.demo.node_process import pick_domain_id
    from quantvla_ros.ros.inference_node import QuantVLANode
    from quantvla_ros.ros.libero_bridge import LiberoBridge
    from quantvla_ros.workflows.libero_eval import Episode, run_episode

    torch.set_num_threads(1)
    protocol = Protocol(max_steps=15, resolution=112)
    episodes = [Episode(0, 0, 1000), Episode(1, 3, 2003)]
    direct = Policy.load(str(CHECKPOINT), device="cpu", precision="fp32")
    direct.set_noise_scale(1.0)
    sim, want = ClosedLoopSim(), []
    for ep in episodes:
        result = run_episode(direct, sim, "direct", ep, protocol, CAMERAS)
        want.append((result.success, result.steps, np.stack(sim.actions)))

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=pick_domain_id(salt=57))
    sim, got = ClosedLoopSim(), []
    node_values = node_params(str(CHECKPOINT), "fp32", CAMERAS, 0, protocol, noise_scale=1.0,
                              trajectory_points=10)
    bridge_values = {"max_steps": 15, "stall_timeout_s": 120.0, "node_timeout_s": 120.0}
    try:
        node = QuantVLANode(context=context, parameter_overrides=[
            Parameter(k, value=v) for k, v in node_values.items()])
        bridge = LiberoBridge(sim_factory=lambda: sim, context=context, parameter_overrides=[
            Parameter(k, value=v) for k, v in bridge_values.items()])
        bridge.episodes = lambda: iter([(ep.task, ep.init, ep.seed, False) for ep in episodes])
        real_run_episode = bridge.run_episode

        def recording(sim_, init, task):
            rec = real_run_episode(sim_, init, task)
            got.append((rec.success, rec.steps, np.stack(sim.actions)))
            return rec

        bridge.run_episode = recording
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        executor.add_node(bridge)
        threading.Thread(target=executor.spin, daemon=True).start()
        reports = bridge.run()
        executor.shutdown()
    finally:
        context.try_shutdown()
    assert [r["error"] for r in reports] == [None, None]
    assert node.finalized  # shut down by the bridge at the end, configured once
    for (w_ok, w_steps, w_actions), (g_ok, g_steps, g_actions) in zip(want, got, strict=True):
        assert (g_ok, g_steps) == (w_ok, w_steps)
        assert np.array_equal(g_actions, w_actions.astype(np.float64))
