"""Attention temperature matching (ATM) and output head balancing (OHB).

Both compare the student (quantized) with the teacher (float) on the calibration buffer and
fold a ratio into float weights or dequantization scales, so inference runs no extra op:
- ATM: alpha[l, h] = std(teacher logits) / std(student logits), folded into q_proj rows of
  head h (logits are linear in q, RoPE included);
- OHB: beta[l] = RMS(teacher o_proj out) / RMS(student o_proj out), folded into o_proj.
Ratios are clamped, snapped to 1 inside a neutral band, and calibrated layer by layer so each
is measured with every upstream correction applied.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from quantvla_ros.models.gemma import AttentionObserver
from quantvla_ros.quant.qlinear import QuantLinear
from quantvla_ros.quant.stats import StatsCollector


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


def clamp_band(ratio: torch.Tensor, cfg: BalanceConfig) -> torch.Tensor:
    """Clamp ratios to ``cfg.clamp``; snap those within ``cfg.band`` of 1 to exactly 1."""
    r = ratio.double().clamp(*cfg.clamp)
    return torch.where((r - 1).abs() < cfg.band, torch.ones_like(r), r)


def run_batches(model, batches, observer: AttentionObserver | None) -> torch.Tensor:
    """Sample every batch's chunk with the observer attached; actions [N, H, A] (model space).

    Each batch carries its own noise, so teacher and student runs see the same draws.
    """
    model.observer = observer
    try:
        with torch.no_grad():
            return torch.cat([
                model.sample_actions(b["images"], b["image_masks"], b["tokens"],
                                     b["token_masks"], b["noise"], b["state"]).float().cpu()
                for b in batches
            ])
    finally:
        model.observer = None


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


def measure(model, batches, towers, layers=None, logits=True, o_proj=True) -> StatsCollector:
    """Run the batches with a StatsCollector on ``towers`` / ``layers``; return it."""
    c = StatsCollector(towers, layers, logits=logits, o_proj=o_proj)
    run_batches(model, batches, c)
    return c


def calibrate_balance(teacher, student, batches, cfg: BalanceConfig, progress=None) -> dict:
    """Fold ATM / OHB into `student` in place; returns the factors and measured ratios.

    The result maps "alpha" -> {"tower.layer": [per head]}, "beta" -> {"tower.layer": x},
    and "ratios" -> {"before"/"after": {"logit_std"/"oproj_rms": ...}} where "before" is
    each layer's ratio as measured just before its own correction.
    """
    out = {"alpha": {}, "beta": {}, "ratios": {"before": {"logit_std": {}, "oproj_rms": {}}}}
    if not (cfg.atm or cfg.ohb):
        return out
    ref = measure(teacher, batches, cfg.towers)
    t_std, t_rms = ref.logit_std(), ref.oproj_rms()
    before = out["ratios"]["before"]
    depth = len(student.expert.layers)
    layers = range(depth)
    for layer in (progress(layers) if progress else layers):
        if cfg.atm:
            s_std = measure(student, batches, cfg.towers, [layer], o_proj=False).logit_std()
            for (tower, li), std in s_std.items():
                ratio = t_std[(tower, li)].double() / std.double().clamp(min=1e-12)
                before["logit_std"][f"{tower}.{li}"] = ratio.tolist()
                alpha = clamp_band(ratio, cfg)
                fold_atm(_attn(student, tower, li), alpha)
                out["alpha"][f"{tower}.{li}"] = alpha.tolist()
        if cfg.ohb:
            s_rms = measure(student, batches, cfg.towers, [layer], logits=False).oproj_rms()
            for (tower, li), rms in s_rms.items():
                ratio = torch.tensor(t_rms[(tower, li)] / max(rms, 1e-30))
                before["oproj_rms"][f"{tower}.{li}"] = float(ratio)
                beta = float(clamp_band(ratio, cfg))
                fold_ohb(_attn(student, tower, li), beta)
                out["beta"][f"{tower}.{li}"] = beta
    out["ratios"]["after"] = ratio_table(ref, measure(student, batches, cfg.towers))
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
