"""`quantvla bench e2e`: latency of one full action chunk."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from quantvla_ros.cli import bench_launches_cmd, bench_memory_cmd, bench_sass_cmd
from quantvla_ros.cli.options import add_option_args, options_of
from quantvla_ros.cli.output import print_json
from quantvla_ros.workflows.bench_e2e import bench_e2e


def register(sub) -> None:
    """Add the `bench` command with its `e2e` and `kernels` subcommands."""
    p = sub.add_parser("bench", help="benchmarks")
    kinds = p.add_subparsers(dest="kind", required=True)
    e2e = kinds.add_parser("e2e", help="end-to-end chunk latency")
    e2e.add_argument("--model", default="pi05-tiny")
    e2e.add_argument("--precision", default="fp32",
                     choices=["fp32", "bf16", "fp16", "w8a8", "w4a8", "w4a4"],
                     help="float dtype, or integer bits (random weights quantized in memory)")
    e2e.add_argument("--artifact", help="benchmark a quantized artifact (its bits are used)")
    e2e.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    e2e.add_argument("--runs", type=int, default=10)
    e2e.add_argument("--warmup", type=int, default=2)
    e2e.add_argument("--seed", type=int, default=0)
    add_option_args(e2e)
    e2e.add_argument("--json", action="store_true")
    e2e.set_defaults(handler=run_e2e)
    k = kinds.add_parser("kernels", help="integer GEMMs vs bf16 matmul and torch._int_mm")
    k.add_argument("--check", action="store_true",
                   help="verify every kernel against the integer reference first (on a CPU "
                        "only the checks run, under Triton's interpreter)")
    k.add_argument("--no-timing", action="store_true", help="checks only, also on a GPU")
    k.add_argument("--shapes", help="comma-separated MxKxN, e.g. 50x1024x4096,968x2048x16384 "
                                    "(default: the model's shapes, or tiny ones on a CPU)")
    k.add_argument("--ops", help="comma-separated kernels, e.g. bf16,w4a8,w4a8_nosplit "
                                 "(default: all)")
    k.add_argument("--out", help="folder for kernels.md (and kernels.png with --plot)")
    k.add_argument("--plot", action="store_true", help="also plot speed-ups (needs matplotlib)")
    k.add_argument("--json", action="store_true",
                   help="one JSON line per (shape, kernel), printed as soon as it is measured")
    k.set_defaults(handler=run_kernels)
    bench_sass_cmd.register(kinds)
    bench_launches_cmd.register(kinds)
    bench_memory_cmd.register(kinds)


def run_e2e(args) -> int:
    """Time full action chunks; print a summary (or JSON) and return 0."""
    if args.runs < 1:
        raise ValueError("--runs must be at least 1")
    r = bench_e2e(args.model, args.precision, args.device, args.runs, args.warmup, args.seed,
                  artifact=args.artifact, options=options_of(args))
    if args.json:
        print_json(r)
        return 0
    lat = r["latency_ms"]
    print(f"{r['model']} {r['precision']} on {r['device_name']} ({r['weights']})")
    print(f"  chunk {r['chunk_shape']}: median {lat['median']:.1f} ms, p90 {lat['p90']:.1f} ms"
          f" over {r['runs']} runs after {r['warmup']} warm-up")
    print(f"  prefix {r['prefix_ms']:.1f} ms ({r['prefix_tokens']} tokens), denoise "
          f"{r['denoise_ms']:.1f} ms ({r['num_steps']} steps)")
    mem = r.get("peak_gpu_mem_mb", r.get("peak_rss_mb"))
    print(f"  peak {'GPU memory' if 'peak_gpu_mem_mb' in r else 'RSS'}: {mem:.0f} MiB, "
          f"weights {r['weight_bytes'] / 2**20:.1f} MiB")
    return 0


def _shapes(text: str | None) -> list[tuple[int, int, int]] | None:
    if not text:
        return None
    try:
        shapes = [tuple(int(v) for v in s.lower().split("x")) for s in text.split(",")]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 3 for s in shapes):
        raise ValueError(f"--shapes wants comma-separated MxKxN, got {text!r}")
    return shapes


def run_kernels(args) -> int:
    """Check and / or time the integer GEMM kernels; return 1 if any check failed.

    Rows stream out as JSON lines (``--json``) while they are measured; the markdown table
    and the optional plot come after. Without a CUDA GPU only `--check` runs, under
    Triton's CPU interpreter.
    """
    if not torch.cuda.is_available():
        if not args.check:
            raise ValueError("no CUDA GPU: nothing to time. Use --check to verify the kernels "
                             "under Triton's CPU interpreter")
        os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are compiled
    from quantvla_ros.kernels.bench import OPS, format_markdown, iter_kernel_bench

    ops = OPS
    if args.ops:
        names = set(args.ops.split(","))
        ops = tuple(op for op in OPS if op.name in names)
        if unknown := names - {op.name for op in ops}:
            raise ValueError(f"--ops: unknown {sorted(unknown)}; have {[o.name for o in OPS]}")
    rows = []
    for row in iter_kernel_bench(_shapes(args.shapes), check=args.check, ops=ops,
                                 timed=not args.no_timing):
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
    table = format_markdown(rows)
    if not args.json:
        print(table)
    if args.out:
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "kernels.md").write_text(table + "\n")
        if args.plot:
            _plot_speedups(rows, folder / "kernels.png")
    return 1 if any(r.get("check") not in (None, "ok") for r in rows) else 0


def _plot_speedups(rows, path: Path) -> None:
    timed = [r for r in rows if r.get("speedup_vs_bf16")]
    try:
        import matplotlib
    except ImportError:
        print("no matplotlib: skipping the plot", file=sys.stderr)
        return
    if not timed:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.5))
    labels = [f"{r['kernel']} {r['M']}x{r['K']}x{r['N']}" for r in timed]
    ax.bar(range(len(timed)), [r["speedup_vs_bf16"] for r in timed])
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xticks(range(len(timed)), labels, rotation=90, fontsize=6)
    ax.set_ylabel("speed-up over bf16 matmul")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
