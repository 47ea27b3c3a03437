"""Triton scaled integer GEMMs: W8A8, W4A8 (packed int4 weights) and W4A4 (both packed).

All three launch ``triton_common.scaled_gemm_kernel``: int4 operands stay packed two per
byte in memory and are unpacked to int8 in registers for the int8 tensor-core dot (Hopper
has no int4 tensor cores, so W4A4 gains bandwidth, not math). Each computes
``y = s_x * sum_g s_w[:, g] * acc_g (+ bias) (+ residual)`` as out_dtype [M, N], with
x_scale float32 [M, 1] and w_scale float32 [N] (per channel) or [N, K // group_size].
"""

from __future__ import annotations

import torch

from quantvla_ros.kernels.configs import GemmConfig
from quantvla_ros.kernels.gemm_launch import launch_scaled_gemm


def w8a8_gemm(x_q: torch.Tensor, x_scale: torch.Tensor, w_q: torch.Tensor,
              w_scale: torch.Tensor, **options) -> torch.Tensor:
    """Int8 activations [M, K] x int8 weights [N, K].

    ``options``: group_size, bias, residual, out_dtype (default float32), config.
    """
    return _gemm(x_q, x_scale, w_q, w_scale, a_int4=False, w_int4=False, **options)


def w4a8_gemm(x_q: torch.Tensor, x_scale: torch.Tensor, w_packed: torch.Tensor,
              w_scale: torch.Tensor, **options) -> torch.Tensor:
    """Int8 activations [M, K] x packed int4 weights [N, K // 2] (options as w8a8_gemm)."""
    return _gemm(x_q, x_scale, w_packed, w_scale, a_int4=False, w_int4=True, **options)


def w4a4_gemm(x_packed: torch.Tensor, x_scale: torch.Tensor, w_packed: torch.Tensor,
              w_scale: torch.Tensor, **options) -> torch.Tensor:
    """Packed int4 activations [M, K // 2] x packed int4 weights [N, K // 2]."""
    return _gemm(x_packed, x_scale, w_packed, w_scale, a_int4=True, w_int4=True, **options)


def _gemm(a, a_scale, w, w_scale, *, a_int4: bool, w_int4: bool,
          group_size: int | None = None, bias: torch.Tensor | None = None,
          residual: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32,
          config: GemmConfig | None = None) -> torch.Tensor:
    return launch_scaled_gemm(a, a_scale, w, w_scale, group_size=group_size, bias=bias,
                              residual=residual, out_dtype=out_dtype, config=config,
                              a_int4=a_int4, w_int4=w_int4)
