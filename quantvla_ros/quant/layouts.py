"""Selective quantization layouts: which linears (and embeddings) become integer, by name.

Patterns are shell-style globs over module names (`backbone.layers.*.mlp.*`). A layout
includes what matches any include pattern (its own or a part's) and no exclude pattern;
every pattern must match at least one module, so a typo is an error rather than a silent
no-op. A `Part` quantizes its linears with their own granularity (the SigLIP tower's widths
are not multiples of the 128-wide weight groups); `embeddings` are token tables stored as
integer rows with the scheme's weight bits.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, replace

from torch import nn

from quantvla_ros.quant.scheme import QuantScheme

_BACKBONE = "backbone.layers.*"
_EXPERT_MLP = "expert.layers.*.mlp.*"
_EXPERT_ATTN = "expert.layers.*.self_attn.*"
_VISION = "vision.*"
_TOKENS = "backbone.embed_tokens"


def scheme_label(scheme: QuantScheme) -> str:
    """Short name of a linear's scheme, e.g. ``w4a8 g128`` or ``w4a8 per-channel``."""
    g = f"g{scheme.group_size}" if scheme.group_size else "per-channel"
    return f"{scheme.bits} {g}" + (" hadamard" if scheme.hadamard else "")


@dataclass(frozen=True)
class Part:
    """Linears quantized with the layout's bits but their own group size (None: per channel)."""

    name: str
    include: tuple[str, ...]
    group_size: int | None = None
    why: str = ""

    def scheme(self, base: QuantScheme) -> QuantScheme:
        """Return the scheme this part's linears get when the layout runs at ``base``."""
        return replace(base, group_size=self.group_size)


_VISION_PART = Part("vision", (_VISION,), None, why=(
    "SigLIP widths are not multiples of the 128-wide int4 groups (So400m MLP 4304, "
    "pi05-libero 192), so one scale per output channel; int4 weights (not int8) because "
    "int8 leaves pi05 at 36% of bf16"))


@dataclass(frozen=True)
class Layout:
    """Include / exclude globs over linear names, per-part schemes and quantized embeddings."""

    name: str
    include: tuple[str, ...]
    exclude: tuple[str, ...] = field(default_factory=tuple)
    description: str = ""
    parts: tuple[Part, ...] = ()
    embeddings: tuple[str, ...] = ()


PRESETS: dict[str, Layout] = {
    "quantvla": Layout("quantvla", (_BACKBONE, _EXPERT_MLP), description=(
        "the paper's: every backbone linear and the expert's MLP; expert attention, vision, "
        "projector, embeddings and action heads stay float")),
    "full": Layout("full", (_BACKBONE, _EXPERT_MLP), parts=(_VISION_PART,),
                   embeddings=(_TOKENS,), description=(
        "quantvla plus the SigLIP tower's linears (per output channel) and the token "
        "embedding (integer rows at the weight bits, per-row scales); expert attention, "
        "projector and action heads stay float")),
    "backbone": Layout("backbone", (_BACKBONE,), description="backbone linears only"),
    "expert_mlp": Layout("expert_mlp", (_EXPERT_MLP,), description="expert MLP linears only"),
    "backbone_expert": Layout("backbone_expert", (_BACKBONE, _EXPERT_MLP, _EXPERT_ATTN),
                              description="every backbone and expert linear (norms stay float)"),
    "none": Layout("none", (), description="nothing quantized (float reference)"),
}


# GR00T N1.5 (module names = the NVIDIA checkpoint keys, shared/GROOT.md sections 3-5).
_LLM = "backbone.eagle_model.language_model.model.layers.*"
_GROOT_LLM = (f"{_LLM}.self_attn.[qkvo]_proj", f"{_LLM}.mlp.*_proj")
_DIT = "action_head.model.transformer_blocks.*"
_DIT_FF = (f"{_DIT}.ff.net.*",)
_DIT_ATTN = (f"{_DIT}.attn1.*",)
_VLSA = ("action_head.vl_self_attention.transformer_blocks.*",)

GROOT_PRESETS: dict[str, Layout] = {
    "quantvla": Layout("quantvla", _GROOT_LLM + _DIT_FF, description=(
        "the QuantVLA authors' GR00T layout: the 12 LLM layers' linears and the DiT "
        "feed-forward linears (116); vision, mlp1, vl self-attention, DiT attention (ATM / OHB "
        "act there), adaLN / timestep / output projections and the per-embodiment MLPs stay "
        "float")),
    "llm": Layout("llm", _GROOT_LLM, description="the 12 LLM layers' linears only"),
    "dit_ff": Layout("dit_ff", _DIT_FF, description="the DiT feed-forward linears only"),
    "all": Layout("all", _GROOT_LLM + _VLSA + _DIT_FF + _DIT_ATTN, description=(
        "every LLM, vl self-attention and DiT block linear (adaLN, timestep, output "
        "projections, vision and mlp1 stay float)")),
    "none": Layout("none", (), description="nothing quantized (float reference)"),
}

# Presets per model family (models.registry.family_of: a config's `family`).
FAMILY_PRESETS: dict[str, dict[str, Layout]] = {"pi": PRESETS, "groot": GROOT_PRESETS}


def get_layout(preset: str | None = None, include=(), exclude=(), family: str = "pi") -> Layout:
    """Return a family's preset extended by include / exclude patterns, or patterns alone."""
    presets = FAMILY_PRESETS[family]
    if preset is None and not include:
        raise ValueError("give a preset or include patterns")
    if preset is not None and preset not in presets:
        raise ValueError(f"unknown preset {preset!r} for {family} models; presets: "
                         f"{', '.join(presets)}")
    base = presets[preset] if preset else Layout("custom", ())
    return replace(base, name=base.name if not (include or exclude) else f"{base.name}+custom",
                   include=base.include + tuple(include), exclude=base.exclude + tuple(exclude))


def linear_names(model: nn.Module) -> list[str]:
    """Return the names of every linear in the model, float or already quantized."""
    from quantvla_ros.quant.qlinear import QuantLinear

    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear | QuantLinear)]


def _embedding_names(model: nn.Module) -> list[str]:
    from quantvla_ros.quant.qembedding import QuantEmbedding

    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Embedding | QuantEmbedding)]


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _check_patterns(model: nn.Module, layout: Layout) -> list[str]:
    names = linear_names(model)
    embeddings = _embedding_names(model)
    for part in layout.parts:
        for pattern in part.include:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                raise ValueError(f"part {part.name!r}: pattern {pattern!r} matches no linear "
                                 "layer of the model")
    for pattern in layout.include + layout.exclude:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names + embeddings):
            raise ValueError(f"pattern {pattern!r} matches no linear layer of the model")
    for name in layout.embeddings:
        if name not in embeddings:
            raise ValueError(f"{name!r} is not an embedding of the model")
    return names


def select(model: nn.Module, layout: Layout) -> list[str]:
    """Names of the linears the layout quantizes; a pattern matching nothing is an error."""
    part_patterns = tuple(p for part in layout.parts for p in part.include)
    return [n for n in _check_patterns(model, layout)
            if _matches(n, layout.include + part_patterns) and not _matches(n, layout.exclude)]


def select_embeddings(model: nn.Module, layout: Layout) -> list[str]:
    """Names of the embeddings the layout stores as integer rows (exclude patterns apply)."""
    _check_patterns(model, layout)
    return [n for n in layout.embeddings if not _matches(n, layout.exclude)]


def part_of(name: str, layout: Layout) -> Part | None:
    """Return the part whose patterns match linear ``name`` first (None: the main scheme)."""
    return next((p for p in layout.parts if _matches(name, p.include)), None)


def schemes(model: nn.Module, layout: Layout, scheme: QuantScheme) -> dict[str, QuantScheme]:
    """Map each linear the layout quantizes to its scheme: its part's, else ``scheme``."""
    out = {}
    for name in select(model, layout):
        part = part_of(name, layout)
        out[name] = part.scheme(scheme) if part else scheme
    return out
