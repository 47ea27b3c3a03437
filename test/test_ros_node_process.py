"""quantvla_node as its own process, driven over loopback DDS from this one.

One node process serves the whole module (started once: importing torch and rclpy takes
seconds). It runs config/quantvla.yaml with a micro checkpoint, 20 Hz control and 4 actions
per chunk, so an inference is requested every 0.2 s. The driver streams two cameras (raw and
jpeg) and joint states at 10 Hz, all stamped alike.
"""

import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed")

from ros_driver import Driver  # noqa: E402

from quantvla_ros.demo.node_process import NodeProcess, pick_domain_id  # noqa: E402
from quantvla_ros.ros.convert import stamp_to_ns  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "config" / "quantvla.yaml"
MODULE = "quantvla_ros.ros.inference_node"
DOMAIN = pick_domain_id(salt=11)
CAMERAS = [("/camera/base/image_raw", "base_0_rgb"),
           ("/camera/wrist/image_raw/compressed", "left_wrist_0_rgb")]
JOINTS = ["joint_1", "joint_2", "joint_3", "joint_4", "joint_5", "joint_6", "gripper"]
OVERRIDES = {"control_rate_hz": 20.0, "actions_per_chunk": 4, "max_observation_age_s": 1.0,
             "warmup_runs": 1}
BAD_WINDOW_S = 2.0
NS = 1_000_000_000


@pytest.fixture(scope="module")
def micro(micro_checkpoint):
    return micro_checkpoint


@pytest.fixture(scope="module")
def context():
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=DOMAIN)
    yield ctx
    rclpy.shutdown(context=ctx)


@pytest.fixture(scope="module")
def node(micro, tmp_path_factory):
    logs = tmp_path_factory.mktemp("node")
    proc = NodeProcess(MODULE, params_file=PARAMS, overrides={"policy": str(micro), **OVERRIDES},
                       domain_id=DOMAIN, log_path=logs / "node.log", ros_log_dir=logs)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def driver(context, node):
    d = Driver(context, CAMERAS, JOINTS)
    assert d.lifecycle.wait_for_services(90.0), f"node did not come up:\n{node.output()}"
    d.publish_instruction("pick up the red block")
    yield d
    d.close()


def ensure_active(driver):
    """Bring the node to 'active' with the stream running and trajectories flowing."""
    driver.faults = {}
    state = driver.lifecycle.get_state()
    if state == "unconfigured":
        assert driver.lifecycle.change_state("configure")
        state = "inactive"
    if state == "inactive":
        assert driver.lifecycle.change_state("activate")
    if driver._stream is None:
        driver.start_stream(10.0)
    assert driver.wait_trajectory_after(driver.now_ns(), 20.0), "no trajectory while healthy"


def test_lifecycle_transitions_from_another_process(driver, node):
    lc = driver.lifecycle
    assert lc.get_state() == "unconfigured"
    assert lc.change_state("configure", timeout=120.0), node.output()
    assert lc.get_state() == "inactive"
    assert lc.change_state("activate")
    assert lc.get_state() == "active"
    assert not lc.change_state("configure")  # not a transition of 'active'
    assert lc.get_state() == "active"


def test_inputs_in_trajectory_out(driver):
    ensure_active(driver)
    t0 = driver.now_ns()
    assert driver.wait_for(lambda: sum(s > t0 for s in driver.trajectory_stamps()) >= 3, 20.0)
    msg, _ = driver.trajectories[-1]
    assert list(msg.joint_names) == JOINTS
    assert len(msg.points) == OVERRIDES["actions_per_chunk"]
    for i, point in enumerate(msg.points):
        # the micro policy has 8 action dims: only the first len(joint_names) are published
        assert len(point.positions) == len(JOINTS)
        t = point.time_from_start.sec * NS + point.time_from_start.nanosec
        assert t == round((i + 1) * NS / OVERRIDES["control_rate_hz"])
    stamps = {stamp for _, stamp in driver.published}
    assert all(s in stamps for s in driver.trajectory_stamps())  # header = observation stamp
    assert driver.wait_for(lambda: any(
        s.name.endswith(": policy") and "latency_ms_p50" in {kv.key for kv in s.values}
        for s in driver.statuses_since(t0)), 5.0)


# name -> (faults, text expected in a WARN/ERROR diagnostics message, bad instruction)
BAD_INPUTS = {
    "unsupported_encoding": ({"encoding": {"base_0_rgb": "yuv422"}},
                             "unsupported image encoding", None),
    "truncated_image": ({"truncate": {"base_0_rgb"}}, "image data has", None),
    "corrupt_jpeg": ({"corrupt": {"left_wrist_0_rgb"}}, "cannot decode", None),
    "nan_joint": ({"joint_nan": True}, "NaN", None),
    "wrong_length_joints": ({"joint_short": True}, "names but", None),
    "missing_joint": ({"joint_missing": True}, "lacks joint", None),
    "stale_observation": ({"stamp_offset_s": -5.0}, "s old", None),
    "wrist_camera_stops": ({"stopped": {"left_wrist_0_rgb"}}, "left_wrist_0_rgb", None),
    "anchor_camera_stops": ({"stopped": {"base_0_rgb"}}, "s old", None),
    "empty_instruction": ({}, "instruction", ""),
    "overlong_instruction": ({}, "10000 characters", "x" * 10_000),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_no_trajectory_and_a_diagnostic(driver, case):
    faults, expected, instruction = BAD_INPUTS[case]
    ensure_active(driver)
    t_bad = driver.now_ns()
    if instruction is not None:
        driver.publish_instruction(instruction)
    driver.faults = faults
    # Bad frames are bad from the start, past the 0.3 s that frames in flight get. A bad
    # instruction only counts from when the node has taken it, which under load can be later
    # than any fixed delay: the window then starts once the node has said it rejected it (a
    # frame sent after that reached the node after the rejection).
    t_from = t_bad + int(0.3 * NS)
    if instruction is not None:
        assert driver.wait_for(lambda: _warned(driver, t_bad, expected), 20.0), (
            f"{case}: no WARN/ERROR mentioning {expected!r}")
        t_from = driver.now_ns()
    time.sleep(BAD_WINDOW_S)
    t_end = driver.now_ns()
    driver.faults = {}
    if instruction is not None:
        # The node pairs a frame with the instruction current when it assembles it, which can
        # be after the good instruction below: the stream pauses until every frame sent in
        # the window is older than max_observation_age_s, so none can pair with it.
        driver.stop_stream()
        time.sleep(OVERRIDES["max_observation_age_s"] + 0.5)
        driver.publish_instruction("pick up the red block")
        driver.start_stream(10.0)
    # Recovery: good data flows again and the node answers.
    assert driver.wait_trajectory_after(driver.now_ns(), 20.0), f"{case}: no recovery"
    assert driver.lifecycle.get_state() == "active"
    # Frames sent in the bad window gave no trajectory.
    bad = driver.stamps_published_between(t_from, t_end)
    assert bad and not bad & set(driver.trajectory_stamps()), case
    statuses = [s for s in driver.statuses_since(t_bad) if s.level[0] >= 1]
    assert _warned(driver, t_bad, expected), (
        f"{case}: no WARN/ERROR mentioning {expected!r}; got {[s.message for s in statuses]}")


def _warned(driver, t_ns: int, expected: str) -> bool:
    """Whether a WARN/ERROR status received after ``t_ns`` mentions ``expected``."""
    return any(s.level[0] >= 1 and expected in s.message for s in driver.statuses_since(t_ns))


def test_deactivate_stops_output_and_activate_resumes(driver):
    ensure_active(driver)
    assert driver.lifecycle.change_state("deactivate")
    t_off = driver.now_ns()
    time.sleep(1.5)  # inputs keep streaming meanwhile
    # Nothing is published once deactivate returns: no trajectory for a frame sent after it,
    # and none arriving long after it (one in flight when it returned may land a little late).
    late = [(stamp_to_ns(msg.header.stamp), recv) for msg, recv in driver.trajectories
            if stamp_to_ns(msg.header.stamp) > t_off or recv > t_off + int(1.0 * NS)]
    assert not late, f"trajectories after deactivate: {late}"
    assert driver.lifecycle.get_state() == "inactive"
    assert driver.lifecycle.change_state("activate")
    assert driver.wait_trajectory_after(driver.now_ns(), 20.0)


def test_cleanup_then_configure_again(driver):
    ensure_active(driver)
    lc = driver.lifecycle
    assert lc.change_state("deactivate") and lc.change_state("cleanup")
    assert lc.get_state() == "unconfigured"
    ensure_active(driver)


def test_shutdown_ends_the_process(driver, node):
    assert driver.lifecycle.change_state("shutdown")
    driver.stop_stream()
    assert node.wait(20.0) == 0, node.output()


def test_failed_configure_is_reported(context, tmp_path):
    missing = tmp_path / "no_such_checkpoint"
    with NodeProcess(MODULE, params_file=PARAMS, overrides={"policy": str(missing)},
                     domain_id=DOMAIN, log_path=tmp_path / "bad.log", ros_log_dir=tmp_path,
                     node_name="quantvla_bad") as proc:
        d = Driver(context, CAMERAS, JOINTS, target="/quantvla_bad", name="bad_driver")
        try:
            assert d.lifecycle.wait_for_services(90.0), proc.output()
            assert not d.lifecycle.change_state("configure")
            assert d.lifecycle.get_state() == "unconfigured"
            assert d.lifecycle.change_state("shutdown")
            assert proc.wait(20.0) == 0
        finally:
            d.close()
        log = proc.output()
    assert "configure failed" in log and "does not exist" in log and str(missing) in log
