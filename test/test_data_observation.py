"""Observation: one validation for every producer; atomic file and folder writes."""

import os
import threading

import numpy as np
import pytest

from quantvla_ros.data import atomic
from quantvla_ros.data.observation import MAX_INSTRUCTION_CHARS, Observation, ObservationError


def rgb(h=8, w=10):
    return np.zeros((h, w, 3), np.uint8)


def test_observation_normalizes_state_and_freezes_images():
    obs = Observation({"cam": rgb()}, [0.5, -1.0], "pick", 3)
    assert obs.state.dtype == np.float32 and obs.state.tolist() == [0.5, -1.0]
    assert obs.stamp == 3.0 and isinstance(obs.stamp, float)
    assert obs.image_sizes == {"cam": (8, 10)}
    with pytest.raises(TypeError):
        obs.images["other"] = rgb()  # the camera map is read-only
    with pytest.raises(AttributeError):
        obs.state = np.zeros(2, np.float32)  # frozen


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"images": {}}, "no camera image"),
        ({"images": [rgb()]}, "images must be a dict"),
        ({"images": {"cam": rgb().astype(np.float32)}}, r"'cam'.*float32.*uint8 HxWx3"),
        ({"images": {"cam": np.zeros((8, 10), np.uint8)}}, r"'cam'.*uint8 HxWx3"),
        ({"images": {"cam": np.zeros((1, 10, 3), np.uint8)}}, "too small"),
        ({"images": {"": rgb()}}, "non-empty strings"),
        ({"state": np.zeros(3, np.int64)}, "state: dtype int64"),
        ({"state": np.zeros((2, 2), np.float32)}, "expected a non-empty vector"),
        ({"state": np.array([0.0, np.inf])}, r"state: non-finite.*NaN.*\[1\]"),
        ({"instruction": " \n"}, "instruction must be a non-empty str"),
        ({"instruction": "x" * (MAX_INSTRUCTION_CHARS + 1)}, "characters"),
        ({"instruction": "bad \ud800"}, "UTF-8"),
        ({"stamp": float("nan")}, "timestamp must be finite"),
        ({"stamp": True}, "timestamp must be a number"),
    ],
)
def test_observation_rejects_bad_fields(kwargs, match):
    fields = {"images": {"cam": rgb()}, "state": np.zeros(3, np.float32),
              "instruction": "pick", "stamp": 1.0, **kwargs}
    with pytest.raises(ObservationError, match=match):
        Observation(**fields)


def test_from_mapping_checks_keys_and_copies_on_request():
    image = rgb()
    d = {"images": {"cam": image}, "state": np.zeros(2, np.float32), "instruction": "go"}
    shared = Observation.from_mapping(d)
    owned = Observation.from_mapping(d, copy=True)
    image[:] = 7
    assert shared.images["cam"][0, 0, 0] == 7 and owned.images["cam"][0, 0, 0] == 0
    assert shared.stamp is None and Observation.from_mapping(shared) is shared
    with pytest.raises(ObservationError, match=r"missing \['state'\], unexpected \['extra'\]"):
        Observation.from_mapping({"images": {"cam": image}, "instruction": "go", "extra": 1})
    with pytest.raises(ObservationError, match="dict or an Observation"):
        Observation.from_mapping([1, 2])
    assert Observation.from_mapping(owned.to_dict()).to_dict()["instruction"] == "go"


def test_write_file_atomic_replaces_or_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic.write_file_atomic(target, b"old")
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk")))
    with pytest.raises(OSError, match="disk"):
        atomic.write_file_atomic(target, b"new")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_folder_atomic_failure_leaves_target_untouched(tmp_path):
    target = tmp_path / "art"
    target.mkdir()
    (target / "a").write_text("old")
    with pytest.raises(RuntimeError), atomic.folder_atomic(target) as tmp:
        (tmp / "a").write_text("new")
        raise RuntimeError("interrupted")
    assert (target / "a").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no scratch left


def test_folder_swap_never_leaves_a_moment_without_the_folder(tmp_path):
    """A reader polling the path during many swaps always finds a complete folder."""
    target = tmp_path / "art"
    with atomic.folder_atomic(target) as tmp:
        (tmp / "version").write_text("0")
    seen, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            try:
                seen.append((target / "version").read_text())
            except FileNotFoundError:
                seen.append(None)

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for i in range(1, 200):
            with atomic.folder_atomic(target) as tmp:
                (tmp / "version").write_text(str(i))
    finally:
        stop.set()
        reader.join()
    assert (target / "version").read_text() == "199"
    assert None not in seen and len(seen) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_folder_swap_falls_back_without_exchange(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    target = tmp_path / "art"
    for text in ("one", "two"):
        with atomic.folder_atomic(target) as tmp:
            (tmp / "v").write_text(text)
    assert (target / "v").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
