"""DA-PTQ's cross-space representation compensation (CSRC) at the VL -> action interface.

pi0.5's action expert reads the backbone only through each layer's prefix keys and values,
so the interface tensors are the backbone's `k_proj` / `v_proj` outputs (before RoPE) over
the valid prefix rows. Per linear, from float-teacher vs quantized-student outputs on the
same unlabeled frames, a map z~ = g * z + L z + d (DA-PTQ Eq. 4-6, 8-9) is fitted:

- g, d per channel: ``moments`` matches mean and std (Eq. 4-5); ``paired`` is the per-channel
  least squares of teacher on student (the samples are paired, so this targets the per-sample
  error, which moment matching does not); g is clamped and snapped to 1 inside a band;
- L (optional, ``rank`` > 0): the low-rank cross-channel part, paired ridge least squares of
  the residual on the centred student output, truncated by SVD.

Folding puts it in the producing linear, so no op runs at inference: g scales the output
channel's dequantization scale (exact: every format keeps one float scale per output row),
d becomes its bias (the integer kernels' epilogue adds it), and a float linear takes
W <- (diag g + L) W. L cannot fold exactly into integer weights, so a quantized linear with
L > 0 is refused; `Compensated` applies the same map at runtime (tests, measurement).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import nn

from quantvla_ros.models.build import compute_dtype
from quantvla_ros.quant.apply import own_tensors
from quantvla_ros.quant.qlinear import QuantLinear

# the producers of the prefix keys / values the action expert reads (pi0 / pi0.5 names)
INTERFACE_PATTERNS = ("backbone.layers.*.self_attn.k_proj", "backbone.layers.*.self_attn.v_proj")


@dataclass(frozen=True)
class CsrcConfig:
    """Hyper-parameters of the fit (the paper gives none: these are ours, stated here)."""

    solver: str = "paired"  # "paired" (least squares) or "moments" (Eq. 4-5)
    clamp: tuple[float, float] = (0.8, 1.25)  # g range, ATM's (the paper's is unknown)
    band: float = 0.02  # |g - 1| below this: g = 1
    bias: bool = True  # fit d (folds as a bias); False: g only, fits the fused q/k/v GEMM
    rank: int = 0  # rank of the cross-channel map L (0: per channel only)
    ridge: float = 1e-2  # L's ridge, relative to the mean student variance
    eps: float = 1e-6

    def __post_init__(self) -> None:
        """Reject unknown solvers and empty clamp ranges."""
        if self.solver not in ("paired", "moments"):
            raise ValueError(f"CSRC solver must be 'paired' or 'moments', got {self.solver!r}")
        if not 0 < self.clamp[0] <= 1 <= self.clamp[1]:
            raise ValueError(f"CSRC clamp must contain 1, got {self.clamp}")


@dataclass
class ChannelMap:
    """z~ = g * z + z @ lr_v @ lr_u.T + d for outputs z [..., N] (lr_*: [N, r] or None)."""

    g: torch.Tensor
    d: torch.Tensor
    lr_u: torch.Tensor | None = None
    lr_v: torch.Tensor | None = None

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        """Apply the map at runtime."""
        out = z * self.g.to(z) + self.d.to(z)
        if self.lr_u is not None:
            out = out + (z @ self.lr_v.to(z)) @ self.lr_u.to(z).T
        return out

    def matrix(self) -> torch.Tensor:
        """Return A = diag(g) + U V^T [N, N] (float64), so that z~ = A z + d."""
        a = torch.diag(self.g.double())
        if self.lr_u is not None:
            a = a + self.lr_u.double() @ self.lr_v.double().T
        return a


def interface_names(model: nn.Module) -> list[str]:
    """Return the interface producers of ``model`` in layer order (k before v)."""
    names = [n for n, m in model.named_modules()
             if any(fnmatch.fnmatchcase(n, p) for p in INTERFACE_PATTERNS)]
    return sorted(names, key=lambda n: (int(n.split(".")[2]), n))


def _clamp(g: torch.Tensor, cfg: CsrcConfig) -> torch.Tensor:
    g = g.clamp(*cfg.clamp)
    return torch.where((g - 1).abs() < cfg.band, torch.ones_like(g), g)


def fit_map(zf: torch.Tensor, zq: torch.Tensor, cfg: CsrcConfig) -> ChannelMap:
    """Fit the map of student rows zq [R, N] to teacher rows zf [R, N] (same inputs)."""
    zf, zq = zf.double(), zq.double()
    mf, mq = zf.mean(0), zq.mean(0)
    cf, cq = zf - mf, zq - mq
    if cfg.solver == "moments":
        g = cf.pow(2).mean(0).sqrt() / (cq.pow(2).mean(0).sqrt() + cfg.eps) if cfg.bias \
            else zf.pow(2).mean(0).sqrt() / (zq.pow(2).mean(0).sqrt() + cfg.eps)
    elif cfg.bias:
        g = (cf * cq).mean(0) / (cq.pow(2).mean(0) + cfg.eps)
    else:  # no intercept: least squares through the origin
        g = (zf * zq).mean(0) / (zq.pow(2).mean(0) + cfg.eps)
    g = _clamp(g, cfg)
    d = mf - g * mq if cfg.bias else torch.zeros_like(g)
    out = ChannelMap(g.float(), d.float())
    if cfg.rank > 0:
        resid = zf - (zq * g + d)
        x = cq if cfg.bias else zq
        cov = x.T @ x / len(x)
        ridge = cfg.ridge * cov.diagonal().mean()
        full = torch.linalg.solve(cov + ridge * torch.eye(len(cov), dtype=cov.dtype),
                                  x.T @ resid / len(x)).T  # resid ~ x @ full.T
        u, s, vh = torch.linalg.svd(full)
        r = min(cfg.rank, len(s))
        out.lr_u, out.lr_v = (u[:, :r] * s[:r]).float(), vh[:r].T.float()
        if cfg.bias:  # the low-rank part read centred rows: move its mean into d
            out.d = (d - full_lowrank(out) @ mq).float()
    return out


def full_lowrank(m: ChannelMap) -> torch.Tensor:
    """U V^T [N, N] in float64 (zeros when there is no low-rank part)."""
    if m.lr_u is None:
        return torch.zeros(len(m.g), len(m.g), dtype=torch.float64)
    return m.lr_u.double() @ m.lr_v.double().T


class Compensated(nn.Module):
    """A linear followed by its map at runtime: the reference the fold must equal."""

    def __init__(self, linear: nn.Module, cmap: ChannelMap):
        """Wrap ``linear``; its output goes through ``cmap``."""
        super().__init__()
        self.linear, self.cmap = linear, cmap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the linear's output, mapped."""
        return self.cmap.apply(self.linear(x))


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


@torch.no_grad()
def fold_(model: nn.Module, name: str, cmap: ChannelMap,
          dtype: torch.dtype = torch.float32) -> None:
    """Fold ``cmap`` into linear ``name`` in place (no runtime op is added).

    A new bias of an integer linear gets ``dtype`` (the model's activation dtype).
    """
    lin = model.get_submodule(name)
    if isinstance(lin, QuantLinear):
        if cmap.lr_u is not None:
            raise ValueError(f"{name}: a cross-channel map cannot fold exactly into integer "
                             "weights (use rank 0, or keep the linear float)")
        lin.scale_output_channels(cmap.g)  # also scales an existing bias
        if cmap.d.abs().max() > 0:
            dtype = lin.bias.dtype if lin.bias is not None else dtype
            base = lin.bias if lin.bias is not None else torch.zeros(lin.out_features)
            lin.bias = (base.to(cmap.d) + cmap.d).to(dtype=dtype, device=lin.weight_q.device)
        return
    own_tensors(lin)  # a student shares the teacher's float tensors: never write them
    a = cmap.matrix().to(lin.weight.device)
    w = lin.weight.double()
    b = lin.bias.double() if lin.bias is not None else torch.zeros(len(a), dtype=a.dtype,
                                                                   device=a.device)
    lin.weight.copy_((a @ w).to(lin.weight.dtype))
    new_b = a @ b + cmap.d.double().to(a.device)
    if lin.bias is not None:
        lin.bias.copy_(new_b.to(lin.bias.dtype))
    elif new_b.abs().max() > 0:
        lin.bias = nn.Parameter(new_b.to(lin.weight.dtype), requires_grad=False)


@torch.no_grad()
def interface_outputs(model: nn.Module, batches: list[dict], names: list[str]
                      ) -> dict[str, torch.Tensor]:
    """Return the outputs [R, N] of linears ``names`` over every batch's valid prefix rows.

    Runs only the prefix (embedding and prefill): the interface is complete after it.
    """
    got: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    valid: list[torch.Tensor] = []
    handles = []
    for n in names:
        def hook(_m, _args, out, _n=n):
            got[_n].append(out[valid[-1]].detach().float().cpu())
        handles.append(model.get_submodule(n).register_forward_hook(hook))
    try:
        for b in batches:
            embs, v = model.embed_prefix(b["images"], b["image_masks"], b["tokens"],
                                         b["token_masks"])
            valid.append(v)
            model.prefill(embs, v)
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(rows) for n, rows in got.items()}


def _rel(zf: torch.Tensor, z: torch.Tensor) -> float:
    return float((z - zf).norm() / zf.norm().clamp_min(1e-30))


@torch.no_grad()
def calibrate_csrc(teacher: nn.Module, student: nn.Module, batches: list[dict],
                   cfg: CsrcConfig = CsrcConfig(), runtime: bool = False, log=None,
                   names: list[str] | None = None) -> tuple[dict[str, ChannelMap], list[dict]]:
    """Fit and fold the maps layer by layer (each fit sees the earlier layers corrected).

    ``runtime`` installs `Compensated` wrappers instead of folding (for a low-rank map on
    integer weights, to measure what it would buy). Returns the maps and, per linear, the
    relative interface error ||z - z_fp|| / ||z_fp|| before and after, and g's range.
    ``names`` restricts the fit to some of the interface linears (ablations).
    """
    names = names or interface_names(student)
    dtype = compute_dtype(student)
    ref = interface_outputs(teacher, batches, names)
    maps, rows = {}, []
    for layer in sorted({n.split(".")[2] for n in names}, key=int):
        group = [n for n in names if n.split(".")[2] == layer]
        got = interface_outputs(student, batches, group)
        for n in group:
            cmap = fit_map(ref[n], got[n], cfg)
            after = cmap.apply(got[n])
            rows.append({"linear": n, "error_before": _rel(ref[n], got[n]),
                         "error_after": _rel(ref[n], after),
                         "g_min": float(cmap.g.min()), "g_max": float(cmap.g.max())})
            if runtime:
                _set(student, n, Compensated(student.get_submodule(n), cmap))
            else:
                fold_(student, n, cmap, dtype)
            maps[n] = cmap
            if log:
                r = rows[-1]
                log(f"csrc {n}: interface error {r['error_before']:.4f} -> "
                    f"{r['error_after']:.4f}, g in [{r['g_min']:.3f}, {r['g_max']:.3f}]")
    return maps, rows
