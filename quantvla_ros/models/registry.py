"""The family table: every model family's model side, and the lookups made through it.

A family registers here with one line in `FAMILIES` (its `models/<name>/family.py`). Named
configs, config (de)serialization, checkpoint folders, presets and float32-kept modules are
all reached through a family's `ModelFamily`; nothing here or above `models/` tests which
family a config is. A checkpoint folder belongs to the one family that claims its config.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from quantvla_ros.models.family import ModelConfig, ModelFamily
from quantvla_ros.models.groot.family import FAMILY as GROOT
from quantvla_ros.models.names import lookup
from quantvla_ros.models.pi.family import FAMILY as PI
from quantvla_ros.models.smolvla.family import FAMILY as SMOLVLA

FAMILIES: tuple[ModelFamily, ...] = (PI, GROOT, SMOLVLA)

_BY_NAME = {f.name: f for f in FAMILIES}
REGISTRY: dict[str, ModelConfig] = {n: c for f in FAMILIES for n, c in f.configs.items()}

__all__ = ["FAMILIES", "REGISTRY", "ModelConfig", "checkpoint_family", "config_from_dict",
           "config_to_dict", "family_named", "family_of", "get_config", "model_family",
           "normalizer_from_tensors", "read_checkpoint_config"]


def family_named(name: str) -> ModelFamily:
    """Return the registered family called ``name``."""
    if name not in _BY_NAME:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(_BY_NAME)}")
    return _BY_NAME[name]


def family_of(cfg: ModelConfig) -> str:
    """Return the config's family name."""
    return cfg.family


def model_family(cfg: ModelConfig) -> ModelFamily:
    """Return the family a config belongs to."""
    return family_named(cfg.family)


def get_config(name: str) -> ModelConfig:
    """Return the named config of any family; an unknown name raises KeyError with close names."""
    return lookup(REGISTRY, name)


def config_to_dict(cfg: ModelConfig) -> dict:
    """Return the config as a plain dict that names its family (for manifests)."""
    return {"family": family_of(cfg), **cfg.to_dict()}


def config_from_dict(d: dict) -> ModelConfig:
    """Rebuild a config written by :func:`config_to_dict`; no family key means pi (older)."""
    d = dict(d)
    return family_named(d.pop("family", "pi")).config_class.from_dict(d)


def checkpoint_family(folder) -> str:
    """Return the name of the one family that claims the folder's config.json."""
    path = Path(folder) / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON config ({exc})") from exc
    claimed = [f.name for f in FAMILIES if isinstance(raw, dict) and f.claims(raw)]
    if len(claimed) != 1:
        hints = "; ".join(f"{f.name}: {f.claim_hint}" for f in FAMILIES)
        what = "no model family claims it" if not claimed else f"claimed by {claimed}"
        raise ValueError(f"{path}: {what} (what each family looks for: {hints})")
    return claimed[0]


def read_checkpoint_config(folder) -> ModelConfig:
    """Return the config of the checkpoint in ``folder``, of whichever family it is."""
    return family_named(checkpoint_family(folder)).read_config(Path(folder))[0]


def normalizer_from_tensors(tensors: dict[str, np.ndarray], meta: dict[str, str],
                            cfg: ModelConfig):
    """Rebuild a normalizer from `to_tensors` output (an artifact's statistics file)."""
    return model_family(cfg).normalizer_from_tensors(tensors, meta, cfg)
