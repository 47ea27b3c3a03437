"""Every named model config, of every family: the names `quantvla models` and sources know.

Family-neutral on purpose: a config says its family (`cfg.family`, a class attribute, so it
is in no saved config dict) and `models.build` builds it by that; nothing above `models/`
tests which family a config is. `models.config.get_config` stays pi-only for the pi paths
(Policy, training, bench) that run a PiModel.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from quantvla_ros.models.groot.config import GROOT_REGISTRY, GrootConfig
from quantvla_ros.models.groot.normalization import GrootNormalizer
from quantvla_ros.models.names import lookup
from quantvla_ros.models.pi.config import REGISTRY as PI_REGISTRY
from quantvla_ros.models.pi.config import PiConfig
from quantvla_ros.models.pi.normalization import Normalizer

ModelConfig = PiConfig | GrootConfig

REGISTRY: dict[str, ModelConfig] = {**PI_REGISTRY, **GROOT_REGISTRY}


def family_of(cfg: ModelConfig) -> str:
    """Return the config's family name ("pi" or "groot")."""
    return cfg.family


def get_config(name: str) -> ModelConfig:
    """Return the named config of any family; an unknown name raises KeyError with close names."""
    return lookup(REGISTRY, name)


_CONFIG_CLASSES: dict[str, type] = {"pi": PiConfig, "groot": GrootConfig}


def config_to_dict(cfg: ModelConfig) -> dict:
    """Return the config as a plain dict that names its family (for manifests)."""
    return {"family": family_of(cfg), **cfg.to_dict()}


def config_from_dict(d: dict) -> ModelConfig:
    """Rebuild a config written by :func:`config_to_dict`; no family key means pi (older)."""
    d = dict(d)
    family = d.pop("family", "pi")
    if family not in _CONFIG_CLASSES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(_CONFIG_CLASSES)}")
    return _CONFIG_CLASSES[family].from_dict(d)


def checkpoint_family(folder) -> str:
    """Return the family of the checkpoint in ``folder`` from its config.json.

    GR00T: NVIDIA's `action_head_cfg` or lerobot's `"type": "groot"`; anything else is read
    as a lerobot pi0 / pi0.5 checkpoint (whose loader names what is wrong with it).
    """
    path = Path(folder) / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON config ({exc})") from exc
    is_groot = isinstance(raw, dict) and ("action_head_cfg" in raw or raw.get("type") == "groot")
    return "groot" if is_groot else "pi"


def read_checkpoint_config(folder) -> ModelConfig:
    """Return the config of the checkpoint in ``folder``, of whichever family it is."""
    # imported here: the checkpoint modules build models, and models.build imports this module
    from quantvla_ros.models.groot import checkpoint as groot_checkpoint
    from quantvla_ros.models.pi import checkpoint as pi_checkpoint

    readers = {"pi": pi_checkpoint.read_config, "groot": groot_checkpoint.read_config}
    return readers[checkpoint_family(folder)](folder)[0]


def normalizer_from_tensors(tensors: dict[str, np.ndarray], meta: dict[str, str],
                            cfg: ModelConfig):
    """Rebuild a normalizer from `to_tensors` output (an artifact's statistics file)."""
    if meta.get("mode") == GrootNormalizer.mode:
        return GrootNormalizer.from_tensors(tensors, meta)
    return Normalizer.from_stats(tensors, cfg.variant)
