"""The streamed kernel benchmark on CPU: rows one at a time, per-row errors, the CLI lines.

Kernels run under Triton's interpreter (set by conftest.py) on tiny GPU-legal shapes; the
GPU timer is replaced by a fake one to check the columns derived from the timings.
"""

import json

import pytest
import torch

from quantvla_ros.cli.main import main
from quantvla_ros.kernels import bench_timing
from quantvla_ros.kernels.bench import OPS, BenchOp, iter_kernel_bench

SHAPE = (16, 256, 48)
BY_NAME = {op.name: op for op in OPS}


def test_rows_stream_and_a_raising_kernel_becomes_one_error_row():
    ran = []

    def boom(a, xs, w, out_dtype):
        ran.append("boom")
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    ops = [BY_NAME["w8a8"], BenchOp("boom", 8, boom, lambda a, xs, w: None), BY_NAME["w4a8"]]
    rows = iter_kernel_bench([SHAPE], check=True, device="cpu", ops=ops)
    first = next(rows)
    assert (first["kernel"], first["check"], ran) == ("w8a8", "ok", [])  # nothing run ahead
    rest = list(rows)
    assert [r["kernel"] for r in rest] == ["boom", "w4a8"]
    assert rest[0]["check"] == "ERROR RuntimeError: CUDA error: an illegal memory access " \
                               "was encountered"
    assert rest[1]["check"] == "ok" and all(r["ms"] is None for r in [first, *rest])


def test_a_failing_check_is_reported_not_raised():
    wrong = BenchOp("w8a8_off", 8, BY_NAME["w8a8"].gemm,
                    lambda a, xs, w: BY_NAME["w8a8"].reference(a, xs, w) * 1.01)
    (row,) = iter_kernel_bench([SHAPE], device="cpu", ops=[wrong])
    assert row["check"].startswith("FAIL (rel err 9.9")  # 1 - 1 / 1.01


def test_speedups_come_from_the_rotating_timing_of_bf16():
    times = {"bf16": {"ms": 2.0, "ms_warm": 1.0},
             "w8a8": {"ms": 0.5, "ms_warm": 0.25, "ms_act_quant": 1.0, "copies": 8}}
    bf16 = BenchOp("bf16", None, lambda x, _, w, dt: (x @ w["w"].t()).to(dt),
                   lambda x, _, w: x.float() @ w["w"].float().t())
    rows = list(iter_kernel_bench([SHAPE], device="cpu", ops=[bf16, BY_NAME["w8a8"]],
                                  timer=lambda op, acts, wts: times[op.name]))
    b, w8 = rows
    m, k, n = SHAPE
    assert b["speedup_vs_bf16"] == 1.0 and b["speedup_with_act_quant"] is None
    assert (w8["speedup_vs_bf16"], w8["speedup_with_act_quant"]) == (4.0, 2.0)
    assert w8["tops"] == pytest.approx(2 * m * k * n / 0.5 / 1e9)
    assert (w8["ms_warm"], w8["weight_copies"], w8["check"]) == (0.25, 8, "ok")


def test_cli_prints_one_json_line_per_row(capsys):
    assert main(["bench", "kernels", "--check", "--json", "--shapes", "16x256x48"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["kernel"] for r in rows] == ["w8a8", "w4a8", "w4a4", "w4a8_gate_up", "w4a8_pc",
                                           "w4a8_nosplit", "act_quant8"]
    assert all((r["M"], r["K"], r["N"], r["check"]) == (16, 256, 48, "ok") for r in rows)
    assert main(["bench", "kernels", "--check", "--shapes", "16x256"]) == 2
    assert main(["bench", "kernels", "--check", "--ops", "w4a8,w5a8"]) == 2
    assert "--ops: unknown ['w5a8']" in capsys.readouterr().err


def test_first_gpu_run_rows_check_exactly_with_a_k_tail_and_n_tail(capsys):
    # K = 272 = 16 x 17 (like SigLIP's 4304): no whole 128-block, so the W4A8 rows are per
    # channel and take the masked-K path; N = 48 is a tail of the 64-row tile.
    ops = "w4a8,w4a8_gate_up,w4a8_pc,w4a8_nosplit,fp8_rowwise"
    assert main(["bench", "kernels", "--check", "--json", "--shapes", "20x272x48,16x256x96",
                 "--ops", ops]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # fp8 has no exact reference, so it only runs (timed) on a GPU.
    assert [r["kernel"] for r in rows] == ops.split(",")[:4] * 2
    assert all(r["check"] == "ok" for r in rows), rows


def test_weight_copies_exceed_the_rotation_budget():
    def wts(n, k):
        return {"w": torch.zeros(n, k, dtype=torch.bfloat16),
                "w8": torch.zeros(n, k, dtype=torch.int8),
                "w4": torch.zeros(n, k // 2, dtype=torch.uint8), "gs": 128}

    assert bench_timing.copies_needed(wts(4096, 1024)) == 60  # 2 MiB of int4: 60 > 120 MiB
    assert bench_timing.copies_needed(wts(16384, 2048)) == 8
    assert bench_timing.copies_needed(wts(64, 256)) == bench_timing.MAX_COPIES
    assert bench_timing.copies_needed(wts(2**15, 2**13)) == 2
    sets = bench_timing.weight_copies(wts(8, 32), 3)
    assert len(sets) == 3 and sets[2]["gs"] == 128
    assert len({s["w8"].data_ptr() for s in sets}) == 3
