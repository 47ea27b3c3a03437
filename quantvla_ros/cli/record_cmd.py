"""`quantvla calibrate`: rosbag2 recordings (sqlite3 or MCAP) -> calibration buffer."""

from __future__ import annotations

import sys

from quantvla_ros.cli.output import print_json


def register(sub) -> None:
    """Add the `calibrate` subcommand to ``sub``."""
    p = sub.add_parser("calibrate", help="record a calibration buffer from rosbags")
    p.add_argument("--bag", action="append", required=True, metavar="PATH",
                   help="rosbag2 directory (sqlite3 or MCAP); repeat for several bags")
    p.add_argument("--topics", required=True, metavar="YAML",
                   help="topics file mapping topics to camera slots and joints "
                        "(see config/topics.yaml)")
    p.add_argument("--out", required=True, metavar="BUFFER",
                   help="calibration buffer directory to write (must not exist)")
    p.add_argument("--samples", type=int, default=128,
                   help="observations to keep, spread evenly over the bags (default 128)")
    p.add_argument("--rate", type=float, default=2.0, metavar="HZ",
                   help="at most this many observations per second of recording (default 2)")
    p.add_argument("--append", action="store_true",
                   help="add to an existing buffer at --out instead of refusing it")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the buffer summary as JSON")
    p.set_defaults(handler=run)


def run(args) -> int:
    """Write the buffer; return the exit code (errors raise ValueError, see cli.main)."""
    # Imported here: rosbags is only needed by this subcommand.
    from quantvla_ros.ros.bag_recorder import record_from_bags

    log = (lambda _: None) if args.json else (lambda line: print(line, file=sys.stderr))
    summary = record_from_bags(
        args.bag, args.topics, args.out, samples=args.samples, rate_hz=args.rate,
        append=args.append, progress=not (args.no_progress or args.json), log=log)
    if args.json:
        print_json(summary)
        return 0
    cams = ", ".join(f"{name} {h}x{w}" for name, (h, w) in summary["cameras"].items())
    print(f"{summary['path']}: {summary['samples']} observations ({summary['added']} new), "
          f"cameras {cams}, state dim {summary['state_dim']}, "
          f"{summary['instructions']} instruction(s)")
    for reason, count in summary["skipped"].items():
        print(f"  skipped {count}: {reason}")
    return 0
