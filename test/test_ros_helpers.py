"""ROS-free helpers of the ROS layer: pairing, settings, noise, the worker, diagnostics."""

import threading
import time
from pathlib import Path

import pytest
import yaml

from quantvla_ros.ros.pairing import TimedBuffer, nearest_index, select_by_rate, spread
from quantvla_ros.ros.settings import (
    CALIBRATION_PARAMS,
    INFERENCE_PARAMS,
    INPUT_PARAMS,
    SettingsError,
    defaults,
    load_topics_file,
    parse_calibration,
    parse_inference,
)
from quantvla_ros.ros.worker import LatestWorker

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"camera_topics": ["/a/image", "/b/image/compressed"],
        "camera_slots": ["base_0_rgb", "left_wrist_0_rgb"], "joint_names": ["j1", "j2"]}


def test_nearest_index_respects_tolerance_and_prefers_earlier_on_ties():
    stamps = [0, 10, 20, 30]
    assert nearest_index(stamps, 14, 5) == 1
    assert nearest_index(stamps, 15, 5) == 1  # tie: the earlier sample
    assert nearest_index(stamps, 16, 5) == 2
    assert nearest_index(stamps, 45, 10) is None
    assert nearest_index([], 0, 100) is None
    assert nearest_index(stamps, -3, 3) == 0


def test_rate_selection_and_spread():
    assert select_by_rate([0, 4, 10, 12, 25], 10) == [0, 2, 4]
    assert spread(10, 3) == [0, 4, 9]
    assert spread(3, 10) == [0, 1, 2]
    assert spread(5, 0) == []


def test_timed_buffer_keeps_order_and_bound():
    buf = TimedBuffer(maxlen=3)
    for t in (10, 30, 20, 40):
        buf.add(t, f"m{t}")
    assert len(buf) == 3 and buf.latest() == (40, "m40")
    assert buf.nearest(21, 2) == (20, "m20")
    assert buf.nearest(10, 5) is None  # dropped as the oldest
    buf.clear()
    assert buf.latest() is None


def test_parse_inference_defaults_and_derived_values():
    s = parse_inference(GOOD)
    assert s.policy == "pi05-tiny" and s.inputs.slots == ("base_0_rgb", "left_wrist_0_rgb")
    assert [c.compressed for c in s.inputs.cameras] == [False, True]
    assert s.inference_period_s == pytest.approx(1.0)
    assert parse_inference({**GOOD, "control_rate_hz": 20}).control_rate_hz == 20.0


@pytest.mark.parametrize("change, message", [
    ({"camera_topics": []}, "at least one camera"),
    ({"camera_slots": ["base_0_rgb"]}, "parallel lists"),
    ({"camera_slots": ["x", "x"]}, r"camera_slots lists \['x'\] more than once"),
    ({"joint_names": []}, "at least one joint"),
    ({"joint_names": "j1"}, "joint_names must be str"),
    ({"actions_per_chunk": 0}, "actions_per_chunk must be >= 1"),
    ({"control_rate_hz": -1.0}, "control_rate_hz must be positive"),
    ({"max_observation_age_s": 0.0}, "max_observation_age_s must be positive"),
    ({"sync_tolerance_s": -0.1}, "sync_tolerance_s must be >= 0"),
    ({"seed": -2}, "seed must be >= 0"),
    ({"device": "tpu"}, "device must be"),
    ({"policy": " "}, "policy must name"),
])
def test_parse_inference_rejects(change, message):
    with pytest.raises(SettingsError, match=message):
        parse_inference({**GOOD, **change})


def test_parse_inference_lists_every_problem():
    with pytest.raises(SettingsError) as err:
        parse_inference({"warmup_runs": -1, "precision": "fp8"})
    text = str(err.value)
    for part in ("camera_topics is required", "joint_names is required", "warmup_runs",
                 "precision"):
        assert part in text


def test_parse_calibration():
    s = parse_calibration({**GOOD, "buffer_path": "/tmp/x", "samples": 4})
    assert (s.samples, s.record_rate_hz, s.quantize) == (4, 2.0, False)
    with pytest.raises(SettingsError, match="buffer_path is required"):
        parse_calibration(GOOD)
    with pytest.raises(SettingsError, match="quantize_out is empty"):
        parse_calibration({**GOOD, "buffer_path": "b", "quantize": True})


def ros_params(path: Path) -> dict:
    return yaml.safe_load(path.read_text())["/**"]["ros__parameters"]


def commented_keys(path: Path) -> set[str]:
    """Keys whose line is directly preceded by a comment line."""
    lines = path.read_text().splitlines()
    keys = set()
    for prev, line in zip(lines, lines[1:], strict=False):
        stripped = line.strip()
        if ":" in stripped and not stripped.startswith("#") and prev.strip().startswith("#"):
            keys.add(stripped.split(":")[0])
    return keys


@pytest.mark.parametrize("name, table, parse", [
    ("quantvla.yaml", INFERENCE_PARAMS, parse_inference),
    ("calibrate.yaml", CALIBRATION_PARAMS, parse_calibration),
])
def test_config_files_set_and_document_every_parameter(name, table, parse):
    path = ROOT / "config" / name
    values = ros_params(path)
    assert set(values) == {p.name for p in table}
    assert {p.name for p in table} <= commented_keys(path)
    parse(values)  # the shipped file is valid as is
    assert all(p.description for p in table)


def test_topics_file_is_valid_and_documented():
    path = ROOT / "config" / "topics.yaml"
    inputs = load_topics_file(path)
    assert inputs.slots == ("base_0_rgb", "left_wrist_0_rgb")
    assert {p.name for p in INPUT_PARAMS} <= commented_keys(path)
    assert set(defaults(INPUT_PARAMS)) <= set(yaml.safe_load(path.read_text()))


def test_noise_depends_only_on_seed_and_stamp():
    torch = pytest.importorskip("torch")
    from quantvla_ros.ros.noise import observation_noise

    a = observation_noise(0, 1_700_000_000_123_456_789, 10, 8)
    assert a.shape == (1, 10, 8)
    torch.testing.assert_close(a, observation_noise(0, 1_700_000_000_123_456_789, 10, 8))
    assert not torch.equal(a, observation_noise(1, 1_700_000_000_123_456_789, 10, 8))
    assert not torch.equal(a, observation_noise(0, 1_700_000_000_123_456_790, 10, 8))


def test_worker_runs_newest_and_counts_drops():
    release = threading.Event()
    seen, errors = [], []

    def handler(item):
        if item == "first":
            release.wait(5.0)
        if item == "boom":
            raise RuntimeError("inference failed")
        seen.append(item)

    worker = LatestWorker(handler, errors.append)
    worker.submit("first")
    time.sleep(0.1)  # "first" is now in hand
    assert worker.submit("a") and not worker.submit("b") and not worker.submit("c")
    release.set()
    deadline = time.monotonic() + 5
    while worker.busy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == ["first", "c"] and worker.dropped == 2
    worker.submit("boom")
    deadline = time.monotonic() + 5
    while worker.done < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.submit("after")  # the thread survived the exception
    while worker.done < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [str(e) for e in errors] == ["inference failed"] and seen[-1] == "after"
    assert worker.stop(5.0)
    assert not worker.submit("late")


def test_rolling_stats_and_problem_board():
    pytest.importorskip("diagnostic_msgs", reason="ROS 2 messages are not installed")
    from quantvla_ros.ros import diagnostics as diag

    stats = diag.RollingStats(window=3)
    assert stats.summary() is None
    for v in (100.0, 1.0, 2.0, 3.0):
        stats.add(v)
    assert stats.summary() == {"p50": 2.0, "p90": pytest.approx(2.8), "max": 3.0}
    assert stats.count == 4
    board = diag.ProblemBoard()
    board.report("joints", diag.ERROR, "NaN", "bad")
    board.report("joints", diag.WARN, "none within 0.05 s", "stale")
    board.report("joints", diag.WARN, "none within 0.05 s", "stale")
    problems = board.take()
    assert {k: (p.level, p.count) for k, p in problems.items()} == {
        "joints.bad": (diag.ERROR, 1), "joints.stale": (diag.WARN, 2)}
    assert board.take() == {} and board.totals == {"bad": 1, "stale": 2}
    status = diag.problems_status("n: inputs", "n", problems, {"x": 1.5})
    assert status.level == bytes([diag.ERROR])
    assert status.message == "NaN; none within 0.05 s (x2)"
    assert [(kv.key, kv.value) for kv in status.values] == [("x", "1.500")]
