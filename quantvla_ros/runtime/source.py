"""Where a policy comes from, resolved once: a named model, a checkpoint or an artifact.

Every entry point (the Python API, the ROS node, the CLI, the report) turns the user's string
into a :class:`PolicySource` here, so the rules live in one place: an existing folder is an
artifact (``manifest.yaml``) or a checkpoint (``config.json`` + ``model.safetensors`` or a
shard index); anything else must be a named model of the registry (of any family). Nothing is
guessed from the spelling.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from quantvla_ros.models.files import CONFIG, INDEX, WEIGHTS, has_weights, weight_files
from quantvla_ros.models.registry import (
    FAMILIES,
    REGISTRY,
    checkpoint_family,
    family_of,
    get_config,
)
from quantvla_ros.quant.artifact import TOKENIZER_DIR as ARTIFACT_TOKENIZER_DIR
from quantvla_ros.quant.manifest import MANIFEST, ArtifactManifest, sha256_file

# A source folder's own tokenizer: an artifact's copy, then each family's checkpoint folder.
TOKENIZER_DIRS = tuple(dict.fromkeys((ARTIFACT_TOKENIZER_DIR,
                                      *(f.tokenizer_dir for f in FAMILIES))))

Kind = Literal["named", "checkpoint", "artifact"]


class PolicySourceError(ValueError):
    """A policy source that names no usable folder or model; the message says which."""


@dataclass(frozen=True)
class PolicySource:
    """A resolved policy source.

    ``name`` is set for a named model (random weights drawn from ``seed``), ``path`` for a
    checkpoint or artifact folder; ``tokenizer`` is the tokenizer folder to use (an explicit
    one, else the folder's own ``tokenizer/``), or None for the config's default.
    """

    kind: Kind
    name: str | None = None
    path: Path | None = None
    seed: int = 0
    tokenizer: Path | None = None

    @classmethod
    def resolve(cls, spec: str | os.PathLike[str] | PolicySource, *, seed: int = 0,
                tokenizer: str | os.PathLike[str] | None = None) -> PolicySource:
        """Resolve ``spec``; raise PolicySourceError naming the problem."""
        if isinstance(spec, PolicySource):
            return spec
        text = os.fspath(spec)
        path = Path(text).expanduser()
        explicit = Path(tokenizer).expanduser() if tokenizer is not None else None
        if explicit is not None and not explicit.is_dir():
            raise PolicySourceError(f"tokenizer folder {tokenizer} does not exist")
        if path.exists():
            if not path.is_dir():
                raise PolicySourceError(
                    f"policy {text} is a file; give a checkpoint or artifact folder")
            kind = _folder_kind(path)
            local = next((path / d for d in TOKENIZER_DIRS if (path / d).is_dir()), None)
            return cls(kind, path=path, seed=seed, tokenizer=explicit or local)
        if text in REGISTRY:
            return cls("named", name=text, seed=seed, tokenizer=explicit)
        close = difflib.get_close_matches(text, REGISTRY, n=3, cutoff=0.3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise PolicySourceError(
            f"policy {text!r} does not exist as a folder and is not a named model "
            f"(unknown model {text!r}.{hint} Known models: {', '.join(REGISTRY)})")

    @property
    def is_named(self) -> bool:
        """Return True for a named model with random weights."""
        return self.kind == "named"

    def identity(self) -> dict:
        """Return the provenance an artifact manifest records (a checkpoint's sha256)."""
        if self.kind == "named":
            return {"kind": "named", "model": self.name, "seed": self.seed,
                    "sha256": f"seed:{self.seed}"}
        if self.kind == "checkpoint":
            return {"kind": "checkpoint", "path": str(self.path.resolve()),
                    "sha256": checkpoint_digest(self.path)}
        raise PolicySourceError(f"{self.path} is already a quantized artifact; quantize its "
                                "source checkpoint instead")

    def config(self):
        """Return the model config of a named source or an artifact (checkpoints: load them)."""
        if self.kind == "named":
            return get_config(self.name)
        if self.kind == "artifact":
            return ArtifactManifest.read(self.path).model_config
        raise PolicySourceError(f"{self.path}: a checkpoint's config is read by loading it")

    def family(self) -> str:
        """Return the model family ("pi" or "groot") of this source, without loading it."""
        if self.kind == "checkpoint":
            return checkpoint_family(self.path)
        return family_of(self.config())

    def __str__(self) -> str:
        """Return the name or the folder."""
        return self.name if self.kind == "named" else str(self.path)


def checkpoint_digest(folder: Path) -> str:
    """Return the sha256 of a checkpoint's weights.

    That of model.safetensors, or for NVIDIA's sharded layout one over the index's digest and
    the shards' digests in order.
    """
    folder = Path(folder)
    if (folder / WEIGHTS).is_file():
        return sha256_file(folder / WEIGHTS)
    h = hashlib.sha256(sha256_file(folder / INDEX).encode())
    for shard in weight_files(folder):
        h.update(sha256_file(shard).encode())
    return h.hexdigest()


def _folder_kind(path: Path) -> Kind:
    if (path / MANIFEST).is_file():
        return "artifact"
    if (path / CONFIG).is_file() and has_weights(path):
        return "checkpoint"
    raise PolicySourceError(
        f"{path} is neither a quantized artifact (no {MANIFEST}) nor a checkpoint "
        f"(needs {CONFIG} and {WEIGHTS} or {INDEX})")
