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
