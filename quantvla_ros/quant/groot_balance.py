"""ATM and OHB on GR00T's DiT attention (shared/GROOT.md §5.4), folded into float weights.

- ATM: alpha[i, h] = std_teacher / std_student of block i's pre-softmax logits q.k / sqrt(d),
  the std taken over the (query, key) pairs of each (batch, head) and averaged over batch
  and every call (every flow step of every batch); folded into to_q rows h*d..(h+1)*d-1
  and their bias (logits are linear in q: no RoPE, no q norm in the DiT).
- OHB: beta[i] = RMS_teacher / RMS_student of the attention module's output (after
  to_out.0), folded into to_out.0's weight and bias.
Both are clamped and banded by `balance.clamp_band` and calibrated block by block: block i
is measured with the corrections of blocks < i (and its own ATM, for OHB) already folded.
The backbone is untouched by the folds, so its features are computed once per model.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from quantvla_ros.quant.balance import BalanceConfig, _scale_rows, balance_ratio, clamp_band

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
    _scale_rows(attn.to_q, alpha.repeat_interleave(attn.head_dim))


@torch.no_grad()
def fold_dit_ohb(attn, beta: float) -> None:
    """Scale the attention output by beta (to_out.0 weight and bias)."""
    lin = attn.to_out[0]
    _scale_rows(lin, torch.full((lin.out_features,), float(beta), dtype=torch.float64))


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


def calibrate_dit_balance(teacher, student, batches, cfg: BalanceConfig) -> dict:
    """Fold ATM / OHB into `student`'s DiT attention in place, block by block.

    `batches` are dicts of `GrootModel.sample_actions` arguments (pixel_values, input_ids,
    attention_mask, state, embodiment_id, noise, optional num_steps); teacher and student
    see the same noise. Returns "alpha" {key: [H]}, "beta" {key: x} (keys as in [QV]'s
    JSON) and "ratios" {"logit_std": {key: [H]}, "out_rms": {key: x}}: each block's raw
    teacher / student ratio as measured just before its own correction. `cfg.towers` does
    not apply (the DiT is GR00T's only balanced stack).
    """
    out = {"alpha": {}, "beta": {}, "ratios": {"logit_std": {}, "out_rms": {}}}
    if not (cfg.atm or cfg.ohb):
        return out
    t_feat, s_feat = backbone_features(teacher, batches), backbone_features(student, batches)
    ref = measure_dit(teacher, batches, t_feat)
    t_std, t_rms = ref.logit_std(), ref.out_rms()
    for i in range(len(student.action_head.model.transformer_blocks)):
        key, attn = BLOCK_KEY.format(i), dit_attention(student, i)
        if cfg.atm:
            s_std = measure_dit(student, batches, s_feat, [i], out=False).logit_std()[i]
            ratio = balance_ratio(t_std[i], s_std, key, "attention logit std")
            out["ratios"]["logit_std"][key] = ratio.tolist()
            alpha = clamp_band(ratio, cfg)
            fold_dit_atm(attn, alpha)
            out["alpha"][key] = alpha.tolist()
        if cfg.ohb:
            s_rms = measure_dit(student, batches, s_feat, [i], logits=False).out_rms()[i]
            ratio = balance_ratio(torch.tensor(t_rms[i], dtype=torch.float64),
                                  torch.tensor(s_rms, dtype=torch.float64), key,
                                  "attention output RMS")
            out["ratios"]["out_rms"][key] = float(ratio)
            beta = float(clamp_band(ratio, cfg))
            fold_dit_ohb(attn, beta)
            out["beta"][key] = beta
    return out


def block_of(key: str) -> int:
    """Return the DiT block index of a BLOCK_KEY-style key."""
    prefix, suffix = BLOCK_KEY.split("{}")
    if not (key.startswith(prefix) and key.endswith(suffix)):
        raise ValueError(f"{key!r} is not a DiT attention key ({BLOCK_KEY})")
    return int(key[len(prefix):len(key) - len(suffix)])


@torch.no_grad()
def unfold_dit_balance(model, alpha: dict, beta: dict) -> None:
    """Divide folded ATM / OHB factors back out of the DiT attention."""
    for key, a in alpha.items():
        fold_dit_atm(dit_attention(model, block_of(key)),
                     1.0 / torch.tensor(a, dtype=torch.float64))
    for key, b in beta.items():
        fold_dit_ohb(dit_attention(model, block_of(key)), 1.0 / float(b))


def _step_ratios(t: DiTStats, s: DiTStats) -> dict:
    """Per block key, per flow step: head-mean logit-std ratio and output RMS ratio."""
    out = {}
    for (block, step), s_sum in sorted(s.std_sum.items()):
        t_sum = t.std_sum.get((block, step))
        if t_sum is None:
            continue
        ratio = (t_sum / t.std_n[(block, step)]).double() / \
            (s_sum / s.std_n[(block, step)]).double().clamp(min=1e-30)
        rms_t = (t.sq_sum[(block, step)] / t.sq_n[(block, step)]) ** 0.5
        rms_s = (s.sq_sum[(block, step)] / s.sq_n[(block, step)]) ** 0.5
        out.setdefault(BLOCK_KEY.format(block), []).append(
            {"logit_std": float(ratio.mean()), "oproj_rms": rms_t / rms_s if rms_s else None})
    return out


def dit_balance_tables(teacher, student, unbalanced, batches) -> dict:
    """Actions of the three models and per-block ratios before / after balancing.

    "oproj_rms" is the attention output after to_out.0 (the DiT's o_proj), as pi's tables
    name it; each ratio is teacher / model over every flow step of every batch.
    """
    runs = {}
    for name, model in (("teacher", teacher), ("student", student),
                        ("unbalanced", unbalanced)):
        stats = DiTStats()
        actions = run_head(model, batches, backbone_features(model, batches), stats)
        runs[name] = (actions.float().cpu(), stats)
    t, s, u = (runs[n][1] for n in ("teacher", "student", "unbalanced"))
    t_std, t_rms = t.logit_std(), t.out_rms()
    layers = []
    for block in sorted(t_std):
        row = {"layer": BLOCK_KEY.format(block)}
        for when, m in (("before", u), ("after", s)):
            row[f"logit_std_ratio_{when}"] = (t_std[block].double() /
                                              m.logit_std()[block].double()).tolist()
            row[f"oproj_rms_ratio_{when}"] = t_rms[block] / m.out_rms()[block]
        layers.append(row)
    return {**{n: runs[n][0] for n in runs}, "layers": layers,
            "per_step_after": _step_ratios(t, s)}
