"""The end-to-end demo with the float policy: bag -> buffer -> node process -> trajectories."""

import pytest

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed")
pytest.importorskip("rosbags", reason="the rosbags library is not installed")

from quantvla_ros.demo.run import run_demo  # noqa: E402


@pytest.mark.slow
def test_demo_float_policy_reproduces_its_chunks(tmp_path):
    r = run_demo(tmp_path / "demo", storage="mcap", seconds=2.0)
    assert [t["transition"] for t in r["lifecycle"]] == [
        "configure", "activate", "deactivate", "shutdown", "process exit"]
    assert all(t["success"] for t in r["lifecycle"]), r["lifecycle"]
    assert r["trajectories"] >= 1
    assert r["points_per_trajectory"] == [5]
    assert r["buffer"]["samples"] >= 5
    assert r["latency_ms"]["p50"] > 0 and "receipt" in r["latency_ms"]["source"]
    assert set(r["node_latency_ms"]) == {"p50", "p90", "max"}
    # The node's noise is a function of (seed, stamp): the float policy in this process
    # recomputes every published chunk.
    assert r["action_rel_error"] < 1e-4 and r["action_rel_error_max"] < 1e-4
    assert r["elapsed_s"] < 240


@pytest.mark.slow
def test_demo_quantized_groot_follows_the_float_policy(tmp_path):
    from quantvla_ros.workflows.quantize import quantize_hook

    hook = quantize_hook("groot-n15-tiny", "w8a8", seed=0, log=lambda *_: None)
    r = run_demo(tmp_path / "demo", quantize_fn=hook, model="groot-n15-tiny", seconds=2.0,
                 actions_per_chunk=16)
    assert all(t["success"] for t in r["lifecycle"]), r["lifecycle"]
    assert r["trajectories"] >= 1
    assert r["points_per_trajectory"] == [16]
    # Random weights: W8A8 error relative to the displacement; bound with wide margin.
    assert 0.0 <= r["action_rel_error"] < 1.0 and r["action_rel_error_max"] < 1.0


@pytest.mark.slow
def test_demo_quantized_smolvla_follows_the_float_policy(tmp_path):
    """`quantvla demo --model smolvla-tiny`: the third family through the same node."""
    from quantvla_ros.workflows.quantize import quantize_hook

    hook = quantize_hook("smolvla-tiny", "w8a8", seed=0, log=lambda *_: None)
    r = run_demo(tmp_path / "demo", quantize_fn=hook, model="smolvla-tiny", seconds=2.0,
                 actions_per_chunk=10)
    assert all(t["success"] for t in r["lifecycle"]), r["lifecycle"]
    assert r["trajectories"] >= 1 and r["points_per_trajectory"] == [10]
    # Random weights: W8A8 error relative to the displacement; bound with wide margin.
    assert 0.0 <= r["action_rel_error"] < 1.0 and r["action_rel_error_max"] < 1.0
