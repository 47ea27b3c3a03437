"""Load and save SmolVLA checkpoints in lerobot 0.6.1's folder format.

A folder holds `config.json` (lerobot's SmolVLAConfig fields: no model dimensions beyond
the kept layer counts; the VLM is named by `vlm_model_name`), `model.safetensors` under
lerobot's names, the normalizer statistics of its processor pipelines and, for a trained
policy, the SmolVLM2 tokenizer in `tokenizer/`. Our module names differ from lerobot's by a
prefix only (`_PREFIXES`). Dimensions come from the tensor shapes; head counts are not in
them, so a tower whose q / k widths are not SmolVLM2-500M's (15 + 5 heads of 64; SigLIP 12
heads of 64) needs `text_num_heads` / `vision_num_heads` in config.json (this package's
extension, which lerobot's own parser rejects).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from quantvla_ros.models import files
from quantvla_ros.models.build import build_meta, fp32_tensor_names, tensor_dtype
from quantvla_ros.models.files import CheckpointError, PrefixRenames, require_checkpoint
from quantvla_ros.models.mapped import MappedFile
from quantvla_ros.models.siglip import VisionConfig
from quantvla_ros.models.smolvla.config import (
    SMOLVLM2_TEXT,
    SMOLVLM2_VISION,
    SmolVLAConfig,
    TextConfig,
)
from quantvla_ros.models.smolvla.normalization import STATS, SmolVLANormalizer, read_stats

WEIGHTS, CONFIG = files.WEIGHTS, files.CONFIG
TEXT_HEADS, VISION_HEADS = "text_num_heads", "vision_num_heads"
_VLM = "model.vlm_with_expert.vlm."
_PREFIXES = PrefixRenames([
    (_VLM + "model.vision_model.", "vision."),
    (_VLM + "model.connector.", "connector."),
    (_VLM + "model.text_model.", "backbone."),
    (_VLM + "lm_head.", "lm_head."),
    ("model.vlm_with_expert.lm_expert.", "expert."),
    ("model.", ""),
])
_UNSUPPORTED = {"attention_mode": "cross_attn", "add_image_special_tokens": False,
                "adapt_to_pi_aloha": False, "use_delta_joint_actions_aloha": False}


to_lerobot_name = _PREFIXES.to_theirs
from_lerobot_name = _PREFIXES.to_ours  # None: not a SmolVLA tensor


def read_shapes(folder) -> dict[str, tuple[int, ...]]:
    """Tensor shapes under our names, from the safetensors header (no data loaded)."""
    with safe_open(str(Path(folder) / WEIGHTS), "pt") as f:
        return {from_lerobot_name(k) or k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def _count(shapes, prefix: str) -> int:
    idx = {int(k[len(prefix):].split(".")[0]) for k in shapes if k.startswith(prefix)}
    return max(idx) + 1 if idx else 0


def _heads(raw: dict, key: str, rows: int, named: int, named_rows: int, what: str) -> int:
    heads = raw.get(key)
    if heads is None:
        if rows != named_rows:
            raise CheckpointError(f"{what}: q_proj has {rows} rows, not SmolVLM2-500M's "
                                  f"{named_rows}; the head count is not in the weights: state "
                                  f'it in config.json as "{key}": N')
        return named
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or rows % heads:
        raise CheckpointError(f"config.json {key} {heads!r} does not divide {what}'s {rows}")
    return heads


def _text(shapes, prefix: str, heads: int, head_dim: int, eps: float) -> TextConfig:
    q = shapes[f"{prefix}layers.0.self_attn.q_proj.weight"]
    k = shapes[f"{prefix}layers.0.self_attn.k_proj.weight"]
    return TextConfig(width=q[1], depth=_count(shapes, f"{prefix}layers."),
                      mlp_dim=shapes[f"{prefix}layers.0.mlp.gate_proj.weight"][0],
                      num_heads=heads, num_kv_heads=k[0] // head_dim, head_dim=head_dim, eps=eps)


def config_from_lerobot(raw: dict, shapes: dict, name: str) -> SmolVLAConfig:
    """Build the config from lerobot's config.json and the tensor shapes."""
    if raw.get("type") != "smolvla":
        raise CheckpointError(f"config.json type {raw.get('type')!r} is not 'smolvla'")
    for key, want in _UNSUPPORTED.items():
        if raw.get(key, want) != want:
            raise CheckpointError(f"config.json {key}={raw[key]!r} is not supported "
                                  f"(only {want!r})")
    try:
        q = shapes["backbone.layers.0.self_attn.q_proj.weight"]
        patch = shapes["vision.embeddings.patch_embedding.weight"]
        n_pos = shapes["vision.embeddings.position_embedding.weight"][0]
        proj = shapes["connector.modality_projection.proj.weight"]
    except KeyError as exc:
        raise CheckpointError(f"model.safetensors lacks {to_lerobot_name(exc.args[0])}") from exc
    t, v = SMOLVLM2_TEXT, SMOLVLM2_VISION
    heads = _heads(raw, TEXT_HEADS, q[0], t.num_heads, t.num_heads * t.head_dim, "the text model")
    head_dim = q[0] // heads
    backbone = _text(shapes, "backbone.", heads, head_dim, t.eps)
    expert = _text(shapes, "expert.", heads, head_dim, t.eps)
    vheads = _heads(raw, VISION_HEADS, patch[0], v.num_heads, v.width, "the vision tower")
    side = int(round(n_pos**0.5))
    vision = VisionConfig(image_size=side * patch[2], patch_size=patch[2], width=patch[0],
                          depth=_count(shapes, "vision.encoder.layers."),
                          mlp_dim=shapes["vision.encoder.layers.0.mlp.fc1.weight"][0],
                          num_heads=vheads)
    resize = raw.get("resize_imgs_with_padding") or [vision.image_size] * 2
    if list(resize) != [vision.image_size] * 2:
        raise CheckpointError(f"resize_imgs_with_padding {resize} differs from the vision "
                              f"tower's {vision.image_size} px input")
    cams = [k.removeprefix("observation.images.")
            for k, f in raw.get("input_features", {}).items() if f.get("type") == "VISUAL"]
    cams += [f"empty_camera_{i}" for i in range(raw.get("empty_cameras", 0))]
    return SmolVLAConfig(
        name=name, vision=vision, backbone=backbone, expert=expert,
        scale_factor=int(round((proj[1] / patch[0]) ** 0.5)),
        self_attn_every_n_layers=raw.get("self_attn_every_n_layers", 2),
        vocab_size=shapes["backbone.embed_tokens.weight"][0],
        cameras=tuple(cams) or SmolVLAConfig.cameras,
        action_horizon=raw.get("chunk_size", 50), action_dim=raw.get("max_action_dim", 32),
        state_dim=raw.get("max_state_dim", 32), num_steps=raw.get("num_steps", 10),
        max_token_len=raw.get("tokenizer_max_length", 48),
        min_period=raw.get("min_period", 4e-3), max_period=raw.get("max_period", 4.0))


def read_config(folder) -> tuple[SmolVLAConfig, dict]:
    """Return the checkpoint's config and its raw config.json (ours rides under "quantvla")."""
    folder = require_checkpoint(folder)
    raw = json.loads((folder / CONFIG).read_text())
    if "quantvla" in raw:
        return SmolVLAConfig.from_dict(raw["quantvla"]), raw
    return config_from_lerobot(raw, read_shapes(folder), name=folder.name), raw


def _check_keys(model, shapes: dict) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(to_lerobot_name(k) for k in expected if k not in shapes)
    unexpected = sorted(k for k in shapes if k not in expected and not model.never_executes(k))
    wrong = sorted(f"{to_lerobot_name(k)}: file {shapes[k]} vs model {expected[k]}"
                   for k in expected if k in shapes and shapes[k] != expected[k])
    problems = [f"  {len(items)} {title} keys:\n    " + "\n    ".join(items[:20])
                for title, items in (("missing", missing), ("unexpected", unexpected),
                                     ("shape", wrong)) if items]
    if problems:
        raise CheckpointError("checkpoint does not match the model:\n" + "\n".join(problems))


def load_checkpoint(folder, device="cpu", dtype: torch.dtype | None = None):
    """Load (model, config, normalizer): built on meta and assigned, one copy of the weights."""
    folder = require_checkpoint(folder)
    cfg, _ = read_config(folder)
    model = build_meta(cfg)
    _check_keys(model, read_shapes(folder))
    fp32, state = fp32_tensor_names(model), {}
    with MappedFile(folder / WEIGHTS) as f:
        keys = {from_lerobot_name(k): k for k in f.keys()}
        for ours in model.state_dict():
            stored = f.dtype(keys[ours])
            state[ours] = f.get(keys[ours], device, tensor_dtype(ours, stored, dtype, fp32)
                                if stored.is_floating_point else stored)
    model.load_state_dict(state, assign=True)
    return model.eval(), cfg, read_stats(folder)


def save_checkpoint(model, folder, normalizer: SmolVLANormalizer | None = None) -> Path:
    """Write a lerobot-format folder; our full config rides along under "quantvla"."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    save_file({to_lerobot_name(k): v.detach().contiguous().cpu()
               for k, v in model.state_dict().items()}, str(folder / WEIGHTS),
              metadata={"format": "pt"})
    side = cfg.vision.image_size
    raw = {
        "type": "smolvla", "chunk_size": cfg.action_horizon,
        "n_action_steps": cfg.action_horizon, "max_state_dim": cfg.state_dim,
        "max_action_dim": cfg.action_dim, "num_steps": cfg.num_steps,
        "tokenizer_max_length": cfg.max_token_len, "resize_imgs_with_padding": [side, side],
        "num_vlm_layers": cfg.backbone.depth, "num_expert_layers": cfg.expert.depth,
        "self_attn_every_n_layers": cfg.self_attn_every_n_layers,
        "attention_mode": "cross_attn", "min_period": cfg.min_period,
        "max_period": cfg.max_period,
        TEXT_HEADS: cfg.backbone.num_heads, VISION_HEADS: cfg.vision.num_heads,
        "input_features": {f"observation.images.{c}": {"type": "VISUAL",
                                                       "shape": [3, side, side]}
                           for c in cfg.cameras},
        "quantvla": cfg.to_dict(),
    }
    (folder / CONFIG).write_text(json.dumps(raw, indent=2))
    if normalizer is not None and normalizer.mode != "identity":
        save_file({k: torch.from_numpy(v) for k, v in normalizer.stats.items()},
                  str(folder / f"policy_preprocessor_{STATS}"))
    return folder
