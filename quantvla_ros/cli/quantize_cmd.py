"""`quantvla quantize`: float policy + unlabeled buffer -> quantized, balanced artifact."""

from __future__ import annotations

from quantvla_ros.cli.options import add_option_args, options_of
from quantvla_ros.cli.output import print_json
from quantvla_ros.cli.progress import progress_bar
from quantvla_ros.quant.balance import AUTHORS_FRAMES, SETTINGS, balance_setting
from quantvla_ros.runtime.families import presets_help
from quantvla_ros.workflows.methods import METHODS, parse_budget
from quantvla_ros.workflows.quantize import QuantizeRequest, quantize_policy


def add_source_args(p) -> None:
    """Add the float policy source (--model or --checkpoint) and --seed."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a named config (random weights, see `quantvla models`)")
    src.add_argument("--checkpoint", help="a checkpoint folder of any family (its config.json "
                                          "says which: see `quantvla models`)")
    p.add_argument("--seed", type=int, default=0, help="weights seed for --model")


def add_layout_args(p) -> None:
    """Add --preset, --bits, --include and --exclude (shared with `inspect`)."""
    p.add_argument("--preset", default="quantvla",
                   help=f"a preset of the model's family ({presets_help()}), or custom "
                        "with --include")
    p.add_argument("--bits", default="w4a8", help="w8a8 | w4a8 | w4a4")
    p.add_argument("--include", action="append", default=[], metavar="GLOB",
                   help="also quantize linears matching this module-name glob")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="keep linears matching this glob in float")


def parse_act_clip(text: str | None) -> float | None:
    """``p99.9`` (or ``99.9``) -> 99.9; None stays None; anything else is an error."""
    if text is None:
        return None
    try:
        value = float(text[1:] if text.lower().startswith("p") else text)
    except ValueError:
        raise SystemExit(f"--act-clip: expected a percentile like p99.9, got {text!r}") \
            from None
    if not 50 < value <= 100:
        raise SystemExit(f"--act-clip: the percentile must be in (50, 100], got {value:g}")
    return value


def method_args(args) -> dict:
    """QuantizeRequest's method, budget and method options from the arguments."""
    if args.budget is not None and args.method == "quantvla":
        raise SystemExit("--budget needs --method qvla or daptq (quantvla stores the layout "
                         "at --bits)")
    options = {}
    for item in args.method_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--method-option: expected KEY=VALUE, got {item!r}")
        options[key] = value
    try:
        budget = parse_budget(args.budget)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    return {"method": args.method, "budget": budget, "method_options": options}


def register(sub) -> None:
    """Add the `quantize` command."""
    p = sub.add_parser("quantize", help="quantize a policy and calibrate ATM / OHB")
    add_source_args(p)
    add_option_args(p)
    add_layout_args(p)
    p.add_argument("--calib", required=True, help="calibration buffer folder or synthetic:N")
    p.add_argument("--out", required=True, help="artifact folder to write")
    p.add_argument("--no-atm", action="store_true", help="skip attention temperature matching")
    p.add_argument("--no-ohb", action="store_true", help="skip output head balancing")
    p.add_argument("--balance-backbone", action="store_true",
                   help="apply ATM / OHB to the backbone's attention too")
    p.add_argument("--balance", default="ours", choices=sorted(SETTINGS),
                   help="ATM / OHB setting: ours (DESIGN.md: clamp [0.8, 1.25], band 0.05, "
                        "pooled logit std, progressive) or authors (their released "
                        "calibration: clamp [0.7, 1.4], band 0.02, OHB in the log domain "
                        "(+-0.3, band 0.03), mean of per-sample logit stds, one pass, "
                        f"{AUTHORS_FRAMES} calibration frames unless --max-samples)")
    p.add_argument("--clamp", type=float, nargs=2, metavar=("LO", "HI"),
                   help="override the setting's clamp (ours: 0.8 1.25)")
    p.add_argument("--band", type=float, help="override the setting's neutral band around 1 "
                                              "(ours: 0.05)")
    p.add_argument("--max-samples", type=int, metavar="N",
                   help="calibrate on at most the first N calibration samples")
    p.add_argument("--act-clip", metavar="pP",
                   help="clip each activation channel at the P-th percentile of |x| on the "
                        "calibration data before quantizing it (the authors' quantizer: "
                        "p99.9)")
    p.add_argument("--group-size", type=int,
                   help="weight group size along K (int4 default 128; 0 = per output channel)")
    p.add_argument("--no-hadamard", action="store_true",
                   help="w4a4 without the Hadamard rotation of activations")
    p.add_argument("--clip-search", action="store_true", help="per-channel clip-ratio search")
    p.add_argument("--smooth", type=float, metavar="ALPHA", help="SmoothQuant strength")
    p.add_argument("--method", default="quantvla", choices=METHODS,
                   help="post-training method: quantvla (the layout at --bits), qvla "
                        "(label-free action sensitivity, {bf16, W8A8, W4A8} per linear and "
                        "row blocks to --budget), daptq (DA-PTQ)")
    p.add_argument("--budget", metavar="B",
                   help="bytes of the layout's linears as a fraction of their bf16 bytes "
                        "(0.3 or 30%%); default for qvla / daptq: what quantvla stores at --bits")
    p.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a method's own option (repeatable; see docs/method.md)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def run(args) -> int:
    """Quantize and calibrate as the arguments ask; print the ATM / OHB factors or JSON."""
    towers = ("expert", "backbone") if args.balance_backbone else ("expert",)
    overrides = {k: v for k, v in (("clamp", tuple(args.clamp) if args.clamp else None),
                                   ("band", args.band)) if v is not None}
    req = QuantizeRequest(
        source=args.checkpoint or args.model, calib=args.calib, bits=args.bits,
        preset=None if args.preset == "custom" else args.preset,
        include=tuple(args.include), exclude=tuple(args.exclude),
        balance=balance_setting(args.balance, atm=not args.no_atm, ohb=not args.no_ohb,
                                towers=towers, **overrides),
        clip_search=args.clip_search, act_clip=parse_act_clip(args.act_clip),
        max_samples=args.max_samples or (AUTHORS_FRAMES if args.balance == "authors"
                                         else None),
        smooth_alpha=args.smooth, group_size=args.group_size,
        hadamard=False if args.no_hadamard else None,
        seed=args.seed, device=args.device, precision=args.precision,
        batch_size=args.batch_size, options=options_of(args),
        **method_args(args),
    )
    log = (lambda *_: None) if args.json else print
    manifest = quantize_policy(req, args.out, progress=None if args.json else progress_bar,
                               log=log)
    if args.json:
        q = manifest.quantization
        print_json({"artifact": args.out, "bits": manifest.bits, "method": q.method,
                    "budget": q.budget, "allocation": q.allocation,
                    "quantized_modules": len(manifest.quantized_modules),
                    "alpha": manifest.balance.alpha, "beta": manifest.balance.beta,
                    "calibration": manifest.calibration})
        return 0
    print(f"wrote {args.out}: {len(manifest.quantized_modules)} linears at {manifest.bits}")
    alloc = manifest.quantization.allocation
    if alloc:
        print(f"  method {manifest.quantization.method}: {alloc['bytes']} bytes, "
              f"{100 * alloc['fraction']:.2f}% of bf16 (budget "
              f"{100 * manifest.quantization.budget:.2f}%: {alloc['budget_bytes']} bytes)")
    for key, beta in manifest.balance.beta.items():
        alpha = manifest.balance.alpha.get(key, [])
        print(f"  {key}: beta {beta:.3f}, alpha " + " ".join(f"{a:.3f}" for a in alpha))
    if manifest.calibration.get("synthetic"):
        print("  note: calibrated on SYNTHETIC observations (not robot data)")
    return 0
