"""Dry-run sizing of a layout on the meta device: nothing is allocated.

Quantized sizes are the buffers of the empty quantized modules the artifact loader builds
(apply.empty_quantized), summed as numel * element_size, so a change of the packed format
(another scale tensor, another packing) shows up here without touching this file.
"""

from __future__ import annotations

import torch
from torch import nn

from quantvla_ros.models.build import fp32_tensor_names
from quantvla_ros.models.family import Layout
from quantvla_ros.quant.apply import empty_quantized
from quantvla_ros.quant.layouts import (
    part_of,
    scheme_label,
    schemes,
    select_embeddings,
)
from quantvla_ros.quant.scheme import QuantScheme

BF16, FP32 = 2, 4


def _bytes(module: nn.Module, dtype_bytes: int) -> int:
    """Return a float module's own parameter bytes at `dtype_bytes` per element (bf16 = 2)."""
    return sum(p.numel() for p in module.parameters(recurse=False)) * dtype_bytes


def stored_bytes(module: nn.Module) -> int:
    """Return the bytes of a module's state tensors as they are stored (numel * element size)."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _part_rows(rows: list[dict]) -> list[dict]:
    parts: dict[str, dict] = {}
    for r in rows:
        if r["quantized"]:
            p = parts.setdefault(r["group"], {"part": r["group"], "scheme": r["scheme"],
                                              "modules": 0, "bytes_bf16": 0, "bytes": 0})
            p["modules"] += 1
            p["bytes_bf16"] += r["bytes_bf16"]
            p["bytes"] += r["bytes"]
    return list(parts.values())


def inspect_layout(model: nn.Module, layout: Layout, scheme: QuantScheme) -> dict:
    """Per linear / embedding: part, shape, scheme, bf16 and quantized bytes; totals, saving.

    Quantized sizes are those of the empty (meta) module the artifact loader assigns into,
    with the float remainder (bias) at bf16, so packed weights, every scale tensor (float32
    or int8), bias and smoothing buffers are counted exactly as stored. `parts` gives the
    scheme of each group of modules (main layout, each Part, embeddings).
    """
    chosen = schemes(model, layout, scheme)
    embeddings = set(select_embeddings(model, layout))
    modules, q_bf16, q_bytes = [], 0, 0
    for name, m in model.named_modules():
        if not isinstance(m, nn.Linear | nn.Embedding):
            continue
        bf16 = _bytes(m, BF16)
        row = {"name": name, "part": name.split(".")[0], "shape": list(m.weight.shape),
               "quantized": name in chosen or name in embeddings, "bytes_bf16": bf16,
               "bytes": bf16, "scheme": "bf16", "group": None}
        if name in chosen:
            part = part_of(name, layout)
            row.update(scheme=scheme_label(chosen[name]), group=part.name if part else "main")
            q = empty_quantized(m, chosen[name], dtype=torch.bfloat16)
        elif name in embeddings:
            row.update(scheme=f"int{scheme.w_bits} rows", group="embeddings")
            q = empty_quantized(m, embedding_bits=scheme.w_bits, dtype=torch.bfloat16)
        if row["quantized"]:
            row["bytes"] = stored_bytes(q)
            q_bf16 += bf16
            q_bytes += row["bytes"]
        modules.append(row)
    # A bf16 deployment keeps norm parameters (RMSNorm, adaRMS dense) in float32.
    fp32 = fp32_tensor_names(model)
    total_bf16 = sum(p.numel() * (FP32 if n in fp32 else BF16)
                     for n, p in model.named_parameters())
    total = total_bf16 - q_bf16 + q_bytes
    # Every model family names what a full checkpoint holds that it never runs.
    dead = model.never_executed_params()
    return {
        "layout": layout.name, "bits": scheme.bits, "group_size": scheme.group_size,
        "quantized_modules": len(chosen), "quantized_embeddings": sorted(embeddings),
        "parts": _part_rows(modules),
        "quantized_bytes_bf16": q_bf16, "quantized_bytes": q_bytes,
        "quantized_fraction": q_bytes / q_bf16 if q_bf16 else 1.0,
        "total_bytes_bf16": total_bf16, "total_bytes": total,
        "total_fraction": total / total_bf16,
        "saving": 1.0 - q_bytes / q_bf16 if q_bf16 else 0.0,
        "total_saving": 1.0 - total / total_bf16,
        "never_executed_modules": list(model.never_executed_modules()),
        "never_executed_params": dead,
        "checkpoint_bytes_bf16": total_bf16 + dead * BF16,
        "modules": modules,
    }


# What a process holds beyond its model's tensors: interpreter and torch (about 0.4 GB
# resident here) and one 64 MiB load slice (load); plus one chunk's activations and the
# reference kernels' temporaries (one inference: 1.8 GiB measured on full-size GR00T N1.5);
# calibration batches, recorded statistics and the bf16 -> float32 copy of the layer being
# packed (quantize). Measured on full-size pi05 and GR00T N1.5: docs/memory.md.
LOAD_MARGIN = 1 << 30
INFER_MARGIN = 2 << 30
QUANTIZE_MARGIN = 2 << 30


def state_bytes(model: nn.Module, dtype: torch.dtype) -> int:
    """Return the bytes of a float model's tensors loaded in ``dtype`` (norms float32)."""
    keep = fp32_tensor_names(model)
    size = torch.empty((), dtype=dtype).element_size()
    return sum(t.numel() * (FP32 if n in keep else size) if t.is_floating_point()
               else t.numel() * t.element_size() for n, t in model.state_dict().items())


def peak_estimates(model: nn.Module, report: dict) -> dict:
    """Return expected peaks (bytes) of load + one inference and quantize (`inspect_layout`).

    Load holds the quantized model at bf16 plus LOAD_MARGIN (INFER_MARGIN with one
    inference); quantize holds the float teacher, the packed layers beside it and
    QUANTIZE_MARGIN (the student shares the teacher's other tensors).
    """
    return {
        "load_bf16": report["total_bytes"] + LOAD_MARGIN,
        "infer_bf16": report["total_bytes"] + INFER_MARGIN,
        "quantize_bf16": report["total_bytes_bf16"] + report["quantized_bytes"]
        + QUANTIZE_MARGIN,
        "quantize_fp32": state_bytes(model, torch.float32) + report["quantized_bytes"]
        + QUANTIZE_MARGIN,
    }
