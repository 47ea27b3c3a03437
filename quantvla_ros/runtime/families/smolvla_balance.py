"""ATM and OHB on SmolVLA's expert attention: its sites, observer and probe for the driver.

- ATM: alpha[j, h] = std_teacher / std_student of expert layer j's pre-softmax logits (RoPE'd
  q . k / sqrt(d)) over the (query, visible key) pairs of each (batch, head), averaged over
  rows and flow steps; folded into q_proj rows of head h (RoPE is linear in q).
- OHB: beta[j] = RMS_teacher / RMS_student of o_proj's output; folded into o_proj's rows.
Self- and cross-attention layers are balanced alike, one stage per expert layer, by the
shared driver (quant/balance.py). The folds touch only the expert, so each model's prefix
(vision, connector, backbone K/V) is computed once per probe.
"""

from __future__ import annotations

import functools
from collections import defaultdict

import torch

from quantvla_ros.quant.balance import AttentionSite, SiteStats, scale_rows

SITE_KEY = "expert.layers.{}.self_attn"


def masked_std(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Return the std [B, H] of logits [B, H, S, T] over the pairs where mask [B, S, T]."""
    w = mask[:, None].to(logits.dtype).expand_as(logits)
    n = w.sum(dim=(-1, -2))
    mean = (logits * w).sum(dim=(-1, -2)) / n
    return (((logits - mean[..., None, None]) ** 2) * w).sum(dim=(-1, -2)).div(n).sqrt()


class ExpertStats:
    """Observer the model calls per expert attention: logit std per head, output squares."""

    def __init__(self, layers=None, logits: bool = True, out: bool = True):
        """Observe expert layers ``layers`` (all if None); `step` is set per flow step."""
        self.layers = None if layers is None else set(layers)
        self.want_logits, self.want_out, self.step = logits, out, None
        self.std_sum: dict = defaultdict(lambda: 0.0)  # (layer, step) -> sum over rows [H]
        self.std_n: dict = defaultdict(int)
        self.sq_sum: dict = defaultdict(float)
        self.sq_n: dict = defaultdict(int)

    def attention(self, layer: int, q, k, mask, out) -> None:
        """Add one call: q [B, S, H, D] (RoPE'd), k [B, T, H, D], mask [B, S, T], out [B, S, W]."""
        if self.layers is not None and layer not in self.layers:
            return
        key = (layer, self.step)
        if self.want_logits:
            logits = (q.double().transpose(1, 2) @ k.double().permute(0, 2, 3, 1))
            std = masked_std(logits * q.shape[-1] ** -0.5, mask)
            self.std_sum[key] = self.std_sum[key] + std.sum(0).cpu()
            self.std_n[key] += std.shape[0]
        if self.want_out:
            self.sq_sum[key] += float(out.double().pow(2).sum())
            self.sq_n[key] += out.numel()

    def site_stats(self) -> SiteStats:
        """Return the driver's per-site statistics (keys SITE_KEY), overall and per flow step."""
        stats = SiteStats()
        std, n = defaultdict(lambda: 0.0), defaultdict(int)
        for (layer, step), total in self.std_sum.items():
            std[layer], n[layer] = std[layer] + total, n[layer] + self.std_n[(layer, step)]
            stats.logit_std_by_step.setdefault(SITE_KEY.format(layer), {})[step] = \
                total / self.std_n[(layer, step)]
        for layer in sorted(std):
            stats.logit_std[SITE_KEY.format(layer)] = std[layer] / n[layer]
        sq, m = defaultdict(float), defaultdict(int)
        for (layer, step), total in self.sq_sum.items():
            sq[layer], m[layer] = sq[layer] + total, m[layer] + self.sq_n[(layer, step)]
            stats.out_rms_by_step.setdefault(SITE_KEY.format(layer), {})[step] = \
                (total / self.sq_n[(layer, step)]) ** 0.5
        for layer in sorted(sq):
            stats.out_rms[SITE_KEY.format(layer)] = (sq[layer] / m[layer]) ** 0.5
        return stats


@torch.no_grad()
def fold_atm(attn, alpha) -> None:
    """Scale head h's q_proj rows by alpha[h]: its logits times alpha[h]."""
    alpha = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1)
    if alpha.numel() != attn.num_heads:
        raise ValueError(f"alpha has {alpha.numel()} entries for {attn.num_heads} heads")
    scale_rows(attn.q_proj, alpha.repeat_interleave(attn.head_dim))


@torch.no_grad()
def fold_ohb(attn, beta: float) -> None:
    """Scale the attention output by beta (o_proj's rows)."""
    lin = attn.o_proj
    scale_rows(lin, torch.full((lin.out_features,), float(beta), dtype=torch.float64))


def attention_sites(model, towers=("expert",)) -> list[list[AttentionSite]]:
    """Every expert layer's attention (self and cross), one stage per layer."""
    other = sorted(set(towers) - {"expert"})
    if other:
        raise ValueError(f"SmolVLA balances its expert only; not {other}")
    return [[AttentionSite(SITE_KEY.format(j), functools.partial(fold_atm, layer.self_attn),
                           functools.partial(fold_ohb, layer.self_attn))]
            for j, layer in enumerate(model.expert.layers)]


def _key(k: str) -> int:
    prefix, suffix = SITE_KEY.split("{}")
    if not (k.startswith(prefix) and k.endswith(suffix)):
        raise ValueError(f"{k!r} is not an expert attention key ({SITE_KEY})")
    return int(k[len(prefix):len(k) - len(suffix)])


class SmolVLABalanceProbe:
    """Runs the expert's flow steps over the batches with an ExpertStats; prefixes cached."""

    def __init__(self, batches):
        """Keep the batches; each model's prefix is computed on first use."""
        self.batches = batches
        self._prefix: dict[int, list] = {}

    def _prefixes(self, model) -> list:
        if id(model) not in self._prefix:
            out = []
            for b in self.batches:
                embs, valid, mask = model.embed_prefix(b["images"], b["image_masks"],
                                                       b["tokens"], b["token_masks"], b["state"])
                out.append((model.prefill(embs, valid, mask), valid))
            self._prefix[id(model)] = out
        return self._prefix[id(model)]

    @torch.no_grad()
    def measure(self, model, keys=None, logits=True, out=True):
        """Return (actions [N, H, A] on the CPU, statistics of the sites ``keys`` or all)."""
        stats = ExpertStats(None if keys is None else [_key(k) for k in keys], logits, out)
        model.observer = stats
        try:
            actions = [model.denoise_loop(cache, valid, b["noise"].to(valid.device),
                                          b.get("num_steps") or model.cfg.num_steps)
                       for b, (cache, valid) in zip(self.batches, self._prefixes(model),
                                                    strict=True)]
        finally:
            model.observer = None
        return torch.cat(actions).float().cpu(), stats.site_stats()
