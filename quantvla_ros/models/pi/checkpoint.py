"""Load and save pi0 / pi0.5 checkpoints in lerobot's folder format.

A folder holds `config.json` and `model.safetensors` with lerobot parameter names, plus
optional `*normalizer_processor.safetensors` statistics and lerobot's saved pipeline
(`policy_preprocessor.json`). Our module names differ from lerobot's by a prefix only (see
`_PREFIXES`), so mapping is a rename in both directions.

Dimensions come from the tensor shapes where the shapes determine them. Head counts do not
(a q_proj of 2048 rows is 8 heads of 256 or 16 of 128), so they come from what defines them:
SigLIP So400m (width 1152) has 16 heads, lerobot's named Gemma variants 8 of 256; any other
tower must state its count in config.json (`vision_num_heads`, `gemma_num_heads`: this
package's extension, which lerobot's own loader would reject) or it is refused.
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
from quantvla_ros.models.pi.config import GEMMA_VARIANTS, GemmaConfig, PiConfig
from quantvla_ros.models.pi.model import PiModel
from quantvla_ros.models.pi.normalization import Normalizer
from quantvla_ros.models.siglip import VisionConfig

WEIGHTS, CONFIG = files.WEIGHTS, files.CONFIG
STATS = "normalizer_processor.safetensors"
PREPROCESSOR = "policy_preprocessor.json"
VISION_HEADS, GEMMA_HEADS = "vision_num_heads", "gemma_num_heads"
_SO400M_WIDTH, _SO400M_HEADS = 1152, 16
_STATE_STEP = "pi05_prepare_state_tokenizer_processor_step"
_PWE = "model.paligemma_with_expert."
_PREFIXES = PrefixRenames([
    (_PWE + "paligemma.model.vision_tower.", "vision."),
    (_PWE + "paligemma.model.multi_modal_projector.linear.", "projector."),
    (_PWE + "paligemma.model.language_model.", "backbone."),
    (_PWE + "gemma_expert.model.", "expert."),
    ("model.", ""),
])
_LM_HEAD = _PWE + "paligemma.lm_head.weight"
# Saved by lerobot, unused at inference (the backbone's is tied to its embedding).
_IGNORED = {_LM_HEAD, _PWE + "gemma_expert.lm_head.weight"}


to_lerobot_name = _PREFIXES.to_theirs


def from_lerobot_name(key: str) -> str | None:
    """Map a lerobot (or openpi-converted) parameter name to ours; None if unknown."""
    if not key.startswith("model."):
        key = "model." + key  # openpi-converted files omit the leading "model."
    return _PREFIXES.to_ours(key)


def read_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes under our names, read from the safetensors header (no data loaded)."""
    with safe_open(str(Path(folder) / WEIGHTS), "pt") as f:
        raw = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    shapes = {}
    for key, shape in raw.items():
        if key in _IGNORED or key.endswith("lm_head.weight"):
            continue
        ours = from_lerobot_name(key)
        shapes[ours if ours is not None else key] = shape
    if "backbone.embed_tokens.weight" not in shapes and _LM_HEAD in raw:
        shapes["backbone.embed_tokens.weight"] = raw[_LM_HEAD]
    return shapes


def _count_layers(shapes, prefix: str) -> int:
    idx = {int(k[len(prefix):].split(".")[0]) for k in shapes if k.startswith(prefix)}
    return max(idx) + 1 if idx else 0


def _heads(raw: dict, key: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"config.json {key} must be a positive integer, got {value!r}")
    return value


def _tower_from_shapes(shapes, prefix: str, base: GemmaConfig, variant: str,
                       heads: int | None) -> GemmaConfig:
    q = shapes.get(f"{prefix}layers.0.self_attn.q_proj.weight")
    kv = shapes.get(f"{prefix}layers.0.self_attn.k_proj.weight")
    mlp = shapes.get(f"{prefix}layers.0.mlp.gate_proj.weight")
    if q is None or kv is None or mlp is None:
        return base  # the key check reports the missing tensors
    if heads is None:
        # lerobot's variants (modeling_pi05.get_gemma_config): 8 heads of 256, 1 KV head.
        if (q[0], kv[0]) != (base.num_heads * base.head_dim, base.num_kv_heads * base.head_dim):
            raise CheckpointError(
                f"{prefix.rstrip('.')} tower: q_proj has {q[0]} rows and k_proj {kv[0]}, not "
                f"{variant}'s {base.num_heads} heads of {base.head_dim}; the head count is not in "
                f'the weights: state it in config.json as "{GEMMA_HEADS}": N (query heads of '
                "each Gemma tower)")
        heads = base.num_heads
    if q[0] % heads or kv[0] % (q[0] // heads):
        raise CheckpointError(f"{prefix.rstrip('.')} tower: {GEMMA_HEADS} {heads} does not "
                              f"divide q_proj's {q[0]} rows into heads that k_proj's {kv[0]} "
                              "rows fit")
    head_dim = q[0] // heads
    return GemmaConfig(
        width=q[1], depth=_count_layers(shapes, f"{prefix}layers."), mlp_dim=mlp[0],
        num_heads=heads, num_kv_heads=kv[0] // head_dim, head_dim=head_dim,
    )


def _vision_heads(raw: dict, width: int) -> int:
    heads = _heads(raw, VISION_HEADS)
    if heads is None:
        if width != _SO400M_WIDTH:
            raise CheckpointError(
                f"the vision tower is {width} wide, not SigLIP So400m's {_SO400M_WIDTH} "
                f"({_SO400M_HEADS} heads of 72), and its head count is not in the weights: "
                f'state it in config.json as "{VISION_HEADS}": N')
        heads = _SO400M_HEADS
    if width % heads:
        raise CheckpointError(f"{VISION_HEADS} {heads} does not divide the vision width {width}")
    return heads


def config_from_lerobot(raw: dict, shapes: dict, name: str) -> PiConfig:
    """Lerobot's config.json names Gemma variants; dimensions are read off tensor shapes."""
    variant = raw.get("type")
    if variant not in ("pi0", "pi05"):
        raise CheckpointError(f"config.json type {variant!r} is not 'pi0' or 'pi05'")
    heads = _heads(raw, GEMMA_HEADS)
    towers = []
    for prefix, key, default in (("backbone.", "paligemma_variant", "gemma_2b"),
                                 ("expert.", "action_expert_variant", "gemma_300m")):
        gemma = raw.get(key, default)
        if gemma not in GEMMA_VARIANTS:
            raise CheckpointError(f"config.json {key} {gemma!r}: expected one of "
                                  f"{list(GEMMA_VARIANTS)}")
        towers.append(_tower_from_shapes(shapes, prefix, GEMMA_VARIANTS[gemma], gemma, heads))
    backbone, expert = towers
    vision = VisionConfig()
    patch = shapes.get("vision.vision_model.embeddings.patch_embedding.weight")
    if patch is not None:
        n_pos = shapes["vision.vision_model.embeddings.position_embedding.weight"][0]
        vision = VisionConfig(
            image_size=int(round(n_pos**0.5)) * patch[2], patch_size=patch[2], width=patch[0],
            depth=_count_layers(shapes, "vision.vision_model.encoder.layers."),
            mlp_dim=shapes["vision.vision_model.encoder.layers.0.mlp.fc1.weight"][0],
            num_heads=_vision_heads(raw, patch[0]),
        )
    cams = [k.split(".")[-1] for k, v in raw.get("input_features", {}).items()
            if v.get("type") == "VISUAL"]
    return PiConfig(
        name=name, variant=variant, vision=vision, backbone=backbone, expert=expert,
        vocab_size=shapes.get("backbone.embed_tokens.weight", (257_152,))[0],
        cameras=tuple(cams) or PiConfig.cameras,
        action_horizon=raw.get("chunk_size", 50), action_dim=raw.get("max_action_dim", 32),
        state_dim=raw.get("max_state_dim", 32), num_steps=raw.get("num_inference_steps", 10),
        max_token_len=raw.get("tokenizer_max_length", 200 if variant == "pi05" else 48),
    )


def read_state_prompt(folder) -> str | None:
    """How the checkpoint's own pi0.5 preprocessor writes the state into the prompt.

    Returns "padded", "unpadded", or None when the folder has no saved pipeline saying so.
    lerobot v0.4.0-v0.4.4 padded the normalized state to max_state_dim before discretizing it
    (`pad_vector` in `Pi05PrepareStateTokenizerProcessorStep.__call__`, file
    src/lerobot/policies/pi05/processor_pi05.py at tag v0.4.4); commit f0d2b37 (#2964, which
    squashes aca4348 "fix(pi): remove state padding before tokenization"), first released in
    v0.5.0 and unchanged to v0.6.1, writes the robot's own values, as openpi does. In all of
    these tags the step keeps `max_state_dim` as a field but never overrides `get_config`, so
    each saves the step with `"config": {}` (`ProcessorStep.get_config` returns {}): only a
    pipeline whose step serialises `max_state_dim` (a fork's) says it padded. A checkpoint
    fine-tuned with lerobot 0.4.x therefore reads as unpadded and needs an explicit
    state_prompt="padded".
    """
    path = Path(folder) / PREPROCESSOR
    if not path.is_file():
        return None
    try:
        steps = json.loads(path.read_text()).get("steps", [])
        entries = [s for s in steps if s.get("registry_name") == _STATE_STEP]
    except (ValueError, AttributeError, TypeError) as exc:
        raise CheckpointError(f"{path}: not a lerobot processor pipeline ({exc})") from exc
    if not entries:
        return None
    config = entries[0].get("config") or {}
    return "padded" if "max_state_dim" in config else "unpadded"


def read_config(folder) -> tuple[PiConfig, dict]:
    """Return the checkpoint's PiConfig and its raw config.json.

    For pi0.5 the config's `state_prompt` is what the folder declares: our own config block,
    else lerobot's saved preprocessor (see `read_state_prompt`), else None.
    """
    folder = require_checkpoint(folder)
    raw = json.loads((folder / CONFIG).read_text())
    if "quantvla" in raw:
        cfg = PiConfig.from_dict(raw["quantvla"])
    else:
        cfg = config_from_lerobot(raw, read_shapes(folder), name=folder.name)
    if cfg.variant == "pi05" and cfg.state_prompt is None:
        cfg = cfg.with_(state_prompt=read_state_prompt(folder))
    return cfg, raw


def read_stats(folder, variant: str) -> Normalizer:
    """Build the variant's Normalizer from the folder's normalizer statistics files.

    With no statistics files the normalizer is the identity.
    """
    stats = {}
    for path in sorted(Path(folder).glob(f"*{STATS}")):
        with safe_open(str(path), "np") as f:
            stats.update({k: f.get_tensor(k) for k in f.keys()})
    return Normalizer.from_stats(stats, variant)


def _check_keys(model: PiModel, shapes: dict) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(k for k in expected if k not in shapes)
    # full checkpoints hold the never-executed modules: skipped at load, not unexpected
    unexpected = sorted(k for k in shapes if k not in expected and not model.never_executes(k))
    wrong = sorted(
        f"{to_lerobot_name(k)}: file {shapes[k]} vs model {expected[k]}"
        for k in expected if k in shapes and shapes[k] != expected[k]
    )
    missing = [to_lerobot_name(k) for k in missing]
    unexpected = [to_lerobot_name(k) for k in unexpected]
    problems = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)):
        if items:
            shown = "\n    ".join(items[:20])
            more = f"\n    ... and {len(items) - 20} more" if len(items) > 20 else ""
            problems.append(f"  {len(items)} {title} keys:\n    {shown}{more}")
    if problems:
        raise CheckpointError("checkpoint does not match the model:\n" + "\n".join(problems))


def load_checkpoint(folder, device="cpu", dtype: torch.dtype | None = None):
    """Load (model, config, normalizer). Built on meta and assigned: one copy of the weights."""
    folder = require_checkpoint(folder)
    cfg, _ = read_config(folder)
    model = build_meta(cfg)
    _check_keys(model, read_shapes(folder))
    state = {}
    with MappedFile(folder / WEIGHTS) as f:
        keys = {from_lerobot_name(k): k for k in f.keys()}
        if "backbone.embed_tokens.weight" not in keys:
            keys["backbone.embed_tokens.weight"] = _LM_HEAD
        fp32 = fp32_tensor_names(model)
        for ours in model.state_dict():
            stored = f.dtype(keys[ours])
            state[ours] = f.get(keys[ours], device, tensor_dtype(ours, stored, dtype, fp32)
                                if stored.is_floating_point else stored)
    model.load_state_dict(state, assign=True)
    return model.eval(), cfg, read_stats(folder, cfg.variant)


def save_checkpoint(model: PiModel, folder, normalizer: Normalizer | None = None) -> Path:
    """Write a lerobot-format folder; our full config rides along under "quantvla"."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    tensors = {to_lerobot_name(k): v.detach().contiguous().cpu()
               for k, v in model.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})
    raw = {
        "type": cfg.variant,
        "paligemma_variant": "gemma_2b", "action_expert_variant": "gemma_300m",
        "chunk_size": cfg.action_horizon, "n_action_steps": cfg.action_horizon,
        "max_state_dim": cfg.state_dim, "max_action_dim": cfg.action_dim,
        "num_inference_steps": cfg.num_steps, "tokenizer_max_length": cfg.max_token_len,
        # our extension: the head counts the shapes cannot tell (see the module docstring)
        VISION_HEADS: cfg.vision.num_heads, GEMMA_HEADS: cfg.backbone.num_heads,
        "input_features": {
            f"observation.images.{c}": {"type": "VISUAL", "shape": [3, 224, 224]}
            for c in cfg.cameras
        },
        "quantvla": cfg.to_dict(),
    }
    (folder / CONFIG).write_text(json.dumps(raw, indent=2))
    if normalizer is not None and normalizer.mode != "identity":
        save_file({k: torch.from_numpy(v) for k, v in normalizer.stats.items()},
                  str(folder / f"policy_preprocessor_{STATS}"))
    return folder
