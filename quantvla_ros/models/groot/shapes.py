"""GR00T N1.5 dimensions read off a checkpoint's tensor shapes (lerobot's folders).

lerobot's config.json holds its policy options, not the model's dimensions (lerobot rebuilds
the model from the base checkpoint's config), so every width, depth and count is read off
the weights. Three things are not in any shape:
- the head counts of SigLIP, the VL self-attention and the DiT: the released counts where
  the width is the released one, else config.json must state them (`HEAD_KEYS`); the LLM's
  head size is its q_norm's length, so its heads are exact;
- the `<IMG_CONTEXT>` and pad token ids: NVIDIA's where the vocabulary holds them, else the
  tokenizer folder's (`special_token_ids`);
- the chunk length and step count: the base model's (16, 4).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

from quantvla_ros.models.groot.config import (
    GROOT_REGISTRY,
    ActionHeadConfig,
    GrootConfig,
    Qwen3Config,
)
from quantvla_ros.models.siglip import VisionConfig

IMG_CONTEXT, PAD = "<IMG_CONTEXT>", "<|endoftext|>"
# config.json keys for the head counts no tensor shape gives: part -> (key, released width,
# released heads).
HEAD_KEYS = {"vision": ("vision_num_heads", 1152, 16),
             "vlsa": ("vl_self_attention_num_heads", 2048, 32),
             "dit": ("dit_num_heads", 1536, 32)}
TOKENIZER_DIRS = ("eagle2_hg_model", "tokenizer")
_VM = "backbone.eagle_model.vision_model.vision_model."
_LM = "backbone.eagle_model.language_model.model."
_AH = "action_head."


class ShapeError(ValueError):
    """Weights whose dimensions cannot be read or do not fit together; says why."""


def _count(shapes, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in shapes if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def _need(shapes, key: str) -> tuple[int, ...]:
    if key not in shapes:
        raise ShapeError(f"no tensor {key} to read the model's dimensions from")
    return tuple(shapes[key])


def _heads(raw: dict, part: str, width: int) -> int:
    key, released_width, released_heads = HEAD_KEYS[part]
    heads = raw.get(key)
    if heads is None:
        if width != released_width:
            raise ShapeError(f"the {part} width is {width}, not the released {released_width},"
                             f" and its head count is not in the weights: state it in "
                             f'config.json as "{key}": N')
        heads = released_heads
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or width % heads:
        raise ShapeError(f"config.json {key} = {heads!r} does not divide the {part} width "
                         f"{width}")
    return heads


def special_token_ids(folder) -> dict[str, int]:
    """Token -> id of the added tokens in a tokenizer folder's JSON files ({} if none)."""
    folder = Path(folder)
    ids: dict[str, int] = {}
    try:
        if (folder / "tokenizer.json").is_file():
            for t in json.loads((folder / "tokenizer.json").read_text()).get("added_tokens", []):
                ids[t["content"]] = int(t["id"])
        if (folder / "added_tokens.json").is_file():
            ids.update({k: int(v) for k, v in
                        json.loads((folder / "added_tokens.json").read_text()).items()})
        if (folder / "tokenizer_config.json").is_file():
            decoder = json.loads((folder / "tokenizer_config.json").read_text()).get(
                "added_tokens_decoder", {})
            ids.update({t["content"]: int(i) for i, t in decoder.items()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ShapeError(f"{folder}: unreadable tokenizer files ({exc})") from exc
    return ids


def folder_special_ids(folder) -> dict[str, int]:
    """Return the special token ids of a checkpoint's tokenizer folder (the first present)."""
    for name in TOKENIZER_DIRS:
        if (Path(folder) / name).is_dir():
            return special_token_ids(Path(folder) / name)
    return {}


def _token_ids(vocab: int, base: GrootConfig, special: dict[str, int]) -> dict:
    if vocab > max(base.image_token_id, base.pad_token_id):
        return {"image_token_id": base.image_token_id, "pad_token_id": base.pad_token_id}
    if IMG_CONTEXT not in special or PAD not in special:
        raise ShapeError(f"the vocabulary has {vocab} tokens, too few for NVIDIA's "
                         f"{IMG_CONTEXT} id {base.image_token_id}; the ids come from the "
                         f"tokenizer folder ({' or '.join(TOKENIZER_DIRS)}/), which has no "
                         f"{IMG_CONTEXT} and {PAD}")
    return {"image_token_id": special[IMG_CONTEXT], "pad_token_id": special[PAD]}


def _vision(shapes, raw) -> VisionConfig:
    patch = _need(shapes, _VM + "embeddings.patch_embedding.weight")
    n_pos = _need(shapes, _VM + "embeddings.position_embedding.weight")[0]
    side = int(round(n_pos ** 0.5))
    if side * side != n_pos:
        raise ShapeError(f"{n_pos} vision positions are not a square grid")
    return VisionConfig(image_size=side * patch[2], patch_size=patch[2], width=patch[0],
                        depth=_count(shapes, _VM + "encoder.layers."),
                        mlp_dim=_need(shapes, _VM + "encoder.layers.0.mlp.fc1.weight")[0],
                        num_heads=_heads(raw, "vision", patch[0]))


def _llm(shapes, base: Qwen3Config, embed_key: str) -> Qwen3Config:
    vocab, width = _need(shapes, embed_key)
    p = _LM + "layers.0."
    head_dim = _need(shapes, p + "self_attn.q_norm.weight")[0]  # the per-head q norm
    q, kv = (_need(shapes, f"{p}self_attn.{n}_proj.weight")[0] for n in ("q", "k"))
    if q % head_dim or kv % head_dim:
        raise ShapeError(f"LLM q_proj {q} / k_proj {kv} rows are not whole heads of {head_dim}")
    return replace(base, vocab_size=vocab, width=width, depth=_count(shapes, _LM + "layers."),
                   mlp_dim=_need(shapes, p + "mlp.gate_proj.weight")[0],
                   num_heads=q // head_dim, num_kv_heads=kv // head_dim, head_dim=head_dim)


def _action_head(shapes, raw, base: ActionHeadConfig) -> ActionHeadConfig:
    backbone_dim = _need(shapes, _AH + "vlln.weight")[0]
    future, dim = _need(shapes, _AH + "future_tokens.weight")
    vlsa, dit = _AH + "vl_self_attention.transformer_blocks.", _AH + "model.transformer_blocks."
    vlsa_heads, dit_heads = _heads(raw, "vlsa", backbone_dim), _heads(raw, "dit", dim)
    emb, action_dim, _ = _need(shapes, _AH + "action_encoder.W1.W")
    _, state_dim, hidden = _need(shapes, _AH + "state_encoder.layer1.W")
    return replace(
        base, backbone_dim=backbone_dim, vlsa_depth=_count(shapes, vlsa),
        vlsa_heads=vlsa_heads, vlsa_head_dim=backbone_dim // vlsa_heads,
        vlsa_mlp_dim=_need(shapes, vlsa + "0.ff.net.0.proj.weight")[0],
        dit_depth=_count(shapes, dit), dit_heads=dit_heads, dit_head_dim=dim // dit_heads,
        dit_mlp_dim=_need(shapes, dit + "0.ff.net.0.proj.weight")[0], hidden_size=hidden,
        input_embedding_dim=dim, max_state_dim=state_dim, action_dim=action_dim,
        num_future_tokens=future, max_num_embodiments=emb,
        max_seq_len=_need(shapes, _AH + "position_embedding.weight")[0],
        timestep_channels=_need(
            shapes, _AH + "model.timestep_encoder.timestep_embedder.linear_1.weight")[1])


def config_from_shapes(name: str, shapes: dict, raw: dict | None = None,
                       special: dict[str, int] | None = None,
                       embed_key: str = _LM + "embed_tokens.weight") -> GrootConfig:
    """GrootConfig from tensor shapes (NVIDIA names), config.json `raw` and tokenizer ids."""
    base = GROOT_REGISTRY["groot-n15"]
    raw = raw or {}
    try:
        llm = _llm(shapes, base.llm, embed_key)
        return base.with_(name=name, vision=_vision(shapes, raw), llm=llm,
                          action_head=_action_head(shapes, raw, base.action_head),
                          **_token_ids(llm.vocab_size, base, special or {}))
    except ValueError as exc:  # ShapeError, or a config check that the shapes fail
        raise ShapeError(f"weights of {name}: {exc}") from exc
