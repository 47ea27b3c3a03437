"""Fused residual add + (adaptive) RMSNorm, optionally quantized, in one kernel launch.

The model defers each block's gated residual `h + out * gate` into the next norm
(models/layers.add_residual); this kernel adds, stores the new residual stream, normalizes
and either stores the normalized row (float path) or quantizes it per token (the quantized
blocks of quant/pi_fused.py). One program per row holds the row in registers (read once).

Norms: Gemma's `rms(h) * (1 + w)` (weight [W]) or pi0.5's adaptive `rms(h) * scale1 + shift`
(scale1 = 1 + scale and shift per sample, [B or 1, 1, W], passed as pointers like `smooth`).
Per-sample vectors (gate, scale1, shift) are indexed by row // rows_per_sample.

`round_to_dtype` rounds the intermediate results to h's dtype where the float model does
(after rms, after the modulation), so the float output equals the unfused torch path up to
float rounding, and a quantized output equals quantizing the float model's normalized rows.
The torch reference (`add_norm_reference`) is that unfused path; CPU tensors run it.
"""

from __future__ import annotations

import torch

from quantvla_ros.kernels import dispatch, reference


def add_norm_reference(h, delta=None, gate=None, *, weight=None, scale1=None, shift=None,
                       eps: float = 1e-6, round_to_dtype: bool = True, quant_bits=None):
    """Torch path of `add_norm`: the model's unfused operations, in its order."""
    if delta is not None:
        h = h + (delta if gate is None else delta * gate)
    xf = h.float()
    r = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if round_to_dtype:
        r = r.to(h.dtype)
    y = r * (1.0 + weight.float()) if weight is not None else r * scale1 + shift
    y = y.to(h.dtype) if round_to_dtype else y
    if quant_bits is None:
        return h, y
    return h, reference.quantize_activations(y, quant_bits)


def _vector(t, b: int, w: int, name: str):
    """Return (tensor, per-sample stride) for a [W] or [B or 1, 1, W] vector, or (None, 0)."""
    if t is None:
        return None, 0
    if t.dim() == 1:
        t = t.view(1, 1, -1)
    if t.dim() != 3 or t.shape[1] != 1 or t.shape[2] != w or t.shape[0] not in (1, b):
        raise ValueError(f"{name} must be [W], [1, 1, W] or [B, 1, W], got {tuple(t.shape)}")
    if t.stride(-1) != 1:
        t = t.contiguous()
    return t, (t.stride(0) if t.shape[0] > 1 else 0)


def add_norm(h: torch.Tensor, delta: torch.Tensor | None = None,
             gate: torch.Tensor | None = None, *, weight: torch.Tensor | None = None,
             scale1: torch.Tensor | None = None, shift: torch.Tensor | None = None,
             eps: float = 1e-6, round_to_dtype: bool = True, quant_bits: int | None = None,
             backend: str = "auto"):
    """Return (h + delta * gate, its norm) for h [B, S, W]; quantized: (h, (q, scale)).

    Give either `weight` (Gemma RMSNorm) or `scale1` and `shift` (adaRMS). The new residual
    is h itself when `delta` is None. Quantized output is int8 [B*S, W] (or packed int4)
    with float32 scales [B*S, 1], as dispatch.quantize_activations returns.
    """
    if (weight is None) == (scale1 is None or shift is None):
        raise ValueError("give either weight or both scale1 and shift")
    if h.dim() != 3:
        raise ValueError(f"h must be [B, S, W], got {tuple(h.shape)}")
    if delta is not None and delta.shape != h.shape:
        raise ValueError(f"delta must be {tuple(h.shape)}, got {tuple(delta.shape)}")
    chosen = dispatch.resolve_backend(backend, h.device)
    name = f"add_norm{'' if quant_bits is None else f'_q{quant_bits}'}"
    if chosen == "meta":
        dispatch.notify_launch(f"meta.{name}")
        h_new = torch.empty_like(h) if delta is not None else h
        return h_new, _empty_outputs(h, quant_bits)
    if chosen == "reference":
        out = add_norm_reference(h, delta, gate, weight=weight, scale1=scale1, shift=shift,
                                 eps=eps, round_to_dtype=round_to_dtype,
                                 quant_bits=quant_bits)
        dispatch.notify_launch(f"reference.{name}")
        return out
    from quantvla_ros.kernels.norm_triton import add_norm_triton

    b, s, w = h.shape
    vecs = {k: _vector(t, b, w, k) for k, t in
            (("gate", gate), ("weight", weight), ("scale1", scale1), ("shift", shift))}
    out = add_norm_triton(h, delta, vecs, s, eps, round_to_dtype, quant_bits)
    dispatch.notify_launch(f"triton.{name}")
    return out


def _empty_outputs(h, quant_bits):
    m, w = h.shape[0] * h.shape[1], h.shape[2]
    if quant_bits is None:
        return torch.empty_like(h)
    q = torch.empty(m, w if quant_bits == 8 else w // 2, device=h.device,
                    dtype=torch.int8 if quant_bits == 8 else torch.uint8)
    return q, torch.empty(m, 1, device=h.device)


def geglu_reference(gate_up: torch.Tensor) -> torch.Tensor:
    """Torch path of `geglu`: `gelu_tanh(gate) * up` over the halves of [..., 2N]."""
    g, u = gate_up.chunk(2, dim=-1)
    return torch.nn.functional.gelu(g, approximate="tanh") * u


def geglu(gate_up: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Return `gelu_tanh(gate) * up` [..., N] for float [..., 2N] (one GEMM's output)."""
    if gate_up.shape[-1] % 2:
        raise ValueError(f"gate_up needs an even last dimension, got {tuple(gate_up.shape)}")
    chosen = dispatch.resolve_backend(backend, gate_up.device)
    if chosen == "meta":
        dispatch.notify_launch("meta.geglu")
        return gate_up.new_empty(*gate_up.shape[:-1], gate_up.shape[-1] // 2)
    if chosen == "reference":
        dispatch.notify_launch("reference.geglu")
        return geglu_reference(gate_up)
    from quantvla_ros.kernels.norm_triton import geglu_triton

    out = geglu_triton(gate_up)
    dispatch.notify_launch("triton.geglu")
    return out
