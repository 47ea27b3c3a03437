"""Every named model config, of every family: the names `quantvla models` and sources know.

Family-neutral on purpose: a config says its family (`cfg.family`, a class attribute, so it
is in no saved config dict) and `models.build` builds it by that; nothing above `models/`
tests which family a config is. `models.config.get_config` stays pi-only for the pi paths
(Policy, training, bench) that run a PiModel.
"""

from __future__ import annotations

from quantvla_ros.models.config import REGISTRY as PI_REGISTRY
from quantvla_ros.models.config import PiConfig, lookup
from quantvla_ros.models.groot.config import GROOT_REGISTRY, GrootConfig

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
