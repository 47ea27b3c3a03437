"""ATM and OHB on GR00T's DiT attention (shared/GROOT.md §5.4), folded into float weights.

- ATM: alpha[i, h] = std_teacher / std_student of block i's pre-softmax logits q.k / sqrt(d),
  the std taken over the (query, key) pairs of each (batch, head) and averaged over batch
  and every call (every flow step of every batch); folded into to_q rows h*d..(h+1)*d-1
  and their bias (logits are linear in q: no RoPE, no q norm in the DiT).
- OHB: beta[i] = RMS_teacher / RMS_student of the attention module's output (after
  to_out.0), folded into to_out.0's weight and bias.
The generic driver (quant/balance.py) clamps, bands and folds them block by block: block i
is measured with the corrections of blocks < i (and its own ATM, for OHB) already folded.
The backbone is untouched by the folds, so its features are computed once per model.
"""

from __future__ import annotations

import functools
from collections import defaultdict

import torch

from quantvla_ros.quant.balance import (
    AttentionSite,
    BalanceConfig,
    SiteStats,
    calibrate,
    scale_rows,
)

BLOCK_KEY = "action_head.model.transformer_blocks.{}.attn1"  # [QV]'s JSON keys


class DiTStats:
    """DiT observer: per (block, flow step) the summed logit std [H] and output moments.

    `blocks` restricts what is measured (all if None); `logits` / `out` select the
    statistics. `step` is set by the sampler at every flow step.
    """

    def __init__(self, blocks=None, logits: bool = True, out: bool = True):
        """Observe `blocks` (indices, all if None)."""
        self.blocks = None if blocks is None else set(blocks)
        self.want_logits, self.want_out = logits, out
        self.step = None
        self.std_sum: dict = defaultdict(lambda: 0.0)  # (block, step) -> sum over b [H]
        self.std_n: dict = defaultdict(int)  # (block, step) -> number of (batch) rows
        self.sq_sum: dict = defaultdict(float)  # (block, step) -> sum of out**2
        self.sq_n: dict = defaultdict(int)

    def attention(self, block: int, q: torch.Tensor, k: torch.Tensor,
                  out: torch.Tensor, key_mask: torch.Tensor | None = None) -> None:
        """Add block `block`'s logit std per (batch, head) and its output's squares.

        Keys hidden by `key_mask` [B, T] (prompt padding) are left out of the std.
        """
        if self.blocks is not None and block not in self.blocks:
            return
        key = (block, self.step)
        if self.want_logits:
            logits = (q.double() @ k.double().transpose(-1, -2)) * q.shape[-1] ** -0.5
            std = masked_std(logits, key_mask)  # [B, H]
            self.std_sum[key] = self.std_sum[key] + std.sum(0).cpu()
            self.std_n[key] += std.shape[0]
        if self.want_out:
            self.sq_sum[key] += float(out.double().pow(2).sum())
            self.sq_n[key] += out.numel()

    def logit_std(self) -> dict:
        """Block -> mean over batch rows and calls of the per-(batch, head) std [H]."""
        sums, counts = defaultdict(lambda: 0.0), defaultdict(int)
        for (block, step), s in self.std_sum.items():
            sums[block] = sums[block] + s
            counts[block] += self.std_n[(block, step)]
        return {b: sums[b] / counts[b] for b in sums}

    def out_rms(self) -> dict:
        """Block -> RMS of the attention output over every element of every call."""
        sums, counts = defaultdict(float), defaultdict(int)
        for (block, step), s in self.sq_sum.items():
            sums[block] += s
            counts[block] += self.sq_n[(block, step)]
        return {b: (sums[b] / counts[b]) ** 0.5 for b in sums}


def masked_std(logits: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """Return the population std [B, H] of logits [B, H, S, T] over (query, visible key)."""
    if key_mask is None:
        return logits.flatten(2).std(dim=-1, unbiased=False)
    w = key_mask[:, None, None, :].to(logits.dtype).expand_as(logits)
    n = w.sum(dim=(-1, -2))
    mean = (logits * w).sum(dim=(-1, -2)) / n
    var = ((logits - mean[..., None, None]).pow(2) * w).sum(dim=(-1, -2)) / n
    return var.sqrt()


def dit_attention(model, block: int):
    """Return the attn1 module of DiT block `block` of a GrootModel."""
    return model.action_head.model.transformer_blocks[block].attn1


@torch.no_grad()
def fold_dit_atm(attn, alpha) -> None:
    """Scale head h's to_q rows (weight and bias) by alpha[h]: logits of head h times alpha."""
    alpha = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1)
    if alpha.numel() != attn.heads:
        raise ValueError(f"alpha has {alpha.numel()} entries for {attn.heads} heads")
    scale_rows(attn.to_q, alpha.repeat_interleave(attn.head_dim))


@torch.no_grad()
def fold_dit_ohb(attn, beta: float) -> None:
    """Scale the attention output by beta (to_out.0 weight and bias)."""
    lin = attn.to_out[0]
    scale_rows(lin, torch.full((lin.out_features,), float(beta), dtype=torch.float64))


def backbone_features(model, batches) -> list[torch.Tensor]:
    """Each batch's backbone features (what the action head gets), computed once."""
    with torch.no_grad():
        return [model.backbone(b["pixel_values"], b["input_ids"], b["attention_mask"])
                for b in batches]


def run_head(model, batches, features, observer) -> torch.Tensor:
    """Sample every batch's chunk from its features with `observer` on the DiT; [N, H, A]."""
    dit = model.action_head.model
    dit.observer = observer
    try:
        with torch.no_grad():
            return torch.cat([
                model.action_head.sample_actions(f, b["state"], b["embodiment_id"], b["noise"],
                                                 b.get("num_steps"), b["attention_mask"])
                for b, f in zip(batches, features, strict=True)])
    finally:
        dit.observer = None


def measure_dit(model, batches, features, blocks=None, logits=True, out=True) -> DiTStats:
    """Run the batches with a DiTStats on `blocks`; return it."""
    stats = DiTStats(blocks, logits, out)
    run_head(model, batches, features, stats)
    return stats


def attention_sites(model, towers=None) -> list[list[AttentionSite]]:
    """Every DiT block's attn1 (cross and self), one stage per block; `towers` is moot."""
    return [[AttentionSite(BLOCK_KEY.format(i), functools.partial(fold_dit_atm, block.attn1),
                           functools.partial(fold_dit_ohb, block.attn1))]
            for i, block in enumerate(model.action_head.model.transformer_blocks)]


def site_stats(d: DiTStats) -> SiteStats:
    """Convert a DiTStats to the driver's per-site statistics (keys BLOCK_KEY)."""
    stats = SiteStats()
    for block, std in sorted(d.logit_std().items()):
        stats.logit_std[BLOCK_KEY.format(block)] = std
        stats.logit_std_per_sample[BLOCK_KEY.format(block)] = std  # already per-sample means
    for block, rms in sorted(d.out_rms().items()):
        stats.out_rms[BLOCK_KEY.format(block)] = rms
    for (block, step), total in d.std_sum.items():
        stats.logit_std_by_step.setdefault(BLOCK_KEY.format(block), {})[step] = \
            total / d.std_n[(block, step)]
    for (block, step), total in d.sq_sum.items():
        stats.out_rms_by_step.setdefault(BLOCK_KEY.format(block), {})[step] = \
            (total / d.sq_n[(block, step)]) ** 0.5
    return stats


class GrootBalanceProbe:
    """Runs GR00T's action head over the batches with a DiTStats; backbone features cached.

    The folds never touch the backbone, so each model's features are computed once.
    """

    def __init__(self, batches):
        """Keep the batches; features are computed per model on first use."""
        self.batches = batches
        self._features: dict[int, list] = {}

    def measure(self, model, keys=None, logits=True, out=True):
        """Return (actions, statistics) of the blocks in ``keys`` (all if None)."""
        if id(model) not in self._features:
            self._features[id(model)] = backbone_features(model, self.batches)
        blocks = None if keys is None else [block_of(k) for k in keys]
        stats = DiTStats(blocks, logits, out)
        actions = run_head(model, self.batches, self._features[id(model)], stats)
        return actions.float().cpu(), site_stats(stats)


def calibrate_dit_balance(teacher, student, batches, cfg: BalanceConfig) -> dict:
    """Fold ATM / OHB into `student`'s DiT attention in place (the generic driver).

    `batches` are dicts of `GrootModel.sample_actions` arguments (pixel_values, input_ids,
    attention_mask, state, embodiment_id, noise, optional num_steps); teacher and student
    see the same noise. `cfg.towers` does not apply (the DiT is GR00T's only balanced stack).
    """
    return calibrate(GrootBalanceProbe(batches), teacher, student, attention_sites(student),
                     cfg)


def block_of(key: str) -> int:
    """Return the DiT block index of a BLOCK_KEY-style key."""
    prefix, suffix = BLOCK_KEY.split("{}")
    if not (key.startswith(prefix) and key.endswith(suffix)):
        raise ValueError(f"{key!r} is not a DiT attention key ({BLOCK_KEY})")
    return int(key[len(prefix):len(key) - len(suffix)])
