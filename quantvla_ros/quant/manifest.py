"""The artifact manifest (``manifest.yaml``): typed, read and written in one place.

Format version 1 (unchanged from the first artifacts)::

    format: quantvla-artifact
    format_version: 1
    created: ISO-8601 UTC time
    model_config: {...}               PiConfig.to_dict()
    source: {kind: named, model, seed, sha256: "seed:S"}
          | {kind: checkpoint, path, sha256}
    quantization: {bits, scheme: QuantScheme.to_dict(), preset, include, exclude, smooth_alpha}
    quantized_modules: [module names]
    balance: {config: BalanceConfig.to_dict(), alpha: {"tower.layer": [per head]},
              beta: {"tower.layer": x}, ratios: {...}}
    calibration: buffer summary + spec, calibration_samples, held_out, noise_seed
    files: {model.safetensors: sha256}
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from quantvla_ros.models.config import PiConfig
from quantvla_ros.quant.scheme import QuantScheme

FORMAT = "quantvla-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.yaml"


class ArtifactError(ValueError):
    """An artifact that cannot be used; the message says why."""


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class SourceRecord:
    """The float policy an artifact was made from: a named model + seed, or a checkpoint."""

    kind: str  # "named" or "checkpoint"
    sha256: str
    model: str | None = None
    seed: int | None = None
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the manifest form (only the fields of this kind)."""
        if self.kind == "named":
            return {"kind": "named", "model": self.model, "seed": self.seed,
                    "sha256": self.sha256}
        return {"kind": self.kind, "path": self.path, "sha256": self.sha256}


@dataclass(frozen=True)
class QuantizationRecord:
    """How the artifact was quantized."""

    scheme: QuantScheme
    preset: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    smooth_alpha: float | None = None

    @property
    def bits(self) -> str:
        """Return the bit-width name, e.g. ``"w4a8"``."""
        return self.scheme.bits

    def to_dict(self) -> dict[str, Any]:
        """Return the manifest form."""
        return {"bits": self.bits, "scheme": self.scheme.to_dict(), "preset": self.preset,
                "include": list(self.include), "exclude": list(self.exclude),
                "smooth_alpha": self.smooth_alpha}


@dataclass(frozen=True)
class BalanceRecord:
    """ATM alphas (per head) and OHB betas by ``"tower.layer"``, their config and ratios."""

    config: dict[str, Any]
    alpha: dict[str, list[float]]
    beta: dict[str, float]
    ratios: dict[str, Any] = field(default_factory=dict)

    @property
    def towers(self) -> tuple[str, ...]:
        """Return the towers that were balanced."""
        return tuple(self.config.get("towers", ()))

    def to_dict(self) -> dict[str, Any]:
        """Return the manifest form."""
        return {"config": self.config, "alpha": self.alpha, "beta": self.beta,
                "ratios": self.ratios}


@dataclass(frozen=True)
class ArtifactManifest:
    """Everything ``manifest.yaml`` records about an artifact."""

    model_config: PiConfig
    source: SourceRecord
    quantization: QuantizationRecord
    quantized_modules: tuple[str, ...]
    balance: BalanceRecord
    calibration: dict[str, Any]
    created: str = ""
    files: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def bits(self) -> str:
        """Return the bit-width name, e.g. ``"w4a8"``."""
        return self.quantization.bits

    def with_files(self, files: dict[str, str]) -> ArtifactManifest:
        """Return a copy recording these file hashes."""
        return replace(self, files=dict(files))

    def to_dict(self) -> dict[str, Any]:
        """Return the YAML document."""
        return {"format": FORMAT, "format_version": self.format_version,
                "created": self.created, "model_config": self.model_config.to_dict(),
                "source": self.source.to_dict(), "quantization": self.quantization.to_dict(),
                "quantized_modules": list(self.quantized_modules),
                "balance": self.balance.to_dict(), "calibration": self.calibration,
                "files": self.files}

    @classmethod
    def from_dict(cls, d: Any, where: str = MANIFEST) -> ArtifactManifest:
        """Parse and check a manifest document; raise ArtifactError naming what is wrong."""
        if not isinstance(d, dict):
            raise ArtifactError(f"{where}: not a YAML mapping")
        if d.get("format") != FORMAT:
            raise ArtifactError(f"{where}: format {d.get('format')!r} is not {FORMAT!r}")
        if d.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{where}: unknown format version {d.get('format_version')!r} "
                                f"(this build reads {FORMAT_VERSION})")
        missing = [k for k in ("model_config", "source", "quantization", "quantized_modules",
                               "balance", "calibration") if k not in d]
        if missing:
            raise ArtifactError(f"{where}: missing {', '.join(missing)}")
        try:
            q, b, s = d["quantization"], d["balance"], d["source"]
            return cls(
                model_config=PiConfig.from_dict(d["model_config"]),
                source=SourceRecord(kind=s["kind"], sha256=s["sha256"], model=s.get("model"),
                                    seed=s.get("seed"), path=s.get("path")),
                quantization=QuantizationRecord(
                    scheme=QuantScheme(**q["scheme"]), preset=q.get("preset"),
                    include=tuple(q.get("include") or ()),
                    exclude=tuple(q.get("exclude") or ()),
                    smooth_alpha=q.get("smooth_alpha")),
                quantized_modules=tuple(d["quantized_modules"]),
                balance=BalanceRecord(config=b["config"], alpha=b.get("alpha") or {},
                                      beta=b.get("beta") or {}, ratios=b.get("ratios") or {}),
                calibration=dict(d["calibration"]),
                created=str(d.get("created", "")),
                files=dict(d.get("files") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{where}: malformed manifest ({exc!r})") from exc

    @classmethod
    def read(cls, folder: str | os.PathLike[str]) -> ArtifactManifest:
        """Read ``folder/manifest.yaml``."""
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise ArtifactError(f"{folder}: not an artifact (missing {MANIFEST})")
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ArtifactError(f"{path}: not valid YAML ({exc})") from exc
        return cls.from_dict(document, str(path))

    def write(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``folder/manifest.yaml``; return its path."""
        path = Path(folder) / MANIFEST
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")
        return path
