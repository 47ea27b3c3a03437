"""The Hugging Face checkpoint file layout every family's folders share.

config.json, and the weights either in one model.safetensors or in shards listed by
model.safetensors.index.json (NVIDIA's GR00T releases). What config.json holds is the
family's business (models.registry asks each family whether it claims a folder).
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIG, WEIGHTS, INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"


class WeightFilesError(ValueError):
    """A folder whose weight files cannot be listed; the message says why."""


def has_weights(folder) -> bool:
    """Return whether ``folder`` holds model.safetensors or a shard index."""
    folder = Path(folder)
    return (folder / WEIGHTS).is_file() or (folder / INDEX).is_file()


def weight_files(folder) -> list[Path]:
    """List the safetensors files of a folder: the index's shards, else the single file."""
    folder = Path(folder)
    if (folder / INDEX).is_file():
        try:
            weight_map = json.loads((folder / INDEX).read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise WeightFilesError(f"{folder / INDEX}: no weight_map ({exc})") from exc
        files = sorted({folder / name for name in weight_map.values()})
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise WeightFilesError(f"{folder}: {INDEX} lists shards that are absent: {absent}")
        return files
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    raise WeightFilesError(f"{folder}: no {INDEX} (sharded) and no {WEIGHTS}")


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message says exactly why."""


def require_checkpoint(folder) -> Path:
    """Return ``folder`` as a Path if it holds config.json and model.safetensors."""
    folder = Path(folder)
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: not a checkpoint folder (missing {name})")
    return folder


class PrefixRenames:
    """Renames between lerobot's tensor names and ours that differ by a prefix only.

    ``pairs`` is [(theirs, ours)] in the order tried; the last pair's ``ours`` must be "" so
    every one of our names maps back.
    """

    def __init__(self, pairs: list[tuple[str, str]]):
        """Keep ``pairs``; refuse a list whose last pair cannot map every name back."""
        if not pairs or pairs[-1][1] != "":
            raise ValueError("the last prefix pair must map to our empty prefix")
        self.pairs = list(pairs)

    def to_theirs(self, name: str) -> str:
        """Map one of our parameter names to lerobot's."""
        theirs, ours = next(p for p in self.pairs if name.startswith(p[1]))
        return theirs + name[len(ours):]

    def to_ours(self, key: str) -> str | None:
        """Map a lerobot parameter name to ours; None if no prefix claims it."""
        for theirs, ours in self.pairs:
            if key.startswith(theirs):
                return ours + key[len(theirs):]
        return None
