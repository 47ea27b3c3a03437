"""Compile the Triton kernels for an NVIDIA GPU target without a GPU present.

Triton's wheel ships ptxas, so the full pipeline (TTIR -> TTGIR -> PTX -> cubin) runs on a
CPU-only machine. This catches GPU-illegal code (dot shapes, layouts, libdevice calls,
shared-memory overflow) that the interpreter accepts. Run in a process where
TRITON_INTERPRET is unset: ``python -m quantvla_ros.kernels.aot_check --arch 90``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time

from quantvla_ros.kernels.configs import is_interpreted
from quantvla_ros.kernels.variants import KernelVariant, compile_variant, kernel_variants

# Largest shared memory per block by SM version (H100 / H200 227 KiB, A100 / Orin 163 KiB).
MAX_SHARED = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448}


def require_compiled_kernels(variants: list[KernelVariant]) -> None:
    """Raise if the kernels were decorated under TRITON_INTERPRET=1 (nothing to compile)."""
    if variants and is_interpreted(variants[0].fn):
        raise RuntimeError("TRITON_INTERPRET=1 is set: AOT compilation needs real kernels; "
                           "run in a process without it")


def _compile(v: KernelVariant, arch: int) -> dict:
    t0 = time.perf_counter()
    kernel = compile_variant(v, arch)
    ttgir = kernel.asm["ttgir"]
    return {
        "op": v.kernel,
        "variant": v.name,
        "config": {k: c for k, c in v.constexprs.items() if k.isupper()},
        "num_warps": v.num_warps,
        "num_stages": v.num_stages,
        "shared_bytes": kernel.metadata.shared,
        "pipelined": bool(re.search(r"async_copy_global_to_local|async_tma_copy", ttgir)),
        "wgmma": "warp_group_dot" in ttgir,
        "compile_s": round(time.perf_counter() - t0, 2),
    }


def compile_all(arch: int = 90, full: bool = False) -> list[dict]:
    """Compile every kernel variant for ``sm_<arch>``; one result dict per variant.

    ``full`` compiles every distinct table config used by the default benchmark shapes;
    otherwise one per op and split mode (what the test suite runs).
    """
    variants = kernel_variants(full)
    require_compiled_kernels(variants)
    return [_compile(v, arch) for v in variants]


def main(argv: list[str] | None = None) -> int:
    """CLI: print one JSON line per compiled variant; exit 1 if shared memory overflows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="SM version, e.g. 80, 89, 90")
    parser.add_argument("--full", action="store_true", help="every table config")
    args = parser.parse_args(argv)
    rows = compile_all(args.arch, args.full)
    for row in rows:
        print(json.dumps(row))
    limit = MAX_SHARED.get(args.arch, min(MAX_SHARED.values()))
    return 0 if all(r["shared_bytes"] <= limit for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
