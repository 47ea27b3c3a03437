"""Selective quantization layouts: which linears become integer, chosen by module name.

Patterns are shell-style globs over module names (`backbone.layers.*.mlp.*`). A layout
includes what matches any include pattern and no exclude pattern; every pattern must match
at least one linear, so a typo is an error rather than a silent no-op.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from torch import nn

_BACKBONE = "backbone.layers.*"
_EXPERT_MLP = "expert.layers.*.mlp.*"
_EXPERT_ATTN = "expert.layers.*.self_attn.*"


@dataclass(frozen=True)
class Layout:
    """A named set of include / exclude globs over linear module names."""

    name: str
    include: tuple[str, ...]
    exclude: tuple[str, ...] = field(default_factory=tuple)
    description: str = ""


PRESETS: dict[str, Layout] = {
    "quantvla": Layout("quantvla", (_BACKBONE, _EXPERT_MLP), description=(
        "the paper's: every backbone linear and the expert's MLP; expert attention, vision, "
        "projector, embeddings and action heads stay float")),
    "backbone": Layout("backbone", (_BACKBONE,), description="backbone linears only"),
    "expert_mlp": Layout("expert_mlp", (_EXPERT_MLP,), description="expert MLP linears only"),
    "backbone_expert": Layout("backbone_expert", (_BACKBONE, _EXPERT_MLP, _EXPERT_ATTN),
                              description="every backbone and expert linear (norms stay float)"),
    "none": Layout("none", (), description="nothing quantized (float reference)"),
}


def get_layout(preset: str | None = None, include=(), exclude=()) -> Layout:
    """Return a preset, optionally extended by include / exclude patterns, or patterns alone."""
    if preset is None and not include:
        raise ValueError("give a preset or include patterns")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    base = PRESETS[preset] if preset else Layout("custom", ())
    return Layout(base.name if not (include or exclude) else f"{base.name}+custom",
                  base.include + tuple(include), base.exclude + tuple(exclude),
                  base.description)


def linear_names(model: nn.Module) -> list[str]:
    """Return the names of every linear in the model, float or already quantized."""
    from quantvla_ros.quant.qlinear import QuantLinear

    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear | QuantLinear)]


def select(model: nn.Module, layout: Layout) -> list[str]:
    """Names of the linears the layout quantizes; a pattern matching nothing is an error."""
    names = linear_names(model)
    for pattern in layout.include + layout.exclude:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise ValueError(f"pattern {pattern!r} matches no linear layer of the model")
    return [n for n in names
            if any(fnmatch.fnmatchcase(n, p) for p in layout.include)
            and not any(fnmatch.fnmatchcase(n, p) for p in layout.exclude)]
