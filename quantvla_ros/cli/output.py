"""Shared output helpers: JSON or a plain aligned table."""

from __future__ import annotations

import json


def print_json(data) -> None:
    """Print ``data`` as indented JSON, keys in insertion order."""
    print(json.dumps(data, indent=2, sort_keys=False))


def print_table(rows: list[dict], columns: list[str]) -> None:
    """Print ``rows`` as left-aligned ``columns`` under a header (missing keys: blank)."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def human_bytes(n: float) -> str:
    """Format a byte count with a binary unit: B, KiB, MiB or GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.2f} GiB"
