"""`quantvla models`: the named configs with parameter counts and bf16 bytes."""

from __future__ import annotations

from quantvla_ros.cli.output import human_bytes, print_json, print_table
from quantvla_ros.models.build import param_count
from quantvla_ros.models.registry import REGISTRY


def register(sub) -> None:
    """Add the `models` command."""
    p = sub.add_parser("models", help="list the named model configs")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run)


def run(args) -> int:
    """List every family's named configs with parameter counts and bf16 sizes (table or JSON)."""
    rows = []
    for name, cfg in REGISTRY.items():
        n = param_count(cfg)
        rows.append({
            "name": name, "family": cfg.family, "variant": cfg.variant, "params": n,
            "bf16_bytes": 2 * n,
            "cameras": len(cfg.cameras), "prefix_tokens": cfg.prefix_len,
            "action_horizon": cfg.action_horizon, "action_dim": cfg.action_dim,
        })
    if args.json:
        print_json(rows)
    else:
        print_table([{**r, "params": f"{r['params'] / 1e6:.1f}M",
                      "bf16_bytes": human_bytes(r["bf16_bytes"])} for r in rows],
                    ["name", "family", "variant", "params", "bf16_bytes", "cameras",
                     "prefix_tokens"])
    return 0
