"""Looking up a named config, with close names suggested on a typo."""

from __future__ import annotations

import difflib


def lookup(registry: dict, name: str):
    """Return ``registry[name]``; an unknown name raises KeyError suggesting close names."""
    if name in registry:
        return registry[name]
    close = difflib.get_close_matches(name, registry, n=3, cutoff=0.3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise KeyError(f"unknown model {name!r}.{hint} Known models: {', '.join(registry)}")
