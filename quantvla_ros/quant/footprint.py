"""Dry-run sizing of a layout on the meta device: nothing is allocated."""

from __future__ import annotations

import torch
from torch import nn

from quantvla_ros.models.build import fp32_tensor_names
from quantvla_ros.models.gemma import GemmaLayer
from quantvla_ros.models.layers import RMSNorm
from quantvla_ros.quant.layouts import Layout, select
from quantvla_ros.quant.qlinear import QuantLinear
from quantvla_ros.quant.scheme import QuantScheme

BF16, FP32 = 2, 4


def _bytes(module: nn.Module, dtype_bytes: int) -> int:
    """Return a float module's own parameter bytes at `dtype_bytes` per element (bf16 = 2)."""
    return sum(p.numel() for p in module.parameters(recurse=False)) * dtype_bytes


def never_executed_params(model: nn.Module) -> int:
    """Return the parameter count a full checkpoint holds for the model's never-run modules.

    The backbone's last layer needs only its input norm and k/v (see GemmaTower); its q/o
    projections, MLP, post-attention norm and the final norm are dropped at load, so neither
    the float nor the quantized totals count them.
    """
    cfg = model.cfg.backbone
    with torch.device("meta"):
        full, kv = GemmaLayer(cfg, adaptive=False), GemmaLayer(cfg, adaptive=False, kv_only=True)
        norm = RMSNorm(cfg.width)
    count = sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in kv.parameters())
    return count + sum(p.numel() for p in norm.parameters())


def inspect_layout(model: nn.Module, layout: Layout, scheme: QuantScheme) -> dict:
    """Per linear: part, shape, quantized?, bf16 and quantized bytes; totals and saving.

    Quantized sizes come from an empty QuantLinear on the meta device, so packed weights,
    scales (float32), bias and smoothing buffers are counted exactly as stored.
    """
    chosen = set(select(model, layout))
    modules, q_bf16, q_bytes = [], 0, 0
    for name, m in model.named_modules():
        if not isinstance(m, nn.Linear):
            continue
        bf16 = _bytes(m, BF16)
        row = {"name": name, "part": name.split(".")[0],
               "shape": [m.out_features, m.in_features], "quantized": name in chosen,
               "bytes_bf16": bf16, "bytes": bf16}
        if name in chosen:
            q = QuantLinear(m.in_features, m.out_features, scheme, bias=m.bias is not None,
                            device="meta", dtype=m.weight.dtype)
            stored = sum(t.numel() * t.element_size() for t in (q.weight_q, q.weight_scale))
            row["bytes"] = stored + (m.bias.numel() * BF16 if m.bias is not None else 0)
            q_bf16 += bf16
            q_bytes += row["bytes"]
        modules.append(row)
    # A bf16 deployment keeps norm parameters (RMSNorm, adaRMS dense) in float32.
    fp32 = fp32_tensor_names(model)
    total_bf16 = sum(p.numel() * (FP32 if n in fp32 else BF16)
                     for n, p in model.named_parameters())
    total = total_bf16 - q_bf16 + q_bytes
    dead = never_executed_params(model)
    return {
        "layout": layout.name, "bits": scheme.bits, "group_size": scheme.group_size,
        "quantized_modules": len(chosen),
        "quantized_bytes_bf16": q_bf16, "quantized_bytes": q_bytes,
        "quantized_fraction": q_bytes / q_bf16 if q_bf16 else 1.0,
        "total_bytes_bf16": total_bf16, "total_bytes": total,
        "saving": 1.0 - q_bytes / q_bf16 if q_bf16 else 0.0,
        "total_saving": 1.0 - total / total_bf16,
        "never_executed_modules": list(model.never_executed_modules()),
        "never_executed_params": dead,
        "checkpoint_bytes_bf16": total_bf16 + dead * BF16,
        "modules": modules,
    }
