"""Attention-logit and o_proj-output statistics, gathered through the model's observer hook.

Memory: the collector keeps three float64 numbers per head (logits) or per layer (o_proj),
pooled and per denoising step. Each observer call streams its tensor in chunks of at most
`chunk_elems` float32 elements (three such temporaries live at once), instead of
materializing the float64 logits [B, H, S, T] and their mask: on full pi0.5 with a batch of 8
the backbone prefix (S = T = 968) made that about 2.2 GB of temporaries per layer call (1.9
GB peak RSS growth measured); the chunks bound it to about 3 x 16 MB (89 MB measured, matmul
workspace included). Chunk moments are merged exactly (Chan et al.), in float64; logits in
float32 keep the std within about 1e-7 of a float64 computation.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from quantvla_ros.models.pi.gemma import AttentionObserver

TOWERS = ("backbone", "expert")
CHUNK_ELEMS = 1 << 22  # float32 elements per streamed chunk (16 MB)


class Moments:
    """Running count, mean and sum of squared deviations (float64), per head or in total.

    Parts are merged with Chan et al.'s parallel update, so the std is as accurate as a
    two-pass computation however the data arrive.
    """

    def __init__(self):
        """Start empty: the first `add` sets the shape."""
        self.n = self.mean = self.m2 = None

    def add(self, n, mean, m2) -> None:
        """Merge a part: its count, mean and sum of squared deviations (float64 tensors)."""
        if self.n is None:
            self.n, self.mean, self.m2 = n, mean, m2
            return
        total = self.n + n
        delta = mean - self.mean
        w = torch.where(total > 0, n / total.clamp(min=1), torch.zeros_like(total))
        self.mean = self.mean + delta * w
        self.m2 = self.m2 + m2 + delta.pow(2) * self.n * w
        self.n = total

    def std(self) -> torch.Tensor:
        """Return the population standard deviation of what was added."""
        return (self.m2 / self.n).clamp(min=0).sqrt()

    def rms(self) -> torch.Tensor:
        """Return the root mean square of what was added."""
        return (self.m2 / self.n + self.mean.pow(2)).sqrt()


def _part(x: torch.Tensor, mask: torch.Tensor, dims, count: torch.Tensor, view, inplace=False):
    """Count, mean and squared deviations of float32 `x` where `mask` (0/1) is set, over dims.

    `view` is the shape the mean broadcasts back to; `inplace` lets x be overwritten.
    """
    mean = (x * mask).sum(dims, dtype=torch.float64) / count.clamp(min=1)
    m = mean.float().view(view)
    dev = x.sub_(m).mul_(mask) if inplace else (x - m) * mask
    return count, mean, (dev * dev).sum(dims, dtype=torch.float64)


class StatsCollector(AttentionObserver):
    """Observer: per (tower, layer) the std of each head's logits and the o_proj output RMS.

    Logits are the pre-softmax q.k / sqrt(d) after RoPE, computed in float32; masked
    positions are excluded. Statistics are pooled over every call (all samples and denoising
    steps) and also kept per step (`step` is set by the model's denoising loop; None during
    the prefix).
    """

    def __init__(self, towers=TOWERS, layers=None, logits=True, o_proj=True,
                 chunk_elems: int = CHUNK_ELEMS, per_sample: bool = False):
        """Observe `towers` (names) and `layers` (all if None); `logits` / `o_proj` select.

        `per_sample` also keeps, per head, the sum and count of each sample's own logit std
        (over that sample's unmasked (query, key) pairs in one call): `logit_std_per_sample`
        is their mean over samples and calls, the authors' statistic.
        """
        self.per_sample = per_sample
        self.sample_std_sum: dict = {}
        self.sample_n: dict = defaultdict(int)
        self.towers = {TOWERS.index(t) for t in towers}
        self.layers = None if layers is None else set(layers)
        self.want_logits, self.want_oproj = logits, o_proj
        self.chunk_elems = int(chunk_elems)
        self.step = None
        self.logits: dict = defaultdict(Moments)
        self.oproj: dict = defaultdict(Moments)
        self.logits_by_step: dict = defaultdict(Moments)
        self.oproj_by_step: dict = defaultdict(Moments)

    def _wanted(self, layer: int, tower: int) -> bool:
        return tower in self.towers and (self.layers is None or layer in self.layers)

    def _add(self, pooled: dict, by_step: dict, key, part) -> None:
        pooled[key].add(*part)
        by_step[key + (self.step,)].add(*part)

    def attention(self, layer, tower, q, k, mask_rows) -> None:
        """Add the moments of each head's logits over the positions `mask_rows` allows."""
        if not (self.want_logits and self._wanted(layer, tower)):
            return
        b, h, s, d = q.shape
        t, group = k.shape[2], h // k.shape[1]
        heads = max(1, min(group, self.chunk_elems // max(1, b * s * t)))
        rows = s if heads > 1 else max(1, self.chunk_elems // max(1, b * t))
        scale = 1.0 / math.sqrt(d)
        full = [torch.zeros(h, dtype=torch.float64, device=q.device) for _ in range(3)]
        h0 = 0
        while h0 < h:  # query heads sharing one KV head, in chunks of rows
            h1 = min(h0 + heads, (h0 // group + 1) * group)
            kt = k[:, h0 // group:h0 // group + 1].float().transpose(-1, -2)
            acc, per = Moments(), Moments()
            for r0 in range(0, s, rows):
                m = mask_rows[:, None, r0:r0 + rows].float()
                logits = (q[:, h0:h1, r0:r0 + rows].float() @ kt).mul_(scale)
                if self.per_sample:  # moments per (sample, head) [B, h]
                    n_b = m.expand(b, -1, -1, -1).sum((1, 2, 3), dtype=torch.float64)
                    n_b = n_b[:, None].expand(-1, h1 - h0)
                    per.add(*_part(logits, m, (2, 3), n_b, (b, -1, 1, 1)))
                count = m.sum(dtype=torch.float64).expand(h1 - h0)
                acc.add(*_part(logits, m, (0, 2, 3), count, (1, -1, 1, 1), inplace=True))
            for dst, src in zip(full, (acc.n, acc.mean, acc.m2), strict=True):
                dst[h0:h1] = src
            if self.per_sample:
                self._add_samples((TOWERS[tower], layer), h, h0, h1, per)
            h0 = h1
        self._add(self.logits, self.logits_by_step, (TOWERS[tower], layer), tuple(full))

    def _add_samples(self, key, heads: int, h0: int, h1: int, per: Moments) -> None:
        """Add each sample's logit std of heads h0:h1 (samples with no unmasked pair: none)."""
        seen = per.n[:, 0] > 0
        std = (per.m2[seen] / per.n[seen]).clamp(min=0).sqrt()  # [B', h]
        total = self.sample_std_sum.setdefault(
            key, torch.zeros(heads, dtype=torch.float64, device=std.device))
        total[h0:h1] += std.sum(0)
        if h1 == heads:
            self.sample_n[key] += int(seen.sum())

    def o_proj(self, layer, tower, out, valid_rows) -> None:
        """Add the moments of the o_proj output over its valid (non-padding) rows."""
        if not (self.want_oproj and self._wanted(layer, tower)):
            return
        width = out.shape[-1]
        flat, valid = out.reshape(-1, width), valid_rows.reshape(-1)
        rows = max(1, self.chunk_elems // width)
        key = (TOWERS[tower], layer)
        for r0 in range(0, flat.shape[0], rows):
            v = valid[r0:r0 + rows, None].float()
            count = v.sum(dtype=torch.float64) * width
            self._add(self.oproj, self.oproj_by_step, key,
                      _part(flat[r0:r0 + rows].float(), v, (0, 1), count, (1, 1)))

    def logit_std(self) -> dict:
        """Return each head's logit std [H] (float32) keyed (tower name, layer)."""
        return {k: m.std().float() for k, m in self.logits.items()}

    def logit_std_per_sample(self) -> dict:
        """Return each head's mean per-sample logit std [H] (float32), if `per_sample`."""
        return {k: (v / max(self.sample_n[k], 1)).float()
                for k, v in self.sample_std_sum.items()}

    def oproj_rms(self) -> dict:
        """Return the o_proj output RMS keyed (tower name, layer), over every call."""
        return {k: float(m.rms()) for k, m in self.oproj.items()}


def per_step_ratios(teacher: StatsCollector, student: StatsCollector) -> dict:
    """Per layer and denoising step: head-averaged logit-std ratio and o_proj RMS ratio."""
    out = {}
    for (tower, li, step), m in sorted(student.logits_by_step.items(), key=str):
        if step is None or (tower, li, step) not in teacher.logits_by_step:
            continue
        t = teacher.logits_by_step[(tower, li, step)]
        ratio = float((t.std().double() / m.std().double().clamp(min=1e-30)).mean())
        out.setdefault(f"{tower}.{li}", {}).setdefault(step, {})["logit_std"] = ratio
    for (tower, li, step), m in student.oproj_by_step.items():
        if step is None or (tower, li, step) not in teacher.oproj_by_step:
            continue
        t = teacher.oproj_by_step[(tower, li, step)]
        out.setdefault(f"{tower}.{li}", {}).setdefault(step, {})["oproj_rms"] = \
            float(t.rms() / m.rms())
    return {k: [v[s] for s in sorted(v)] for k, v in out.items()}
