"""The artifact manifest (``manifest.yaml``): typed, read and written in one place.

Format version 2 (version 1 artifacts must be re-quantized: W4A8 weights changed layout
and embeddings / per-part schemes were added); version 3 is version 2 plus per-linear
schemes and activation clipping, written only by artifacts that use them::

    format: quantvla-artifact
    format_version: 2 | 3
    created: ISO-8601 UTC time
    model_config: {family, ...}       models.registry.config_to_dict()
    source: {kind: named, model, seed, sha256: "seed:S"}
          | {kind: checkpoint, path, sha256}
    quantization: {bits, scheme: QuantScheme.to_dict(), preset, include, exclude, smooth_alpha,
                   parts: {name: {include: [globs], scheme: {...}, why}},   linears matching
                           a part's globs use its scheme, all others `scheme`
                   embeddings: {modules: [names], bits: 8 | 4},   integer rows, f32 row scales
                   layers: {name: {...}}}   optional: per-linear schemes (formats.py),
                           before any part's; written only when some linear has one
                   method, budget, row_blocks: {name: RowBlocks.to_dict()}, allocation: {...}
                           written only by --method other than quantvla (quant/plan.py)
    quantized_modules: [linear module names]
    balance: {config: BalanceConfig.to_dict(), alpha: {"tower.layer": [per head]},
              beta: {"tower.layer": x}, ratios: {...}}
    calibration: buffer summary + spec, calibration_samples, held_out, noise_seed
    files: {model.safetensors: sha256}
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from quantvla_ros.models.registry import ModelConfig, config_from_dict, config_to_dict
from quantvla_ros.quant.layouts import scheme_label
from quantvla_ros.quant.plan import RowBlocks
from quantvla_ros.quant.scheme import QuantScheme

FORMAT = "quantvla-artifact"
FORMAT_VERSION = 2
# Written instead of 2 only by artifacts using what version 2 readers would misread or
# refuse obscurely: per-linear schemes (`quantization.layers`) or activation clipping
# (`act_clip` in a scheme). This build reads both.
LAYERS_VERSION = 3
# Written by allocation methods (quant/plan.py): row-blocked linears load as two GEMMs, which
# a version 3 reader would build as one and fail on obscurely.
METHOD_VERSION = 4
READ_VERSIONS = (FORMAT_VERSION, LAYERS_VERSION, METHOD_VERSION)
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


def _outdated(where: str, version: int, d: dict) -> str:
    """Say that an older artifact must be re-quantized, with the command that does it."""
    source = d.get("source") if isinstance(d.get("source"), dict) else {}
    q = d.get("quantization") if isinstance(d.get("quantization"), dict) else {}
    calib = d.get("calibration") if isinstance(d.get("calibration"), dict) else {}
    if source.get("kind") == "checkpoint" and source.get("path"):
        src = f"--checkpoint {source['path']}"
    elif source.get("model"):
        src = f"--model {source['model']} --seed {source.get('seed', 0)}"
    else:
        src = "--checkpoint FLOAT_POLICY"
    command = (f"quantvla quantize {src} --calib {calib.get('spec') or 'BUFFER'} "
               f"--bits {q.get('bits') or 'w4a8'} --preset {q.get('preset') or 'quantvla'} "
               "--out NEW_ARTIFACT")
    return (f"{where}: artifact format version {version} is no longer supported (this build "
            f"reads version {FORMAT_VERSION}: packed int4 weights changed layout); re-quantize "
            f"the float policy with this version: {command}")


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
class PartRecord:
    """Linears (by glob) quantized with a scheme other than the artifact's main one, and why."""

    include: tuple[str, ...]
    scheme: QuantScheme
    why: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the manifest form."""
        return {"include": list(self.include), "scheme": self.scheme.to_dict(), "why": self.why}


@dataclass(frozen=True)
class QuantizationRecord:
    """How the artifact was quantized: the main scheme, per-part schemes, embedding rows."""

    scheme: QuantScheme
    preset: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    smooth_alpha: float | None = None
    parts: dict[str, PartRecord] = field(default_factory=dict)
    embeddings: tuple[str, ...] = ()
    embedding_bits: int | None = None
    layers: dict[str, QuantScheme] = field(default_factory=dict)
    method: str = "quantvla"
    budget: float | None = None  # fraction of the layout's bf16 bytes (--budget)
    row_blocks: dict[str, RowBlocks] = field(default_factory=dict)
    allocation: dict[str, Any] = field(default_factory=dict)  # the method's record

    @property
    def bits(self) -> str:
        """Return the bit-width name, e.g. ``"w4a8"``."""
        return self.scheme.bits

    def needs_method_version(self) -> bool:
        """Whether an allocation method wrote this record (version 4)."""
        return self.method != "quantvla" or bool(self.row_blocks)

    def needs_layers_version(self) -> bool:
        """Whether a version 2 reader would misread this record (per-linear schemes, clips)."""
        schemes = [self.scheme, *(p.scheme for p in self.parts.values()),
                   *self.layers.values()]
        return bool(self.layers) or any(s.act_clip is not None for s in schemes)

    def part_of(self, name: str) -> str:
        """Return the part of quantized linear ``name``.

        "layer" where it has its own scheme, else the first part whose globs match, else
        "main".
        """
        if name in self.row_blocks:
            return "row-blocks"
        if name in self.layers:
            return "layer"
        return next((k for k, part in self.parts.items()
                     if any(fnmatch.fnmatchcase(name, g) for g in part.include)), "main")

    def scheme_for(self, name: str) -> QuantScheme:
        """Return the scheme of quantized linear ``name``: its part's or the main one."""
        part = self.part_of(name)
        if part == "row-blocks":
            return self.row_blocks[name].lo
        if part == "layer":
            return self.layers[name]
        return self.scheme if part == "main" else self.parts[part].scheme

    def to_dict(self) -> dict[str, Any]:
        """Return the manifest form."""
        d = {"bits": self.bits, "scheme": self.scheme.to_dict(), "preset": self.preset,
             "include": list(self.include), "exclude": list(self.exclude),
             "smooth_alpha": self.smooth_alpha,
             "parts": {k: v.to_dict() for k, v in self.parts.items()},
             "embeddings": {"modules": list(self.embeddings), "bits": self.embedding_bits}}
        if self.layers:
            d["layers"] = {k: v.to_dict() for k, v in self.layers.items()}
        if self.needs_method_version():
            d.update(method=self.method, budget=self.budget,
                     row_blocks={k: v.to_dict() for k, v in self.row_blocks.items()},
                     allocation=self.allocation)
        return d

    @classmethod
    def from_dict(cls, q: dict[str, Any]) -> QuantizationRecord:
        """Parse the manifest form (KeyError / TypeError / ValueError on malformed input)."""
        emb = q.get("embeddings") or {}
        return cls(scheme=QuantScheme(**q["scheme"]), preset=q.get("preset"),
                   include=tuple(q.get("include") or ()), exclude=tuple(q.get("exclude") or ()),
                   smooth_alpha=q.get("smooth_alpha"),
                   parts={k: PartRecord(tuple(v["include"]), QuantScheme(**v["scheme"]),
                                        str(v.get("why", "")))
                          for k, v in (q.get("parts") or {}).items()},
                   embeddings=tuple(emb.get("modules") or ()),
                   embedding_bits=emb.get("bits"),
                   layers={k: QuantScheme(**v) for k, v in (q.get("layers") or {}).items()},
                   method=str(q.get("method") or "quantvla"), budget=q.get("budget"),
                   row_blocks={k: RowBlocks.from_dict(v)
                               for k, v in (q.get("row_blocks") or {}).items()},
                   allocation=dict(q.get("allocation") or {}))


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


def method_summary(m: ArtifactManifest) -> dict[str, Any]:
    """Return method, budget and the allocation's byte figures (for inspect and the report)."""
    q = m.quantization
    a = q.allocation
    return {"method": q.method, "budget": q.budget, "row_blocks": m.row_block_rows(),
            **{k: a[k] for k in ("budget_bytes", "bytes", "bf16_bytes", "fraction") if k in a}}


@dataclass(frozen=True)
class ArtifactManifest:
    """Everything ``manifest.yaml`` records about an artifact."""

    model_config: ModelConfig
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

    def parts_summary(self) -> list[dict[str, Any]]:
        """Per part (main, each recorded part, embeddings): its scheme and module count."""
        q = self.quantization
        counts = dict.fromkeys(["main", "layer", "row-blocks", *q.parts], 0)
        for name in self.quantized_modules:
            counts[q.part_of(name)] += 1
        rows = [{"part": "main", "scheme": scheme_label(q.scheme), "modules": counts["main"]}]
        rows += [{"part": k, "scheme": scheme_label(p.scheme), "modules": counts[k],
                  "why": p.why} for k, p in q.parts.items()]
        rows += self.layer_schemes()
        if counts["row-blocks"]:
            rows.append({"part": "row-blocks", "scheme": "w8a8 + w4a8 rows",
                         "modules": counts["row-blocks"]})
        if q.allocation.get("float"):
            rows.append({"part": "kept bf16", "scheme": "bf16",
                         "modules": len(q.allocation["float"]),
                         "names": list(q.allocation["float"])})
        if q.embeddings:
            rows.append({"part": "embeddings", "scheme": f"int{q.embedding_bits} rows",
                         "modules": len(q.embeddings), "names": list(q.embeddings)})
        return rows

    def layer_schemes(self) -> list[dict[str, Any]]:
        """Linears with their own scheme, grouped by scheme: {part, scheme, modules, names}."""
        q = self.quantization
        groups: dict[str, list[str]] = {}
        for name in self.quantized_modules:
            if name in q.layers:
                groups.setdefault(scheme_label(q.layers[name]), []).append(name)
        return [{"part": "per-layer", "scheme": label, "modules": len(names), "names": names}
                for label, names in groups.items()]

    def row_block_rows(self) -> list[dict[str, Any]]:
        """Row-blocked linears, one row each: {part, scheme, modules, names, rows}."""
        out = []
        for name in self.quantized_modules:
            rb = self.quantization.row_blocks.get(name)
            if rb is not None:
                out.append({"part": "row-blocks", "modules": 1, "names": [name],
                            "scheme": f"{scheme_label(rb.hi)} rows [0, {rb.hi_rows}) + "
                                      f"{scheme_label(rb.lo)} rest",
                            "hi_rows": rb.hi_rows,
                            "permutation": f"folded into {rb.consumer}" if rb.consumer
                            else "index gather"})
        return out

    def with_files(self, files: dict[str, str]) -> ArtifactManifest:
        """Return a copy recording these file hashes."""
        return replace(self, files=dict(files))

    def to_dict(self) -> dict[str, Any]:
        """Return the YAML document."""
        q = self.quantization
        version = METHOD_VERSION if q.needs_method_version() else \
            LAYERS_VERSION if q.needs_layers_version() else self.format_version
        return {"format": FORMAT, "format_version": version,
                "created": self.created, "model_config": config_to_dict(self.model_config),
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
        version = d.get("format_version")
        if isinstance(version, int) and not isinstance(version, bool) and \
                version < FORMAT_VERSION:
            raise ArtifactError(_outdated(where, version, d))
        if version not in READ_VERSIONS or isinstance(version, bool):
            raise ArtifactError(f"{where}: unknown format version {version!r} "
                                f"(this build reads {', '.join(map(str, READ_VERSIONS))})")
        missing = [k for k in ("model_config", "source", "quantization", "quantized_modules",
                               "balance", "calibration") if k not in d]
        if missing:
            raise ArtifactError(f"{where}: missing {', '.join(missing)}")
        try:
            q, b, s = d["quantization"], d["balance"], d["source"]
            return cls(
                model_config=config_from_dict(d["model_config"]),
                source=SourceRecord(kind=s["kind"], sha256=s["sha256"], model=s.get("model"),
                                    seed=s.get("seed"), path=s.get("path")),
                quantization=QuantizationRecord.from_dict(q),
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
