"""End-to-end step of scripts/bench_gpu.sh: one precision, one JSON line, optional profile.

``python -m quantvla_ros.workflows.gpu_e2e --model pi05 --precision w4a8 --profile`` builds
the policy once, times chunks as ``quantvla bench e2e`` does (peak memory included), checks
the actions are finite and, with ``--profile``, records one chunk (two CUDA-graph replays)
with torch.profiler: the top kernels by GPU time and how many kernels one chunk launches.
Failures still print one line (``"error"``), so the results file has a row per precision.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

TOP_KERNELS = 15


def summarize_profile(averages, on_gpu: bool, top: int = TOP_KERNELS) -> dict:
    """Top ``top`` entries by self time and the launch count from ``prof.key_averages()``.

    On a GPU only device events count (kernels; Memcpy / Memset listed apart), on CPU the
    CPU ops (what the tests can profile).
    """
    from torch.autograd import DeviceType

    rows, copies = [], 0
    for e in averages:
        if on_gpu and e.device_type != DeviceType.CUDA:
            continue
        # A kernel has no children: its device time is its own (self_* needs use_device).
        us = e.device_time_total if on_gpu else e.self_cpu_time_total
        if e.key.startswith(("Memcpy", "Memset")):
            copies += e.count
            continue
        rows.append({"name": e.key[:160], "count": e.count, "us": round(us, 1)})
    rows.sort(key=lambda r: -r["us"])
    total = sum(r["us"] for r in rows)
    return {"launches": sum(r["count"] for r in rows), "copies": copies,
            "total_us": round(total, 1), "top": rows[:top]}


def profile_chunk(policy, obs, top: int = TOP_KERNELS) -> dict:
    """Profile one chunk after a warm chunk (on CUDA: the two graph replays)."""
    from torch.profiler import ProfilerActivity, profile

    on_gpu = policy.device.type == "cuda"
    policy.infer(obs)  # captured and warm before recording
    activity = ProfilerActivity.CUDA if on_gpu else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        policy.infer(obs)
        if on_gpu:
            torch.cuda.synchronize()
    return summarize_profile(prof.key_averages(), on_gpu, top)


def run(model: str, precision: str, device: str, runs: int, warmup: int, seed: int = 0,
        profile: bool = False) -> dict:
    """Build, time and (optionally) profile one policy; the result row."""
    from quantvla_ros.workflows.bench_e2e import (
        bench_observation,
        build_bench_policy,
        check_bench_request,
        measure_policy,
    )

    check_bench_request(model, device)
    policy, model, precision = build_bench_policy(model, precision, device, seed)
    row = measure_policy(policy, model, precision, device, runs, warmup, seed)
    obs = bench_observation(policy, seed)
    row["actions_finite"] = bool(torch.isfinite(torch.as_tensor(policy.infer(obs).actions)).all())
    if profile:
        row["profile"] = profile_chunk(policy, obs)
    return row


def main(argv: list[str] | None = None) -> int:
    """Print one JSON line for one precision; return 1 on an error or non-finite actions."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pi05")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    try:
        row = run(args.model, args.precision, args.device, args.runs, args.warmup,
                  profile=args.profile)
    except Exception as exc:  # one line either way: the table shows what failed
        row = {"model": args.model, "precision": args.precision,
               "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    print(json.dumps(row), flush=True)
    return 0 if row.get("actions_finite") else 1


if __name__ == "__main__":
    sys.exit(main())
