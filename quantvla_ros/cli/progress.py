"""A progress bar over an iterable (tqdm when installed, silent otherwise)."""

from __future__ import annotations


def progress_bar(items, desc: str = "layers"):
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(list(items), desc=desc, leave=False)
