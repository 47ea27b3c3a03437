"""QuantLinear: packed integer weights and scales only, integer GEMM at inference."""

from __future__ import annotations

import torch
from torch import nn

from quantvla_ros.kernels import dispatch, reference
from quantvla_ros.kernels.int4_layout import (
    dequantize_progressive,
    pack_khalf,
    padded_k,
    quantize_progressive,
    unpack_khalf,
)
from quantvla_ros.quant import hadamard
from quantvla_ros.quant.quantizers import dequantize_weight, quantize_weight, search_clip
from quantvla_ros.quant.scheme import QuantScheme

_LINEAR = {"w8a8": dispatch.linear_w8a8, "w4a8": dispatch.linear_w4a8,
           "w4a4": dispatch.linear_w4a4}


class QuantLinear(nn.Module):
    """y = dequant(int GEMM(quant(x [/ smooth] [H]), W_q)) + bias, in x's dtype.

    Buffers: `weight_q` int8 [N, K] (W8A8), uint8 [N, K/2] (W4A4: two per byte, low
    nibble = even k) or uint8 [N, padded_k(K)/2] (W4A8: the K-half layout of
    kernels/int4_layout.py); `weight_scale` float32 [N] or [N, K/group] (W4A8: always [N],
    with the integer `weight_group_scale` int8 [N, K/group] when grouped); optional `bias`
    and `smooth` [K] (activation divisor the kernel fuses). No float copy of the weight exists.
    """

    def __init__(self, in_features: int, out_features: int, scheme: QuantScheme,
                 bias: bool = False, smooth: bool = False, device=None,
                 dtype: torch.dtype = torch.float32):
        """Allocate empty buffers for the scheme's packed weight, scales, bias and smooth."""
        super().__init__()
        self.in_features, self.out_features, self.scheme = in_features, out_features, scheme
        g = scheme.group_size
        if g is not None and in_features % g:
            raise ValueError(f"K={in_features} is not a multiple of group_size={g}")
        self.hadamard_block = hadamard.block_size(in_features) if scheme.hadamard else 0
        packed = scheme.w_bits == 4
        cols = in_features if not packed else (
            padded_k(in_features) // 2 if self.progressive else in_features // 2)
        self.register_buffer("weight_q", torch.empty(
            out_features, cols, dtype=torch.uint8 if packed else torch.int8, device=device))
        grouped = (out_features, in_features // g) if g is not None else None
        n_scale = (out_features,) if g is None or self.progressive else grouped
        self.register_buffer("weight_scale", torch.empty(n_scale, dtype=torch.float32,
                                                         device=device))
        self.register_buffer("weight_group_scale", torch.empty(
            grouped, dtype=torch.int8, device=device) if self.progressive and g else None)
        self.register_buffer("bias", torch.empty(out_features, dtype=dtype, device=device)
                             if bias else None)
        self.register_buffer("smooth", torch.empty(in_features, dtype=torch.float32,
                                                   device=device) if smooth else None)

    @classmethod
    @torch.no_grad()
    def from_float(cls, linear: nn.Linear, scheme: QuantScheme,
                   x_calib: torch.Tensor | None = None,
                   smooth: torch.Tensor | None = None) -> QuantLinear:
        """Quantize a float linear; `x_calib` feeds the clip search, `smooth` divides x."""
        if smooth is not None and scheme.hadamard:
            raise ValueError("a smoothing buffer cannot be combined with the Hadamard rotation")
        w = linear.weight.float()
        q = cls(linear.in_features, linear.out_features, scheme, linear.bias is not None,
                smooth is not None, device=w.device, dtype=linear.weight.dtype)
        if smooth is not None:
            q.smooth.copy_(smooth)
            w = w * smooth.float()[None, :]
        if q.hadamard_block:
            w = hadamard.rotate(w, q.hadamard_block)
        clip = None
        if scheme.clip_search and x_calib is not None:
            clip = search_clip(w, q.transform_input(x_calib).float(), scheme.w_bits,
                               scheme.group_size, progressive=q.progressive)
        if q.progressive:
            w_int, scale, group_scale = quantize_progressive(w, scheme.group_size, clip)
            q.weight_q.copy_(pack_khalf(w_int))
            if group_scale is not None:
                q.weight_group_scale.copy_(group_scale)
        else:
            w_int, scale = quantize_weight(w, scheme.w_bits, scheme.group_size, clip)
            q.weight_q.copy_(reference.pack_int4(w_int) if scheme.w_bits == 4 else w_int)
        q.weight_scale.copy_(scale)
        if linear.bias is not None:
            q.bias.copy_(linear.bias)
        return q

    @property
    def progressive(self) -> bool:
        """W4A8 stores K-half packed weights with two-level (float x int8) scales."""
        return self.scheme.bits == "w4a8"

    def transform_input(self, x: torch.Tensor) -> torch.Tensor:
        """Return x as the kernel quantizes it: rotated if Hadamard is on, before smoothing."""
        return hadamard.rotate(x, self.hadamard_block) if self.hadamard_block else x

    def int_weight(self) -> torch.Tensor:
        """Return the integer weight values int8 [N, K] (unpacked for int4)."""
        if self.progressive:
            return unpack_khalf(self.weight_q, self.in_features)
        return reference.unpack_int4(self.weight_q) if self.scheme.w_bits == 4 else self.weight_q

    def dequantized_weight(self) -> torch.Tensor:
        """Float32 weight in the rotated / smoothed input basis (for tests and reports)."""
        if self.progressive:
            return dequantize_progressive(self.int_weight(), self.weight_scale,
                                          self.weight_group_scale, self.scheme.group_size)
        return dequantize_weight(self.int_weight(), self.weight_scale, self.scheme.group_size)

    def scale_output_channels(self, factor: torch.Tensor) -> None:
        """Multiply output channels by factor [N]: folds ATM / OHB into the dequant scales."""
        f = factor.to(self.weight_scale)
        self.weight_scale.mul_(f.view(-1, *([1] * (self.weight_scale.dim() - 1))))
        if self.bias is not None:
            self.bias.mul_(factor.to(self.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize x, run the integer GEMM and dequantize into x's dtype."""
        s = self.scheme
        extra = {"group_scale": self.weight_group_scale} if self.progressive else {}
        return _LINEAR[s.bits](
            self.transform_input(x), self.weight_q, self.weight_scale, bias=self.bias,
            out_dtype=x.dtype, group_size=s.group_size, smooth=self.smooth, **extra,
        )

    def extra_repr(self) -> str:
        """Describe shape, bits, group size, Hadamard block and smoothing for repr()."""
        s = self.scheme
        return (f"in={self.in_features}, out={self.out_features}, {s.bits}, "
                f"group={s.group_size}, hadamard={self.hadamard_block}, "
                f"smooth={self.smooth is not None}")
