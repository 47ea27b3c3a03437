"""Argument validation shared by the reference and Triton paths.

Unsupported inputs raise ValueError with the offending shape or dtype, never compute wrongly.
"""

from __future__ import annotations

import torch

from quantvla_ros.kernels.int4_layout import MAX_K, PACK_K, padded_k

OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_float_vector(name: str, t: torch.Tensor | None, n: int, device) -> None:
    if t is None:
        return
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a float tensor, got {t.dtype}")
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}], got {_shape(t)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device}")


def _check_residual(residual: torch.Tensor | None, m: int, n: int, device) -> None:
    if residual is None:
        return
    if not residual.is_floating_point() or _shape(residual) != (m, n):
        raise ValueError(f"residual must be a float [{m}, {n}] tensor, got "
                         f"{residual.dtype} {_shape(residual)}")
    if residual.device != device:
        raise ValueError(f"residual is on {residual.device}, activations on {device}")


def check_out_dtype(out_dtype: torch.dtype) -> torch.dtype:
    """Require a float32, float16 or bfloat16 output dtype; return it."""
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")
    return out_dtype


def check_act_quant(
    x: torch.Tensor,
    bits: int,
    norm_weight: torch.Tensor | None,
    smooth: torch.Tensor | None,
) -> int:
    """Validate activation-quantization inputs; return K."""
    if bits not in (4, 8):
        raise ValueError(f"activation bits must be 4 or 8, got {bits}")
    if not x.is_floating_point():
        raise ValueError(f"activations must be a float tensor, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"activations need a non-empty last dimension, got {_shape(x)}")
    k = x.shape[-1]
    if bits == 4 and k % 2:
        raise ValueError(f"int4 activations need an even K, got K={k}")
    _check_float_vector("norm_weight", norm_weight, k, x.device)
    _check_float_vector("smooth", smooth, k, x.device)
    return k


def check_gemm(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    group_size: int | None,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    *,
    a_int4: bool,
    w_int4: bool,
) -> int:
    """Validate a scaled integer GEMM's operands; return the effective group size.

    ``a`` is int8 [M, K] (or packed uint8 [M, K // 2] when ``a_int4``), ``w`` is int8 [N, K]
    (or packed uint8 [N, K // 2] when ``w_int4``). ``w_scale`` is float32 [N] / [N, 1]
    (per channel, group size K) or [N, K // group_size].
    """
    a_dtype = torch.uint8 if a_int4 else torch.int8
    w_dtype = torch.uint8 if w_int4 else torch.int8
    if a.dtype != a_dtype or a.dim() != 2:
        raise ValueError(f"activations must be 2-D {a_dtype}, got {a.dtype} {_shape(a)}")
    if w.dtype != w_dtype or w.dim() != 2:
        raise ValueError(f"weights must be 2-D {w_dtype}, got {w.dtype} {_shape(w)}")
    m = a.shape[0]
    k = a.shape[1] * (2 if a_int4 else 1)
    n, kw = w.shape[0], w.shape[1] * (2 if w_int4 else 1)
    if k != kw:
        raise ValueError(f"K mismatch: activations {_shape(a)} give K={k}, weights "
                         f"{_shape(w)} give K={kw}")
    if k == 0 or n == 0:
        raise ValueError(f"empty GEMM: K={k}, N={n}")
    for name, t in (("activation scale", a_scale), ("weights", w), ("weight scale", w_scale)):
        if t.device != a.device:
            raise ValueError(f"{name} is on {t.device}, activations on {a.device}")
    if a_scale.dtype != torch.float32 or a_scale.numel() != m or a_scale.dim() not in (1, 2):
        raise ValueError(f"activation scale must be float32 [M] or [M, 1] with M={m}, got "
                         f"{a_scale.dtype} {_shape(a_scale)}")
    if w_scale.dtype != torch.float32 or w_scale.dim() not in (1, 2) or w_scale.shape[0] != n:
        raise ValueError(f"weight scale must be float32 [N] or [N, G] with N={n}, got "
                         f"{w_scale.dtype} {_shape(w_scale)}")
    groups = 1 if w_scale.dim() == 1 else w_scale.shape[1]
    if group_size is None:
        if k % groups:
            raise ValueError(f"K={k} does not split into {groups} weight-scale groups")
        group_size = k // groups
    if group_size <= 0 or k % group_size:
        raise ValueError(f"K={k} is not a multiple of group_size={group_size}")
    if k // group_size != groups:
        raise ValueError(f"weight scale {_shape(w_scale)} has {groups} groups but K={k} with "
                         f"group_size={group_size} needs {k // group_size}")
    _check_float_vector("bias", bias, n, a.device)
    _check_residual(residual, m, n, a.device)
    return group_size


def check_w4a8(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    group_scale: torch.Tensor | None,
    group_size: int | None,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
) -> int | None:
    """Validate a W4A8 GEMM in the K-half / progressive format; return the group size.

    ``a`` int8 [M, K]; ``w`` uint8 [N, padded_k(K) // 2]; ``w_scale`` float32 [N];
    ``group_scale`` int8 [N, K // group_size] (group a multiple of 128) or None (per channel).
    """
    if a.dtype != torch.int8 or a.dim() != 2:
        raise ValueError(f"activations must be 2-D int8, got {a.dtype} {_shape(a)}")
    if w.dtype != torch.uint8 or w.dim() != 2:
        raise ValueError(f"W4A8 weights must be 2-D uint8 (K-half packed), got {w.dtype} "
                         f"{_shape(w)}")
    m, k = a.shape
    n = w.shape[0]
    if k == 0 or n == 0:
        raise ValueError(f"empty GEMM: K={k}, N={n}")
    if k > MAX_K:
        raise ValueError(f"K={k} exceeds {MAX_K}, where the int32 accumulator could overflow")
    if w.shape[1] * 2 != padded_k(k):
        raise ValueError(f"weights {_shape(w)} do not hold K={k} in the K-half layout (rows of "
                         f"{padded_k(k) // 2} bytes); re-quantize older artifacts")
    for name, t in (("activation scale", a_scale), ("weight scale", w_scale),
                    ("group scale", group_scale)):
        if t is not None and t.device != a.device:
            raise ValueError(f"{name} is on {t.device}, activations on {a.device}")
    if a_scale.dtype != torch.float32 or a_scale.numel() != m or a_scale.dim() not in (1, 2):
        raise ValueError(f"activation scale must be float32 [M] or [M, 1] with M={m}, got "
                         f"{a_scale.dtype} {_shape(a_scale)}")
    if w_scale.dtype != torch.float32 or _shape(w_scale) != (n,):
        raise ValueError(f"W4A8 weight scale must be float32 [{n}] (per channel), got "
                         f"{w_scale.dtype} {_shape(w_scale)}")
    if group_scale is None:
        if group_size not in (None, k):
            raise ValueError(f"group_size={group_size} needs integer group scales")
    else:
        if group_scale.dtype != torch.int8 or group_scale.dim() != 2 \
                or group_scale.shape[0] != n:
            raise ValueError(f"group scale must be int8 [{n}, G], got {group_scale.dtype} "
                             f"{_shape(group_scale)}")
        groups = group_scale.shape[1]
        group_size = group_size or (k // groups if k % groups == 0 else 0)
        if group_size <= 0 or group_size % PACK_K or k % group_size or k // group_size != groups:
            raise ValueError(f"group scale {_shape(group_scale)} and group_size={group_size} "
                             f"do not split K={k} into groups that are multiples of {PACK_K}")
    _check_float_vector("bias", bias, n, a.device)
    _check_residual(residual, m, n, a.device)
    return group_size
