"""Synthetic rosbags (sqlite3 and MCAP) -> `quantvla calibrate` -> calibration buffers."""

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="the rosbags library is not installed")

from quantvla_ros.cli.main import main  # noqa: E402
from quantvla_ros.data.buffer import RecordedBuffer  # noqa: E402
from quantvla_ros.demo.synthetic_bag import (  # noqa: E402
    DEFAULT_CAMERAS,
    DEFAULT_JOINTS,
    topics_config,
    write_synthetic_bag,
    write_topics_file,
)
from quantvla_ros.ros.bag_recorder import BagError, record_from_bags  # noqa: E402
from quantvla_ros.runtime.policy import Policy  # noqa: E402
from quantvla_ros.workflows.quantize import QuantizeRequest, quantize_policy  # noqa: E402


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("bags")
    return {storage: write_synthetic_bag(root / storage, storage=storage, seconds=2.0)
            for storage in ("sqlite3", "mcap")}


@pytest.fixture(scope="module")
def topics(tmp_path_factory):
    return write_topics_file(tmp_path_factory.mktemp("topics") / "topics.yaml", topics_config())


def calibrate(capsys, *args):
    code = main(["calibrate", "--no-progress", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name)


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_calibrate_from_bag_gives_a_buffer_the_policy_runs_on(capsys, bags, topics, tmp_path,
                                                              storage, micro_checkpoint):
    out = tmp_path / "buffer"
    code, stdout, err = calibrate(capsys, "--bag", bags[storage]["path"], "--topics", topics,
                                  "--out", out, "--samples", 6, "--rate", 5, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["samples"] == summary["added"] == 6
    buf = RecordedBuffer.open(out)
    buf.verify()
    assert buf.cameras == {c.slot: c.size for c in DEFAULT_CAMERAS}
    assert buf.state_dim == len(DEFAULT_JOINTS)
    stamps = [buf[i].stamp for i in range(len(buf))]
    assert stamps == sorted(stamps) and len(set(stamps)) == 6
    obs = buf[0]
    assert obs.instruction.startswith("pick up the red block")
    # The buffer calibrates a real artifact, which loads the way the node loads a policy.
    micro = micro_checkpoint
    artifact = tmp_path / "artifact"
    quantize_policy(QuantizeRequest(source=str(micro), calib=str(out), bits="w8a8"), artifact,
                    log=lambda *_: None)
    policy = Policy.load(str(artifact))
    assert policy.manifest.calibration["samples"] == 6
    actions = policy.infer(obs).actions
    assert actions.shape == (10, 8) and np.isfinite(actions).all()
    assert leftovers(tmp_path) == []


def test_both_storages_give_the_same_observations(bags, topics, tmp_path):
    a = record_from_bags([bags["sqlite3"]["path"]], topics, tmp_path / "a", samples=4,
                            rate_hz=5)
    b = record_from_bags([bags["mcap"]["path"]], topics, tmp_path / "b", samples=4, rate_hz=5)
    assert a["samples"] == b["samples"] == 4
    x, y = RecordedBuffer.open(tmp_path / "a")[2], RecordedBuffer.open(tmp_path / "b")[2]
    np.testing.assert_array_equal(x.state, y.state)
    for slot in x.images:
        np.testing.assert_array_equal(x.images[slot], y.images[slot])


def test_several_bags_append_and_existing_out(capsys, bags, topics, tmp_path):
    out = tmp_path / "buffer"
    paths = [bags["sqlite3"]["path"], bags["mcap"]["path"]]
    code, stdout, err = calibrate(capsys, "--bag", paths[0], "--bag", paths[1], "--topics",
                                  topics, "--out", out, "--samples", 12, "--rate", 5)
    assert code == 0, err
    assert "12 observations" in stdout
    code, _, err = calibrate(capsys, "--bag", paths[0], "--topics", topics, "--out", out)
    assert code == 2 and "exists" in err and "--append" in err
    code, _, err = calibrate(capsys, "--bag", paths[0], "--topics", topics, "--out", out,
                             "--samples", 3, "--append")
    assert code == 0, err
    assert len(RecordedBuffer.open(out)) == 15
    assert leftovers(tmp_path) == []


def test_bag_missing_a_topic_is_rejected(capsys, tmp_path):
    bag = write_synthetic_bag(tmp_path / "bag", instruction_topic=None, seconds=1.0)["path"]
    topics = write_topics_file(tmp_path / "topics.yaml", topics_config())
    out = tmp_path / "buffer"
    code, _, err = calibrate(capsys, "--bag", bag, "--topics", topics, "--out", out)
    assert code == 2
    assert "has no topic /instruction" in err and "default_instruction" in err
    assert not out.exists() and leftovers(tmp_path) == []
    # With a default instruction the same bag is fine.
    with_default = write_topics_file(tmp_path / "t2.yaml",
                                     topics_config(default_instruction="wipe the table"))
    code, _, err = calibrate(capsys, "--bag", bag, "--topics", with_default, "--out", out)
    assert code == 0, err
    assert RecordedBuffer.open(out)[0].instruction == "wipe the table"


def test_camera_topic_absent_from_bag(capsys, bags, tmp_path):
    cfg = topics_config()
    cfg["camera_topics"][1] = "/camera/top/image_raw"
    topics = write_topics_file(tmp_path / "topics.yaml", cfg)
    code, _, err = calibrate(capsys, "--bag", bags["mcap"]["path"], "--topics", topics,
                             "--out", tmp_path / "buffer")
    assert code == 2 and "has no topic /camera/top/image_raw" in err
    assert "/camera/base/image_raw (sensor_msgs/msg/Image)" in err  # lists what is there


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_corrupt_bag_is_rejected(capsys, bags, topics, tmp_path, storage):
    bag = tmp_path / "corrupt"
    shutil.copytree(bags[storage]["path"], bag)
    for f in bag.iterdir():
        if f.suffix in (".db3", ".mcap"):
            data = f.read_bytes()
            f.write_bytes(data[:64] + b"\x00" * 64 + data[len(data) // 2:])
    out = tmp_path / "buffer"
    code, _, err = calibrate(capsys, "--bag", bag, "--topics", topics, "--out", out)
    assert code == 2 and "corrupt" in err
    assert not out.exists() and leftovers(tmp_path) == []


def test_missing_bag_path(capsys, topics, tmp_path):
    code, _, err = calibrate(capsys, "--bag", tmp_path / "nope", "--topics", topics,
                             "--out", tmp_path / "buffer")
    assert code == 2 and "does not exist" in err


def test_zero_pairable_frames(bags, tmp_path):
    cfg = topics_config(joint_names=("shoulder", "elbow"))  # not in the bag's joint states
    topics = write_topics_file(tmp_path / "topics.yaml", cfg)
    with pytest.raises(BagError, match="no pairable observations.*lacks joint"):
        record_from_bags([bags["sqlite3"]["path"]], topics, tmp_path / "buffer")
    assert not (tmp_path / "buffer").exists()
    cfg = topics_config(sync_tolerance_s=0.0)
    cfg["camera_topics"].reverse()  # the jpeg wrist camera as the anchor
    cfg["camera_slots"].reverse()
    topics = write_topics_file(tmp_path / "t2.yaml", cfg)
    summary = record_from_bags([bags["sqlite3"]["path"]], topics, tmp_path / "b2",
                                  samples=3, rate_hz=5)
    assert summary["samples"] == 3


def test_bad_topics_file(capsys, bags, tmp_path):
    bad = tmp_path / "topics.yaml"
    bad.write_text("camera_topics: [/a, /b]\ncamera_slots: [base_0_rgb]\nfoo: 1\n")
    code, _, err = calibrate(capsys, "--bag", bags["mcap"]["path"], "--topics", bad,
                             "--out", tmp_path / "buffer")
    assert code == 2
    assert "unknown key(s) ['foo']" in err and "joint_names is required" in err
    assert "parallel lists" in err
