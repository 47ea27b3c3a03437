"""Load and save GR00T N1.5 checkpoints: NVIDIA's sharded layout and lerobot's single file.

NVIDIA (`save_pretrained` of GR00T_N1_5): `model-0000k-of-0000n.safetensors` shards listed by
`model.safetensors.index.json`, keys unprefixed (`backbone.eagle_model....`, `action_head....`),
`config.json` with `action_head_cfg` / `backbone_cfg`, and the per-embodiment statistics in
`experiment_cfg/metadata.json`. lerobot: one `model.safetensors` with every key prefixed
`_groot_model.` and, after its tied-tensor dedup, `lm_head.weight` instead of `embed_tokens`.

Our module names are NVIDIA's, so loading is a prefix strip plus the token-table fallback.
Checks are strict and list every problem at once; what the model never executes (LLM layers
past select_layer, lm_head, the SigLIP pooling head, non-persistent buffers) is skipped, as
GROOT.md §7 says. Tensors keep the dtype the file stores unless a dtype is asked for.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from quantvla_ros.models import files
from quantvla_ros.models.build import build_meta
from quantvla_ros.models.files import CheckpointError
from quantvla_ros.models.groot.config import GROOT_REGISTRY, ActionHeadConfig, GrootConfig
from quantvla_ros.models.groot.normalization import GrootNormalizer, read_lerobot_stats
from quantvla_ros.models.groot.shapes import ShapeError, config_from_shapes, folder_special_ids
from quantvla_ros.models.mapped import MappedFile

WEIGHTS, INDEX, CONFIG = files.WEIGHTS, files.INDEX, files.CONFIG
METADATA = "experiment_cfg/metadata.json"
LEROBOT_PREFIX = "_groot_model."
OUR_CONFIG = "quantvla"  # our extension in config.json: the full GrootConfig
_LLM = "backbone.eagle_model.language_model."
EMBED, LM_HEAD = _LLM + "model.embed_tokens.weight", _LLM + "lm_head.weight"
_LLM_LAYER = re.compile(re.escape(_LLM + "model.layers.") + r"(\d+)\.")
_VISION_HEAD = "backbone.eagle_model.vision_model.vision_model.head."
# Non-persistent in HF (recomputed, never saved by save_pretrained); tolerated if present.
_BUFFERS = ("embeddings.position_ids", "rotary_emb.inv_freq")
_SHARD = "model-{:05d}-of-{:05d}.safetensors"
_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32,
           "F64": torch.float64, "I64": torch.int64, "I32": torch.int32, "BOOL": torch.bool,
           "U8": torch.uint8, "I8": torch.int8}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what the safetensors header says about it."""

    file: Path
    key: str  # the key in the file (lerobot's carries the prefix)
    shape: tuple[int, ...]
    dtype: torch.dtype


def weight_files(folder) -> list[Path]:
    """List the safetensors files of a folder: the index's shards, else the single file."""
    try:
        return files.weight_files(folder)
    except files.WeightFilesError as exc:
        raise CheckpointError(str(exc)) from exc


def read_index(folder) -> dict[str, TensorInfo]:
    """Every tensor under our (NVIDIA, unprefixed) name, from the headers only (no data read).

    The token table falls back to `lm_head.weight` when `embed_tokens` is absent (pitfall 1).
    """
    folder = Path(folder)
    found: dict[str, TensorInfo] = {}
    listed = None
    if (folder / INDEX).is_file():
        listed = json.loads((folder / INDEX).read_text())["weight_map"]
    problems = []
    for path in weight_files(folder):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                s = f.get_slice(key)
                name = key[len(LEROBOT_PREFIX):] if key.startswith(LEROBOT_PREFIX) else key
                if name in found:
                    problems.append(f"{name}: in {found[name].file.name} and {path.name}")
                dtype = _DTYPES.get(s.get_dtype())
                if dtype is None:
                    problems.append(f"{key}: unsupported dtype {s.get_dtype()}")
                found[name] = TensorInfo(path, key, tuple(s.get_shape()), dtype)
                if listed is not None and listed.get(key) != path.name:
                    problems.append(f"{key}: in {path.name}, index says {listed.get(key)}")
    if listed is not None:
        in_files = {i.key for i in found.values()}
        problems += [f"{k}: listed in {INDEX} ({v}) but in no shard"
                     for k, v in listed.items() if k not in in_files]
    if problems:
        raise CheckpointError(f"{folder}: inconsistent weight files:\n  " + "\n  ".join(problems))
    if EMBED not in found and LM_HEAD in found:
        found[EMBED] = found.pop(LM_HEAD)  # tied: lerobot's dedup kept only lm_head
    return found


def never_executed(name: str, cfg: GrootConfig) -> bool:
    """Tell whether a file tensor is one the model never runs (skipped, GROOT.md §7.1, §7.3)."""
    m = _LLM_LAYER.match(name)
    if m is not None:
        return int(m.group(1)) >= cfg.llm.depth  # layers past select_layer were dropped
    return name == LM_HEAD or name.startswith(_VISION_HEAD) or name.endswith(_BUFFERS)


def check_keys(expected: dict[str, tuple[int, ...]], found: dict[str, TensorInfo],
               cfg: GrootConfig) -> None:
    """Raise one CheckpointError listing every missing, unexpected and mis-shaped tensor."""
    missing = sorted(k for k in expected if k not in found)
    unexpected = sorted(k for k in found if k not in expected and not never_executed(k, cfg))
    wrong = sorted(f"{k}: file {list(found[k].shape)} vs model {list(expected[k])}"
                   for k in expected if k in found and found[k].shape != tuple(expected[k]))
    problems = [f"  {len(items)} {title}:\n    " + "\n    ".join(items)
                for title, items in (("missing", missing), ("unexpected", unexpected),
                                     ("wrong shape", wrong)) if items]
    if problems:
        raise CheckpointError("checkpoint does not match the model:\n" + "\n".join(problems))


def read_state(folder, expected: dict[str, tuple[int, ...]], cfg: GrootConfig,
               device="cpu", dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Check, then read exactly the expected tensors; floating ones cast to ``dtype`` if given."""
    found = read_index(folder)
    check_keys(expected, found, cfg)
    state, handles = {}, {}
    try:
        for name in expected:
            info = found[name]
            if info.file not in handles:
                handles[info.file] = MappedFile(info.file)
            f = handles[info.file]
            stored = f.dtype(info.key)
            state[name] = f.get(info.key, device, dtype if dtype is not None and
                                stored.is_floating_point else stored)
    finally:
        handles.clear()
    return state


# ---- config.json ------------------------------------------------------------------------
# action_head_cfg (FlowmatchingActionHeadConfig) field -> ActionHeadConfig field
_HEAD_FIELDS = {
    "backbone_embedding_dim": "backbone_dim", "hidden_size": "hidden_size",
    "input_embedding_dim": "input_embedding_dim", "max_state_dim": "max_state_dim",
    "action_dim": "action_dim", "action_horizon": "action_horizon",
    "num_target_vision_tokens": "num_future_tokens",
    "max_num_embodiments": "max_num_embodiments", "max_seq_len": "max_seq_len",
    "num_inference_timesteps": "num_steps", "num_timestep_buckets": "num_timestep_buckets",
}
_BLOCK_FIELDS = {"num_layers": "depth", "num_attention_heads": "heads",
                 "attention_head_dim": "head_dim"}


def _head_from_nvidia(head: dict, base: ActionHeadConfig) -> ActionHeadConfig:
    """Map `action_head_cfg`; refuse the options that change the module tree we build."""
    f = {ours: head[theirs] for theirs, ours in _HEAD_FIELDS.items() if theirs in head}
    problems = []
    for key, want in (("use_vlln", True), ("add_pos_embed", True)):
        if head.get(key, want) != want:
            problems.append(f"action_head_cfg.{key} = {head[key]!r} (only {want} is built)")
    for block, prefix in (("diffusion_model_cfg", "dit_"), ("vl_self_attention_cfg", "vlsa_")):
        sub = head.get(block, {})
        f.update({prefix + ours: sub[theirs] for theirs, ours in _BLOCK_FIELDS.items()
                  if theirs in sub})
        if sub.get("positional_embeddings") is not None:
            problems.append(f"{block}.positional_embeddings = {sub['positional_embeddings']!r}"
                            " (only null is built)")
    dit = head.get("diffusion_model_cfg", {})
    if dit.get("interleave_self_attention", True) is not True:
        problems.append("diffusion_model_cfg.interleave_self_attention must be true")
    if dit.get("norm_type", "ada_norm") != "ada_norm":
        problems.append(f"diffusion_model_cfg.norm_type = {dit['norm_type']!r} (ada_norm only)")
    merged = {**base.__dict__, **f}
    if "output_dim" in dit and dit["output_dim"] != merged["hidden_size"]:
        problems.append(f"diffusion_model_cfg.output_dim {dit['output_dim']} != hidden_size "
                        f"{merged['hidden_size']}")
    if "cross_attention_dim" in dit and dit["cross_attention_dim"] != merged["backbone_dim"]:
        problems.append(f"diffusion_model_cfg.cross_attention_dim {dit['cross_attention_dim']}"
                        f" != backbone_embedding_dim {merged['backbone_dim']}")
    if problems:
        raise CheckpointError("config.json: unsupported GR00T options:\n  "
                              + "\n  ".join(problems))
    # diffusers FeedForward's default mult=4: the FF widths are not in the config
    merged["dit_mlp_dim"] = 4 * merged["input_embedding_dim"]
    merged["vlsa_mlp_dim"] = 4 * merged["backbone_dim"]
    return ActionHeadConfig(**merged)


def config_from_nvidia(raw: dict, name: str, shapes: dict | None = None) -> GrootConfig:
    """GrootConfig from NVIDIA's config.json; the Eagle dims are the released model's.

    config.json does not describe the vision tower or the LLM (they come from the Eagle config
    vendored in NVIDIA's code), so those start at `groot-n15`'s; the key check catches a
    checkpoint that differs. The vocabulary is read off the token table when shapes are given.
    """
    base = GROOT_REGISTRY["groot-n15"]
    backbone = raw.get("backbone_cfg", {})
    if backbone.get("project_to_dim") is not None:
        raise CheckpointError(f"config.json backbone_cfg.project_to_dim = "
                              f"{backbone['project_to_dim']} (only null is built)")
    llm = base.llm
    if "select_layer" in backbone:
        llm = llm.__class__(**{**llm.__dict__, "depth": backbone["select_layer"]})
    if shapes and EMBED in shapes:
        llm = llm.__class__(**{**llm.__dict__, "vocab_size": shapes[EMBED][0]})
    head = _head_from_nvidia(raw.get("action_head_cfg", {}), base.action_head)
    try:
        return base.with_(name=name, llm=llm, action_head=head)
    except ValueError as exc:
        raise CheckpointError(f"config.json: {exc}") from exc


def config_to_nvidia(cfg: GrootConfig) -> dict:
    """config.json in NVIDIA's shape (what `config_from_nvidia` reads), plus our full config."""
    h = cfg.action_head
    head = {theirs: getattr(h, ours) for theirs, ours in _HEAD_FIELDS.items()}
    head["max_action_dim"] = h.action_dim
    head.update(use_vlln=True, add_pos_embed=True)
    head["diffusion_model_cfg"] = {
        "num_layers": h.dit_depth, "num_attention_heads": h.dit_heads,
        "attention_head_dim": h.dit_head_dim, "output_dim": h.hidden_size,
        "cross_attention_dim": h.backbone_dim, "interleave_self_attention": True,
        "norm_type": "ada_norm", "positional_embeddings": None,
    }
    head["vl_self_attention_cfg"] = {
        "num_layers": h.vlsa_depth, "num_attention_heads": h.vlsa_heads,
        "attention_head_dim": h.vlsa_head_dim, "positional_embeddings": None,
    }
    return {
        "architectures": ["GR00T_N1_5"], "model_type": "gr00t_n1_5",
        "action_dim": h.action_dim, "action_horizon": h.action_horizon,
        "hidden_size": cfg.llm.width, "action_head_cfg": head,
        "backbone_cfg": {"select_layer": cfg.llm.depth, "project_to_dim": None},
        OUR_CONFIG: cfg.to_dict(),
    }


def config_from_lerobot(name: str, shapes: dict, raw: dict | None = None,
                        special: dict[str, int] | None = None) -> GrootConfig:
    """GrootConfig for a lerobot file: every dimension read off the tensor shapes.

    lerobot's config.json holds its own policy options, not the model's; `models.groot.
    shapes` says what the shapes cannot give (head counts, special token ids) and where those
    come from instead.
    """
    try:
        return config_from_shapes(name, shapes, raw, special)
    except ShapeError as exc:
        raise CheckpointError(str(exc)) from exc


def read_config(folder) -> tuple[GrootConfig, dict]:
    """Return the folder's GrootConfig and its raw config.json.

    Ours (the `quantvla` block) is exact; NVIDIA's is mapped from `action_head_cfg`; lerobot's
    (`"type": "groot"`) is read off the tensor shapes.
    """
    folder = Path(folder)
    if not (folder / CONFIG).is_file():
        raise CheckpointError(f"{folder}: not a checkpoint folder (missing {CONFIG})")
    raw = json.loads((folder / CONFIG).read_text())
    if OUR_CONFIG in raw:
        return GrootConfig.from_dict(raw[OUR_CONFIG]), raw
    shapes = {k: v.shape for k, v in read_index(folder).items()}
    if "action_head_cfg" in raw:
        return config_from_nvidia(raw, folder.name, shapes), raw
    if raw.get("type") == "groot":
        return config_from_lerobot(folder.name, shapes, raw, folder_special_ids(folder)), raw
    raise CheckpointError(f"{folder / CONFIG}: neither NVIDIA's (action_head_cfg) nor "
                          "lerobot's (type groot) GR00T N1.5 config")


def read_metadata(folder) -> dict | None:
    """Read `experiment_cfg/metadata.json` (tag -> statistics, modalities); None if absent."""
    path = Path(folder) / METADATA
    return json.loads(path.read_text()) if path.is_file() else None


def read_normalizer(folder, embodiment_tag: str = "new_embodiment",
                    default_mode: str = "min_max",
                    modes: dict[str, str] | None = None) -> GrootNormalizer | None:
    """Read the statistics: metadata.json's for ``embodiment_tag``, else lerobot's, or None.

    The mode is not stored (GROOT.md §7.9): ``default_mode`` / ``modes`` name the data
    config's (LIBERO: min_max everywhere; the goal suite's mean/std config:
    `normalization.LIBERO_MEAN_STD`). lerobot's statistics are min_max by construction.
    """
    metadata = read_metadata(folder)
    if metadata is not None:
        return GrootNormalizer.from_metadata(metadata, embodiment_tag, default_mode, modes)
    stats = read_lerobot_stats(folder)
    return GrootNormalizer.from_lerobot(stats) if stats else None


def load_checkpoint(folder, device="cpu", dtype: torch.dtype | None = None):
    """Load (model, config) from either layout: built on meta, tensors assigned (one copy)."""
    cfg, _ = read_config(folder)
    model = build_meta(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(read_state(folder, expected, cfg, device, dtype), assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a non-persistent buffer nothing recomputes would stay without storage
        raise CheckpointError(f"tensors not in the state dict stayed on meta: {left}")
    return model.eval(), cfg


def save_checkpoint(model, folder, metadata: dict | None = None,
                    max_shard_bytes: int = 4 << 30) -> Path:
    """Write ``model`` (a GrootModel) in NVIDIA's layout; see `save_state`."""
    return save_state(model.state_dict(), model.cfg, folder, metadata, max_shard_bytes)


# ---- saving -----------------------------------------------------------------------------
def save_state(state: dict[str, torch.Tensor], cfg: GrootConfig, folder,
               metadata: dict | None = None, max_shard_bytes: int = 4 << 30) -> Path:
    """Write the NVIDIA layout: shards in state order, the index, config.json, metadata.

    Tensors are written as they are (dtype included), so save then load is bit-exact.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards, size = [[]], 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    for old in folder.glob("model*.safetensors"):
        old.unlink()  # a stale shard of another count would be read by nobody but confuses
    weight_map, seen = {}, set()
    for i, names in enumerate(shards, 1):
        file = _SHARD.format(i, len(shards))
        tensors = {}
        for n in names:
            t = state[n].detach().cpu().contiguous()
            ptr = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
            tensors[n] = t.clone() if ptr in seen else t  # safetensors refuses shared storage
            seen.add(ptr)
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, file))
    total = sum(t.numel() * t.element_size() for t in state.values())
    (folder / INDEX).write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (folder / CONFIG).write_text(json.dumps(config_to_nvidia(cfg), indent=2))
    if metadata is not None:
        (folder / METADATA).parent.mkdir(exist_ok=True)
        (folder / METADATA).write_text(json.dumps(metadata, indent=2))
    return folder
