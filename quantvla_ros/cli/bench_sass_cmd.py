"""`quantvla bench sass`: main-loop SASS instructions per weight of each GEMM kernel variant.

Compiles with the ptxas / cuobjdump bundled in the Triton wheel, so it needs no GPU, but it
must run where TRITON_INTERPRET is unset (interpreted kernels cannot be compiled).
"""

from __future__ import annotations

from quantvla_ros.cli.output import print_json


def register(kinds) -> None:
    """Add `sass` to the `bench` subcommands (``kinds`` is their subparsers object)."""
    p = kinds.add_parser("sass", help="main-loop SASS instructions per weight (no GPU needed)")
    p.add_argument("--arch", default="90,87", help="comma-separated SM versions (default 90,87)")
    p.add_argument("--kernels", help="comma-separated kernel families, e.g. w8a8,w4a8,gate_up "
                                     "(default: every family with a GEMM main loop)")
    p.add_argument("--variants", help="only variants whose name contains one of these "
                                      "comma-separated strings, e.g. 64x64x128,w4 s3")
    p.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    p.set_defaults(handler=run_sass)


def _ints(text: str) -> list[int]:
    try:
        return [int(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise ValueError(f"--arch wants comma-separated integers, got {text!r}") from None


def run_sass(args) -> int:
    """Count every selected variant on every arch; return 1 if any failed or has no loop."""
    from quantvla_ros.kernels.aot_check import require_compiled_kernels
    from quantvla_ros.kernels.sass_count import count_variant, format_table, tool_path
    from quantvla_ros.kernels.variants import kernel_variants

    for tool in ("ptxas", "cuobjdump"):
        if not tool_path(tool).exists():
            raise FileNotFoundError(f"the Triton wheel has no {tool} at {tool_path(tool)}")
    kernels = set(args.kernels.split(",")) if args.kernels else None
    wanted = args.variants.split(",") if args.variants else [""]
    variants = [v for v in kernel_variants(full=True, kernels=kernels)
                if v.weights_per_kstep and any(w in v.name for w in wanted)]
    if not variants:
        raise ValueError("no kernel variant matches --kernels / --variants")
    try:
        require_compiled_kernels(variants)
    except RuntimeError as exc:
        raise ValueError(str(exc)) from None
    rows = []
    for arch in _ints(args.arch):
        for v in variants:
            try:
                rows.append(count_variant(v, arch))
            except Exception as exc:  # one broken variant must not hide the others
                rows.append({"kernel": v.kernel, "variant": v.name, "arch": arch,
                             "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
    if args.json:
        print_json(rows)
    else:
        import triton

        print(f"triton {triton.__version__}; thread-instructions per weight = loop "
              "instructions * 32 * warps / weights per loop iteration")
        print(format_table(rows))
    return 0 if all(r.get("loop_found") for r in rows) else 1
