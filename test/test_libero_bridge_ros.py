"""libero_bridge over real rclpy with a fake simulator and a scripted policy node.

Lock-step: every frame's trajectory is executed point by point at its time; a NaN point or
wrong joint names end the episode as refused before anything of it is executed; a node that
stops publishing ends it as stalled. Neither is ever scored. The driver side, with stand-in
processes: one bridge and one node serve all of a worker's episodes; a crashed node process
is reported with its exit code, retried once on a fresh pair and never counted.
"""

import json
import os
import sys
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from builtin_interfaces.msg import Duration  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from quantvla_ros.demo.node_process import pick_domain_id  # noqa: E402
from quantvla_ros.ros.inputs import LATCHED_INSTRUCTION_QOS  # noqa: E402
from quantvla_ros.ros.libero_bridge import LiberoBridge, ParentGone  # noqa: E402
from quantvla_ros.workflows import libero_ros_eval as ros_eval  # noqa: E402
from quantvla_ros.workflows import libero_ros_protocol as proto  # noqa: E402
from quantvla_ros.workflows.libero_eval import Episode, Protocol  # noqa: E402

STEP = 50_000_000


def fresh_domain() -> int:
    """A fresh ROS domain in 10..99, apart from an evaluation's (120 and up)."""
    return pick_domain_id(salt=int(np.random.default_rng().integers(0, 90)))


class FakeSim:
    """The LiberoClient calls the bridge makes; records every executed action."""

    def __init__(self, success_after: int | None = None):
        self.actions, self.success_after = [], success_after

    def _obs(self, render: bool) -> dict:
        obs = {"state": np.arange(8, dtype=np.float32) / 10, "instruction": "pick it up",
               "done": self.success_after is not None
               and len(self.actions) >= self.success_after}
        if render:
            obs.update(agentview=np.full((8, 8, 3), len(self.actions), np.uint8),
                       wrist=np.zeros((8, 8, 3), np.uint8))
        return obs

    def reset(self, suite, task, *, init, resolution, settle):
        self.actions = []
        return self._obs(True)

    def step(self, action, render=True):
        self.actions.append(np.asarray(action, np.float64))
        return self._obs(render)

    def close(self):
        pass


class ScriptedPolicy:
    """Answers each scene frame with a 5-point trajectory stamped like the frame.

    Point i of the k-th trajectory commands 0.01 * (10 k + i) on the six motion dims.
    ``fault(k)`` may return "nan", "names" or "silent" for the k-th frame.
    """

    def __init__(self, context, fault=lambda k: None):
        self.node = rclpy.create_node("scripted_policy", context=context)
        self.pub = self.node.create_publisher(JointTrajectory, proto.TRAJECTORY_TOPIC, 10)
        self.node.create_subscription(Image, proto.CAMERA_TOPICS["agentview"], self._on, 10)
        self.node.create_subscription(String, proto.INSTRUCTION_TOPIC, self._on_text, 10)
        self.count, self.fault, self.instructions = 0, fault, []

    def _on_text(self, msg):
        self.instructions.append(msg.data)

    def _on(self, msg):
        k, self.count = self.count, self.count + 1
        fault = self.fault(k)
        if fault == "silent":
            return
        out = JointTrajectory(header=msg.header, joint_names=list(proto.ACTION_NAMES))
        if fault == "names":
            out.joint_names[0] = "shoulder"
        for i in range(5):
            value = float("nan") if fault == "nan" and i == 2 else 0.01 * (10 * k + i)
            out.points.append(JointTrajectoryPoint(
                positions=[value] * 6 + [1.0], time_from_start=Duration(nanosec=(i + 1) * STEP)))
        self.pub.publish(out)


def run_bridge(fault=lambda k: None, max_steps=12, success_after=None, stall=3.0, sim=None):
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=fresh_domain())
    sim = sim or FakeSim(success_after)
    overrides = [Parameter("managed_node", value=""), Parameter("max_steps", value=max_steps),
                 Parameter("stall_timeout_s", value=stall), Parameter("node_timeout_s", value=1.0),
                 Parameter("frame_delay_s", value=0.0)]
    executor = SingleThreadedExecutor(context=context)
    try:
        bridge = LiberoBridge(sim_factory=lambda: sim, context=context,
                              parameter_overrides=overrides)
        policy = ScriptedPolicy(context, fault)
        executor.add_node(bridge)
        executor.add_node(policy.node)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        [report] = bridge.run()
        assert policy.instructions == ["pick it up"]
        return report, sim.actions
    finally:
        executor.shutdown()
        context.try_shutdown()


def test_lockstep_executes_each_point_at_its_step():
    report, actions = run_bridge(max_steps=12)
    assert report["success"] is False and report["error"] is None
    assert report["steps"] == 12 and report["chunks"] == 3
    assert report["skipped_points"] == 0 and report["stopped_steps"] == 0
    motion = [a[0] for a in actions]
    expected = [0.01 * (10 * (s // 5) + s % 5) for s in range(12)]
    np.testing.assert_allclose(motion, expected, rtol=0, atol=1e-12)
    assert all(a[6] == 1.0 for a in actions)
    assert report["latency_ms_p50"] is not None and report["late_steps_mean"] == 0


def test_success_ends_the_episode():
    report, actions = run_bridge(max_steps=40, success_after=7)
    assert report["success"] is True and report["steps"] == 7 and len(actions) == 7


@pytest.mark.parametrize("fault", ["nan", "names"])
def test_a_malformed_trajectory_is_refused_and_never_executed(fault):
    report, actions = run_bridge(lambda k: fault if k == 1 else None, max_steps=20)
    assert report["success"] is None and "refused trajectory" in report["error"]
    assert report["refused"] == 1
    assert len(actions) == 5  # the first chunk only: nothing of the refused one ran
    assert all(np.isfinite(a).all() for a in actions)


def test_a_node_that_stops_publishing_is_reported_as_stalled():
    report, actions = run_bridge(lambda k: "silent" if k >= 1 else None, stall=1.0)
    assert report["success"] is None and "stopped publishing" in report["error"]
    assert len(actions) == 5


# Stand-ins for the two processes of a session: each notes its start in $FAKE_LOG. The bridge
# answers each episode asked on its stdin with a report line after ``delay`` seconds.
FAKE_BRIDGE = """
import json, os, sys, time, yaml
params = yaml.safe_load(open(sys.argv[sys.argv.index("--params-file") + 1]))
report = params["/**"]["ros__parameters"]["report_path"]
open(os.environ["FAKE_LOG"], "a").write("bridge\\n")
open(os.environ["FAKE_LOG"] + ".domains", "a").write(os.environ["ROS_DOMAIN_ID"] + "\\n")
for line in sys.stdin:
    ask = json.loads(line)
    time.sleep({delay})
    with open(report, "a") as f:
        f.write(json.dumps(dict(task=ask["task"], init=ask["init"], instruction="x",
                                success=True, error=None, steps=3, chunks=1)) + "\\n")
"""
FAKE_NODE = """
import os, sys, time
open(os.environ["FAKE_LOG"], "a").write("node\\n")
time.sleep({life})
sys.exit(3)
"""


FAKE_NODE_CRASHING_ONCE = """
import os, sys, time
open(os.environ["FAKE_LOG"], "a").write("node\\n")
marker = os.environ["FAKE_LOG"] + ".crashed"
if not os.path.exists(marker):
    open(marker, "w").close()
    time.sleep(0.5)
    sys.exit(3)
time.sleep(600)
"""


def run_fake_session(tmp_path, monkeypatch, episodes, node_life, delay, policies=("p",),
                     node_script=FAKE_NODE):
    log = tmp_path / "starts.txt"
    monkeypatch.setenv("FAKE_LOG", str(log))
    results = ros_eval.evaluate_through_ros(
        {p: (p, "fp32") for p in policies}, episodes, Protocol(), {"agentview": "base_0_rgb"},
        ["lockstep"],
        out=tmp_path, timeout_s=60.0,
        node_cmd=[sys.executable, "-c", node_script.format(life=node_life)],
        bridge_cmd=[sys.executable, "-c", FAKE_BRIDGE.format(delay=delay)])
    return sorted(results, key=lambda r: r.init), log.read_text().split()


def test_the_first_frame_waits_until_the_node_follows_the_instruction():
    # The node says which instruction it follows on ~/instruction_in_use; here it takes 1 s
    # (a slow message under load): before, the first frame left after a fixed 0.2 s and the
    # node answered it with the previous episode's instruction.
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=fresh_domain())
    executor = SingleThreadedExecutor(context=context)
    sim = FakeSim()
    overrides = [Parameter("managed_node", value="quantvla_node"),
                 Parameter("max_steps", value=5), Parameter("frame_delay_s", value=0.0)]
    try:
        bridge = LiberoBridge(sim_factory=lambda: sim, context=context,
                              parameter_overrides=overrides)
        policy = ScriptedPolicy(context)
        ack = policy.node.create_publisher(String, "/quantvla_node/instruction_in_use",
                                           LATCHED_INSTRUCTION_QOS)
        acked, first_frame = [], []

        def later(msg):
            def send():
                acked.append(time.monotonic())
                ack.publish(String(data=msg.data))
            threading.Timer(1.0, send).start()
        policy.node.create_subscription(String, proto.INSTRUCTION_TOPIC, later, 10)
        policy.node.create_subscription(
            Image, proto.CAMERA_TOPICS["agentview"],
            lambda _m: first_frame.append(time.monotonic()), 10)
        for node in (bridge, policy.node):
            executor.add_node(node)
        threading.Thread(target=executor.spin, daemon=True).start()
        rec = bridge.run_episode(sim, 0)
        assert rec.error is None and rec.steps == 5
        assert acked and first_frame and first_frame[0] >= acked[0]
    finally:
        executor.shutdown()
        context.try_shutdown()


def test_the_bridge_stops_when_the_process_that_started_it_is_gone(monkeypatch):
    class OrphanedAfterTenSteps(FakeSim):
        def step(self, action, render=True):
            if len(self.actions) == 10:  # the evaluation is killed: init adopts the bridge
                monkeypatch.setattr(os, "getppid", lambda: 1)
            return super().step(action, render)

    sim = OrphanedAfterTenSteps()
    with pytest.raises(ParentGone, match="is gone"):
        run_bridge(max_steps=200, sim=sim)
    assert len(sim.actions) == 11  # stopped at the next step, not after the 200


def test_one_session_serves_every_episode_of_a_worker(tmp_path, monkeypatch):
    episodes = [Episode(0, i, 10 + i) for i in range(3)]
    results, starts = run_fake_session(tmp_path, monkeypatch, episodes, node_life=600, delay=0)
    assert sorted(starts) == ["bridge", "node"]  # started once, not once per episode
    assert [r.success for r in results] == [True] * 3 and all(r.attempts == 1 for r in results)
    assert [r.ros["session_started"] for r in results] == [True, False, False]


def test_each_policy_session_of_a_worker_has_its_own_ros_domain(tmp_path, monkeypatch):
    # Two quantvla_node processes on one domain both answer one bridge's lifecycle calls
    # and both publish trajectories to it: one worker's two sessions must not share one.
    episodes = [Episode(0, i, 10 + i) for i in range(2)]
    results, starts = run_fake_session(tmp_path, monkeypatch, episodes, node_life=600,
                                       delay=0, policies=("p", "q"))
    assert sorted(starts) == ["bridge", "bridge", "node", "node"]
    assert len(results) == 4 and all(r.success for r in results)
    domains = (tmp_path / "starts.txt.domains").read_text().split()
    assert len(domains) == 2 and domains[0] != domains[1]


def test_a_crashed_node_process_is_reported_retried_once_and_not_counted(tmp_path,
                                                                         monkeypatch):
    results, starts = run_fake_session(tmp_path, monkeypatch, [Episode(0, 0, 0)],
                                       node_life=0.5, delay=5)
    [result] = results
    assert starts.count("node") == 2 and starts.count("bridge") == 2  # a fresh session
    assert result.success is None and result.attempts == 2
    assert result.error.count("quantvla_node exited with code 3") == 2
    line = json.loads((tmp_path / "episodes.jsonl").read_text())
    assert line["success"] is None and line["policy"] == "p@ros-lockstep"


def test_an_episode_scored_on_its_retry_keeps_the_first_attempts_error(tmp_path, monkeypatch):
    results, starts = run_fake_session(tmp_path, monkeypatch, [Episode(0, 0, 0)],
                                       node_life=0, delay=5,
                                       node_script=FAKE_NODE_CRASHING_ONCE)
    [result] = results
    assert starts.count("node") == 2 and result.success and result.attempts == 2
    assert "quantvla_node exited with code 3" in result.ros["first_attempt_error"]
