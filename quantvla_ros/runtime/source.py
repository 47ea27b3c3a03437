"""Where a policy comes from, resolved once: a named model, a checkpoint or an artifact.

Every entry point (the Python API, the ROS node, the CLI, the report) turns the user's string
into a :class:`PolicySource` here, so the rules live in one place: an existing folder is an
artifact (``manifest.yaml``) or a checkpoint (``config.json`` + ``model.safetensors``);
anything else must be a named model of the registry. Nothing is guessed from the spelling.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from quantvla_ros.models.checkpoint import CONFIG as CHECKPOINT_CONFIG
from quantvla_ros.models.checkpoint import WEIGHTS as CHECKPOINT_WEIGHTS
from quantvla_ros.models.config import REGISTRY
from quantvla_ros.models.tokenizer import TOKENIZER_DIR
from quantvla_ros.quant.manifest import MANIFEST, sha256_file

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
            local = path / TOKENIZER_DIR
            return cls(kind, path=path, seed=seed,
                       tokenizer=explicit or (local if local.is_dir() else None))
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
                    "sha256": sha256_file(self.path / CHECKPOINT_WEIGHTS)}
        raise PolicySourceError(f"{self.path} is already a quantized artifact; quantize its "
                                "source checkpoint instead")

    def __str__(self) -> str:
        """Return the name or the folder."""
        return self.name if self.kind == "named" else str(self.path)


def _folder_kind(path: Path) -> Kind:
    if (path / MANIFEST).is_file():
        return "artifact"
    if (path / CHECKPOINT_CONFIG).is_file() and (path / CHECKPOINT_WEIGHTS).is_file():
        return "checkpoint"
    raise PolicySourceError(
        f"{path} is neither a quantized artifact (no {MANIFEST}) nor a checkpoint "
        f"(needs {CHECKPOINT_CONFIG} and {CHECKPOINT_WEIGHTS})")
