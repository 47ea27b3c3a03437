"""SmoothQuant-style smoothing: move activation outliers into the weights before quantizing.

x W^T = (x / s)(W s)^T with s_j = max|x_j|^alpha / max|W_:,j|^(1-alpha). Where the linear's
input is an RMSNorm output, 1/s folds into the norm (all linears reading it absorb s, float
ones included); elsewhere the QuantLinear keeps s and the kernel divides x by it.
"""

from __future__ import annotations

import torch
from torch import nn


def smoothing_factors(x_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float):
    """Return SmoothQuant factors s [K] for the linears reading one input.

    The weight absmax per input channel is taken over all ``weights``; s is kept >= 1e-5.
    """
    w_absmax = torch.stack([w.float().abs().amax(0) for w in weights]).amax(0)
    s = x_absmax.float().clamp(min=1e-5).pow(alpha) / w_absmax.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-5)


@torch.no_grad()
def fold_into_norm(norm: nn.Module, s: torch.Tensor) -> None:
    """Make the norm's output x / s.

    A model's norm says how (`divide_output_`); torch's affine LayerNorm scales its weight
    and bias. Anything else has no per-channel gain to fold into.
    """
    if hasattr(norm, "divide_output_"):
        norm.divide_output_(s)
    elif isinstance(norm, nn.LayerNorm) and norm.weight is not None:
        for p in (norm.weight, norm.bias):
            if p is not None:
                p.copy_((p.float() / s).to(p.dtype))
    else:
        raise TypeError(f"cannot fold smoothing into {type(norm).__name__}")


@torch.no_grad()
def absorb(linear: nn.Linear, s: torch.Tensor) -> None:
    """Multiply the weight's input columns by s, so that (x / s) W'^T equals x W^T."""
    linear.weight.copy_((linear.weight.float() * s[None, :]).to(linear.weight.dtype))


def norm_groups(model) -> list[tuple[str, list[str]]]:
    """(norm name, names of the linears reading only its output), as the model declares them.

    A model without `norm_groups` folds nothing: its quantized linears keep their divisor.
    """
    groups = getattr(model, "norm_groups", None)
    return groups() if groups is not None else []
