"""Compile-time descriptions of the Triton kernel variants, shared by the AOT tools.

A :class:`KernelVariant` is everything ``triton.compile`` needs to build one specialization
without a GPU (argument types, constexprs, launch options), plus the weights one main-loop
iteration consumes, which the SASS counter divides by. :func:`kernel_variants` lists them;
to cover a new kernel, write a builder like :func:`_gemm_variants` and add it to
``_BUILDERS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quantvla_ros.kernels.bench import DEFAULT_SHAPES, GROOT_SHAPES, GROUP_SIZE
from quantvla_ros.kernels.configs import GemmConfig, act_quant_block, gemm_config

# Runtime launches specialize 16-divisible pointers and ints; mimic that for these args.
DIVISIBLE_INTS = frozenset({"N", "K", "group_size", "stride_am", "stride_wn", "stride_rm",
                            "stride_om", "stride_xm", "stride_qm"})
_FLOAT_ARGS = frozenset({"eps", "scale_eps"})
_GEMM_PTRS = {"xs_ptr": "*fp32", "ws_ptr": "*fp32", "bias_ptr": "*fp32", "res_ptr": "*bf16",
              "out_ptr": "*bf16", "work_ptr": "*i32", "count_ptr": "*i32"}
# scaled_gemm op -> (activation pointer type, weight pointer type); W4A8 has its own kernel.
_GEMM_OPS = {"w8a8": ("*i8", "*i8"), "w4a4": ("*u8", "*u8")}
PREFILL_CANDIDATE = GemmConfig(128, 128, 128, num_warps=8, num_stages=3)
_W4A8_PTRS = dict(_GEMM_PTRS, x_ptr="*i8", w_ptr="*u8", gs_ptr="*i8")


@dataclass(frozen=True)
class KernelVariant:
    """One compilable specialization of a Triton kernel.

    ``kernel`` is the family used for filtering and reports ("w8a8", "gate_up", ...);
    ``signature`` maps every non-constexpr argument to its Triton type; ``divisible`` names
    the arguments compiled as 16-divisible (what a real launch specializes on).
    ``weights_per_kstep`` counts the weights one main-loop iteration multiplies (0: no
    GEMM main loop, e.g. the activation quantizer).
    """

    name: str
    kernel: str
    fn: object = field(repr=False)
    signature: dict
    constexprs: dict
    num_warps: int
    num_stages: int
    weights_per_kstep: int = 0
    divisible: frozenset = DIVISIBLE_INTS


def make_signature(fn, constexprs: dict, ptr_types: dict) -> dict:
    """Types of ``fn``'s runtime args: pointers from ptr_types, floats by name, else i32."""
    return {name: ptr_types.get(name, "fp32" if name in _FLOAT_ARGS else "i32")
            for name in fn.arg_names if name not in constexprs}


def compile_variant(v: KernelVariant, arch: int):
    """``triton.compile`` one variant for ``sm_<arch>``; return the CompiledKernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig, attrs = {}, {}
    for i, name in enumerate(v.fn.arg_names):
        if name in v.constexprs:
            sig[name] = "constexpr"
            continue
        sig[name] = v.signature[name]
        if sig[name].startswith("*") or name in v.divisible:
            attrs[(i,)] = [["tt.divisibility", 16]]
    return triton.compile(ASTSource(v.fn, sig, v.constexprs, attrs),
                          target=GPUTarget("cuda", arch, 32),
                          options=dict(num_warps=v.num_warps, num_stages=v.num_stages))


def _tile_name(op: str, c: dict, warps: int, stages: int) -> str:
    quant = "pc" if c["PER_CHANNEL"] else f"g{GROUP_SIZE}"
    split = " splitk" if c.get("SPLIT") else ""
    return f"{op} {c['BM']}x{c['BN']}x{c['BK']} w{warps} s{stages} {quant}{split}"


def _gemm_variants(full: bool) -> list[KernelVariant]:
    """scaled_gemm_kernel per op and table config (``full``), else per op and split mode."""
    from quantvla_ros.kernels.scaled_gemm import scaled_gemm_kernel as fn

    seen, out = set(), []
    for op, (a_t, w_t) in _GEMM_OPS.items():
        for m, k, n in DEFAULT_SHAPES:
            gs = k if op == "w8a8" else GROUP_SIZE
            cfg = gemm_config(m, n, k, gs, interpret=False)
            bpg = 1 if gs == k else gs // cfg.block_k
            consts = dict(HAS_BIAS=True, HAS_RES=True, PER_CHANNEL=gs == k,
                          BLOCKS_PER_GROUP=bpg, SPLIT=gs == k and cfg.split_k > 1,
                          A_INT4=op == "w4a4", W_INT4=op != "w8a8", BM=cfg.block_m,
                          BN=cfg.block_n, BK=cfg.block_k, GROUP_M=cfg.group_m)
            key = (op, tuple(consts.items()), cfg.num_warps, cfg.num_stages) if full else \
                (op, consts["SPLIT"])
            if key in seen:
                continue
            seen.add(key)
            ptrs = dict(_GEMM_PTRS, a_ptr=a_t, w_ptr=w_t)
            out.append(KernelVariant(
                _tile_name(op, consts, cfg.num_warps, cfg.num_stages), op, fn,
                make_signature(fn, consts, ptrs), consts, cfg.num_warps, cfg.num_stages,
                weights_per_kstep=cfg.block_n * cfg.block_k * bpg))
    return out


def _gate_up_variants(full: bool) -> list[KernelVariant]:
    """gate_up_kernel (fused GeGLU, int8 weights) at the prefix shape."""
    from quantvla_ros.kernels.gate_up_gemm import gate_up_kernel as fn

    cfg = gemm_config(968, 16384, 2048, 2048, interpret=False)
    bn = min(cfg.block_n, 64)  # what gate_up_gemm launches
    consts = dict(PER_CHANNEL=True, BLOCKS_PER_GROUP=1, BM=cfg.block_m, BN=bn,
                  BK=cfg.block_k, GROUP_M=cfg.group_m)
    ptrs = dict(a_ptr="*i8", xs_ptr="*fp32", w_ptr="*i8", ws_ptr="*fp32", out_ptr="*bf16")
    # Gate and up rows: two weight tiles per K step.
    return [KernelVariant(
        _tile_name("gate_up8", consts, cfg.num_warps, cfg.num_stages), "gate_up", fn,
        make_signature(fn, consts, ptrs), consts, cfg.num_warps, cfg.num_stages,
        weights_per_kstep=2 * bn * cfg.block_k)]


def _w4a8_variants(full: bool) -> list[KernelVariant]:
    """w4a8_gemm_kernel (swap-AB, K-half int4, int8 group scales) per table config.

    Group 128 (the default) and per channel, plain and gate_up, at the model's shapes; one
    K-block per loop iteration: BLOCK_N weight rows x 128 (x 2 rows sets for gate_up).
    """
    from quantvla_ros.kernels.configs import w4a8_config
    from quantvla_ros.kernels.w4a8_gemm import w4a8_gemm_kernel as fn

    shapes = DEFAULT_SHAPES + (GROOT_SHAPES if full else ())
    cases = [(m, k, n, False, None) for m, k, n in shapes]
    cases += [(50, 1024, 4096, True, None), (968, 2048, 16384, True, None)]
    # Prefill candidates off the table: 128 tokens x 8 warps (per MAC the unpack halves).
    cases += [(968, 2048, 16384, False, PREFILL_CANDIDATE)]
    seen, out = set(), []
    for m, k, n, gate_up, given in cases:
        cfg = given or w4a8_config(m, n, k, gate_up=gate_up, interpret=False)
        for grouped in (True, False) if full or m <= 64 else (True,):
            consts = dict(GROUPED=grouped, GATE_UP=gate_up, HAS_BIAS=False, HAS_RES=False,
                          SPLIT=cfg.split_k > 1, EVEN_K=True, USE_ASM=True,
                          BN=cfg.block_n, BM=cfg.block_m, GROUP_N=cfg.group_m)
            key = (tuple(consts.items()), cfg.num_warps, cfg.num_stages) if full else \
                (grouped, gate_up, cfg.block_n, cfg.block_m)
            if key in seen:
                continue
            seen.add(key)
            name = (f"w4a8{' gate_up' if gate_up else ''} {cfg.block_n}x{cfg.block_m}x128 "
                    f"w{cfg.num_warps} s{cfg.num_stages} {'g128' if grouped else 'pc'}"
                    f"{' splitk' if cfg.split_k > 1 else ''}")
            out.append(KernelVariant(
                name, "w4a8", fn, make_signature(fn, consts, _W4A8_PTRS), consts,
                cfg.num_warps, cfg.num_stages,
                weights_per_kstep=cfg.block_n * 128 * (2 if gate_up else 1),
                divisible=frozenset({"N", "K", "stride_xm", "stride_wn", "stride_rm",
                                     "stride_om"})))
    return out


def _act_quant_variants(full: bool) -> list[KernelVariant]:
    """act_quant_kernel (norm + smooth + quantize one row), int8 and int4 codes."""
    from quantvla_ros.kernels.act_quant import act_quant_kernel as fn

    out = []
    for k in (1024, 2048, 16384) if full else (16384,):
        block, warps = act_quant_block(k)
        for int4 in (False, True):
            consts = dict(HAS_NORM=True, GEMMA=True, HAS_SMOOTH=True, INT4=int4,
                          BLOCK_K=block, USE_RINT=True)
            ptrs = dict(x_ptr="*bf16", nw_ptr="*bf16", sm_ptr="*fp32",
                        q_ptr="*u8" if int4 else "*i8", s_ptr="*fp32")
            out.append(KernelVariant(
                f"act_quant{4 if int4 else 8} K{block} w{warps}", "act_quant", fn,
                make_signature(fn, consts, ptrs), consts, warps, 1))
    return out


# One builder per kernel family; each takes ``full`` and returns its variants.
_BUILDERS = (_gemm_variants, _w4a8_variants, _gate_up_variants, _act_quant_variants)


def kernel_variants(full: bool = False, kernels=None) -> list[KernelVariant]:
    """Every registered variant (``full``: all table configs), optionally only ``kernels``."""
    out = [v for build in _BUILDERS for v in build(full)]
    return [v for v in out if kernels is None or v.kernel in kernels]
