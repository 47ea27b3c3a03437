"""The `quantvla` command: models, bench e2e, demo, and its error handling."""

import json

import pytest

from quantvla_ros.cli.main import main


def run_json(capsys, *argv):
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_models_json(capsys):
    rows = {r["name"]: r for r in run_json(capsys, "models", "--json")}
    assert set(rows) == {"pi05", "pi0", "pi05-tiny", "pi0-tiny", "pi05-micro", "pi05-libero",
                         "groot-n15", "groot-n15-tiny", "smolvla", "smolvla-tiny"}
    assert rows["groot-n15"]["family"] == "groot" and rows["pi05"]["family"] == "pi"
    assert rows["pi05-libero"]["params"] == 4_203_015  # the committed LIBERO checkpoint
    assert 3.0e9 < rows["pi05"]["params"] < 3.6e9
    assert rows["pi05"]["bf16_bytes"] == 2 * rows["pi05"]["params"]


def test_bench_e2e_json(capsys):
    r = run_json(capsys, "bench", "e2e", "--model", "pi05-tiny", "--precision", "fp32",
                 "--device", "cpu", "--runs", "2", "--warmup", "1", "--json")
    assert r["chunk_shape"] == [50, 32]
    assert 0 < r["latency_ms"]["median"] <= r["latency_ms"]["p90"] + 1e-9
    assert r["prefix_ms"] > 0 and r["denoise_ms"] > 0 and r["peak_rss_mb"] > 0


def test_unknown_model_is_a_clear_error(capsys):
    assert main(["bench", "e2e", "--model", "pi05-tiy"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'pi05-tiy'" in err and "pi05-tiny" in err


def test_full_size_on_cpu_refused(capsys):
    assert main(["bench", "e2e", "--model", "pi05", "--device", "cpu"]) == 2
    assert "full size" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_json_quantized_chain(capsys, tmp_path):
    """`make demo`'s job: bag -> buffer -> w4a8 artifact -> node process -> trajectories."""
    r = run_json(capsys, "demo", "--json", "--workdir", str(tmp_path / "demo"))
    assert r["quantized"] and r["trajectories"] >= 1
    assert all(t["success"] for t in r["lifecycle"]), r["lifecycle"]
    assert set(r["latency_ms"]) >= {"p50", "p90", "max"}
    # chunks from the quantized node vs the float policy on the same observations and noise
    assert 0 < r["action_rel_error"] < 0.1
    assert (tmp_path / "demo" / "artifact" / "manifest.yaml").is_file()
