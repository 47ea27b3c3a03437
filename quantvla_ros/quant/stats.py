"""Attention-logit and o_proj-output statistics, gathered through the model's observer hook."""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from quantvla_ros.models.gemma import AttentionObserver

TOWERS = ("backbone", "expert")


class Moments:
    """Running count, sum and sum of squares (float64), one slot per head or one in total."""

    def __init__(self):
        """Start empty: the first `add` sets the shape."""
        self.n = self.s = self.ss = None

    def add(self, n, s, ss) -> None:
        """Accumulate a count, a sum and a sum of squares (tensors of one shape)."""
        if self.n is None:
            self.n, self.s, self.ss = n, s, ss
        else:
            self.n, self.s, self.ss = self.n + n, self.s + s, self.ss + ss

    def std(self) -> torch.Tensor:
        """Return the population standard deviation of what was added."""
        mean = self.s / self.n
        return (self.ss / self.n - mean**2).clamp(min=0).sqrt()

    def rms(self) -> torch.Tensor:
        """Return the root mean square of what was added."""
        return (self.ss / self.n).sqrt()


class StatsCollector(AttentionObserver):
    """Observer: per (tower, layer) the std of each head's logits and the o_proj output RMS.

    Logits are the pre-softmax q.k / sqrt(d) after RoPE; masked positions are excluded.
    Statistics are pooled over every call (all samples and denoising steps) and also kept per
    step (`step` is set by the model's denoising loop; None during the prefix).
    """

    def __init__(self, towers=TOWERS, layers=None, logits=True, o_proj=True):
        """Observe `towers` (names) and `layers` (all if None); `logits` / `o_proj` select."""
        self.towers = {TOWERS.index(t) for t in towers}
        self.layers = None if layers is None else set(layers)
        self.want_logits, self.want_oproj = logits, o_proj
        self.step = None
        self.logits: dict = defaultdict(Moments)
        self.oproj: dict = defaultdict(Moments)
        self.logits_by_step: dict = defaultdict(Moments)
        self.oproj_by_step: dict = defaultdict(Moments)

    def _wanted(self, layer: int, tower: int) -> bool:
        return tower in self.towers and (self.layers is None or layer in self.layers)

    def attention(self, layer, tower, q, k, mask_rows) -> None:
        """Add the moments of each head's logits over the positions `mask_rows` allows."""
        if not (self.want_logits and self._wanted(layer, tower)):
            return
        h, d = q.shape[1], q.shape[-1]
        k = k.repeat_interleave(h // k.shape[1], dim=1)
        logits = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(d)
        m = mask_rows[:, None].expand_as(logits).double()
        moments = (m.sum((0, 2, 3)), (logits * m).sum((0, 2, 3)),
                   (logits.pow(2) * m).sum((0, 2, 3)))
        key = (TOWERS[tower], layer)
        self.logits[key].add(*moments)
        self.logits_by_step[key + (self.step,)].add(*moments)

    def o_proj(self, layer, tower, out, valid_rows) -> None:
        """Add the moments of the o_proj output over its valid (non-padding) rows."""
        if not (self.want_oproj and self._wanted(layer, tower)):
            return
        v = valid_rows[..., None].double()
        x = out.double()
        moments = (v.sum() * x.shape[-1], (x * v).sum(), (x.pow(2) * v).sum())
        key = (TOWERS[tower], layer)
        self.oproj[key].add(*moments)
        self.oproj_by_step[key + (self.step,)].add(*moments)

    def logit_std(self) -> dict:
        """Return each head's logit std [H] (float32) keyed (tower name, layer)."""
        return {k: m.std().float() for k, m in self.logits.items()}

    def oproj_rms(self) -> dict:
        """Return the o_proj output RMS keyed (tower name, layer), over every call."""
        return {k: float(m.rms()) for k, m in self.oproj.items()}
