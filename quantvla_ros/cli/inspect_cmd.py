"""`quantvla inspect`: which linears a layout quantizes and what it saves (meta device)."""

from __future__ import annotations

from quantvla_ros.cli.output import human_bytes, print_json, print_table
from quantvla_ros.cli.quantize_cmd import add_layout_args
from quantvla_ros.models.build import build_meta
from quantvla_ros.models.registry import family_of, get_config, read_checkpoint_config
from quantvla_ros.quant.footprint import inspect_layout
from quantvla_ros.quant.layouts import get_layout
from quantvla_ros.quant.scheme import parse_bits


def register(sub) -> None:
    """Add the `inspect` command."""
    p = sub.add_parser("inspect", help="dry-run a quantization layout (allocates nothing)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a named config")
    src.add_argument("--checkpoint", help="a checkpoint folder (only its config is read)")
    add_layout_args(p)
    p.add_argument("--group-size", type=int,
                   help="weight group size along K (int4 default 128; 0 = per output channel)")
    p.add_argument("--all", action="store_true", help="list float linears too")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def run(args) -> int:
    """Size a layout on the meta device: which linears it quantizes and the bytes it saves."""
    cfg = get_config(args.model) if args.model else read_checkpoint_config(args.checkpoint)
    scheme = parse_bits(args.bits, group_size=args.group_size)
    layout = get_layout(None if args.preset == "custom" else args.preset,
                        args.include, args.exclude, family=family_of(cfg))
    r = inspect_layout(build_meta(cfg), layout, scheme)
    if args.json:
        print_json(r)
        return 0
    rows = [{**m, "shape": "x".join(map(str, m["shape"])),
             "bytes_bf16": human_bytes(m["bytes_bf16"]), "bytes": human_bytes(m["bytes"])}
            for m in r["modules"] if m["quantized"] or args.all]
    print_table(rows, ["name", "part", "shape", "quantized", "scheme", "bytes_bf16", "bytes"])
    emb = r["quantized_embeddings"]
    print(f"\n{cfg.name} {r['layout']} {r['bits']}: {r['quantized_modules']} linears quantized"
          + (f", embeddings {', '.join(emb)} as integer rows" if emb else ""))
    for p in r["parts"]:
        print(f"  {p['part']}: {p['modules']} modules at {p['scheme']}, "
              f"{human_bytes(p['bytes_bf16'])} bf16 -> {human_bytes(p['bytes'])}")
    print(f"  quantized components: {human_bytes(r['quantized_bytes_bf16'])} bf16 -> "
          f"{human_bytes(r['quantized_bytes'])} ({100 * r['quantized_fraction']:.1f}%, "
          f"saving {100 * r['saving']:.1f}%)")
    print(f"  whole model: {human_bytes(r['total_bytes_bf16'])} bf16 -> "
          f"{human_bytes(r['total_bytes'])} ({100 * r['total_fraction']:.1f}%, "
          f"saving {100 * r['total_saving']:.1f}%)")
    print(f"  never executed, not loaded: {', '.join(r['never_executed_modules'])} "
          f"({r['never_executed_params'] / 1e6:.1f}M parameters, "
          f"{human_bytes(r['never_executed_params'] * 2)} bf16; a full checkpoint is "
          f"{human_bytes(r['checkpoint_bytes_bf16'])} bf16)")
    return 0
