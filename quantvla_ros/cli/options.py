"""Command-line flags for the families' deployment options, made from their declarations.

Each `PolicyFamily.options` entry becomes `--name-with-dashes` (default auto: what the source
declares), so a family's new option needs no edit here.
"""

from __future__ import annotations

from quantvla_ros.runtime.families import all_options
from quantvla_ros.runtime.family import UNSET


def add_option_args(p) -> None:
    """Add one flag per family option (its help says which families take it)."""
    for name, (spec, families) in all_options().items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, default="auto",
                       choices=["auto", *spec.choices] if spec.choices else None,
                       help=f"{spec.help} [{', '.join(families)}]")


def options_of(args) -> dict[str, str]:
    """Return the options set on the command line, by name (auto ones left out)."""
    return {name: getattr(args, name) for name in all_options()
            if getattr(args, name, None) is not None and getattr(args, name) not in UNSET}
