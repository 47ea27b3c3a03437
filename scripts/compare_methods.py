"""The methods side by side at equal bytes: quantize each (method, budget), report, compare.

quantvla at W4A8 and W8A8 (its own bytes), qvla and daptq at each budget (a fraction of the
layout linears' bf16 bytes); every artifact is scored on the same held-out frames. Writes
OUT/results.json, OUT/table.md and OUT/error_vs_bytes.png; rerunning reuses every finished
artifact and report (quantvla_ros/workflows/compare_methods.py).

  PYTHONPATH=. .venv/bin/python scripts/compare_methods.py \
      --checkpoint checkpoints/pi05-libero-object --calib data/libero_object_s1_calib \
      --max-samples 32 --budgets 0.30,0.35,0.45 --out reports/methods
"""

from __future__ import annotations

import argparse
import shlex
import sys

from quantvla_ros.workflows.compare_methods import (
    CompareRequest,
    parse_budgets,
    parse_method_options,
    parse_methods,
    run_comparison,
)
from quantvla_ros.workflows.compare_render import to_markdown, write_outputs


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint folder")
    src.add_argument("--model", help="a named config (random weights from --seed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calib", required=True, help="buffer folder or synthetic:N")
    p.add_argument("--budgets", default="0.30,0.35,0.45",
                   help="fractions of the layout's bf16 bytes for qvla / daptq")
    p.add_argument("--methods", default="quantvla,qvla,daptq")
    p.add_argument("--method-option", action="append", default=[],
                   metavar="METHOD:KEY=VALUE", help="passed to that method (repeatable)")
    p.add_argument("--max-samples", type=int, help="calibrate on the first N frames")
    p.add_argument("--preset", default="quantvla")
    p.add_argument("--out", required=True, help="folder for the artifacts and the results")
    p.add_argument("--reuse-only", action="store_true",
                   help="quantize nothing: summarize the points whose artifacts exist")
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        req = CompareRequest(
            source=args.checkpoint or args.model, calib=args.calib,
            budgets=parse_budgets(args.budgets), methods=parse_methods(args.methods),
            method_options=parse_method_options(args.method_option),
            max_samples=args.max_samples, seed=args.seed, preset=args.preset)
        results = run_comparison(
            req, args.out, command="scripts/compare_methods.py " + shlex.join(argv),
            make=not args.reuse_only)
    except ValueError as exc:
        print(f"compare_methods: {exc}", file=sys.stderr)
        return 2
    files = write_outputs(results, args.out)
    print(to_markdown(results))
    print(f"wrote {', '.join(files)} to {args.out}")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
