"""QuantLinear: packed integer weights and scales only, integer GEMM at inference."""

from __future__ import annotations

import torch
from torch import nn

from quantvla_ros.quant import hadamard
from quantvla_ros.quant.formats import WeightFormat, format_of
from quantvla_ros.quant.quantizers import search_clip
from quantvla_ros.quant.scheme import QuantScheme


class QuantLinear(nn.Module):
    """y = dequant(int GEMM(quant(x [/ smooth] [H]), W_q)) + bias, in x's dtype.

    Buffers: `weight_q` int8 [N, K] (W8A8), uint8 [N, K/2] (W4A4: two per byte, low
    nibble = even k) or uint8 [N, padded_k(K)/2] (W4A8: the K-half layout of
    kernels/int4_layout.py); `weight_scale` float32 [N] or [N, K/group] (W4A8: always [N],
    with the integer `weight_group_scale` int8 [N, K/group] when grouped); optional `bias`
    and `smooth` [K] (activation divisor the kernel fuses), `act_clip` [K] (per-channel
    activation clip, when the scheme sets one). The layout of the weight buffers is the
    scheme's format's (formats.py). No float copy of the weight exists.
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
        store = self.format.storage(out_features, in_features, g)
        shape, dtype_q = store.weight_q
        self.register_buffer("weight_q", torch.empty(shape, dtype=dtype_q, device=device))
        self.register_buffer("weight_scale", torch.empty(store.weight_scale,
                                                         dtype=torch.float32, device=device))
        self.register_buffer("weight_group_scale", torch.empty(
            store.group_scale, dtype=torch.int8, device=device)
            if store.group_scale is not None else None)
        self.register_buffer("bias", torch.empty(out_features, dtype=dtype, device=device)
                             if bias else None)
        self.register_buffer("smooth", torch.empty(in_features, dtype=torch.float32,
                                                   device=device) if smooth else None)
        self.register_buffer("act_clip", torch.empty(in_features, dtype=torch.float32,
                                                     device=device)
                             if scheme.act_clip is not None else None)

    @classmethod
    @torch.no_grad()
    def from_float(cls, linear: nn.Linear, scheme: QuantScheme,
                   x_calib: torch.Tensor | None = None,
                   smooth: torch.Tensor | None = None,
                   act_clip: torch.Tensor | None = None) -> QuantLinear:
        """Quantize a float linear; `x_calib` feeds the clip search, `smooth` divides x.

        `act_clip` [K] (required when the scheme sets one) are the per-input-channel
        thresholds the activations are clipped to before their quantization.
        """
        if smooth is not None and scheme.hadamard:
            raise ValueError("a smoothing buffer cannot be combined with the Hadamard rotation")
        if (act_clip is None) != (scheme.act_clip is None):
            raise ValueError("act_clip thresholds are given exactly when the scheme clips")
        if act_clip is not None and smooth is not None:
            raise ValueError("activation clipping cannot be combined with smoothing")
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
                               scheme.group_size, fake=q.format.fake_quantize)
        q.store_packed(q.format.pack(w, scheme.group_size, clip))
        if act_clip is not None:
            q.act_clip.copy_(act_clip)
        if linear.bias is not None:
            q.bias.copy_(linear.bias)
        return q

    @property
    def format(self) -> WeightFormat:
        """The weight format object of this linear's scheme (formats.py)."""
        return format_of(self.scheme)

    @property
    def progressive(self) -> bool:
        """W4A8 stores K-half packed weights with two-level (float x int8) scales."""
        return self.format.name == "w4a8"

    def store_packed(self, packed) -> None:
        """Copy a `WeightFormat.pack` result into this layer's weight buffers."""
        self.weight_q.copy_(packed.weight_q)
        self.weight_scale.copy_(packed.weight_scale)
        if packed.group_scale is not None:
            self.weight_group_scale.copy_(packed.group_scale)

    def transform_input(self, x: torch.Tensor) -> torch.Tensor:
        """Return x as the kernel quantizes it: rotated if Hadamard is on, before smoothing."""
        return hadamard.rotate(x, self.hadamard_block) if self.hadamard_block else x

    def int_weight(self) -> torch.Tensor:
        """Return the integer weight values int8 [N, K] (unpacked for int4)."""
        return self.format.int_weight(self.weight_q, self.in_features)

    def dequantized_weight(self) -> torch.Tensor:
        """Float32 weight in the rotated / smoothed input basis (for tests and reports)."""
        return self.format.dequantize(self.int_weight(), self.weight_scale,
                                      self.weight_group_scale, self.scheme.group_size)

    def scale_output_channels(self, factor: torch.Tensor) -> None:
        """Multiply output channels by factor [N]: folds ATM / OHB into the dequant scales."""
        f = factor.to(self.weight_scale)
        self.weight_scale.mul_(f.view(-1, *([1] * (self.weight_scale.dim() - 1))))
        if self.bias is not None:
            self.bias.mul_(factor.to(self.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Clip x if calibrated to, quantize it, run the integer GEMM, dequantize (x's dtype)."""
        x = self.transform_input(x)
        if self.act_clip is not None:
            c = self.act_clip.to(x.dtype)
            x = torch.maximum(torch.minimum(x, c), -c)
        return self.format.linear(x, self.weight_q, self.weight_scale, self.weight_group_scale,
                                  bias=self.bias, out_dtype=x.dtype,
                                  group_size=self.scheme.group_size, smooth=self.smooth)

    def extra_repr(self) -> str:
        """Describe shape, bits, group size, Hadamard block and smoothing for repr()."""
        s = self.scheme
        return (f"in={self.in_features}, out={self.out_features}, {s.bits}, "
                f"group={s.group_size}, hadamard={self.hadamard_block}, "
                f"smooth={self.smooth is not None}"
                + (f", act_clip=p{s.act_clip:g}" if s.act_clip is not None else ""))
