"""`quantvla demo`: run the float policy once on a tiny config and print its timing.

The full demo (bag -> calibration -> quantized artifact -> ROS node) replaces this later.
"""

from __future__ import annotations

from ..runtime.bench import synthetic_observation
from ..runtime.policy import Policy
from .output import print_json


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the policy end to end on a tiny config")
    p.add_argument("--model", default="pi05-tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def run(args) -> int:
    policy = Policy.from_config(args.model, seed=args.seed)
    obs = synthetic_observation(policy, args.seed)
    policy.infer(obs)  # warm-up
    out = policy.infer(obs)
    result = {"model": args.model, "weights": policy.source,
              "chunk_shape": list(out.actions.shape),
              "timing_ms": {k: round(v, 2) for k, v in out.timing_ms.items()},
              "first_action": [round(float(a), 4) for a in out.actions[0]]}
    if args.json:
        print_json(result)
        return 0
    print(f"float policy {args.model} ({policy.source}) on CPU")
    print(f"  action chunk {result['chunk_shape']}, first step {result['first_action'][:4]}...")
    print("  timing: " + ", ".join(f"{k} {v:.1f} ms" for k, v in result["timing_ms"].items()))
    return 0
