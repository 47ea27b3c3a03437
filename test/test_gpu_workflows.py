"""The CPU-runnable parts of the GPU run's Python steps (workflows/pi_gpu_smoke, gpu_e2e)."""

import json

import torch

from quantvla_ros.models.pi.config import get_config
from quantvla_ros.workflows import gpu_e2e
from quantvla_ros.workflows import pi_gpu_smoke as gpu_smoke


def test_attention_shapes_are_the_models_prefix_and_denoise_calls():
    shapes = gpu_smoke.attention_shapes(get_config("pi05"))
    # 8 query heads over 1 KV head of 256; 968 prefix tokens; 50 action queries.
    assert shapes["prefix"] == ((1, 8, 968, 256), (1, 1, 968, 256), (1, 1, 968, 968))
    assert shapes["denoise"] == ((1, 8, 50, 256), (1, 1, 1018, 256), (1, 1, 50, 1018))


def test_sdpa_probe_reports_every_backend_for_both_forms():
    from torch.nn.attention import SDPBackend

    shapes = ((1, 8, 16, 32), (1, 1, 24, 32), (1, 1, 16, 24))
    gqa = gpu_smoke.attention_inputs(shapes, "cpu", torch.float32, folded=False)
    folded = gpu_smoke.attention_inputs(shapes, "cpu", torch.float32, folded=True)
    assert folded[0].shape == (1, 1, 16 * 8, 32) and folded[3].shape == (1, 1, 128, 24)
    assert folded[3].stride(2) == 32  # rows padded to 16 elements, as the model builds it
    for inputs in (gqa, folded):
        got = gpu_smoke.probe_sdpa(*inputs)
        assert set(got) == {*gpu_smoke.SDPA_BACKENDS, "chosen"}
        assert got["MATH"] == "ok" and got["chosen"] in SDPBackend.__members__
        assert got["CUDNN_ATTENTION"].startswith("no: ")  # no cuDNN attention on a CPU


def test_environment_line_is_json_with_versions_and_probes(capsys):
    assert gpu_smoke.main(["env", "--model", "pi05-micro"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["torch"] == torch.__version__ and row["gpu"] is None
    assert {k for k in row if k.startswith("sdpa_")} == {
        f"sdpa_{call}_{form}" for call in ("prefix", "denoise") for form in ("gqa", "folded")}
    assert all(row[f"sdpa_{c}_gqa"]["MATH"] == "ok" for c in ("prefix", "denoise"))


def test_gemm_smoke_checks_w8a8_and_w4a8():
    rows = gpu_smoke.gemm_smoke()
    assert [(r["step"], r["kernel"], r["check"]) for r in rows] == \
        [("gemm", "w8a8", "ok"), ("gemm", "w4a8", "ok")]
    assert all(r["ms"] is None for r in rows)


def test_chunk_smoke_compares_triton_with_the_reference_on_the_same_noise():
    # On CPU the "fast" run is Triton under the interpreter (conftest sets it).
    row = gpu_smoke.chunk_smoke("w8a8", "pi05-micro", fast_backend="triton")
    fast, ref = row["last_kernels"]
    assert fast.startswith("triton.") and ref.startswith("reference."), row
    assert row["finite"] and row["check"] == "ok"
    # Same weights and noise: only the float order differs (float32 on CPU).
    assert row["rel_err"] < 1e-4


def test_profile_summary_counts_ops_and_sorts_by_time():
    from torch.profiler import ProfilerActivity, profile

    a = torch.randn(256, 256)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            a @ a
        a + 1
    got = gpu_e2e.summarize_profile(prof.key_averages(), on_gpu=False, top=2)
    counts = {r["name"]: r["count"] for r in got["top"]}
    assert counts.get("aten::mm") == 3 and len(got["top"]) == 2
    assert got["top"][0]["us"] >= got["top"][1]["us"]
    assert got["launches"] >= 4 and got["total_us"] >= sum(r["us"] for r in got["top"])


def test_e2e_step_prints_one_line_even_on_error(capsys):
    assert gpu_e2e.main(["--model", "pi05-nope", "--device", "cpu"]) == 1
    assert gpu_e2e.main(["--model", "pi05", "--device", "cpu"]) == 1  # refused, not built
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["precision"] for r in rows] == ["bf16", "bf16"]
    assert rows[0]["error"].startswith("KeyError")
    assert rows[1]["error"].startswith("ValueError: 'pi05' is full size")


def test_e2e_step_times_and_profiles_a_micro_chunk(capsys):
    assert gpu_e2e.main(["--model", "pi05-micro", "--precision", "fp32", "--device", "cpu",
                         "--runs", "1", "--warmup", "0", "--profile"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["actions_finite"] and row["latency_ms"]["median"] > 0
    assert row["profile"]["launches"] > 10 and row["profile"]["top"]


def test_report_renders_partial_results(tmp_path):
    from quantvla_ros.workflows import gpu_report

    env = gpu_smoke.environment("pi05-micro")
    (tmp_path / "env.txt").write_text("name, driver_version\nNVIDIA H200, 570\n"
                                      + json.dumps(env) + "\n")
    kernel = {"M": 50, "K": 1024, "N": 4096, "ms": None}
    (tmp_path / "kernels.jsonl").write_text("\n".join(json.dumps(dict(kernel, **r)) for r in [
        {"kernel": "w8a8", "check": "ok"}, {"kernel": "w4a8", "check": "FAIL (rel err 1e-2)"},
        {"kernel": "w4a8", "check": None, "ms": 0.01, "speedup_vs_bf16": 1.5},
    ]) + "\n")
    bf16 = {"precision": "bf16", "latency_ms": {"median": 30.0, "p90": 31.0}, "prefix_ms": 10.0,
            "denoise_ms": 20.0, "peak_gpu_mem_mb": 8000.0, "weight_bytes": 2**30,
            "actions_finite": True,
            "profile": {"launches": 11000, "copies": 3, "total_us": 25000.0,
                        "top": [{"name": "ampere_bf16_gemm", "count": 400, "us": 9000.0}]}}
    (tmp_path / "e2e.jsonl").write_text(json.dumps(bf16) + "\n" + json.dumps(
        {"precision": "w8a8", "error": "RuntimeError: capture failed"}) + '\n{"precision": "w4')
    (tmp_path / "run.log").write_text("== e2e w4a4: TIMEOUT after 75s\n")
    text = gpu_report.report(tmp_path)
    assert f"torch={torch.__version__}" in text and "| prefix_folded | " in text
    assert "2 of 3 checks ok" not in text and "1 of 2 checks ok" in text
    assert "- w4a8 50x1024x4096: FAIL (rel err 1e-2)" in text
    assert "| 50 | 1024 | 4096 | w4a8 | 0.01 |" in text
    assert "| bf16 | 30.00 | 31.00 | 10.00 | 20.00 | 8000 | 1024 | True |" in text
    assert "| w8a8 | failed | RuntimeError: capture failed |" in text
    assert "| w4a8 | missing |" in text  # the line cut by a timeout is skipped
    assert "| w4a4 | timeout |" in text
    assert "11000 kernels" in text and "| ampere_bf16_gemm | 400 | 9000.00 |" in text


def test_gpu_profile_summary_keeps_device_events_and_sets_copies_apart():
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def ev(key, count, us, dev=DeviceType.CUDA):
        return SimpleNamespace(key=key, count=count, device_time_total=us,
                               self_cpu_time_total=us, device_type=dev)

    got = gpu_e2e.summarize_profile([
        ev("w4a8_gemm_kernel", 126, 900.0), ev("Memcpy HtoD (Pageable -> Device)", 2, 5.0),
        ev("triton_act_quant", 252, 400.0), ev("cudaGraphLaunch", 2, 50.0, DeviceType.CPU),
        ev("Memset (Device)", 1, 1.0)], on_gpu=True)
    assert (got["launches"], got["copies"], got["total_us"]) == (378, 3, 1300.0)
    assert [t["name"] for t in got["top"]] == ["w4a8_gemm_kernel", "triton_act_quant"]
