"""Quantized artifacts: a folder with `manifest.yaml` (see manifest.py) and `model.safetensors`.

The safetensors file holds packed integer weights and scales of the quantized linears and
embeddings and the float remainder of the model, under our module names. Loading builds the
module tree on the meta device, swaps in empty QuantLinears (each with its part's scheme)
and QuantEmbeddings and assigns the stored tensors, each copied from the memory-mapped file
into its device and dtype alone (models/mapped.py): the float weights of quantized layers
never exist, and the host never holds the file beside the model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from quantvla_ros.data.atomic import folder_atomic
from quantvla_ros.models.build import build_meta, compute_dtype, fp32_tensor_names, tensor_dtype
from quantvla_ros.models.mapped import MappedFile, write_file
from quantvla_ros.models.registry import normalizer_from_tensors
from quantvla_ros.models.statistics import IdentityStatistics
from quantvla_ros.quant.apply import _set_module, empty_quantized
from quantvla_ros.quant.manifest import ArtifactError, ArtifactManifest, sha256_file
from quantvla_ros.quant.qembedding import QuantEmbedding
from quantvla_ros.quant.row_blocks import empty_row_blocks

WEIGHTS, STATS = "model.safetensors", "normalizer.safetensors"
TOKENIZER_DIR = "tokenizer"  # the source's tokenizer, copied in
_KEEP_FP32 = (".weight_scale", ".smooth", ".act_clip")


def save_artifact(model, folder, manifest: ArtifactManifest,
                  normalizer=None,
                  tokenizer_dir: Path | None = None) -> Path:
    """Write the artifact folder atomically (an existing one is swapped out in one step)."""
    folder = Path(folder)
    with folder_atomic(folder) as tmp:
        write_file(model.state_dict(), tmp / WEIGHTS, metadata={"format": "pt"})
        if normalizer is not None and normalizer.mode != "identity":
            stats, meta = normalizer.to_tensors()
            save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in stats.items()},
                      str(tmp / STATS), metadata=meta)
        if tokenizer_dir is not None:
            shutil.copytree(tokenizer_dir, tmp / TOKENIZER_DIR)
        manifest.with_files({WEIGHTS: sha256_file(tmp / WEIGHTS)}).write(tmp)
    return folder


def _quantized_skeleton(manifest: ArtifactManifest, keys: set[str]):
    cfg = manifest.model_config
    model = build_meta(cfg)
    q = manifest.quantization
    for name in (*manifest.quantized_modules, *q.embeddings):
        if model.never_executes(name):  # stored by artifacts written before they were cut
            continue
        try:
            module = model.get_submodule(name)
        except AttributeError as exc:
            raise ArtifactError(f"manifest names unknown module {name!r}") from exc
        if isinstance(module, torch.nn.Embedding) != (name in q.embeddings):
            raise ArtifactError(f"manifest lists {name!r} as the wrong kind of module")
        if name in q.row_blocks:  # two GEMMs over one int8 activation pass (row_blocks.py)
            _set_module(model, name, empty_row_blocks(module, q.row_blocks[name],
                                                      bias=f"{name}.bias" in keys))
            continue
        _set_module(model, name, empty_quantized(
            module, q.scheme_for(name), q.embedding_bits, bias=f"{name}.bias" in keys,
            smooth=f"{name}.smooth" in keys))
    return model, cfg


def load_artifact(folder, device="cpu", dtype: torch.dtype | None = None, verify: bool = True):
    """(model, config, normalizer, ArtifactManifest) from an artifact folder."""
    folder = Path(folder)
    manifest = ArtifactManifest.read(folder)
    path = folder / WEIGHTS
    if not path.is_file():
        raise ArtifactError(f"{folder}: missing {WEIGHTS}")
    if verify and manifest.files.get(WEIGHTS) != sha256_file(path):
        raise ArtifactError(f"{path}: sha256 does not match the manifest (corrupt or edited)")
    with MappedFile(path) as f:
        keys = set(f.keys())
        model, cfg = _quantized_skeleton(manifest, keys)
        expected = model.state_dict()
        fp32 = fp32_tensor_names(model)
        missing = sorted(set(expected) - keys)
        if missing:
            raise ArtifactError(f"{path}: {len(missing)} missing tensors: "
                                + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
        state = {}
        for k, meta in expected.items():
            shape, stored = f.shape(k), f.dtype(k)
            if shape != tuple(meta.shape) or stored != meta.dtype and \
                    not (stored.is_floating_point and meta.is_floating_point()):
                raise ArtifactError(f"{path}: tensor {k} is {stored} {shape}, "
                                    f"expected {meta.dtype} {tuple(meta.shape)}")
            keep = not stored.is_floating_point or k.endswith(_KEEP_FP32)
            state[k] = f.get(k, device, None if keep else tensor_dtype(k, stored, dtype, fp32))
    model.load_state_dict(state, assign=True)
    out_dtype = compute_dtype(model)
    for m in model.modules():
        if isinstance(m, QuantEmbedding):
            m.out_dtype = out_dtype
    normalizer = IdentityStatistics()
    if (folder / STATS).is_file():
        with safe_open(str(folder / STATS), "np") as f:
            stats = {k: f.get_tensor(k) for k in f.keys()}
            meta = f.metadata() or {}
        normalizer = normalizer_from_tensors(stats, meta, cfg)
    return model.eval(), cfg, normalizer, manifest


def load_bytes(folder, dtype: torch.dtype | None = None) -> int:
    """Return the bytes `load_artifact(folder, dtype=dtype)` holds (headers only, no data)."""
    folder = Path(folder)
    manifest = ArtifactManifest.read(folder)
    with MappedFile(folder / WEIGHTS) as f:
        model, _ = _quantized_skeleton(manifest, set(f.keys()))
        fp32 = fp32_tensor_names(model)
        total = 0
        for k, meta in model.state_dict().items():
            stored = f.dtype(k) if k in f.entries else meta.dtype
            keep = not stored.is_floating_point or k.endswith(_KEEP_FP32)
            out = stored if keep else tensor_dtype(k, stored, dtype, fp32)
            total += meta.numel() * torch.empty((), dtype=out).element_size()
    return total
