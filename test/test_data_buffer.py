"""Calibration buffer: exact round trips, appends, atomic writes, corruption, synthetic specs."""

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from quantvla_ros.data import buffer as buffer_module
from quantvla_ros.data.buffer import BufferFormatError, RecordedBuffer, split_indices
from quantvla_ros.data.observation import Observation
from quantvla_ros.data.shard_format import FORMAT_VERSION as SHARD_FORMAT_VERSION
from quantvla_ros.data.sources import open_observations
from quantvla_ros.data.synthetic import TASKS, SyntheticBuffer, synthetic_observations

ROOT = Path(__file__).resolve().parents[1]
CAMERAS = {"base_0_rgb": (12, 16), "left_wrist_0_rgb": (8, 10)}
STATE_DIM = 5
INSTRUCTIONS = ["pick up the cup", "ramasse la pomme — vite", "把苹果放进碗里 🍎"]


def make_obs(i, cameras=CAMERAS, state_dim=STATE_DIM):
    """Return a distinct, valid observation for index ``i``."""
    rng = np.random.default_rng(i)
    return {
        "images": {
            name: rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            for name, (h, w) in cameras.items()
        },
        "state": rng.standard_normal(state_dim).astype(np.float32),
        "instruction": INSTRUCTIONS[i % len(INSTRUCTIONS)],
        "timestamp": 1700000000.0 + i / 30.0,
    }


def assert_same_obs(got, want):
    assert isinstance(got, Observation)
    got = got.to_dict()
    want = want.to_dict() if isinstance(want, Observation) else want
    assert set(got) == {"images", "state", "instruction", "timestamp"}
    assert got["images"].keys() == want["images"].keys()
    for name, image in want["images"].items():
        assert got["images"][name].dtype == np.uint8
        assert got["images"][name].shape == image.shape
        assert got["images"][name].tobytes() == image.tobytes()
    assert got["state"].dtype == np.float32
    assert got["state"].tobytes() == want["state"].tobytes()
    assert got["instruction"] == want["instruction"]
    assert isinstance(got["timestamp"], float)
    assert got["timestamp"] == want["timestamp"]


def record(path, observations, shard_size=3, **kwargs):
    with RecordedBuffer.create(
        path, CAMERAS, STATE_DIM, source="test robot", shard_size=shard_size, **kwargs
    ) as buf:
        for obs in observations:
            buf.append(obs)
    return buf


def shard_file(path, k):
    return Path(path) / f"shard-{k:05d}.safetensors"


def test_round_trip_is_exact(tmp_path):
    observations = [make_obs(i) for i in range(7)]
    record(tmp_path / "buf", observations)

    buf = RecordedBuffer.open(tmp_path / "buf")
    assert len(buf) == 7
    assert buf.num_shards == 3  # 3 + 3 + 1
    assert buf.cameras == CAMERAS
    assert buf.state_dim == STATE_DIM
    for i, want in enumerate(observations):
        assert_same_obs(buf[i], want)
    assert_same_obs(buf[-1], observations[-1])
    for got, want in zip(buf, observations, strict=True):
        assert_same_obs(got, want)
    buf.verify()
    assert sorted(p.name for p in (tmp_path / "buf").iterdir()) == [
        "index.json",
        "shard-00000.safetensors",
        "shard-00001.safetensors",
        "shard-00002.safetensors",
    ]


def test_shards_hold_plain_tensors_and_index_lists_them(tmp_path):
    record(tmp_path, [make_obs(i) for i in range(4)])
    tensors = safetensors.numpy.load(shard_file(tmp_path, 0).read_bytes())
    assert tensors["image.base_0_rgb"].shape == (3, 12, 16, 3)
    assert tensors["state"].dtype == np.float32
    assert tensors["instruction_offsets"].tolist()[0] == 0
    index = json.loads((tmp_path / "index.json").read_text(encoding="utf-8"))
    assert index["format_version"] == SHARD_FORMAT_VERSION
    assert index["cameras"] == {"base_0_rgb": [12, 16, 3], "left_wrist_0_rgb": [8, 10, 3]}
    assert [s["samples"] for s in index["shards"]] == [3, 1]
    assert index["shards"][0]["instructions"] == sorted(INSTRUCTIONS)


def test_returned_observations_are_copies(tmp_path):
    obs = make_obs(0)
    buf = RecordedBuffer.create(tmp_path, CAMERAS, STATE_DIM, source="s", shard_size=2)
    buf.append(obs)
    obs["images"]["base_0_rgb"][:] = 0  # caller reuses its frame buffer
    buf[0].state[:] = 99.0
    assert_same_obs(buf[0], make_obs(0))  # pending
    buf.close()
    buf[0].images["base_0_rgb"][:] = 0
    assert_same_obs(buf[0], make_obs(0))  # read back from the shard


def test_pending_observations_are_readable_before_flush(tmp_path):
    buf = RecordedBuffer.create(tmp_path, CAMERAS, STATE_DIM, source="s", shard_size=4)
    for i in range(5):
        buf.append(make_obs(i))
    assert len(buf) == 5 and buf.num_shards == 1
    assert_same_obs(buf[4], make_obs(4))
    assert len(RecordedBuffer.open(tmp_path)) == 4  # only the full shard is on disk yet
    buf.close()
    assert len(RecordedBuffer.open(tmp_path)) == 5
    with pytest.raises(ValueError, match="closed"):
        buf.append(make_obs(5))


def test_shard_rollover_writes_without_close(tmp_path):
    buf = RecordedBuffer.create(tmp_path, CAMERAS, STATE_DIM, source="s", shard_size=2)
    for i in range(4):
        buf.append(make_obs(i))
    assert shard_file(tmp_path, 1).is_file()
    reader = RecordedBuffer.open(tmp_path)
    assert len(reader) == 4 and reader.num_shards == 2
    assert_same_obs(reader[3], make_obs(3))


def test_append_across_reopen(tmp_path):
    record(tmp_path, [make_obs(i) for i in range(4)])  # shards of 3 + 1
    with RecordedBuffer.open(tmp_path) as buf:
        assert buf.shard_size == 3
        for i in range(4, 6):
            buf.append(make_obs(i))
    buf = RecordedBuffer.open(tmp_path)
    assert len(buf) == 6
    index = json.loads((tmp_path / "index.json").read_text(encoding="utf-8"))
    assert [shard["samples"] for shard in index["shards"]] == [3, 1, 2]
    for i in range(6):
        assert_same_obs(buf[i], make_obs(i))


def test_killed_mid_shard_keeps_previous_shards(tmp_path):
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_data_buffer import CAMERAS, STATE_DIM, make_obs
        from quantvla_ros.data.buffer import RecordedBuffer
        buf = RecordedBuffer.create({str(tmp_path)!r}, CAMERAS, STATE_DIM, source="s",
                                       shard_size=2)
        for i in range(4):
            buf.append(make_obs(i))
        os.replace = lambda *args: os._exit(3)  # die with the third shard's temp file written
        for i in range(4, 6):
            buf.append(make_obs(i))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 3, result.stderr
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".shard-00002.safetensors.")

    buf = RecordedBuffer.open(tmp_path)
    assert len(buf) == 4
    buf.verify()
    with buf:  # recording resumes
        buf.append(make_obs(4))
    buf = RecordedBuffer.open(tmp_path)
    for i in range(5):
        assert_same_obs(buf[i], make_obs(i))


def test_crash_between_shard_and_index_leaves_unlisted_shard(tmp_path, monkeypatch):
    buf = RecordedBuffer.create(tmp_path, CAMERAS, STATE_DIM, source="s", shard_size=2)
    for i in range(2):
        buf.append(make_obs(i))
    real_write = buffer_module.write_file_atomic

    def shard_then_fail(path, data):
        if path.name == "index.json":
            raise OSError("disk full")
        real_write(path, data)

    monkeypatch.setattr(buffer_module, "write_file_atomic", shard_then_fail)
    buf.append(make_obs(2))
    with pytest.raises(OSError, match="disk full"):
        buf.append(make_obs(3))
    assert shard_file(tmp_path, 1).is_file()  # renamed into place, never listed
    assert len(buf) == 4  # the observations stay pending for a retry

    reopened = RecordedBuffer.open(tmp_path)
    assert len(reopened) == 2
    assert_same_obs(reopened[1], make_obs(1))

    monkeypatch.setattr(buffer_module, "write_file_atomic", real_write)
    buf.close()  # the retry overwrites the unlisted shard
    reopened = RecordedBuffer.open(tmp_path)
    assert len(reopened) == 4
    reopened.verify()
    assert_same_obs(reopened[3], make_obs(3))


def test_flipped_byte_is_reported_by_shard_name(tmp_path):
    record(tmp_path, [make_obs(i) for i in range(6)])
    path = shard_file(tmp_path, 1)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    buf = RecordedBuffer.open(tmp_path)
    assert_same_obs(buf[0], make_obs(0))  # shards load lazily: shard 0 is fine
    with pytest.raises(BufferFormatError, match=r"shard-00001\.safetensors.*sha256"):
        buf[4]
    with pytest.raises(BufferFormatError, match=r"shard-00001\.safetensors"):
        buf.verify()


def test_truncated_shard_is_reported_by_name(tmp_path):
    record(tmp_path, [make_obs(i) for i in range(6)])
    path = shard_file(tmp_path, 0)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(BufferFormatError, match=r"shard-00000\.safetensors.*truncated"):
        RecordedBuffer.open(tmp_path)[0]


def test_missing_shard_is_reported_on_open(tmp_path):
    record(tmp_path, [make_obs(i) for i in range(6)])
    shard_file(tmp_path, 1).unlink()
    with pytest.raises(BufferFormatError, match=r"shard-00001\.safetensors.*missing"):
        RecordedBuffer.open(tmp_path)


def test_shard_with_wrong_tensor_dtype_is_rejected(tmp_path):
    record(tmp_path, [make_obs(i) for i in range(3)])
    path = shard_file(tmp_path, 0)
    tensors = safetensors.numpy.load(path.read_bytes())
    tensors["state"] = tensors["state"].astype(np.float64)
    data = safetensors.numpy.save(tensors)
    path.write_bytes(data)
    index = json.loads((tmp_path / "index.json").read_text(encoding="utf-8"))
    index["shards"][0].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (tmp_path / "index.json").write_text(json.dumps(index), encoding="utf-8")
    with pytest.raises(BufferFormatError, match=r"shard-00000\.safetensors.*tensor state"):
        RecordedBuffer.open(tmp_path).verify()


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda index: index.update(format_version=2), "unsupported format version 2"),
        (lambda index: index.pop("format_version"), "unsupported format version None"),
        (lambda index: index.update(format="something else"), "not a calibration buffer"),
        (lambda index: index["shards"][0].update(file="../x.safetensors"), "bad or duplicate"),
        (lambda index: index.update(state_dim=0), "state_dim"),
    ],
)
def test_bad_index_is_rejected(tmp_path, edit, match):
    record(tmp_path, [make_obs(i) for i in range(3)])
    index_path = tmp_path / "index.json"
    index = json.loads(index_path.read_text(encoding="utf-8"))
    edit(index)
    index_path.write_text(json.dumps(index), encoding="utf-8")
    with pytest.raises(BufferFormatError, match=match):
        RecordedBuffer.open(tmp_path)


def test_open_errors(tmp_path):
    with pytest.raises(BufferFormatError, match="no such"):
        RecordedBuffer.open(tmp_path / "absent")
    with pytest.raises(BufferFormatError, match="index.json"):
        RecordedBuffer.open(tmp_path)
    (tmp_path / "index.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(BufferFormatError, match="not valid JSON"):
        RecordedBuffer.open(tmp_path)


def test_create_refuses_existing_buffer_and_bad_arguments(tmp_path):
    record(tmp_path, [])
    with pytest.raises(FileExistsError):
        RecordedBuffer.create(tmp_path, CAMERAS, STATE_DIM, source="s")
    other = tmp_path / "other"
    with pytest.raises(ValueError, match="image size"):
        RecordedBuffer.create(other, {"cam": (224, 224, 3)}, STATE_DIM, source="s")
    with pytest.raises(ValueError, match="non-empty"):
        RecordedBuffer.create(other, {}, STATE_DIM, source="s")
    with pytest.raises(ValueError, match="state_dim"):
        RecordedBuffer.create(other, CAMERAS, 0, source="s")
    with pytest.raises(ValueError, match="shard_size"):
        RecordedBuffer.create(other, CAMERAS, STATE_DIM, source="s", shard_size=0)


def _without_camera(obs):
    del obs["images"]["left_wrist_0_rgb"]


def _extra_camera(obs):
    obs["images"]["right_wrist_0_rgb"] = obs["images"]["base_0_rgb"]


def _set_image(value):
    return lambda obs: obs["images"].__setitem__("base_0_rgb", value)


def _set(key, value):
    return lambda obs: obs.__setitem__(key, value)


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (_without_camera, r"cameras.*missing \['left_wrist_0_rgb'\]"),
        (_extra_camera, r"cameras.*unexpected \['right_wrist_0_rgb'\]"),
        (_set_image(np.zeros((12, 16, 3), np.float32)), r"'base_0_rgb'.*float32.*uint8"),
        (_set_image(np.zeros((16, 12, 3), np.uint8)), r"'base_0_rgb'.*shape \(16, 12, 3\)"),
        (_set_image(np.zeros((12, 16), np.uint8)), r"'base_0_rgb'.*HxWx3"),
        (_set_image(np.zeros((12, 16, 4), np.uint8)), r"'base_0_rgb'.*HxWx3"),
        (_set_image([[0]]), r"'base_0_rgb'.*list.*uint8"),
        (_set("state", np.zeros(4, np.float32)), r"state: shape \(4,\), expected \(5,\)"),
        (_set("state", np.zeros(5, np.int64)), r"state: dtype int64"),
        (_set("state", np.array([0, 1, np.nan, 0, 0], np.float32)), r"state: non-finite.*\[2\]"),
        (_set("state", np.full(5, 1e300)), r"state: non-finite"),
        (_set("instruction", ""), "instruction must be a non-empty str"),
        (_set("instruction", "  "), "instruction must be a non-empty str"),
        (_set("instruction", b"pick"), "instruction must be a non-empty str"),
        (_set("instruction", "bad \ud800"), "UTF-8"),
        (_set("timestamp", float("nan")), "timestamp must be finite"),
        (_set("timestamp", "now"), "timestamp must be a number"),
        (_set("episode", 3), r"observation keys.*unexpected \['episode'\]"),
        (lambda obs: obs.pop("state"), r"observation keys.*missing \['state'\]"),
    ],
)
def test_append_rejects_bad_observations(tmp_path, corrupt, match):
    buf = RecordedBuffer.create(tmp_path, CAMERAS, STATE_DIM, source="s")
    obs = make_obs(0)
    corrupt(obs)
    with pytest.raises(ValueError, match=match):
        buf.append(obs)
    assert len(buf) == 0


def test_append_accepts_float64_state_as_float32(tmp_path):
    buf = RecordedBuffer.create(tmp_path, CAMERAS, STATE_DIM, source="s")
    obs = make_obs(0)
    obs["state"] = [0.1, 0.2, 0.3, 0.4, 0.5]
    obs["timestamp"] = 3
    buf.append(obs)
    assert buf[0].state.dtype == np.float32
    assert buf[0].state.tolist() == np.float32([0.1, 0.2, 0.3, 0.4, 0.5]).tolist()
    assert buf[0].stamp == 3.0


def test_split_is_deterministic_tail_holdout(tmp_path):
    record(tmp_path, [make_obs(i) for i in range(7)])
    buf = RecordedBuffer.open(tmp_path)
    assert buf.split(2) == ([0, 1, 2, 3, 4], [5, 6])
    assert buf.split(0) == (list(range(7)), [])
    assert split_indices(3, 1) == split_indices(3, 1)
    with pytest.raises(ValueError, match="no calibration samples"):
        buf.split(7)
    with pytest.raises(ValueError, match="non-negative"):
        buf.split(-1)


def test_summary(tmp_path):
    record(tmp_path, [make_obs(i) for i in range(4)], synthetic=False)
    summary = RecordedBuffer.open(tmp_path).summary()
    assert summary == {
        "samples": 4,
        "cameras": {"base_0_rgb": [12, 16], "left_wrist_0_rgb": [8, 10]},
        "state_dim": STATE_DIM,
        "synthetic": False,
        "source": "test robot",
        "instructions": 3,
        "path": str(tmp_path),
        "shards": 2,
        "format_version": SHARD_FORMAT_VERSION,
    }
    json.dumps(summary)


def test_index_errors_and_types(tmp_path):
    record(tmp_path, [make_obs(i) for i in range(2)])
    buf = RecordedBuffer.open(tmp_path)
    with pytest.raises(IndexError):
        buf[2]
    with pytest.raises(IndexError):
        buf[-3]
    with pytest.raises(TypeError):
        buf[0.5]
    assert_same_obs(buf[np.int64(1)], make_obs(1))


# Synthetic observations and calibration specs.

SMALL = {"cam": (32, 40)}


def test_synthetic_observations_are_deterministic_and_valid(tmp_path):
    first = synthetic_observations(6, seed=7, cameras=SMALL, state_dim=6)
    again = synthetic_observations(6, seed=7, cameras=SMALL, state_dim=6)
    other = synthetic_observations(6, seed=8, cameras=SMALL, state_dim=6)
    for a, b in zip(first, again, strict=True):
        assert_same_obs(a, b)
    assert not np.array_equal(first[0].images["cam"], other[0].images["cam"])
    assert_same_obs(synthetic_observations(3, seed=7, cameras=SMALL, state_dim=6)[2], first[2])

    assert [obs.stamp for obs in first] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    for obs in first:
        assert obs.instruction in TASKS
        assert obs.state.dtype == np.float32 and obs.state.shape == (6,)
        assert np.all(np.abs(obs.state) <= 1.5)
    # They are valid calibration observations.
    with RecordedBuffer.create(tmp_path, SMALL, 6, source="x", synthetic=True) as buf:
        for obs in first:
            buf.append(obs)
    assert RecordedBuffer.open(tmp_path).summary()["synthetic"] is True


def test_synthetic_images_are_smooth_not_noise():
    image = synthetic_observations(1, seed=0)[0].images["base_0_rgb"]
    assert image.shape == (224, 224, 3) and image.dtype == np.uint8
    pixels = image.astype(np.float64)
    neighbour_diff = np.abs(np.diff(pixels, axis=1)).mean()
    shuffled = np.random.default_rng(0).permutation(pixels.reshape(-1, 3))
    random_diff = np.abs(np.diff(shuffled, axis=0)).mean()
    assert neighbour_diff < 0.5 * random_diff
    assert pixels.std() > 10  # not flat either


def test_open_observations_synthetic():
    buf = open_observations("synthetic:5", seed=3, cameras=SMALL, state_dim=4)
    assert isinstance(buf, SyntheticBuffer)
    assert len(buf) == 5 and len(list(buf)) == 5
    assert_same_obs(buf[-1], synthetic_observations(5, 3, SMALL, 4)[4])
    assert buf.split(1) == ([0, 1, 2, 3], [4])
    summary = buf.summary()
    assert summary["synthetic"] is True
    assert summary["source"] == "synthetic:5 seed 3"
    assert summary["samples"] == 5 and summary["state_dim"] == 4
    assert summary["cameras"] == {"cam": [32, 40]}
    assert summary["instructions"] == len({obs.instruction for obs in buf})
    assert open_observations("synthetic:2").cameras == {"base_0_rgb": (224, 224)}


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("synthetic:", "give a sample count"),
        ("synthetic:0", "must be positive"),
        ("synthetic:abc", "'abc' is not a positive integer"),
        ("synthetic:-3", "not a positive integer"),
        ("synthetic:2.5", "not a positive integer"),
        ("synthetc:5", "no such calibration buffer directory"),
    ],
)
def test_open_observations_rejects_bad_specs(spec, match):
    with pytest.raises(BufferFormatError, match=match):
        open_observations(spec)


def test_open_observations_directory(tmp_path):
    record(tmp_path / "buf", [make_obs(i) for i in range(2)])
    buf = open_observations(str(tmp_path / "buf"))
    assert isinstance(buf, RecordedBuffer) and len(buf) == 2
    with pytest.raises(BufferFormatError, match="no such"):
        open_observations(str(tmp_path / "missing"))
