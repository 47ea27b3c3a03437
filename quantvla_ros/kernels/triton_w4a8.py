"""Triton W4A8 GEMM: int8 activations x packed int4 weights (unpacked in registers).

The int32 dot runs on int8 operands; weights stay packed two per byte in memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from quantvla_ros.kernels.configs import GemmConfig
from quantvla_ros.kernels.gemm_launch import launch_scaled_gemm
from quantvla_ros.kernels.triton_common import scaled_gemm_body


@triton.jit
def _w4a8_kernel(a_ptr, xs_ptr, w_ptr, ws_ptr, bias_ptr, res_ptr, out_ptr,
                M, N, K, group_size, units_per_split, num_units,
                stride_am, stride_wn, stride_wsn, stride_wsg, stride_rm, stride_om,
                HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
                PER_CHANNEL: tl.constexpr, BLOCKS_PER_GROUP: tl.constexpr,
                ATOMIC_OUT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                BK: tl.constexpr, GROUP_M: tl.constexpr):
    scaled_gemm_body(a_ptr, xs_ptr, w_ptr, ws_ptr, bias_ptr, res_ptr, out_ptr,
                     M, N, K, group_size, units_per_split, num_units,
                     stride_am, stride_wn, stride_wsn, stride_wsg, stride_rm, stride_om,
                     HAS_BIAS, HAS_RES, PER_CHANNEL, BLOCKS_PER_GROUP, ATOMIC_OUT,
                     False, True, BM, BN, BK, GROUP_M)


def w4a8_gemm(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    w_packed: torch.Tensor,
    w_scale: torch.Tensor,
    *,
    group_size: int | None = None,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    config: GemmConfig | None = None,
) -> torch.Tensor:
    """``y = s_x * sum_g s_w[:, g] * acc_g (+ bias) (+ residual)`` as out_dtype [M, N].

    Int8 activations [M, K] and packed int4 weights [N, K // 2]; x_scale float32 [M, 1];
    w_scale float32 [N] (per channel) or [N, K // group_size].
    """
    return launch_scaled_gemm(
        _w4a8_kernel, x_q, x_scale, w_packed, w_scale, group_size=group_size, bias=bias,
        residual=residual, out_dtype=out_dtype, config=config, a_int4=False, w_int4=True,
    )
