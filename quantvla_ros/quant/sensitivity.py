"""QVLA's label-free oracle: how much quantizing a unit moves the float teacher's actions.

Two measurements, both against the teacher's own chunk from the same noise (no recorded
action is read: the context's batches are observations turned into model inputs):

- `unit_errors`, exact: one unit (a linear, or gate + up together) at a time through the
  real integer path (QuantLinear: the deployment's weight and activation quantizers), every
  other weight float; the mean squared action error over the robot's action dims, per
  frame (`unit_frame_errors`), reduced over frames by `reduce_frames`: `pooled` (the mean,
  i.e. the pooled mean squared error) or `median` (robust to a few frames whose actions
  jump).
- `row_errors`, first order per output row (QVLA's per-channel sensitivity, without the
  isotropy assumption; shared/QVLA-DAPTQ.md 3.1 step 1): backpropagate random probes
  <v, A> through the whole sampler; each call of a hooked linear adds sum_tokens G * dY per
  row, dY = Q_b(x) - x W^T the output error the real quantized layer makes on that call; the
  square of the sum over calls estimates ||dA||^2 for quantizing that row alone
  (E_v[(v^T J dY)^2] = ||J dY||^2). The family's `grad_chunk` runs the differentiable
  sampler (ctx.grad_chunk; pi0 / pi0.5: the uncached path); a family without one gets no
  row errors (runtime/family.py's default says so).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from quantvla_ros.quant.apply import _set_module
from quantvla_ros.quant.plan import MethodContext
from quantvla_ros.quant.qlinear import QuantLinear
from quantvla_ros.quant.scheme import QuantScheme


def shared_copy(model: nn.Module) -> nn.Module:
    """Return a module tree that shares every tensor with `model` (swaps leave it intact)."""
    return copy.deepcopy(model, {id(t): t for t in (*model.parameters(), *model.buffers())})


def action_error(actions: torch.Tensor, reference: torch.Tensor, dims: int) -> float:
    """Mean squared error over the first `dims` action dims (model space)."""
    d = actions[..., :dims].double() - reference[..., :dims].double()
    return float(d.pow(2).mean())


def frame_errors(actions: torch.Tensor, reference: torch.Tensor, dims: int) -> torch.Tensor:
    """Per-frame mean squared error over the first `dims` action dims: float64 [N]."""
    d = actions[..., :dims].double() - reference[..., :dims].double()
    return d.pow(2).flatten(1).mean(1)


COSTS = ("pooled", "median")


def reduce_frames(errors: torch.Tensor, cost: str) -> float:
    """One cost from per-frame errors [N]: `pooled` (mean) or `median` (the lower middle).

    Every frame holds the same number of action values, so `pooled` is the mean squared
    error over all of them (`action_error`).
    """
    if cost == "pooled":
        return float(errors.mean())
    if cost == "median":
        return float(errors.median())
    raise ValueError(f"cost is {' or '.join(COSTS)}, not {cost!r}")


def unit_errors(ctx: MethodContext, units: list[tuple[str, ...]],
                schemes: dict[str, dict[str, QuantScheme]], progress=None,
                cost: str = "pooled"
                ) -> tuple[torch.Tensor, dict[tuple[str, ...], dict[str, float]]]:
    """Exact action error of each unit at each option: {unit: {option: cost}}.

    The per-frame errors of `unit_frame_errors`, reduced by `reduce_frames(., cost)`. Also
    returns the teacher's chunk the errors are measured against.
    """
    reference, frames = unit_frame_errors(ctx, units, schemes, progress)
    return reference, {u: {o: reduce_frames(e, cost) for o, e in per.items()}
                       for u, per in frames.items()}


@torch.no_grad()
def unit_frame_errors(ctx: MethodContext, units: list[tuple[str, ...]],
                      schemes: dict[str, dict[str, QuantScheme]], progress=None
                      ) -> tuple[torch.Tensor, dict[tuple[str, ...], dict[str, torch.Tensor]]]:
    """Exact per-frame action error of each unit at each option: {unit: {option: [N]}}.

    `schemes[option][linear]` is the scheme a linear gets at that option; [N] is the mean
    squared error of each calibration frame (`frame_errors`). Also returns the teacher's
    chunk the errors are measured against.
    """
    model = shared_copy(ctx.model).eval()
    reference = ctx.sample(model, ctx.batches)
    out: dict[tuple[str, ...], dict[str, torch.Tensor]] = {}
    for unit in (progress(units) if progress else units):
        floats = {n: model.get_submodule(n) for n in unit}
        out[unit] = {}
        for option, table in schemes.items():
            for n in unit:
                _set_module(model, n, QuantLinear.from_float(floats[n], table[n]))
            out[unit][option] = frame_errors(ctx.sample(model, ctx.batches), reference,
                                             ctx.action_dims)
        for n, m in floats.items():
            _set_module(model, n, m)
    return reference, out


def supports_row_errors(ctx: MethodContext) -> bool:
    """Whether the model's family offers the differentiable sampler `row_errors` needs."""
    return ctx.grad_chunk is not None


class _RowProbe:
    """Hooks that add sum_tokens G * dY per row into the current probe's sums.

    A forward hook computes each call's quantized output errors; a tensor hook on the
    output multiplies them by the incoming gradient.
    """

    def __init__(self, model: nn.Module, names: list[str],
                 schemes: dict[str, dict[str, QuantScheme]]):
        self.quantized = {n: {o: QuantLinear.from_float(model.get_submodule(n), t[n])
                              for o, t in schemes.items()} for n in names}
        self.sums = {n: {o: None for o in schemes} for n in names}
        self.handles = [model.get_submodule(n).register_forward_hook(self._hook(n))
                        for n in names]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            x = inputs[0].detach()
            with torch.no_grad():
                errors = {o: (q(x) - output.detach()).float()
                          for o, q in self.quantized[name].items()}
            if output.requires_grad:
                output.register_hook(lambda g, e=errors: self._add(name, g, e))
        return hook

    def _add(self, name: str, grad: torch.Tensor, errors: dict[str, torch.Tensor]) -> None:
        g = grad.float().reshape(-1, grad.shape[-1])
        for o, e in errors.items():
            row = (g * e.reshape(-1, e.shape[-1])).sum(0).double()
            prev = self.sums[name][o]
            self.sums[name][o] = row if prev is None else prev + row

    def take(self) -> dict[str, dict[str, torch.Tensor]]:
        """Return and reset this probe's per-row sums."""
        out, self.sums = self.sums, {n: dict.fromkeys(s) for n, s in self.sums.items()}
        return out

    def close(self) -> None:
        """Remove the hooks."""
        for h in self.handles:
            h.remove()


def row_errors(ctx: MethodContext, names: list[str],
               schemes: dict[str, dict[str, QuantScheme]], probes: int = 4, seed: int = 0,
               progress=None) -> dict[str, dict[str, torch.Tensor]]:
    """First-order action error per output row: {linear: {option: float64 [N]}}.

    The mean over probes of (sum over calls and tokens of G * dY)^2, summed over batches
    (probes are independent across frames, so frames add), divided by the number of action
    values: the first-order counterpart of `unit_errors`' mean squared error.
    """
    model = shared_copy(ctx.model).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:  # gradients flow to activations only
        p.requires_grad_(False)
    probe = _RowProbe(model, names, schemes)
    gen = torch.Generator().manual_seed(seed)
    total = {n: {o: torch.zeros(model.get_submodule(n).out_features, dtype=torch.float64)
                 for o in schemes} for n in names}
    count = 0
    try:
        for b in (progress(ctx.batches) if progress else ctx.batches):
            with torch.enable_grad():
                actions = ctx.grad_chunk(model, b)
                valid = actions[..., :ctx.action_dims]
                count += valid.numel()
                for r in range(probes):
                    v = torch.randn(valid.shape, generator=gen).to(valid)
                    valid.backward(v, retain_graph=r < probes - 1)
                    for n, per in probe.take().items():
                        for o, s in per.items():
                            if s is not None:
                                total[n][o] += s.cpu() ** 2 / probes
    finally:
        probe.close()
        for p in params:
            p.requires_grad_(True)
    return {n: {o: t / max(count, 1) for o, t in per.items()} for n, per in total.items()}
