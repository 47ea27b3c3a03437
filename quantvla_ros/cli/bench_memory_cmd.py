"""`quantvla bench memory`: peak memory of quantize, load and one inference."""

from __future__ import annotations

from quantvla_ros.cli.output import human_bytes, print_json, print_table
from quantvla_ros.workflows.bench_memory import PHASES, bench_memory


def register(kinds) -> None:
    """Add the `bench memory` subcommand."""
    m = kinds.add_parser("memory", help="peak resident (and CUDA) memory of quantize, load "
                                        "and one inference, each in a fresh process")
    m.add_argument("--model", default="pi05-tiny",
                   help="a named config or checkpoint folder to quantize")
    m.add_argument("--artifact", required=True,
                   help="artifact folder: written by the quantize phase, read by load / infer")
    m.add_argument("--bits", default="w4a8")
    m.add_argument("--preset", default="quantvla")
    m.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    m.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    m.add_argument("--calib", default="synthetic:3")
    m.add_argument("--balance", action="store_true", help="calibrate ATM / OHB when quantizing")
    m.add_argument("--phases", default=",".join(PHASES),
                   help=f"comma-separated, in order: {', '.join(PHASES)}")
    m.add_argument("--json", action="store_true")
    m.set_defaults(handler=run)


def run(args) -> int:
    """Measure and print one row per phase (or JSON)."""
    r = bench_memory(args.model, args.artifact, args.bits, args.preset, args.precision,
                     args.device, args.calib, tuple(args.phases.split(",")), args.balance)
    if args.json:
        print_json(r)
        return 0
    rows = [{"phase": x["phase"], "peak_rss": human_bytes(x["peak_rss"]) if "peak_rss" in x
             else x["error"], "peak_cuda": human_bytes(x["peak_cuda"]) if x.get("peak_cuda")
             else "-", "expected": human_bytes(x["need"]),
             "seconds": f"{x['seconds']:.1f}" if "seconds" in x else "-"} for x in r["rows"]]
    print_table(rows, ["phase", "peak_rss", "peak_cuda", "expected", "seconds"])
    if "artifact_bytes" in r:
        print(f"\n{args.model} {args.preset} {args.bits} {args.precision}: artifact "
              f"{human_bytes(r['artifact_bytes'])} of tensors, "
              f"{human_bytes(r['loaded_bytes'])} loaded at {args.precision}")
    return 0 if all("error" not in x for x in r["rows"]) else 1
