"""Attention temperature matching (ATM) and output head balancing (OHB): one driver.

Both compare the student (quantized) with the teacher (float) on the calibration buffer and
fold a ratio into float weights or dequantization scales, so inference runs no extra op:
- ATM: alpha[site, h] = std(teacher logits) / std(student logits), folded into the query
  rows of head h (logits are linear in q, RoPE included);
- OHB: beta[site] = RMS(teacher attention output) / RMS(student's), folded into the output
  projection.
Ratios are clamped, snapped to 1 inside a neutral band, and calibrated stage by stage so each
is measured with every upstream correction applied. A non-finite statistic, or a student
statistic of 0 against a non-zero teacher one, is refused (CalibrationError) naming the site
and head: it would otherwise pass the clamp and be folded silently.

What is family-specific is only where the attention sites are and how a model is run and
observed: a family gives its `AttentionSite`s in calibration order (stages measured in one
pass) and a `BalanceProbe` (its observer, and whatever it can compute once); `calibrate`,
`unfold` and `tables` are the same for every family, with one result schema.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

import torch

from quantvla_ros.quant.qlinear import QuantLinear


@dataclass(frozen=True)
class BalanceConfig:
    """Which corrections to calibrate (ATM, OHB), on which towers, with what clamp and band.

    Defaults are ours (shared/DESIGN.md). The authors' released calibration differs (see
    `SETTINGS["authors"]`): OHB in the log domain (`ohb_log_clamp` set: |log beta| clamped
    to it, beta snapped to 1 where |log beta| < `ohb_log_band`; `clamp` / `band` then apply
    to ATM only), the logit std as the mean of per-sample standard deviations
    (`logit_std="per_sample"`, each over one sample's (query, key) pairs of a head) instead
    of one pooled over every sample, and no progressive order (`progressive=False`: every
    factor from one measurement of the uncorrected student).
    """

    atm: bool = True
    ohb: bool = True
    # which stacks are balanced, in the family's names (pi: "expert", "backbone"; GR00T's
    # DiT is its only balanced stack, so it ignores this); the family checks them
    towers: tuple[str, ...] = ("expert",)
    clamp: tuple[float, float] = (0.8, 1.25)
    band: float = 0.05
    ohb_log_clamp: float | None = None
    ohb_log_band: float = 0.0
    logit_std: str = "pooled"  # or "per_sample"
    progressive: bool = True

    def __post_init__(self):
        """Reject a clamp range excluding 1, a band outside [0, 1) and no towers."""
        lo, hi = self.clamp
        if not 0 < lo <= 1 <= hi:
            raise ValueError(f"clamp range must satisfy 0 < lo <= 1 <= hi, got {self.clamp}")
        if not 0 <= self.band < 1:
            raise ValueError(f"neutral band must be in [0, 1), got {self.band}")
        if not self.towers or not all(isinstance(t, str) for t in self.towers):
            raise ValueError(f"towers must name at least one stack, got {self.towers!r}")
        if self.ohb_log_clamp is not None and not self.ohb_log_clamp >= 0:
            raise ValueError(f"ohb_log_clamp must be >= 0, got {self.ohb_log_clamp}")
        if not 0 <= self.ohb_log_band:
            raise ValueError(f"ohb_log_band must be >= 0, got {self.ohb_log_band}")
        if self.logit_std not in ("pooled", "per_sample"):
            raise ValueError(f"logit_std is 'pooled' or 'per_sample', got {self.logit_std!r}")

    def to_dict(self) -> dict:
        """Return the config as JSON-ready data (tuples as lists; new fields only if set)."""
        d = asdict(self)
        d["towers"], d["clamp"] = list(self.towers), list(self.clamp)
        for k, default in (("ohb_log_clamp", None), ("ohb_log_band", 0.0),
                           ("logit_std", "pooled"), ("progressive", True)):
            if d[k] == default:
                del d[k]
        return d


# Named settings: ours (DESIGN.md) and the authors' released GR00T calibration
# (shared/GROOT.md 5.4; issue 21), which also calibrated on 32 frames (AUTHORS_FRAMES).
SETTINGS = {
    "ours": {},
    "authors": {"clamp": (0.7, 1.4), "band": 0.02, "ohb_log_clamp": 0.3, "ohb_log_band": 0.03,
                "logit_std": "per_sample", "progressive": False},
}
AUTHORS_FRAMES = 32


def balance_setting(name: str, **overrides) -> BalanceConfig:
    """Return the named setting (``ours`` / ``authors``) with ``overrides`` applied."""
    if name not in SETTINGS:
        raise ValueError(f"unknown balance setting {name!r}; known: {', '.join(SETTINGS)}")
    return BalanceConfig(**{**SETTINGS[name], **overrides})


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


def clamp_band_log(ratio: torch.Tensor, limit: float, band: float) -> torch.Tensor:
    """Clamp |log ratio| to ``limit``; snap to exactly 1 where |log ratio| < ``band``."""
    r = ratio.double()
    if not torch.isfinite(r).all() or not (r > 0).all():
        raise CalibrationError(f"balance ratio {r.tolist()} has no finite logarithm")
    x = r.log().clamp(-limit, limit)
    return torch.where(x.abs() < band, torch.ones_like(r), x.exp())


def ohb_factor(ratio: torch.Tensor, cfg: BalanceConfig) -> torch.Tensor:
    """OHB's beta from its raw ratio: log-domain when the config says so, else as ATM."""
    if cfg.ohb_log_clamp is None:
        return clamp_band(ratio, cfg)
    return clamp_band_log(ratio, cfg.ohb_log_clamp, cfg.ohb_log_band)


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


def scale_rows(linear, factor: torch.Tensor) -> None:
    """Multiply output channels of a float or quantized linear by factor [N]."""
    if isinstance(linear, QuantLinear):
        linear.scale_output_channels(factor)
        return
    # New tensors, not copy_: a quantization student shares its float tensors with the
    # teacher (quant.apply.student_of), which must stay unchanged.
    f = factor.to(linear.weight.device, torch.float64)
    for name in ("weight", "bias"):
        p = getattr(linear, name)
        if p is not None:
            scaled = p.double() * (f[:, None] if name == "weight" else f)
            setattr(linear, name, torch.nn.Parameter(scaled.to(p.dtype),
                                                     requires_grad=p.requires_grad))



@dataclass(frozen=True)
class AttentionSite:
    """One balanced attention: its result key and how a factor folds into its weights.

    scale_logits(f [H]) multiplies head h's pre-softmax logits by f[h] (query rows);
    scale_output(b) multiplies the attention output by b (output projection rows or scales).
    """

    key: str
    scale_logits: Callable[[torch.Tensor], None]
    scale_output: Callable[[float], None]


@dataclass
class SiteStats:
    """Statistics of one run, per site key: logit std per head [H], output RMS, per step."""

    logit_std: dict[str, torch.Tensor] = field(default_factory=dict)
    # mean over samples of each sample's own logit std per head [H] (where measured)
    logit_std_per_sample: dict[str, torch.Tensor] = field(default_factory=dict)
    out_rms: dict[str, float] = field(default_factory=dict)
    logit_std_by_step: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)
    out_rms_by_step: dict[str, dict[int, float]] = field(default_factory=dict)


class BalanceProbe(Protocol):
    """A family's way to run a model over the calibration batches and observe its sites."""

    def measure(self, model, keys: set[str] | None = None, logits: bool = True,
                out: bool = True) -> tuple[torch.Tensor, SiteStats]:
        """Return (actions [N, H, A] on the CPU, statistics of the sites ``keys`` or all)."""


@torch.no_grad()
def calibrate(probe: BalanceProbe, teacher, student, stages: list[list[AttentionSite]],
              cfg: BalanceConfig, progress=None) -> dict:
    """Fold ATM / OHB into `student`'s sites in place, stage by stage; return the record.

    "alpha" {key: [H]}, "beta" {key: x}, "ratios" {"before": {"logit_std": {key: [H]},
    "oproj_rms": {key: x}}, "after": (the same, once every site is folded)}: "before" is
    each site's raw teacher / student ratio just before its own correction (with
    ``cfg.progressive`` off: of the uncorrected student, measured once for every site).
    """
    out = {"alpha": {}, "beta": {}, "ratios": {"before": {"logit_std": {}, "oproj_rms": {}}}}
    if not (cfg.atm or cfg.ohb):
        return out
    _, ref = probe.measure(teacher)
    if cfg.logit_std == "per_sample" and cfg.atm and not ref.logit_std_per_sample:
        raise CalibrationError("this family's balance probe does not measure per-sample "
                               "logit stds (BalanceConfig.logit_std='per_sample')")
    before = out["ratios"]["before"]
    std_of = (lambda st: st.logit_std_per_sample) if cfg.logit_std == "per_sample" \
        else (lambda st: st.logit_std)
    got = None if cfg.progressive else probe.measure(student)[1]  # one uncorrected pass
    for stage in (progress(stages) if progress else stages):
        keys = {s.key for s in stage}
        if cfg.atm:
            if cfg.progressive:
                _, got = probe.measure(student, keys, out=False)
            for site in stage:
                ratio = balance_ratio(std_of(ref)[site.key], std_of(got)[site.key],
                                      site.key, "attention logit std")
                before["logit_std"][site.key] = ratio.tolist()
                alpha = clamp_band(ratio, cfg)
                site.scale_logits(alpha)
                out["alpha"][site.key] = alpha.tolist()
        if cfg.ohb:
            if cfg.progressive:
                _, got = probe.measure(student, keys, logits=False)
            for site in stage:
                ratio = balance_ratio(torch.tensor(ref.out_rms[site.key], dtype=torch.float64),
                                      torch.tensor(got.out_rms[site.key], dtype=torch.float64),
                                      site.key, "attention output RMS")
                before["oproj_rms"][site.key] = float(ratio)
                beta = float(ohb_factor(ratio, cfg))
                site.scale_output(beta)
                out["beta"][site.key] = beta
    out["ratios"]["after"] = ratio_table(ref, probe.measure(student)[1])
    return out


@torch.no_grad()
def unfold(stages: list[list[AttentionSite]], alpha: dict, beta: dict) -> None:
    """Divide folded factors back out of the sites (reports compare with and without them)."""
    sites = {s.key: s for stage in stages for s in stage}
    for key, a in alpha.items():
        sites[key].scale_logits(1.0 / torch.tensor(a, dtype=torch.float64))
    for key, b in beta.items():
        sites[key].scale_output(1.0 / float(b))


def ratio_table(teacher: SiteStats, student: SiteStats) -> dict:
    """Teacher / student logit-std (per head) and output-RMS ratios, by site key."""
    return {
        "logit_std": {k: (teacher.logit_std[k].double() / s.double()).tolist()
                      for k, s in student.logit_std.items() if k in teacher.logit_std},
        "oproj_rms": {k: teacher.out_rms[k] / s for k, s in student.out_rms.items()
                      if k in teacher.out_rms},
    }


def per_step_ratios(teacher: SiteStats, student: SiteStats) -> dict:
    """Per site and flow step: head-averaged logit-std ratio and output-RMS ratio."""
    out: dict = {}
    for key, steps in student.logit_std_by_step.items():
        for step, s in steps.items():
            t = teacher.logit_std_by_step.get(key, {}).get(step)
            if t is not None:
                ratio = float((t.double() / s.double().clamp(min=1e-30)).mean())
                out.setdefault(key, {}).setdefault(step, {})["logit_std"] = ratio
    for key, steps in student.out_rms_by_step.items():
        for step, s in steps.items():
            t = teacher.out_rms_by_step.get(key, {}).get(step)
            if t is not None:
                out.setdefault(key, {}).setdefault(step, {})["oproj_rms"] = t / s if s else None
    return {k: [v[s] for s in sorted(v)] for k, v in out.items()}


def tables(probe: BalanceProbe, teacher, student, unbalanced) -> dict:
    """Actions of the three models and the report's per-site ratios before / after.

    Keys: "teacher", "student", "unbalanced" (actions [N, H, A]), "layers" (per site: key,
    logit_std_ratio_before / after per head, oproj_rms_ratio_before / after) and
    "per_step_after" (per site, per flow step).
    """
    runs = {name: probe.measure(model) for name, model in
            (("teacher", teacher), ("student", student), ("unbalanced", unbalanced))}
    t, s, u = (runs[n][1] for n in ("teacher", "student", "unbalanced"))
    before, after = ratio_table(t, u), ratio_table(t, s)
    keys = list(dict.fromkeys([*after["logit_std"], *after["oproj_rms"]]))
    layers = [{"layer": key, **{f"{stat}_ratio_{when}": table[stat].get(key)
                                for stat in ("logit_std", "oproj_rms")
                                for when, table in (("before", before), ("after", after))}}
              for key in keys]
    return {**{n: runs[n][0] for n in runs}, "layers": layers,
            "per_step_after": per_step_ratios(t, s)}
