"""`quantvla bench e2e`: latency of one full action chunk."""

from __future__ import annotations

from ..runtime.bench import bench_e2e
from .output import print_json


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks")
    kinds = p.add_subparsers(dest="kind", required=True)
    e2e = kinds.add_parser("e2e", help="end-to-end chunk latency")
    e2e.add_argument("--model", default="pi05-tiny")
    e2e.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    e2e.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    e2e.add_argument("--runs", type=int, default=10)
    e2e.add_argument("--warmup", type=int, default=2)
    e2e.add_argument("--seed", type=int, default=0)
    e2e.add_argument("--json", action="store_true")
    e2e.set_defaults(handler=run_e2e)


def run_e2e(args) -> int:
    if args.runs < 1:
        raise ValueError("--runs must be at least 1")
    r = bench_e2e(args.model, args.precision, args.device, args.runs, args.warmup, args.seed)
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
    print(f"  peak {'GPU memory' if 'peak_gpu_mem_mb' in r else 'RSS'}: {mem:.0f} MiB")
    return 0
