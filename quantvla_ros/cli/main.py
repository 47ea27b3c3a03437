"""`quantvla`: offline work with VLA policies (models, bench, demo, ...).

Each subcommand lives in its own module exposing `register(subparsers)`; the handler it sets
returns a process exit code. User errors (ValueError / KeyError / FileNotFoundError) print one
clear line and exit 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import sys

from quantvla_ros.cli import (
    bench_cmd,
    demo_cmd,
    eval_cmd,
    inspect_cmd,
    models_cmd,
    quantize_cmd,
    record_cmd,
    report_cmd,
)

COMMANDS = [
    models_cmd, inspect_cmd, record_cmd, quantize_cmd, report_cmd, bench_cmd, eval_cmd,
    demo_cmd,
]


def build_parser() -> argparse.ArgumentParser:
    """Build the `quantvla` argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="quantvla", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; return its exit code, or 2 after printing a user error."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"quantvla {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
