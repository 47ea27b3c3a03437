"""Weight quantization: symmetric int8 / int4, per channel or per group, optional clip search."""

from __future__ import annotations

import torch

from quantvla_ros.kernels.int4_layout import dequantize_progressive, quantize_progressive

QMAX = {8: 127, 4: 7}
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)


def _grouped(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    n, k = w.shape
    g = k if group_size is None else group_size
    if k % g:
        raise ValueError(f"K={k} is not a multiple of the group size {g}")
    return w.reshape(n, k // g, g)


def quantize_weight(w: torch.Tensor, bits: int, group_size: int | None = None,
                    clip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest symmetric quantization of w [N, K].

    Returns (q int8 [N, K] in [-qmax, qmax], scale float32 [N] or [N, K / group_size]).
    `clip` [N] shrinks each channel's range (values beyond it saturate).
    """
    qmax = QMAX[bits]
    wg = _grouped(w.float(), group_size)
    amax = wg.abs().amax(-1)
    if clip is not None:
        amax = amax * clip.float()[:, None]
    scale = (amax / qmax).clamp(min=1e-12)
    q = torch.round(wg / scale[..., None]).clamp(-qmax, qmax).to(torch.int8)
    scale = scale if group_size is not None else scale[:, 0]
    return q.reshape(w.shape), scale


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor, group_size: int | None):
    """Float32 [N, K] from integer weights and their scales."""
    if group_size is None:
        return q.float() * scale.float()[:, None]
    return (_grouped(q.float(), group_size) * scale.float()[..., None]).reshape(q.shape)


def fake_quantize(w: torch.Tensor, bits: int, group_size: int | None,
                  clip: torch.Tensor | None = None, progressive: bool = False) -> torch.Tensor:
    """Return w [N, K] after quantization and dequantization (float32)."""
    if progressive:
        q, s1, s2 = quantize_progressive(w, group_size, clip)
        return dequantize_progressive(q, s1, s2, group_size)
    q, s = quantize_weight(w, bits, group_size, clip)
    return dequantize_weight(q, s, group_size)


def search_clip(w: torch.Tensor, x: torch.Tensor, bits: int, group_size: int | None,
                ratios=CLIP_RATIOS, progressive: bool = False, fake=None) -> torch.Tensor:
    """Per output channel, the clip ratio minimizing ||x w^T - x w_q^T||^2 on calibration x.

    ``progressive`` quantizes as W4A8 stores weights (two-level scales, int4_layout.py);
    ``fake(w, group_size, clip)``, when given, is the format's own quantize-dequantize
    (formats.WeightFormat.fake_quantize) and overrides ``bits`` / ``progressive``.
    """
    if fake is None:
        def fake(w_, g, c):
            return fake_quantize(w_, bits, g, c, progressive)
    x = x.reshape(-1, x.shape[-1]).float()
    ref = x @ w.float().t()
    best_err = torch.full((w.shape[0],), float("inf"), device=w.device)
    best = torch.ones(w.shape[0], device=w.device)
    for r in ratios:
        clip = torch.full((w.shape[0],), r, device=w.device)
        err = (x @ fake(w, group_size, clip).t() - ref).pow(2).sum(0)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, clip, best)
    return best
