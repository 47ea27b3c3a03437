"""`quantvla demo`: the whole chain on a fresh machine, in a few minutes on a CPU.

Synthetic rosbag -> calibration buffer -> pi05-tiny quantized at w4a8 (ATM / OHB) ->
quantvla_node as its own process, driven through its lifecycle -> bag played at its rate ->
trajectories collected -> summary, with the action error against the float policy.
"""

from __future__ import annotations

import tempfile

from quantvla_ros.cli.output import print_json


def register(sub) -> None:
    """Add the `demo` command."""
    p = sub.add_parser("demo", help="bag -> calibration -> quantized artifact -> ROS node")
    p.add_argument("--model", default="pi05-tiny")
    p.add_argument("--bits", default="w4a8")
    p.add_argument("--preset", default="quantvla")
    p.add_argument("--float", action="store_true", help="serve the float model (no quantizing)")
    p.add_argument("--storage", default="sqlite3", choices=["sqlite3", "mcap"])
    p.add_argument("--workdir", help="where bag, buffer and artifact go (default: a temp dir)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def run(args) -> int:
    """Run the whole demo chain and print its summary; return 1 if no trajectory arrived."""
    from quantvla_ros.demo.run import run_demo
    from quantvla_ros.workflows.quantize import quantize_hook

    log = (lambda _: None) if args.json else (lambda m: print(f"[demo] {m}", flush=True))
    hook = None if args.float else quantize_hook(args.model, args.bits, args.preset,
                                                 args.seed, log=log)
    workdir = args.workdir or tempfile.mkdtemp(prefix="quantvla-demo-")
    r = run_demo(workdir, quantize_fn=hook, model=args.model, seed=args.seed,
                 storage=args.storage, log=log)
    if args.json:
        print_json(r)
        return 0 if r["trajectories"] else 1
    lat = r["latency_ms"]
    print(f"\nquantvla demo: {'quantized ' + args.bits if hook else 'float'} {args.model} "
          f"served by quantvla_node ({r['elapsed_s']:.0f} s, work in {r['workdir']})")
    print(f"  bag: {r['bag']['frames']} frames per camera ({r['bag']['storage']}), "
          f"calibration buffer: {r['buffer']['samples']} observations")
    print("  lifecycle: " + ", ".join(f"{t['transition']}={'ok' if t['success'] else 'FAILED'}"
                                      for t in r["lifecycle"]))
    print(f"  trajectories received: {r['trajectories']} "
          f"({r['points_per_trajectory']} points each, joints {r['joint_names']})")
    print(f"  latency (observation stamp -> trajectory received): p50 {lat['p50']:.0f} ms, "
          f"p90 {lat['p90']:.0f} ms, max {lat['max']:.0f} ms")
    print(f"  action error vs the float policy (same observations and noise): relative L2 "
          f"{r['action_rel_error']:.4f} (worst chunk {r['action_rel_error_max']:.4f})")
    return 0 if r["trajectories"] else 1
