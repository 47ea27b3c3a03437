"""Exact byte accounting of a plan: what each linear of the layout stores, per option.

The budget `--budget B` is a fraction of the layout linears' bf16 bytes (weights and biases
at 2 bytes, as footprint.py counts them). A quantized linear weighs what the artifact
loader's empty module holds (packed weights, every scale tensor, bias at bf16, the index
buffer of an un-permuted row-blocked linear), so planned bytes equal stored bytes.
`stored_layout_bytes` counts a built or loaded model the same way, so the manifest records
what the artifact holds, including what a method's refine step added (DA-PTQ's CSRC d as
biases, on linears inside or outside the layout: `method_bytes`).
"""

from __future__ import annotations

import torch
from torch import nn

from quantvla_ros.quant.apply import empty_quantized
from quantvla_ros.quant.footprint import BF16, stored_bytes
from quantvla_ros.quant.plan import Plan, RowBlocks
from quantvla_ros.quant.row_blocks import empty_row_blocks
from quantvla_ros.quant.scheme import QuantScheme

FP32_KEPT = ("weight_scale", "smooth", "act_clip")  # float32 in every artifact


def bf16_bytes(module: nn.Module) -> int:
    """Bytes of a float linear's weight and bias in bf16."""
    return sum(p.numel() for p in module.parameters(recurse=False)) * BF16


def option_bytes(module: nn.Module, option: QuantScheme | RowBlocks | None) -> int:
    """Return the stored bytes of one linear as `option` stores it (None: bf16)."""
    if option is None:
        return bf16_bytes(module)
    if isinstance(option, RowBlocks):
        return stored_bytes(empty_row_blocks(module, option, dtype=torch.bfloat16))
    return stored_bytes(empty_quantized(module, option, dtype=torch.bfloat16))


def layout_bf16_bytes(model: nn.Module, names) -> int:
    """Return the budget's base: the bf16 bytes of the layout's linears."""
    return sum(bf16_bytes(model.get_submodule(n)) for n in names)


def choice_of(name: str, schemes: dict[str, QuantScheme], plan: Plan):
    """Return what the plan stores linear `name` as: None (bf16), RowBlocks or a scheme."""
    if name in plan.keep_float:
        return None
    if name in plan.row_blocks:
        return plan.row_blocks[name]
    return plan.layers.get(name, schemes[name])


def plan_bytes(model: nn.Module, schemes: dict[str, QuantScheme], plan: Plan) -> int:
    """Exact stored bytes of the layout's linears under `plan` (`schemes`: the defaults)."""
    return sum(option_bytes(model.get_submodule(n), choice_of(n, schemes, plan))
               for n in schemes)


def built_bytes(module: nn.Module) -> int:
    """Return the stored bytes of a built linear, as `option_bytes` counts its option.

    Integer buffers and the float32-kept scales (``weight_scale``, ``smooth``, ``act_clip``)
    at their element size; float remainders (a bf16 linear's weight, biases, CSRC's d) at
    bf16.
    """
    total = 0
    for key, t in module.state_dict().items():
        size = BF16 if t.is_floating_point() and not key.endswith(FP32_KEPT) \
            else t.element_size()
        total += t.numel() * size
    return total


def stored_layout_bytes(model: nn.Module, names) -> int:
    """Exact bytes the linears ``names`` of a built / loaded model store in deployment."""
    return sum(built_bytes(model.get_submodule(n)) for n in names)


def method_bytes(student: nn.Module, teacher: nn.Module, names) -> int:
    """Bytes a method's artifact stores for the layout ``names``, everything it added counted.

    The student's layout linears as stored, plus what any other linear grew by against the
    float teacher (a bias CSRC folded into a float k / v projection outside the layout).
    """
    inside = set(names)
    floats = dict(teacher.named_modules())
    grown = 0
    for name, m in student.named_modules():
        parts = name.split(".")
        if not isinstance(m, nn.Linear) or any(".".join(parts[:i]) in inside
                                               for i in range(1, len(parts) + 1)):
            continue  # a layout linear, or a part of one, is counted above
        was = built_bytes(floats[name]) if name in floats else 0
        grown += max(built_bytes(m) - was, 0)
    return stored_layout_bytes(student, names) + grown
