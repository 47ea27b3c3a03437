"""SmoothQuant-style smoothing: move activation outliers into the weights before quantizing.

x W^T = (x / s)(W s)^T with s_j = max|x_j|^alpha / max|W_:,j|^(1-alpha). Where the linear's
input is an RMSNorm output, 1/s folds into the norm (all linears reading it absorb s, float
ones included); elsewhere the QuantLinear keeps s and the kernel divides x by it.
"""

from __future__ import annotations

import torch
from torch import nn

from quantvla_ros.models.layers import AdaRMSNorm, RMSNorm


def smoothing_factors(x_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float):
    """Return SmoothQuant factors s [K] for the linears reading one input.

    The weight absmax per input channel is taken over all ``weights``; s is kept >= 1e-5.
    """
    w_absmax = torch.stack([w.float().abs().amax(0) for w in weights]).amax(0)
    s = x_absmax.float().clamp(min=1e-5).pow(alpha) / w_absmax.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-5)


@torch.no_grad()
def fold_into_norm(norm: nn.Module, s: torch.Tensor) -> None:
    """Make the norm's output x / s."""
    if isinstance(norm, RMSNorm):  # y = r * (1 + w)
        w = norm.weight
        w.copy_(((1.0 + w.float()) / s - 1.0).to(w.dtype))
    elif isinstance(norm, AdaRMSNorm):  # y = r * (1 + scale) + shift, [scale|shift|gate] rows
        d = s.numel()
        weight, bias = norm.dense.weight, norm.dense.bias
        weight[:d] = (weight[:d].float() / s[:, None]).to(weight.dtype)
        bias[:d] = ((1.0 + bias[:d].float()) / s - 1.0).to(bias.dtype)
        weight[d:2 * d] = (weight[d:2 * d].float() / s[:, None]).to(weight.dtype)
        bias[d:2 * d] = (bias[d:2 * d].float() / s).to(bias.dtype)
    else:
        raise TypeError(f"cannot fold smoothing into {type(norm).__name__}")


@torch.no_grad()
def absorb(linear: nn.Linear, s: torch.Tensor) -> None:
    """Multiply the weight's input columns by s, so that (x / s) W'^T equals x W^T."""
    linear.weight.copy_((linear.weight.float() * s[None, :]).to(linear.weight.dtype))


def norm_groups(model) -> list[tuple[str, list[str]]]:
    """(norm name, names of the linears reading its output) in every Gemma layer.

    A key/value-only layer contributes its input norm with k/v and no MLP group.
    """
    groups = []
    for tower in ("backbone", "expert"):
        for i, layer in enumerate(getattr(model, tower).layers):
            p = f"{tower}.layers.{i}"
            qkv = ("k", "v") if layer.kv_only else ("q", "k", "v")
            groups.append((f"{p}.input_layernorm", [f"{p}.self_attn.{x}_proj" for x in qkv]))
            if not layer.kv_only:
                groups.append((f"{p}.post_attention_layernorm",
                               [f"{p}.mlp.{x}_proj" for x in ("gate", "up")]))
    return groups
