"""Weight formats as objects: one class per integer scheme, chosen per layer by name.

A format knows how one QuantLinear stores its weight (buffer shapes and dtypes), how a
float weight is packed into that storage, how the storage unpacks to the exact integer /
float reference, which kernel entry runs it, and how many bytes it stores. QuantLinear and
the clip search dispatch through `format_of(scheme)` instead of branching on the bits
string, so a new format (e.g. a per-row-block mix) is one class here.

Formats (names are QuantScheme.bits):
- ``w8a8``: int8 [N, K], float32 scales [N] (per channel) or [N, K/g];
- ``w4a8``: the K-half int4 layout of kernels/int4_layout.py, uint8 [N, padded_k(K)/2],
  float32 scales [N] and, when grouped, int8 group scales [N, K/g] (two-level scales);
- ``w4a4``: two int4 per byte along K (low nibble = even k), uint8 [N, K/2], float32
  scales [N] or [N, K/g].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantvla_ros.kernels import dispatch, reference
from quantvla_ros.kernels.int4_layout import (
    dequantize_progressive,
    pack_khalf,
    padded_k,
    quantize_progressive,
    unpack_khalf,
)
from quantvla_ros.quant.quantizers import dequantize_weight, quantize_weight


@dataclass(frozen=True)
class Storage:
    """Shapes and dtypes of a linear's weight buffers (group_scale None: not stored)."""

    weight_q: tuple[tuple[int, ...], torch.dtype]
    weight_scale: tuple[int, ...]
    group_scale: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Packed:
    """A packed weight: integer storage, float32 scales and optional int8 group scales."""

    weight_q: torch.Tensor
    weight_scale: torch.Tensor
    group_scale: torch.Tensor | None = None


class WeightFormat:
    """Base: symmetric round-to-nearest per channel / per group with flat float scales."""

    name: str = ""
    w_bits: int = 8
    a_bits: int = 8

    def storage(self, n: int, k: int, group_size: int | None) -> Storage:
        """Return the buffer shapes of an [N, K] weight."""
        scale = (n,) if group_size is None else (n, k // group_size)
        return Storage(((n, self._cols(k)), self._dtype()), scale)

    def _cols(self, k: int) -> int:
        return k

    def _dtype(self) -> torch.dtype:
        return torch.int8

    def pack(self, w: torch.Tensor, group_size: int | None,
             clip: torch.Tensor | None = None) -> Packed:
        """Quantize a float weight [N, K] (optional per-channel clip ratios) into storage."""
        q, scale = quantize_weight(w, self.w_bits, group_size, clip)
        return Packed(self._pack_int(q), scale)

    def _pack_int(self, q: torch.Tensor) -> torch.Tensor:
        return q

    def int_weight(self, weight_q: torch.Tensor, k: int) -> torch.Tensor:
        """Return the integer values int8 [N, K] of the stored weight."""
        return weight_q

    def dequantize(self, q: torch.Tensor, scale: torch.Tensor, group_scale, group_size):
        """Float32 [N, K] from integer values and the stored scales (the exact reference)."""
        return dequantize_weight(q, scale, group_size)

    def fake_quantize(self, w: torch.Tensor, group_size: int | None,
                      clip: torch.Tensor | None = None) -> torch.Tensor:
        """Return w [N, K] as this format stores it, de-quantized (float32)."""
        q, scale = quantize_weight(w, self.w_bits, group_size, clip)
        return dequantize_weight(q, scale, group_size)

    def linear(self, x, weight_q, weight_scale, group_scale, *, bias, out_dtype, group_size,
               smooth):
        """Quantize x per token and run this format's integer GEMM (kernels/dispatch.py)."""
        raise NotImplementedError

    def matmul(self, x_q, x_scale, weight_q, weight_scale, group_scale, *, group_size,
               out_dtype, bias=None):
        """Scaled GEMM of already quantized int8 rows (x_q [M, K], x_scale [M]) (+ bias)."""
        raise NotImplementedError(f"{self.name} takes no pre-quantized int8 rows")

    def stored_bytes(self, n: int, k: int, group_size: int | None) -> int:
        """Exact bytes of the weight buffers of an [N, K] linear (bias / smooth excluded)."""
        s = self.storage(n, k, group_size)
        shape, dtype = s.weight_q
        total = _numel(shape) * torch.empty((), dtype=dtype).element_size()
        total += _numel(s.weight_scale) * 4
        return total + (_numel(s.group_scale) if s.group_scale is not None else 0)


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


class W8A8(WeightFormat):
    """int8 weights, int8 per-token activations."""

    name, w_bits, a_bits = "w8a8", 8, 8

    def linear(self, x, weight_q, weight_scale, group_scale, *, bias, out_dtype, group_size,
               smooth):
        """int8 x int8 GEMM."""
        return dispatch.linear_w8a8(x, weight_q, weight_scale, bias=bias, out_dtype=out_dtype,
                                    group_size=group_size, smooth=smooth)

    def matmul(self, x_q, x_scale, weight_q, weight_scale, group_scale, *, group_size,
               out_dtype, bias=None):
        """int8 x int8 GEMM of pre-quantized rows."""
        return dispatch.matmul_w8a8(x_q, x_scale, weight_q, weight_scale, bias=bias,
                                    group_size=group_size, out_dtype=out_dtype)


class W4A4(WeightFormat):
    """int4 weights two per byte along K, int4 per-token activations."""

    name, w_bits, a_bits = "w4a4", 4, 4

    def _cols(self, k: int) -> int:
        return k // 2

    def _dtype(self) -> torch.dtype:
        return torch.uint8

    def _pack_int(self, q: torch.Tensor) -> torch.Tensor:
        return reference.pack_int4(q)

    def int_weight(self, weight_q: torch.Tensor, k: int) -> torch.Tensor:
        """Unpack the low / high nibbles (even / odd k)."""
        return reference.unpack_int4(weight_q)

    def linear(self, x, weight_q, weight_scale, group_scale, *, bias, out_dtype, group_size,
               smooth):
        """int4 x int4 GEMM."""
        return dispatch.linear_w4a4(x, weight_q, weight_scale, bias=bias, out_dtype=out_dtype,
                                    group_size=group_size, smooth=smooth)


class W4A8(WeightFormat):
    """K-half packed int4 weights with two-level (float32 x int8) scales, int8 activations."""

    name, w_bits, a_bits = "w4a8", 4, 8

    def storage(self, n: int, k: int, group_size: int | None) -> Storage:
        """Scales are always [N]; grouped weights add int8 group scales [N, K/g]."""
        groups = (n, k // group_size) if group_size is not None else None
        return Storage(((n, padded_k(k) // 2), torch.uint8), (n,), groups)

    def pack(self, w: torch.Tensor, group_size: int | None,
             clip: torch.Tensor | None = None) -> Packed:
        """Progressive quantization (int4_layout.quantize_progressive), K-half packing."""
        q, scale, group_scale = quantize_progressive(w, group_size, clip)
        return Packed(pack_khalf(q), scale, group_scale)

    def int_weight(self, weight_q: torch.Tensor, k: int) -> torch.Tensor:
        """Unpack the K-half layout, dropping the padding columns."""
        return unpack_khalf(weight_q, k)

    def dequantize(self, q: torch.Tensor, scale: torch.Tensor, group_scale, group_size):
        """Float scale x int8 group scale x int4 value."""
        return dequantize_progressive(q, scale, group_scale, group_size)

    def fake_quantize(self, w: torch.Tensor, group_size: int | None,
                      clip: torch.Tensor | None = None) -> torch.Tensor:
        """Quantize and de-quantize without packing (the same values, cheaper)."""
        q, s1, s2 = quantize_progressive(w, group_size, clip)
        return dequantize_progressive(q, s1, s2, group_size)

    def linear(self, x, weight_q, weight_scale, group_scale, *, bias, out_dtype, group_size,
               smooth):
        """int8 x K-half int4 GEMM with progressive scales."""
        return dispatch.linear_w4a8(x, weight_q, weight_scale, bias=bias, out_dtype=out_dtype,
                                    group_size=group_size, smooth=smooth,
                                    group_scale=group_scale)

    def matmul(self, x_q, x_scale, weight_q, weight_scale, group_scale, *, group_size,
               out_dtype, bias=None):
        """int8 x K-half int4 GEMM of pre-quantized rows."""
        return dispatch.matmul_w4a8(x_q, x_scale, weight_q, weight_scale,
                                    group_scale=group_scale, group_size=group_size,
                                    bias=bias, out_dtype=out_dtype)


FORMATS: dict[str, WeightFormat] = {f.name: f for f in (W8A8(), W4A8(), W4A4())}


def format_named(name: str) -> WeightFormat:
    """Return the format called ``name`` (``w4a8``, ...); ValueError names the known ones."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown weight format {name!r}; known: {', '.join(FORMATS)}") \
            from None


def format_of(scheme) -> WeightFormat:
    """Return the format of a QuantScheme (its ``bits`` name)."""
    return format_named(scheme.bits)
