"""Exact byte accounting of a plan: what each linear of the layout stores, per option.

The budget `--budget B` is a fraction of the layout linears' bf16 bytes (weights and biases
at 2 bytes, as footprint.py counts them). A quantized linear weighs what the artifact
loader's empty module holds (packed weights, every scale tensor, bias at bf16, the index
buffer of an un-permuted row-blocked linear), so planned bytes equal stored bytes.
"""

from __future__ import annotations

import torch
from torch import nn

from quantvla_ros.quant.apply import empty_quantized
from quantvla_ros.quant.footprint import BF16, stored_bytes
from quantvla_ros.quant.plan import Plan, RowBlocks
from quantvla_ros.quant.row_blocks import empty_row_blocks
from quantvla_ros.quant.scheme import QuantScheme


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
