"""`quantvla inspect`: which linears a layout quantizes and what it saves (meta device)."""

from __future__ import annotations

from quantvla_ros.cli.output import human_bytes, print_json, print_table
from quantvla_ros.cli.quantize_cmd import add_layout_args
from quantvla_ros.models.build import build_meta
from quantvla_ros.models.registry import family_of, get_config, read_checkpoint_config
from quantvla_ros.quant.footprint import inspect_layout, peak_estimates
from quantvla_ros.quant.layouts import get_layout, scheme_label
from quantvla_ros.quant.manifest import ArtifactManifest, method_summary
from quantvla_ros.quant.scheme import parse_bits


def register(sub) -> None:
    """Add the `inspect` command."""
    p = sub.add_parser("inspect", help="dry-run a quantization layout (allocates nothing)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a named config")
    src.add_argument("--checkpoint", help="a checkpoint folder (only its config is read)")
    src.add_argument("--artifact", help="a quantized artifact: its recorded schemes (manifest "
                                        "only), per linear where they differ from the default")
    add_layout_args(p)
    p.add_argument("--group-size", type=int,
                   help="weight group size along K (int4 default 128; 0 = per output channel)")
    p.add_argument("--all", action="store_true", help="list float linears too")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def run(args) -> int:
    """Size a layout on the meta device: which linears it quantizes and the bytes it saves."""
    if args.artifact:
        return _artifact(args)
    cfg = get_config(args.model) if args.model else read_checkpoint_config(args.checkpoint)
    scheme = parse_bits(args.bits, group_size=args.group_size)
    layout = get_layout(None if args.preset == "custom" else args.preset,
                        args.include, args.exclude, family=family_of(cfg))
    model = build_meta(cfg)
    r = inspect_layout(model, layout, scheme)
    r["expected_peaks"] = peak_estimates(model, r)
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
    peaks = r["expected_peaks"]
    print(f"  expected peak memory (docs/memory.md): load {human_bytes(peaks['load_bf16'])}, "
          f"with one inference {human_bytes(peaks['infer_bf16'])} (bf16); quantize "
          f"{human_bytes(peaks['quantize_bf16'])} (bf16 teacher), "
          f"{human_bytes(peaks['quantize_fp32'])} (fp32 teacher)")
    return 0


def _artifact(args) -> int:
    """Print an artifact's default scheme, its parts and the linears with their own scheme."""
    m = ArtifactManifest.read(args.artifact)
    q = m.quantization
    default = scheme_label(q.scheme)
    rows = [{"name": n, "scheme": scheme_label(q.scheme_for(n)), "part": q.part_of(n)}
            for n in m.quantized_modules]
    r = {"artifact": args.artifact, "format_version": m.to_dict()["format_version"],
         "default_scheme": default, "parts": m.parts_summary(),
         "differing": [row for row in rows if row["scheme"] != default],
         "balance_config": m.balance.config, **method_summary(m)}
    if args.json:
        print_json(r)
        return 0
    print(f"{args.artifact}: {len(rows)} linears, default {default} "
          f"(format version {r['format_version']})")
    if r.get("method", "quantvla") != "quantvla":
        print(f"method {r['method']}: budget {100 * r['budget']:.2f}% of the layout's bf16 "
              f"bytes ({r['budget_bytes']} bytes); stored {r['bytes']} bytes "
              f"({100 * r['fraction']:.2f}%)")
    for p in r["parts"]:
        print(f"  {p['part']}: {p['modules']} modules at {p['scheme']}")
    for p in r.get("row_blocks", ()):
        print(f"  {p['names'][0]}: {p['scheme']}, permutation {p['permutation']}")
    if r["differing"]:
        print("\nlinears whose scheme differs from the default:")
        print_table(r["differing"], ["name", "part", "scheme"])
    print("balance: " + ", ".join(f"{k} {v}" for k, v in m.balance.config.items()))
    return 0
