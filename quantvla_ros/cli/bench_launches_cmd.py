"""`quantvla bench launches`: GPU kernel launches per prefix and per denoising step.

Counted on the meta device (no GPU, no weights): see workflows/launch_count.py.
"""

from __future__ import annotations

from quantvla_ros.cli.output import print_json, print_table


def register(kinds) -> None:
    """Add `launches` to the `bench` subcommands (``kinds`` is their subparsers object)."""
    p = kinds.add_parser("launches", help="kernel launches per prefix and denoise step "
                                          "(meta device, no GPU needed)")
    p.add_argument("--model", default="pi05")
    p.add_argument("--precision", default="bf16,w8a8,w4a8,w4a4",
                   help="comma-separated: bf16, w8a8, w4a8, w4a4 (default: all)")
    p.add_argument("--layout", default="quantvla", help="quantization layout preset")
    p.add_argument("--verbose", action="store_true", help="add the op histograms")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run_launches)


def run_launches(args) -> int:
    """Count and print; one row per precision unless --json."""
    from quantvla_ros.workflows.launch_count import PRECISIONS, count_launches

    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown:
        raise ValueError(f"unknown precision {', '.join(unknown)}; expected {PRECISIONS}")
    result = count_launches(args.model, precisions, args.layout, verbose=args.verbose)
    if args.json:
        print_json(result)
        return 0
    def per_layer(part):
        return " + ".join(f"{n}/{k}" for k, n in part["per_layer"].items() if n)

    rows = [{"precision": p, "step": r["denoise_step"]["total"],
             "step fixed + per layer": f"{r['denoise_step']['fixed']} + "
                                       f"{per_layer(r['denoise_step'])}",
             "prefix": r["prefix"]["total"], "chunk": r["chunk_total"],
             "h2d": r["h2d_copies_after_warmup"]}
            for p, r in result["precisions"].items()]
    depths = ", ".join(f"{n} {k}" for k, n in result["depths"].items())
    print(f"{result['model']}: {depths}; {result['num_steps']} steps ({result['assumes']})")
    print_table(rows, list(rows[0]))
    return 0
