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
from dataclasses import replace

from torch import nn

from quantvla_ros.models.family import Layout, Part
from quantvla_ros.models.registry import family_named
from quantvla_ros.quant.scheme import QuantScheme


def scheme_label(scheme: QuantScheme) -> str:
    """Short name of a linear's scheme, e.g. ``w4a8 g128`` or ``w4a8 per-channel``."""
    g = f"g{scheme.group_size}" if scheme.group_size else "per-channel"
    return (f"{scheme.bits} {g}" + (" hadamard" if scheme.hadamard else "")
            + (f" act-clip p{scheme.act_clip:g}" if scheme.act_clip is not None else ""))


def presets_of(family: str) -> dict[str, Layout]:
    """Return the named layouts of a model family (they live with the family's model)."""
    return dict(family_named(family).presets)


def get_layout(preset: str | None = None, include=(), exclude=(), family: str = "pi") -> Layout:
    """Return a family's preset extended by include / exclude patterns, or patterns alone."""
    presets = presets_of(family)
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
