"""Every model family's runtime side, one module each (pi-only helpers say so in their name).

`FAMILIES` is the runtime's one registration per family; the base class and the interface are
runtime/family.py, which imports none of the implementations.
"""

from quantvla_ros.models.family import ModelConfig
from quantvla_ros.quant.layouts import presets_of
from quantvla_ros.runtime.families.groot import GrootFamily
from quantvla_ros.runtime.families.pi import PiFamily
from quantvla_ros.runtime.families.smolvla import SmolVLAFamily
from quantvla_ros.runtime.family import OptionSpec, PolicyFamily

FAMILIES: dict[str, type[PolicyFamily]] = {"pi": PiFamily, "groot": GrootFamily,
                                            "smolvla": SmolVLAFamily}


def family_named(name: str) -> PolicyFamily:
    """Return a new PolicyFamily of the family `name` (each Policy holds its own)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]()


def family_for(cfg: ModelConfig) -> PolicyFamily:
    """Return a new PolicyFamily for a config."""
    return family_named(cfg.family)


def all_options() -> dict[str, tuple[OptionSpec, tuple[str, ...]]]:
    """Every family's options: name -> (its spec, the families that take it).

    The CLI and the node parameters are made from this table, so an option is declared once,
    in its family.
    """
    out: dict[str, tuple[OptionSpec, tuple[str, ...]]] = {}
    for name, family in FAMILIES.items():
        for spec in family.options:
            known = out.get(spec.name)
            out[spec.name] = (spec, (*known[1], name) if known else (name,))
    return out


def presets_help() -> str:
    """Name every family's quantization presets, for help texts ("pi: quantvla | ...; ...")."""
    return "; ".join(f"{name}: {' | '.join(presets_of(name))}" for name in FAMILIES)
