"""Attention temperature matching (ATM) and output head balancing (OHB).

Both compare the student (quantized) with the teacher (float) on the calibration buffer and
fold a ratio into float weights or dequantization scales, so inference runs no extra op:
- ATM: alpha[l, h] = std(teacher logits) / std(student logits), folded into q_proj rows of
  head h (logits are linear in q, RoPE included);
- OHB: beta[l] = RMS(teacher o_proj out) / RMS(student o_proj out), folded into o_proj.
Ratios are clamped, snapped to 1 inside a neutral band, and calibrated layer by layer so each
is measured with every upstream correction applied. A non-finite statistic, or a student
statistic of 0 against a non-zero teacher one, is refused (CalibrationError) naming the layer
and head: it would otherwise pass the clamp and be folded silently.

Cost: calibration runs 2 x depth + 2 passes over the buffer. What no pass can change is
computed once (`PrefixCache`): the prefix embeddings (vision tower, projector, token
embedding; balancing never touches them) and, when only the expert is balanced, the
student's prefix keys / values (its backbone is then fixed). Results equal the uncached path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from quantvla_ros.models.pi.gemma import AttentionObserver, KVCache
from quantvla_ros.quant.pi_stats import StatsCollector
from quantvla_ros.quant.qlinear import QuantLinear


@dataclass(frozen=True)
class BalanceConfig:
    """Which corrections to calibrate (ATM, OHB), on which towers, with what clamp and band."""

    atm: bool = True
    ohb: bool = True
    towers: tuple[str, ...] = ("expert",)  # add "backbone" to balance the backbone too
    clamp: tuple[float, float] = (0.8, 1.25)
    band: float = 0.05

    def __post_init__(self):
        """Reject a clamp range excluding 1, a band outside [0, 1) and unknown towers."""
        lo, hi = self.clamp
        if not 0 < lo <= 1 <= hi:
            raise ValueError(f"clamp range must satisfy 0 < lo <= 1 <= hi, got {self.clamp}")
        if not 0 <= self.band < 1:
            raise ValueError(f"neutral band must be in [0, 1), got {self.band}")
        bad = set(self.towers) - {"backbone", "expert"}
        if bad:
            raise ValueError(f"unknown towers {sorted(bad)}; use 'backbone' and/or 'expert'")

    def to_dict(self) -> dict:
        """Return the config as JSON-ready data (tuples as lists)."""
        d = asdict(self)
        d["towers"], d["clamp"] = list(self.towers), list(self.clamp)
        return d


class CalibrationError(ValueError):
    """A statistic that cannot give a balance factor (non-finite, or a collapsed student)."""


def clamp_band(ratio: torch.Tensor, cfg: BalanceConfig) -> torch.Tensor:
    """Clamp ratios to ``cfg.clamp``; snap those within ``cfg.band`` of 1 to exactly 1.

    A NaN or infinite ratio is refused: clamping would turn it into a plausible factor.
    """
    r = ratio.double()
    if not torch.isfinite(r).all():
        raise CalibrationError(f"non-finite balance ratio {r.tolist()}")
    r = r.clamp(*cfg.clamp)
    return torch.where((r - 1).abs() < cfg.band, torch.ones_like(r), r)


def balance_ratio(teacher: torch.Tensor, student: torch.Tensor, where: str,
                  what: str) -> torch.Tensor:
    """Teacher / student statistic per head (or one), refusing what would fold garbage.

    Both statistics must be finite; a student 0 against a teacher 0 gives 1 (nothing to
    match), against a non-zero teacher it is refused. `where` ("expert.3") and `what`
    ("logit std") name the statistic in the error.
    """
    t, s = teacher.double().reshape(-1), student.double().reshape(-1)
    per_head = teacher.dim() > 0
    for who, v in (("teacher", t), ("student", s)):
        bad = (~torch.isfinite(v)).nonzero().flatten().tolist()
        if bad:
            h = bad[0]
            raise CalibrationError(
                f"{where}{f' head {h}' if per_head else ''}: {who} {what} is {v[h].item()}"
                f"{f' ({len(bad)} heads)' if len(bad) > 1 else ''}; refusing to fold it "
                "(a NaN / inf upstream, or an overflow in the quantized model?)")
    dead = ((s == 0) & (t != 0)).nonzero().flatten().tolist()
    if dead:
        h = dead[0]
        raise CalibrationError(
            f"{where}{f' head {h}' if per_head else ''}: student {what} is 0 where the "
            f"teacher's is {t[h].item():.4g}; refusing to fold an infinite factor")
    ratio = torch.where(s == 0, torch.ones_like(t), t / torch.where(s == 0, 1.0, s))
    return ratio.reshape(teacher.shape)


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


def _scale_rows(linear, factor: torch.Tensor) -> None:
    """Multiply output channels of a float or quantized linear by factor [N]."""
    if isinstance(linear, QuantLinear):
        linear.scale_output_channels(factor)
        return
    f = factor.to(linear.weight.device, torch.float64)
    linear.weight.copy_((linear.weight.double() * f[:, None]).to(linear.weight.dtype))
    if linear.bias is not None:
        linear.bias.copy_((linear.bias.double() * f).to(linear.bias.dtype))


@torch.no_grad()
def fold_atm(attn, alpha: torch.Tensor) -> None:
    """Scale head h's query rows by alpha[h]."""
    _scale_rows(attn.q_proj, alpha.double().repeat_interleave(attn.head_dim))


@torch.no_grad()
def fold_ohb(attn, beta: float) -> None:
    """Scale the o_proj output by ``beta`` (float weight rows or dequant scales)."""
    _scale_rows(attn.o_proj, torch.full((attn.o_proj.out_features,), float(beta)))


def unfold_balance(model, alpha: dict, beta: dict) -> None:
    """Undo folded ATM / OHB factors (reports compare with and without them)."""
    for key, a in alpha.items():
        tower, layer = key.split(".")
        fold_atm(_attn(model, tower, int(layer)), 1.0 / torch.tensor(a, dtype=torch.float64))
    for key, b in beta.items():
        tower, layer = key.split(".")
        fold_ohb(_attn(model, tower, int(layer)), 1.0 / b)


def _attn(model, tower: str, layer: int):
    return getattr(model, tower).layers[layer].self_attn


def measure(model, batches, towers, layers=None, logits=True, o_proj=True,
            prefixes: list[Prefix] | None = None) -> StatsCollector:
    """Run the batches with a StatsCollector on ``towers`` / ``layers``; return it."""
    c = StatsCollector(towers, layers, logits=logits, o_proj=o_proj)
    run_batches(model, batches, c, prefixes)
    return c


def calibration_prefixes(teacher, student, batches, cfg: BalanceConfig):
    """(teacher prefixes, student prefixes) that calibration passes may reuse.

    The prefix embedding is computed once per model, once in all when the student's vision,
    projector and token embedding equal the teacher's. The student's keys / values are
    cached only when the backbone is not balanced (balancing it changes them every layer).
    """
    t_pre = embed_prefixes(teacher, batches)
    shared = same_prefix_embedding(teacher, student)
    s_pre = t_pre if shared else embed_prefixes(student, batches)
    if "backbone" not in cfg.towers:
        s_pre = prefill_prefixes(student, s_pre)
    return t_pre, s_pre


def calibrate_balance(teacher, student, batches, cfg: BalanceConfig, progress=None,
                      cache: bool = True) -> dict:
    """Fold ATM / OHB into `student` in place; returns the factors and measured ratios.

    The result maps "alpha" -> {"tower.layer": [per head]}, "beta" -> {"tower.layer": x},
    and "ratios" -> {"before"/"after": {"logit_std"/"oproj_rms": ...}} where "before" is
    each layer's ratio as measured just before its own correction. `cache=False` recomputes
    every prefix (the reference the cached path must equal).
    """
    out = {"alpha": {}, "beta": {}, "ratios": {"before": {"logit_std": {}, "oproj_rms": {}}}}
    if not (cfg.atm or cfg.ohb):
        return out
    t_pre = s_pre = None
    if cache:
        t_pre, s_pre = calibration_prefixes(teacher, student, batches, cfg)
    ref = measure(teacher, batches, cfg.towers, prefixes=t_pre)
    t_std, t_rms = ref.logit_std(), ref.oproj_rms()
    before = out["ratios"]["before"]
    depth = len(student.expert.layers)
    layers = range(depth)
    for layer in (progress(layers) if progress else layers):
        if cfg.atm:
            s_std = measure(student, batches, cfg.towers, [layer], o_proj=False,
                            prefixes=s_pre).logit_std()
            for (tower, li), std in s_std.items():
                key = f"{tower}.{li}"
                ratio = balance_ratio(t_std[(tower, li)], std, key, "attention logit std")
                before["logit_std"][key] = ratio.tolist()
                alpha = clamp_band(ratio, cfg)
                fold_atm(_attn(student, tower, li), alpha)
                out["alpha"][key] = alpha.tolist()
        if cfg.ohb:
            s_rms = measure(student, batches, cfg.towers, [layer], logits=False,
                            prefixes=s_pre).oproj_rms()
            for (tower, li), rms in s_rms.items():
                key = f"{tower}.{li}"
                ratio = balance_ratio(torch.tensor(t_rms[(tower, li)]), torch.tensor(rms),
                                      key, "o_proj output RMS")
                before["oproj_rms"][key] = float(ratio)
                beta = float(clamp_band(ratio, cfg))
                fold_ohb(_attn(student, tower, li), beta)
                out["beta"][key] = beta
    out["ratios"]["after"] = ratio_table(ref, measure(student, batches, cfg.towers,
                                                      prefixes=s_pre))
    return out


def ratio_table(teacher: StatsCollector, student: StatsCollector) -> dict:
    """Teacher / student logit-std (per head) and o_proj RMS ratios, keyed "tower.layer"."""
    t_std, s_std = teacher.logit_std(), student.logit_std()
    t_rms, s_rms = teacher.oproj_rms(), student.oproj_rms()
    return {
        "logit_std": {f"{t}.{li}": (t_std[(t, li)].double() / s_std[(t, li)].double()).tolist()
                      for (t, li) in s_std if (t, li) in t_std},
        "oproj_rms": {f"{t}.{li}": t_rms[(t, li)] / s_rms[(t, li)]
                      for (t, li) in s_rms if (t, li) in t_rms},
    }
