"""pi0 / pi0.5's side of ATM / OHB: its attention sites and its probe (observer + caches).

Sites: every Gemma layer's self-attention of the balanced towers ("expert.3", "backbone.3";
the backbone's key/value-only last layer has no queries), one stage per layer index (both
towers' layer l in one pass). The generic driver is quant/balance.py.

Cost: calibration runs 2 x depth + 2 passes over the buffer. What no pass can change is
computed once (`Prefix`): the prefix embeddings (vision tower, projector, token embedding;
balancing never touches them) and, when only the expert is balanced, the student's prefix
keys / values (its backbone is then fixed). Results equal the uncached path.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from quantvla_ros.models.pi.gemma import AttentionObserver, KVCache
from quantvla_ros.quant.balance import (
    AttentionSite,
    BalanceConfig,
    SiteStats,
    calibrate,
    scale_rows,
)
from quantvla_ros.quant.pi_stats import StatsCollector

TOWER_NAMES = ("backbone", "expert")


@dataclass
class Prefix:
    """One batch's reusable prefix: embeddings, validity and optionally keys / values."""

    embs: torch.Tensor
    valid: torch.Tensor
    kv: KVCache | None = None


def embed_prefixes(model, batches) -> list[Prefix]:
    """Run each batch's prefix embedding (vision tower, projector, token embedding) once."""
    with torch.no_grad():
        return [Prefix(*model.embed_prefix(b["images"], b["image_masks"], b["tokens"],
                                           b["token_masks"])) for b in batches]


def prefill_prefixes(model, prefixes: list[Prefix]) -> list[Prefix]:
    """Add `model`'s prefix keys / values to each Prefix (valid while its backbone is fixed)."""
    model.observer = None
    with torch.no_grad():
        return [Prefix(p.embs, p.valid, model.prefill(p.embs, p.valid)) for p in prefixes]


def same_prefix_embedding(a, b) -> bool:
    """Whether two models embed prefixes identically: equal vision, projector, token embedding.

    False where a layout quantized the vision tower or projector (their tensors differ).
    """
    for part in ("vision", "projector", "backbone.embed_tokens"):
        sa, sb = a.get_submodule(part).state_dict(), b.get_submodule(part).state_dict()
        if sa.keys() != sb.keys() or any(
                sa[k].dtype != sb[k].dtype or sa[k].shape != sb[k].shape
                or not torch.equal(sa[k], sb[k]) for k in sa):
            return False
    return True


class PaddingRows:
    """A pi observer that tells a LinearInputs which rows of each tower are padding."""

    step = None

    def __init__(self, store):
        """Forward to ``store`` (quant.observe.LinearInputs)."""
        self.store = store

    def tokens(self, tower: int, valid_rows: torch.Tensor) -> None:
        """Pass the tower's valid rows on under its module name ("backbone", "expert")."""
        self.store.padding(TOWER_NAMES[tower], valid_rows)

    def attention(self, *args) -> None:
        """Ignore attention inputs."""

    def o_proj(self, *args) -> None:
        """Ignore attention outputs."""


def run_batches(model, batches, observer: AttentionObserver | None,
                prefixes: list[Prefix] | None = None) -> torch.Tensor:
    """Sample every batch's chunk with the observer attached; actions [N, H, A] (model space).

    Each batch carries its own noise, so teacher and student runs see the same draws.
    `prefixes` (one per batch) skips what they hold: the prefix embedding, and the prefill
    where they carry this model's keys / values.
    """
    model.observer = observer
    try:
        with torch.no_grad():
            return torch.cat([_sample(model, b, prefixes[i] if prefixes else None).float().cpu()
                              for i, b in enumerate(batches)])
    finally:
        model.observer = None


def _sample(model, b: dict, prefix: Prefix | None) -> torch.Tensor:
    """`model.sample_actions` on one batch, from a cached prefix where one is given."""
    if prefix is None:
        return model.sample_actions(b["images"], b["image_masks"], b["tokens"],
                                    b["token_masks"], b["noise"], b["state"])
    if model.observer is not None:
        model.observer.step = None
    cache = prefix.kv if prefix.kv is not None else model.prefill(prefix.embs, prefix.valid)
    return model.denoise_loop(cache, prefix.valid, b["noise"], b["state"], model.cfg.num_steps)


@torch.no_grad()
def fold_atm(attn, alpha: torch.Tensor) -> None:
    """Scale head h's query rows by alpha[h]."""
    scale_rows(attn.q_proj, alpha.double().repeat_interleave(attn.head_dim))


@torch.no_grad()
def fold_ohb(attn, beta: float) -> None:
    """Scale the o_proj output by ``beta`` (float weight rows or dequant scales)."""
    scale_rows(attn.o_proj, torch.full((attn.o_proj.out_features,), float(beta)))


def _attn(model, tower: str, layer: int):
    return getattr(model, tower).layers[layer].self_attn


def measure(model, batches, towers, layers=None, logits=True, o_proj=True,
            prefixes: list[Prefix] | None = None) -> StatsCollector:
    """Run the batches with a StatsCollector on ``towers`` / ``layers``; return it."""
    c = StatsCollector(towers, layers, logits=logits, o_proj=o_proj)
    run_batches(model, batches, c, prefixes)
    return c


def calibration_prefixes(teacher, student, batches, towers):
    """(teacher prefixes, student prefixes) that calibration passes may reuse.

    The prefix embedding is computed once per model, once in all when the student's vision,
    projector and token embedding equal the teacher's. The student's keys / values are
    cached only when the backbone is not balanced (balancing it changes them every layer).
    """
    t_pre = embed_prefixes(teacher, batches)
    shared = same_prefix_embedding(teacher, student)
    s_pre = t_pre if shared else embed_prefixes(student, batches)
    if "backbone" not in towers:
        s_pre = prefill_prefixes(student, s_pre)
    return t_pre, s_pre


def attention_sites(model, towers=("expert",)) -> list[list[AttentionSite]]:
    """Return the balanced towers' attentions, one stage per layer index (calibration order)."""
    bad = set(towers) - set(TOWER_NAMES)
    if bad:
        raise ValueError(f"unknown towers {sorted(bad)}; use 'backbone' and/or 'expert'")
    stages = []
    for layer in range(len(model.expert.layers)):
        stage = []
        for tower in sorted(towers):
            if getattr(model, tower).layers[layer].kv_only:
                continue  # keys / values only: no logits of its own, no output
            attn = _attn(model, tower, layer)
            stage.append(AttentionSite(f"{tower}.{layer}", functools.partial(fold_atm, attn),
                                       functools.partial(fold_ohb, attn)))
        stages.append(stage)
    return stages


def site_stats(c: StatsCollector) -> SiteStats:
    """Convert a StatsCollector to the driver's per-site statistics (keys "tower.layer")."""
    order = sorted({*c.logits, *c.oproj}, key=lambda k: (k[0], k[1]))
    stats = SiteStats()
    std, rms = c.logit_std(), c.oproj_rms()
    for tower, layer in order:
        key = f"{tower}.{layer}"
        if (tower, layer) in std:
            stats.logit_std[key] = std[(tower, layer)]
        if (tower, layer) in rms:
            stats.out_rms[key] = rms[(tower, layer)]
    for (tower, layer), v in c.logit_std_per_sample().items():
        stats.logit_std_per_sample[f"{tower}.{layer}"] = v
    for (tower, layer, step), m in c.logits_by_step.items():
        if step is not None:
            stats.logit_std_by_step.setdefault(f"{tower}.{layer}", {})[step] = m.std().float()
    for (tower, layer, step), m in c.oproj_by_step.items():
        if step is not None:
            stats.out_rms_by_step.setdefault(f"{tower}.{layer}", {})[step] = float(m.rms())
    return stats


class PiBalanceProbe:
    """Runs pi models over the batches with a StatsCollector, reusing cached prefixes.

    The teacher's and the student's prefixes (`calibration_prefixes`) are used for those
    two models only; any other model (the report's unbalanced copy) runs uncached.
    """

    def __init__(self, teacher, student, batches, towers, cache: bool = True,
                 per_sample: bool = False):
        """Keep what the calibration passes may reuse (see `calibration_prefixes`).

        The prefixes are computed on the first `measure`, before any fold (as the GR00T and
        SmolVLA probes do): a probe nothing measures (ATM and OHB off) runs no prefix pass.
        `per_sample` also measures the mean of per-sample logit stds (the authors' statistic).
        """
        self.batches, self.towers, self.per_sample = batches, tuple(towers), per_sample
        self._models = (teacher, student) if cache else None
        self.prefixes = {}

    def measure(self, model, keys=None, logits=True, out=True):
        """Return (actions, statistics) of the towers' layers in ``keys`` (all if None)."""
        if self._models is not None:
            teacher, student = self._models
            t_pre, s_pre = calibration_prefixes(teacher, student, self.batches, self.towers)
            self.prefixes, self._models = {id(teacher): t_pre, id(student): s_pre}, None
        layers = None if keys is None else sorted({int(k.split(".")[1]) for k in keys})
        c = StatsCollector(self.towers, layers, logits=logits, o_proj=out,
                           per_sample=self.per_sample)
        actions = run_batches(model, self.batches, c, self.prefixes.get(id(model)))
        return actions, site_stats(c)


def calibrate_balance(teacher, student, batches, cfg: BalanceConfig, progress=None,
                      cache: bool = True) -> dict:
    """Fold ATM / OHB into a pi `student` in place (the generic driver on pi's sites).

    `cache=False` recomputes every prefix (the reference the cached path must equal).
    """
    probe = PiBalanceProbe(teacher, student, batches, cfg.towers, cache,
                           per_sample=cfg.logit_std == "per_sample")
    return calibrate(probe, teacher, student, attention_sites(student, cfg.towers), cfg,
                     progress)
