"""Forward hooks that record what the quantizer needs from calibration runs."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class LinearInputs:
    """Per linear: running absmax of each input channel and a bounded sample of input rows.

    The family's run tells it (`padding`) which rows of which stack are padding, and those
    are left out of both statistics: a padded prompt position carries no robot data and must
    not set a smoothing factor or a clip ratio.
    """

    def __init__(self, max_rows: int = 256, seed: int = 0, percentile: float | None = None):
        """Keep at most ``max_rows`` input rows per linear, drawn with a seeded generator.

        ``percentile`` (e.g. 99.9) also records, per input channel, the running maximum over
        calls of that percentile of |x| within each call (`clip`): the activation clip
        thresholds of the authors' QuantVLA quantizer.
        """
        self.max_rows = max_rows
        self.percentile = percentile
        self.clip: dict[str, torch.Tensor] = {}
        self.absmax: dict[str, torch.Tensor] = {}
        self.rows: dict[str, torch.Tensor] = {}
        self.step: int | None = None
        self._valid: dict[str, torch.Tensor] = {}  # tower name -> valid rows [B, S]
        self._gen = torch.Generator().manual_seed(seed)

    def padding(self, prefix: str, valid_rows: torch.Tensor) -> None:
        """Remember the real rows [B, S] of the linears under module ``prefix``."""
        self._valid[prefix] = valid_rows

    def _valid_rows(self, name: str) -> torch.Tensor | None:
        """Return the valid rows of the longest registered prefix of ``name``, if any."""
        found = [p for p in self._valid if name == p or name.startswith(p + ".")]
        return self._valid[max(found, key=len)] if found else None

    def record(self, name: str, x: torch.Tensor) -> None:
        """Fold one input batch of linear ``name`` into its channel absmax and row sample."""
        valid = self._valid_rows(name)
        if valid is not None and x.dim() == 3 and tuple(valid.shape) == tuple(x.shape[:2]):
            x = x[valid.to(x.device)]  # drop padding rows
        x = x.detach().reshape(-1, x.shape[-1]).float()
        if x.shape[0] == 0:
            return
        amax = x.abs().amax(0)
        self.absmax[name] = torch.maximum(self.absmax[name], amax) if name in self.absmax \
            else amax
        if self.percentile is not None:
            c = abs_percentile(x, self.percentile)
            self.clip[name] = torch.maximum(self.clip[name], c) if name in self.clip else c
        if self.max_rows <= 0:
            return
        pick = torch.randperm(x.shape[0], generator=self._gen)[: self.max_rows]
        rows = torch.cat([self.rows[name], x[pick.to(x.device)]]) if name in self.rows \
            else x[pick.to(x.device)]
        if rows.shape[0] > self.max_rows:  # keep a uniform subsample, bounded in memory
            keep = torch.randperm(rows.shape[0], generator=self._gen)[: self.max_rows]
            rows = rows[keep.to(rows.device)]
        self.rows[name] = rows


def abs_percentile(x: torch.Tensor, percentile: float) -> torch.Tensor:
    """Per column of x [R, K]: the ``percentile`` of |x| over the rows.

    Linear interpolation between order statistics, as torch.quantile does; sorting has no
    input-size limit.
    """
    v = x.abs().sort(dim=0).values
    pos = percentile / 100.0 * (v.shape[0] - 1)
    lo = int(pos)
    hi = min(lo + 1, v.shape[0] - 1)
    return v[lo] + (pos - lo) * (v[hi] - v[lo])


@contextmanager
def record_linear_inputs(model: nn.Module, names: list[str], store: LinearInputs):
    """Record the inputs of the linears ``names`` into ``store`` inside the block.

    Pass ``store`` to the family's `sample` for the runs inside the block so that padding
    rows are left out. The forward pre-hooks are removed on exit, also on error.
    """
    modules = dict(model.named_modules())
    handles = []
    for name in names:
        def hook(_mod, args, _name=name):
            store.record(_name, args[0])
        handles.append(modules[name].register_forward_pre_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()
