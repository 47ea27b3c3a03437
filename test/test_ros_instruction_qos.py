"""The instruction reaches both nodes from ordinary (volatile) and latched publishers.

calibration_node and quantvla_node run as child processes and get their instruction from
this process: a transient-local message published before the node started, or default-QoS
messages (reliable, volatile: what ``ros2 topic pub`` and most scripts use) while it runs.
The ordering rules of the input hub's two instruction subscriptions (one volatile, one
transient local) are checked first, without DDS, by calling their callbacks directly.
"""

import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed")

from rclpy.qos import DurabilityPolicy, ReliabilityPolicy  # noqa: E402
from ros_driver import Driver  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from quantvla_ros.data.buffer import RecordedBuffer  # noqa: E402
from quantvla_ros.demo.node_process import NodeProcess, pick_domain_id  # noqa: E402
from quantvla_ros.ros.inputs import LATCHED_INSTRUCTION_QOS, InputHub  # noqa: E402
from quantvla_ros.ros.settings import Camera, InputSettings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NS = 1_000_000_000


# ---- the hub's instruction handler, without DDS ---------------------------------------------
class FakeNode:
    """Just what InputHub calls at construction: records the subscriptions it makes."""

    def __init__(self):
        self.subs = []

    def create_subscription(self, msg_type, topic, callback, qos, **kwargs):
        sub = SimpleNamespace(msg_type=msg_type, topic=topic, callback=callback, qos=qos,
                              kwargs=kwargs)
        self.subs.append(sub)
        return sub

    def get_logger(self):
        return rclpy.logging.get_logger("fake_node")


def make_hub():
    settings = InputSettings(
        cameras=(Camera("/cam", "base_0_rgb", False),), joint_state_topic="/joints",
        joint_names=("a",), instruction_topic="/task", default_instruction="",
        sync_tolerance_s=0.05, max_observation_age_s=0.5)
    node, reports = FakeNode(), []
    hub = InputHub(node, settings, lambda *args: reports.append(args))
    subs = {s.qos.durability: s for s in node.subs if s.topic == "/task"}
    return hub, subs, reports


def info(publisher: int | None, seq: int | None, stamp_ns: int) -> dict:
    """A MessageInfo as rclpy passes it to a two-argument callback."""
    gid = None if publisher is None else {"implementation_identifier": "rmw_fastrtps_cpp",
                                          "data": bytes([publisher]) * 16}
    return {"source_timestamp": stamp_ns, "received_timestamp": stamp_ns,
            "publication_sequence_number": seq, "reception_sequence_number": None,
            "publisher_gid": gid}


def test_two_reliable_instruction_subscriptions():
    _, subs, _ = make_hub()
    assert set(subs) == {DurabilityPolicy.VOLATILE, DurabilityPolicy.TRANSIENT_LOCAL}
    assert all(s.msg_type is String and s.qos.reliability == ReliabilityPolicy.RELIABLE
               for s in subs.values())
    # A volatile publisher is expected to be incompatible with the transient-local one.
    latched = subs[DurabilityPolicy.TRANSIENT_LOCAL]
    assert latched.kwargs["event_callbacks"].incompatible_qos is not None


def test_the_second_copy_of_a_message_is_dropped():
    hub, subs, reports = make_hub()
    live, latched = subs[DurabilityPolicy.VOLATILE], subs[DurabilityPolicy.TRANSIENT_LOCAL]
    live.callback(String(data=""), info(1, 1, 100))  # rejected: reported once
    latched.callback(String(data=""), info(1, 1, 100))  # the same message, other subscription
    assert hub.instruction is None and len(reports) == 1
    latched.callback(String(data="wipe"), info(1, 2, 200))
    live.callback(String(data="wipe"), info(1, 2, 200))
    assert hub.instruction == "wipe" and len(reports) == 1


def test_the_newest_instruction_wins():
    hub, subs, _ = make_hub()
    live, latched = subs[DurabilityPolicy.VOLATILE], subs[DurabilityPolicy.TRANSIENT_LOCAL]
    # Publisher 1 (transient local) sends B, then publisher 2 (volatile) sends C; the executor
    # happens to run the latched copy of B last.
    live.callback(String(data="B"), info(1, 1, 100))
    live.callback(String(data="C"), info(2, 1, 200))
    latched.callback(String(data="B"), info(1, 1, 100))
    assert hub.instruction == "C"
    # A latched instruction from before the current one (handed over at subscription).
    latched.callback(String(data="A"), info(3, 7, 50))
    assert hub.instruction == "C"
    # A newer one from a transient-local publisher counts, on either subscription.
    latched.callback(String(data="D"), info(1, 2, 300))
    assert hub.instruction == "D"
    # Live messages come in arrival order: they count even if the sender's clock is behind.
    live.callback(String(data="E"), info(2, 2, 250))
    assert hub.instruction == "E"
    # Without publisher ids and timestamps (another rmw), the last message processed wins.
    latched.callback(String(data="F"), info(None, None, 0))
    live.callback(String(data="G"), info(None, None, 0))
    assert hub.instruction == "G"


def test_a_bad_message_info_is_reported_not_raised():
    hub, subs, reports = make_hub()
    subs[DurabilityPolicy.VOLATILE].callback(String(data="go"), None)
    assert hub.instruction is None
    assert reports and reports[-1][0] == "instruction" and reports[-1][3] == "bad"


# ---- calibration_node in another process ---------------------------------------------------
CAL_DOMAIN = pick_domain_id(salt=67)
CAL_CAMERAS = [("/qos_cal/base", "base_0_rgb"), ("/qos_cal/wrist/compressed", "left_wrist_0_rgb")]
CAL_JOINTS = ["a", "b", "c"]


@pytest.fixture(scope="module")
def cal_context():
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=CAL_DOMAIN)
    yield ctx
    rclpy.shutdown(context=ctx)


@contextmanager
def cal_driver(ctx, instruction_topic: str):
    """A streaming driver for one test: each test has its own instruction topic."""
    d = Driver(ctx, CAL_CAMERAS, CAL_JOINTS, instruction_topic=instruction_topic,
               name="qos_cal_driver")
    try:
        d.start_stream(10.0)
        yield d
    finally:
        d.close()


def start_calibration(tmp_path, instruction_topic: str) -> NodeProcess:
    overrides = {"camera_topics": [t for t, _ in CAL_CAMERAS],
                 "camera_slots": [s for _, s in CAL_CAMERAS], "joint_names": CAL_JOINTS,
                 "buffer_path": str(tmp_path / "buffer"), "samples": 2, "record_rate_hz": 10.0,
                 "max_observation_age_s": 1.0, "instruction_topic": instruction_topic}
    return NodeProcess("quantvla_ros.ros.calibration_node",
                       params_file=ROOT / "config" / "calibrate.yaml", overrides=overrides,
                       domain_id=CAL_DOMAIN, log_path=tmp_path / "node.log",
                       ros_log_dir=tmp_path)


def recorded_instructions(tmp_path) -> list[str]:
    buf = RecordedBuffer.open(tmp_path / "buffer")
    return [buf[i].instruction for i in range(len(buf))]


def test_calibration_gets_a_latched_instruction_published_before_it_started(
        cal_context, tmp_path):
    with cal_driver(cal_context, "/qos_cal/latched_instruction") as d:
        d.publish_instruction("fold the towel")  # before the node exists
        with start_calibration(tmp_path, d.instruction_topic) as proc:
            code = proc.wait(90.0)
            log = proc.output()
    assert code == 0, log
    assert recorded_instructions(tmp_path) == ["fold the towel"] * 2


def test_calibration_gets_a_default_qos_instruction(cal_context, tmp_path):
    with cal_driver(cal_context, "/qos_cal/live_instruction") as d:
        with start_calibration(tmp_path, d.instruction_topic) as proc:
            # No instruction yet: nothing is recorded until the volatile one arrives.
            d.publish_instruction("sort the screws", latched=False, match_timeout=90.0)
            code = proc.wait(90.0)
            log = proc.output()
    assert code == 0, log
    assert recorded_instructions(tmp_path) == ["sort the screws"] * 2


# ---- quantvla_node in another process (after the calibration tests: it keeps inferring) ---
NODE_DOMAIN = pick_domain_id(salt=53)
CAMERAS = [("/camera/base/image_raw", "base_0_rgb"),
           ("/camera/wrist/image_raw/compressed", "left_wrist_0_rgb")]
JOINTS = ["joint_1", "joint_2", "joint_3", "joint_4", "joint_5", "joint_6", "gripper"]
# config/quantvla.yaml has no default_instruction: without an instruction, no trajectory.
OVERRIDES = {"control_rate_hz": 20.0, "actions_per_chunk": 4, "max_observation_age_s": 1.0,
             "warmup_runs": 1}
BAD_WINDOW_S = 1.0


@pytest.fixture(scope="module")
def inference(micro_checkpoint, tmp_path_factory):
    """A driver and an active quantvla_node that started after a latched instruction."""
    logs = tmp_path_factory.mktemp("qos_node")
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=NODE_DOMAIN)
    driver = Driver(ctx, CAMERAS, JOINTS, name="qos_driver")
    driver.publish_instruction("pick up the latched block")  # before the node exists
    proc = NodeProcess("quantvla_ros.ros.inference_node", params_file=ROOT / "config" /
                       "quantvla.yaml", overrides={"policy": str(micro_checkpoint), **OVERRIDES},
                       domain_id=NODE_DOMAIN, log_path=logs / "node.log", ros_log_dir=logs)
    try:
        lc = driver.lifecycle
        assert lc.wait_for_services(90.0), f"node did not come up:\n{proc.output()}"
        assert lc.change_state("configure", timeout=120.0), proc.output()
        assert lc.change_state("activate"), proc.output()
        driver.start_stream(10.0)
        yield driver, proc
    finally:
        driver.close()
        proc.stop()
        rclpy.shutdown(context=ctx)


def rejected_since(driver, t_ns: int) -> bool:
    return any("instruction rejected" in s.message for s in driver.statuses_since(t_ns))


def test_node_gets_a_latched_instruction_published_before_it_started(inference):
    driver, proc = inference
    assert driver.wait_trajectory_after(driver.now_ns(), 30.0), (
        f"no trajectory: the latched instruction did not arrive\n{proc.output()[-3000:]}")


def test_node_gets_default_qos_instructions(inference):
    driver, proc = inference
    assert driver.wait_trajectory_after(driver.now_ns(), 30.0), proc.output()[-3000:]
    # An empty instruction from a default-QoS publisher invalidates the current one ...
    t_bad = driver.now_ns()
    driver.publish_instruction("", latched=False)
    assert driver.wait_for(lambda: rejected_since(driver, t_bad), 10.0), (
        f"the volatile instruction did not reach the node\n{proc.output()[-3000:]}")
    t_seen = driver.now_ns()
    time.sleep(BAD_WINDOW_S)  # frames keep coming: none may give a trajectory
    t_good = driver.now_ns()
    # The node pairs a frame with the instruction it holds when it assembles it: pause until
    # the window's frames are too old to pair with the valid instruction below.
    driver.stop_stream()
    time.sleep(OVERRIDES["max_observation_age_s"] + 0.5)
    # ... and a valid one from it brings the trajectories back: nothing else can.
    driver.publish_instruction("put the cube in the box", latched=False)
    driver.start_stream(10.0)
    assert driver.wait_trajectory_after(driver.now_ns(), 20.0), "no trajectory after it"
    stopped = driver.stamps_published_between(t_seen, t_good)
    assert stopped and not stopped & set(driver.trajectory_stamps())


def test_node_takes_the_newest_of_a_latched_and_a_volatile_instruction(inference):
    driver, _ = inference
    assert driver.wait_trajectory_after(driver.now_ns(), 30.0)
    t0 = driver.now_ns()
    driver.publish_instruction("")  # latched: arrives on both subscriptions
    driver.publish_instruction("stack the plates", latched=False)  # newer
    assert driver.wait_for(lambda: sum(s > t0 for s in driver.trajectory_stamps()) >= 5, 20.0)
    # Still flowing afterwards: no stale copy of the empty one got the last word.
    assert driver.wait_trajectory_after(driver.now_ns(), 10.0)


def test_node_says_which_instruction_it_follows(inference):
    driver, _ = inference
    seen = []
    sub = driver.node.create_subscription(String, "/quantvla_node/instruction_in_use",
                                          lambda msg: seen.append(msg.data),
                                          LATCHED_INSTRUCTION_QOS)
    try:
        for text in ("wipe the table", "", "stack the plates"):  # "": none valid
            driver.publish_instruction(text, latched=False)
            assert driver.wait_for(lambda t=text: seen and seen[-1] == t, 10.0), (text, seen)
    finally:
        driver.node.destroy_subscription(sub)
