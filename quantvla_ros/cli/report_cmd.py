"""`quantvla report`: teacher vs quantized student on held-out calibration samples."""

from __future__ import annotations

from quantvla_ros.cli.options import add_option_args, options_of
from quantvla_ros.cli.output import print_json
from quantvla_ros.workflows.report import build_report
from quantvla_ros.workflows.report_render import to_markdown, write_report


def register(sub) -> None:
    """Add the `report` command."""
    p = sub.add_parser("report", help="fidelity of a quantized artifact vs its float teacher")
    p.add_argument("--artifact", required=True)
    p.add_argument("--calib", required=True, help="buffer folder or synthetic:N (held-out part)")
    p.add_argument("--checkpoint", help="where the source checkpoint lives now, if moved")
    p.add_argument("--out", help="folder for report.md, report.json and PNG plots")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    add_option_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def run(args) -> int:
    """Build the fidelity report; print it (markdown or JSON) and write its files with --out."""
    r = build_report(args.artifact, args.calib, args.device, args.precision,
                     checkpoint=args.checkpoint, options=options_of(args))
    files = write_report(r, args.out) if args.out else []
    if args.json:
        print_json({**r, "files": files})
    else:
        print(to_markdown(r))
        if files:
            print(f"wrote {', '.join(files)} to {args.out}")
    return 0
