"""scripts/pair_episode_runs.py: runs of separate commands paired on their common episodes."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pair_episode_runs.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("pair_episode_runs_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(path: Path, rows: list[tuple]) -> Path:
    lines = []
    for label, task, init, success, steps in rows:
        ros = {"session_started": False, "executed_points": steps} if "@ros" in label else None
        lines.append(json.dumps({"policy": label, "task": task, "init": init, "seed": init,
                                 "success": success, "steps": steps, "wall_s": 2.0,
                                 "ros": ros}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_pairs_the_common_episodes_and_each_ros_run_with_its_own_direct_run(script, tmp_path):
    direct = write(tmp_path / "direct.jsonl", [("f", 0, i, i != 1, 100 + i) for i in range(4)]
                   + [("q", 0, i, True, 90) for i in range(4)])
    # The ROS run stopped after 3 episodes, and one of them crashed (not scored).
    ros = write(tmp_path / "ros.jsonl", [("f@ros-lockstep", 0, 0, True, 100),
                                         ("f@ros-lockstep", 0, 1, False, 101),
                                         ("f@ros-lockstep", 0, 2, None, 0)])
    assert script.main(["--out", str(tmp_path / "out"), str(direct), str(ros)]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["episodes_paired"] == [[0, 0], [0, 1]]
    assert summary["policies"]["q"]["total"]["episodes"] == 2
    entry = summary["ros"]["f@ros-lockstep"]
    assert entry["direct"] == "f" and entry["same_outcome_and_steps"] == 2
    assert "f@ros-lockstep" in (tmp_path / "out" / "table.md").read_text()


def test_bad_input_is_refused_by_name(script, tmp_path):
    good = write(tmp_path / "a.jsonl", [("f", 0, 0, True, 10)])
    with pytest.raises(SystemExit, match="no episodes of \\['g'\\]"):
        script.main(["--out", str(tmp_path / "o"), str(good), "--policies", "f,g"])
    with pytest.raises(SystemExit, match="does not exist"):
        script.main(["--out", str(tmp_path / "o"), str(tmp_path / "none.jsonl")])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"policy": "f"}\n')
    with pytest.raises(SystemExit, match="bad.jsonl:1 is not an episode result"):
        script.main(["--out", str(tmp_path / "o"), str(bad)])
