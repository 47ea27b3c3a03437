"""The contract between `quantvla quantize --method M --budget B` and a method's code.

A method is an object registered by name in workflows/methods.py (`quantvla` is the
default: the layout's scheme everywhere, no plan). It has

    name: str
    plan(ctx: MethodContext) -> Plan
        Runs before quantization, on the float teacher; decides per linear of the layout
        its scheme, bf16, or W8A8 / W4A8 row blocks, so that `plan_bytes` (quant/budget.py,
        exact stored bytes) stays within ctx.budget_bytes. It must not modify ctx.model.
    refine(ctx: MethodContext, student: nn.Module, plan: Plan) -> dict
        Runs after the plan is applied (the integer student), before ATM / OHB; may change
        the student in place (e.g. DA-PTQ's CSRC folds). Returns JSON-ready fields, recorded
        under the manifest's `quantization.allocation.refine`. Return {} if nothing to do.

Label-free: the context carries observations turned into model inputs and the float
teacher; no recorded actions exist in it (the buffers hold none). Errors are measured
against the teacher's own chunks from the same noise (`ctx.sample`).

What the manifest records (quant/manifest.py, format version 4 when method != quantvla):
`quantization.method`, `quantization.budget` (fraction of the layout's bf16 bytes),
`quantization.layers` (per-linear schemes), `quantization.row_blocks` (RowBlocks per
linear), `quantization.allocation` (Plan.record plus bytes: what the method chose and why).
Linears kept bf16 are left out of `quantized_modules` and listed in allocation["float"].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from quantvla_ros.models.family import Layout
from quantvla_ros.quant.scheme import QuantScheme


@dataclass(frozen=True)
class RowBlocks:
    """One linear's output rows in two blocks after a permutation: `hi_rows` at `hi`.

    The rest is at `lo`; both read int8 activations (one activation quantization, two GEMMs).

    `consumer` names the linear whose input columns absorbed the permutation (free at
    runtime: GeGLU is elementwise, so gate / up rows permute into down's columns); None means
    an int32 index buffer puts the outputs back in order after the two GEMMs (an extra
    gather at runtime, for outputs that feed the residual stream).
    """

    hi_rows: int
    hi: QuantScheme
    lo: QuantScheme
    consumer: str | None = None

    def __post_init__(self) -> None:
        """Both blocks must read the same int8 activation rows."""
        if self.hi.a_bits != 8 or self.lo.a_bits != 8 or self.hi.hadamard or self.lo.hadamard:
            raise ValueError("row blocks mix int8-activation schemes only (w8a8, w4a8)")
        if self.hi_rows < 0:
            raise ValueError(f"hi_rows must be >= 0, got {self.hi_rows}")

    def to_dict(self) -> dict[str, Any]:
        """Return the manifest form."""
        return {"hi_rows": self.hi_rows, "hi": self.hi.to_dict(), "lo": self.lo.to_dict(),
                "consumer": self.consumer}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RowBlocks:
        """Parse the manifest form."""
        return cls(int(d["hi_rows"]), QuantScheme(**d["hi"]), QuantScheme(**d["lo"]),
                   d.get("consumer"))


@dataclass
class Plan:
    """What a method decided for the layout's linears.

    layers: per-linear schemes (a linear not named keeps the layout's scheme);
    keep_float: layout linears left in bf16 (not quantized);
    row_blocks: linears split into W8A8 / W4A8 row blocks;
    permutations: per row-blocked linear, the output-row order (new row i = old row
        perm[i]); folded into the weights (and the consumer's columns), not stored;
    record: JSON-ready allocation details for the manifest (costs, bytes, solver).
    """

    layers: dict[str, QuantScheme] = field(default_factory=dict)
    keep_float: tuple[str, ...] = ()
    row_blocks: dict[str, RowBlocks] = field(default_factory=dict)
    permutations: dict[str, torch.Tensor] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodContext:
    """What a method sees: the float teacher, the layout, the budget, calibration inputs.

    model: the teacher's float model (read only; deep-copy it to try variants);
    schemes: each layout linear's default scheme (the `quantvla` method's choice);
    budget / budget_bytes: the asked fraction of `bf16_bytes` and the bytes it allows
        (None without --budget);
    bf16_bytes: the layout linears' bytes in bf16 (weights and biases, 2 bytes each);
    batches: calibration model inputs with fixed noise (prepare_batches), no actions;
    sample(model, batches) -> actions [N, H, A] in model space (no grad);
    action_dims: how many leading action dims are the robot's (the rest is padding);
    options: method options by name (--method-option K=V), as strings;
    grad_chunk(model, batch) -> actions [B, H, A] differentiable in the activations (the
        family's `grad_chunk`), or None where the family offers none (no first-order rows).
    """

    model: nn.Module
    layout: Layout
    scheme: QuantScheme
    schemes: dict[str, QuantScheme]
    budget: float | None
    budget_bytes: int | None
    bf16_bytes: int
    batches: list[dict]
    sample: Callable[[nn.Module, list[dict]], torch.Tensor]
    action_dims: int
    options: dict[str, str] = field(default_factory=dict)
    log: Callable[..., None] = print
    grad_chunk: Callable[[nn.Module, dict], torch.Tensor] | None = None
