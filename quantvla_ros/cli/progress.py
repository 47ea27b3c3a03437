"""A progress bar over an iterable (tqdm when installed, silent otherwise)."""

from __future__ import annotations


def progress_bar(items, desc: str = "layers"):
    """Wrap ``items`` in a tqdm bar labelled ``desc``; return them as is without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(list(items), desc=desc, leave=False)
