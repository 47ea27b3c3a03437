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

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from quantvla_ros.kernels.bench import DEFAULT_SHAPES, GROUP_SIZE
from quantvla_ros.kernels.configs import act_quant_block, gemm_config, is_interpreted

# Largest shared memory per block by SM version (H100 / H200 227 KiB, A100 / Orin 163 KiB).
MAX_SHARED = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448}
# Runtime launches specialize 16-divisible pointers and ints; mimic that for these args.
_DIVISIBLE = {"N", "K", "group_size", "stride_am", "stride_wn", "stride_rm", "stride_om",
              "stride_xm", "stride_qm"}
_GEMM_PTRS = {"xs_ptr": "*fp32", "ws_ptr": "*fp32", "bias_ptr": "*fp32", "res_ptr": "*bf16"}
_OPS = {"w8a8": ("*i8", "*i8"), "w4a8": ("*i8", "*u8"), "w4a4": ("*u8", "*u8")}


def _kernels():
    from quantvla_ros.kernels.act_quant import act_quant_kernel
    from quantvla_ros.kernels.gate_up_gemm import gate_up_kernel
    from quantvla_ros.kernels.scaled_gemm import scaled_gemm_kernel

    gemm = scaled_gemm_kernel  # one kernel, specialized per op below
    return {"w8a8": gemm, "w4a8": gemm, "w4a4": gemm, "gate_up": gate_up_kernel,
            "act_quant": act_quant_kernel}


def _gemm_variants(full: bool) -> list[dict]:
    seen, out = set(), []
    for op, (a_t, w_t) in _OPS.items():
        for m, k, n in DEFAULT_SHAPES:
            gs = k if op == "w8a8" else GROUP_SIZE
            cfg = gemm_config(m, n, k, gs, interpret=False)
            consts = dict(HAS_BIAS=True, HAS_RES=True, PER_CHANNEL=gs == k,
                          BLOCKS_PER_GROUP=1 if gs == k else gs // cfg.block_k,
                          ATOMIC_OUT=cfg.split_k > 1, A_INT4=op == "w4a4", W_INT4=op != "w8a8",
                          BM=cfg.block_m, BN=cfg.block_n, BK=cfg.block_k, GROUP_M=cfg.group_m)
            key = (op, tuple(consts.items()) if full else consts["ATOMIC_OUT"])
            if key in seen:
                continue
            seen.add(key)
            ptrs = dict(_GEMM_PTRS, a_ptr=a_t, w_ptr=w_t,
                        out_ptr="*fp32" if cfg.split_k > 1 else "*bf16")
            out.append(dict(op=op, ptrs=ptrs, consts=consts, num_warps=cfg.num_warps,
                            num_stages=cfg.num_stages))
    return out


def _other_variants(full: bool) -> list[dict]:
    out = []
    for bits, w_t in ((8, "*i8"), (4, "*u8")):
        cfg = gemm_config(968, 16384, 2048, GROUP_SIZE if bits == 4 else 2048, interpret=False)
        consts = dict(PER_CHANNEL=bits == 8,
                      BLOCKS_PER_GROUP=1 if bits == 8 else GROUP_SIZE // cfg.block_k,
                      W_INT4=bits == 4, BM=cfg.block_m, BN=min(cfg.block_n, 64),
                      BK=cfg.block_k, GROUP_M=cfg.group_m)
        ptrs = dict(a_ptr="*i8", xs_ptr="*fp32", w_ptr=w_t, ws_ptr="*fp32", out_ptr="*bf16")
        out.append(dict(op="gate_up", ptrs=ptrs, consts=consts, num_warps=cfg.num_warps,
                        num_stages=cfg.num_stages))
    for k in (1024, 2048, 16384) if full else (16384,):
        for int4 in (False, True):
            block, warps = act_quant_block(k)
            ptrs = dict(x_ptr="*bf16", nw_ptr="*bf16", sm_ptr="*fp32",
                        q_ptr="*u8" if int4 else "*i8", s_ptr="*fp32")
            consts = dict(HAS_NORM=True, GEMMA=True, HAS_SMOOTH=True, INT4=int4,
                          BLOCK_K=block, USE_RINT=True)
            out.append(dict(op="act_quant", ptrs=ptrs, consts=consts, num_warps=warps,
                            num_stages=1))
    return out


def _compile(fn, variant: dict, target: GPUTarget) -> dict:
    consts, ptrs = variant["consts"], variant["ptrs"]
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
            continue
        sig[name] = ptrs.get(name, "fp32" if name in ("eps", "scale_eps") else "i32")
        if name in ptrs or name in _DIVISIBLE:
            attrs[(i,)] = [["tt.divisibility", 16]]
    t0 = time.perf_counter()
    kernel = triton.compile(
        ASTSource(fn, sig, consts, attrs), target=target,
        options=dict(num_warps=variant["num_warps"], num_stages=variant["num_stages"]),
    )
    ttgir = kernel.asm["ttgir"]
    return {
        "op": variant["op"],
        "config": {k: v for k, v in consts.items() if k.isupper()},
        "num_warps": variant["num_warps"],
        "num_stages": variant["num_stages"],
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
    kernels = _kernels()
    if is_interpreted(kernels["w8a8"]):
        raise RuntimeError("TRITON_INTERPRET=1 is set: AOT compilation needs real kernels")
    target = GPUTarget("cuda", arch, 32)
    variants = _gemm_variants(full) + _other_variants(full)
    return [_compile(kernels[v["op"]], v, target) for v in variants]


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
