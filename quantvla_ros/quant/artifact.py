"""Quantized artifacts: a folder with `manifest.yaml` and `model.safetensors`.

The safetensors file holds packed integer weights and scales of the quantized linears and
the float remainder of the model, under our module names. Loading builds the module tree on
the meta device, swaps in empty QuantLinears and assigns the stored tensors: the float
weights of quantized layers never exist.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from ..models.build import build_meta
from ..models.config import PiConfig
from ..models.normalization import Normalizer
from .apply import _set_module
from .qlinear import QuantLinear
from .scheme import QuantScheme

FORMAT = "quantvla-artifact"
FORMAT_VERSION = 1
MANIFEST, WEIGHTS, STATS = "manifest.yaml", "model.safetensors", "normalizer.safetensors"
_KEEP_FP32 = (".weight_scale", ".smooth")


class ArtifactError(ValueError):
    """An artifact that cannot be used; the message says why."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_artifact(folder) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def save_artifact(model, folder, manifest: dict, normalizer: Normalizer | None = None,
                  tokenizer_dir: Path | None = None) -> Path:
    """Write atomically: into a temp folder beside `folder`, then rename over it."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        if normalizer is not None and normalizer.mode != "identity":
            save_file({k: torch.from_numpy(v) for k, v in normalizer.stats.items()},
                      str(tmp / STATS), metadata={"mode": normalizer.mode})
        if tokenizer_dir is not None:
            shutil.copytree(tokenizer_dir, tmp / "tokenizer")
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest,
                    "files": {WEIGHTS: sha256_file(tmp / WEIGHTS)}}
        (tmp / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def read_manifest(folder) -> dict:
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise ArtifactError(f"{folder}: not an artifact (missing {MANIFEST})")
    manifest = yaml.safe_load((folder / MANIFEST).read_text()) or {}
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{folder / MANIFEST}: format {manifest.get('format')!r} is not "
                            f"{FORMAT!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{folder / MANIFEST}: unknown format version "
                            f"{manifest.get('format_version')!r} (this build reads "
                            f"{FORMAT_VERSION})")
    return manifest


def _quantized_skeleton(manifest: dict, keys: set[str]):
    cfg = PiConfig.from_dict(manifest["model_config"])
    model = build_meta(cfg)
    scheme = QuantScheme(**manifest["quantization"]["scheme"])
    for name in manifest["quantized_modules"]:
        try:
            linear = model.get_submodule(name)
        except AttributeError as exc:
            raise ArtifactError(f"manifest names unknown module {name!r}") from exc
        _set_module(model, name, QuantLinear(
            linear.in_features, linear.out_features, scheme,
            bias=f"{name}.bias" in keys, smooth=f"{name}.smooth" in keys, device="meta"))
    return model, cfg


def load_artifact(folder, device="cpu", dtype: torch.dtype | None = None, verify: bool = True):
    """(model, config, normalizer, manifest) from an artifact folder."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    path = folder / WEIGHTS
    if not path.is_file():
        raise ArtifactError(f"{folder}: missing {WEIGHTS}")
    if verify and manifest.get("files", {}).get(WEIGHTS) != sha256_file(path):
        raise ArtifactError(f"{path}: sha256 does not match the manifest (corrupt or edited)")
    with safe_open(str(path), "pt", device="cpu") as f:
        keys = set(f.keys())
        model, cfg = _quantized_skeleton(manifest, keys)
        expected = model.state_dict()
        missing = sorted(set(expected) - keys)
        if missing:
            raise ArtifactError(f"{path}: {len(missing)} missing tensors: "
                                + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
        state = {}
        for k, meta in expected.items():
            t = f.get_tensor(k)
            if tuple(t.shape) != tuple(meta.shape) or t.dtype != meta.dtype and \
                    not (t.is_floating_point() and meta.is_floating_point()):
                raise ArtifactError(f"{path}: tensor {k} is {t.dtype} {tuple(t.shape)}, "
                                    f"expected {meta.dtype} {tuple(meta.shape)}")
            keep = not t.is_floating_point() or k.endswith(_KEEP_FP32)
            state[k] = t.to(device=device, dtype=None if keep or dtype is None else dtype)
    model.load_state_dict(state, assign=True)
    normalizer = Normalizer.identity()
    if (folder / STATS).is_file():
        with safe_open(str(folder / STATS), "np") as f:
            stats = {k: f.get_tensor(k) for k in f.keys()}
        normalizer = Normalizer.from_stats(stats, cfg.variant)
    return model.eval(), cfg, normalizer, manifest
