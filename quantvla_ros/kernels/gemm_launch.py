"""Host side shared by the scaled integer GEMM launchers: validation, config, grid, split-K."""

from __future__ import annotations

import torch
import triton

from quantvla_ros.kernels import checks
from quantvla_ros.kernels.configs import MIN_BLOCK_K, GemmConfig, gemm_config, is_interpreted
from quantvla_ros.kernels.triton_common import scaled_gemm_kernel

OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Kernels index with int32 offsets.
MAX_ELEMENTS = 2**31 - 1


def check_triton_device(kernel, t: torch.Tensor) -> None:
    """Triton needs CUDA tensors, or CPU tensors with the interpreter on."""
    if is_interpreted(kernel):
        return
    if not t.is_cuda:
        raise ValueError(f"Triton kernels need CUDA tensors (got {t.device}); on CPU set "
                         "TRITON_INTERPRET=1 before importing quantvla_ros.kernels")


def check_out_dtype(out_dtype: torch.dtype) -> None:
    """Outputs are float32, float16 or bfloat16."""
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")


def check_int32_indexing(*tensors: torch.Tensor) -> None:
    """Offsets are int32 inside the GEMMs: refuse operands they cannot address."""
    for t in tensors:
        if t.numel() > MAX_ELEMENTS:
            raise ValueError(f"tensor of shape {tuple(t.shape)} exceeds the kernels' int32 "
                             f"indexing ({MAX_ELEMENTS} elements)")


def row_major(t: torch.Tensor) -> torch.Tensor:
    """Kernels index the last dim with stride 1; copy only when it is not."""
    return t if t.stride(-1) == 1 else t.contiguous()


def resolve_config(
    kernel, m: int, n: int, k: int, group_size: int, config: GemmConfig | None, device
) -> GemmConfig:
    """Table config unless given; a given config must fit the quantization groups."""
    if config is None:
        return gemm_config(m, n, k, group_size, interpret=is_interpreted(kernel), device=device)
    if group_size < k and (group_size % config.block_k or config.block_k < MIN_BLOCK_K):
        raise ValueError(f"block_k={config.block_k} must divide group_size={group_size}")
    return config


def launch_scaled_gemm(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    *,
    group_size: int | None,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    out_dtype: torch.dtype,
    config: GemmConfig | None,
    a_int4: bool,
    w_int4: bool,
) -> torch.Tensor:
    """Validate, pick tiles and launch ``scaled_gemm_kernel`` for these operand widths."""
    kernel = scaled_gemm_kernel
    gs = checks.check_gemm(a, a_scale, w, w_scale, group_size, bias, residual,
                           a_int4=a_int4, w_int4=w_int4)
    check_out_dtype(out_dtype)
    check_triton_device(kernel, a)
    m, n = a.shape[0], w.shape[0]
    k = a.shape[1] * (2 if a_int4 else 1)
    if m == 0:
        return torch.empty(0, n, dtype=out_dtype, device=a.device)
    check_int32_indexing(a, w)
    if m * n > MAX_ELEMENTS:
        raise ValueError(f"output [{m}, {n}] exceeds the kernels' int32 indexing")
    cfg = resolve_config(kernel, m, n, k, gs, config, a.device)
    per_channel = gs == k
    # Work units along K: BLOCK_K blocks per channel, whole groups per group.
    num_units = triton.cdiv(k, cfg.block_k) if per_channel else k // gs
    units_per_split = triton.cdiv(num_units, min(cfg.split_k, num_units))
    split = triton.cdiv(num_units, units_per_split)
    a, w = row_major(a), row_major(w)
    ws = w_scale.reshape(n, -1)
    res = row_major(residual) if residual is not None else None
    if split > 1:
        out = torch.zeros(m, n, dtype=torch.float32, device=a.device)
    else:
        out = torch.empty(m, n, dtype=out_dtype, device=a.device)
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n), split)
    kernel[grid](
        a, a_scale.reshape(-1).contiguous(), w, ws,
        bias if bias is not None else out, res if res is not None else out, out,
        m, n, k, gs, units_per_split, num_units,
        a.stride(0), w.stride(0), ws.stride(0), ws.stride(1),
        res.stride(0) if res is not None else 0, out.stride(0),
        HAS_BIAS=bias is not None, HAS_RES=res is not None,
        PER_CHANNEL=per_channel, BLOCKS_PER_GROUP=1 if per_channel else gs // cfg.block_k,
        ATOMIC_OUT=split > 1, A_INT4=a_int4, W_INT4=w_int4,
        BM=cfg.block_m, BN=cfg.block_n, BK=cfg.block_k, GROUP_M=cfg.group_m,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out.to(out_dtype) if split > 1 else out
