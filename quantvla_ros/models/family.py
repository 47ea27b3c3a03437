"""What a model family is to the rest of the package, written down once.

- `ModelConfig`: the config contract the layers above `models/` read (a typing.Protocol:
  every family's frozen config dataclass satisfies it structurally).
- `Layout` / `Part`: a quantization layout as data (globs over module names), so a family's
  presets live with its model; `quant.layouts` applies them.
- `ModelFamily`: one family's model side: its named configs, how to build / init / load
  it, which checkpoint folders it claims, which modules stay float32, its presets.
`models.registry.FAMILIES` lists one `ModelFamily` per family; nothing else is registered.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol

from torch import nn


def check_noise_scale(value: float) -> None:
    """Reject a declared noise scale that is negative or not finite."""
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ValueError(f"noise_scale {value!r}: expected a finite number >= 0 (1 samples "
                         "the learned distribution, 0 starts every chunk from its mean)")


class ModelConfig(Protocol):
    """The fields and methods of a model config that code outside `models/` may read."""

    family: ClassVar[str]  # the ModelFamily name ("pi", "groot")
    name: str
    variant: str  # a family's sub-kind ("pi0", "pi05", "groot-n15"); recorded in reports
    cameras: tuple[str, ...]  # the camera slots, in model order
    noise_scale: float  # the denoising start noise's scale the source declares (1: sampling)

    @property
    def vision(self) -> Any:
        """The vision tower's config; `vision.image_size` is the square input side."""

    @property
    def action_horizon(self) -> int:
        """Actions per chunk."""

    @property
    def action_dim(self) -> int:
        """Padded action width the model outputs."""

    @property
    def state_dim(self) -> int:
        """Padded state width the model takes."""

    @property
    def num_steps(self) -> int:
        """Flow-matching steps per chunk."""

    @property
    def prefix_len(self) -> int:
        """Image (and fixed text) tokens before the action tokens."""

    def to_dict(self) -> dict:
        """Return the config as JSON-ready nested dicts (its family's `from_dict` reads it)."""

    def with_(self, **changes) -> ModelConfig:
        """Return a copy with ``changes`` applied."""


@dataclass(frozen=True)
class Part:
    """Linears quantized with the layout's bits but their own group size (None: per channel)."""

    name: str
    include: tuple[str, ...]
    group_size: int | None = None
    why: str = ""

    def scheme(self, base):
        """Return the scheme this part's linears get when the layout runs at ``base``."""
        return replace(base, group_size=self.group_size)


@dataclass(frozen=True)
class Layout:
    """Include / exclude globs over linear names, per-part schemes and quantized embeddings."""

    name: str
    include: tuple[str, ...]
    exclude: tuple[str, ...] = field(default_factory=tuple)
    description: str = ""
    parts: tuple[Part, ...] = ()
    embeddings: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelFamily:
    """One model family's model side; upper layers reach it through `models.registry`.

    claims(raw) says whether a checkpoint's parsed config.json is this family's (exactly one
    family may claim a folder); claim_hint says what it looks for, for the error when none
    does. read_config(folder) -> (config, raw); load_checkpoint(folder, device, dtype) ->
    (model, config, normalizer or None). fp32_modules: module types whose parameters stay
    float32 in every precision. normalizer_from_tensors(tensors, meta, cfg) rebuilds the
    statistics an artifact stores. tokenizer_dir: the subfolder a checkpoint keeps its
    tokenizer in.
    """

    name: str
    configs: Mapping[str, ModelConfig]
    config_class: type
    build: Callable[[ModelConfig], nn.Module]
    init_random: Callable
    claims: Callable[[dict], bool]
    claim_hint: str
    read_config: Callable[[Path], tuple[ModelConfig, dict]]
    normalizer_from_tensors: Callable
    presets: Mapping[str, Layout]
    fp32_modules: tuple[type, ...] = ()
    tokenizer_dir: str = "tokenizer"  # where a checkpoint folder of this family keeps it
