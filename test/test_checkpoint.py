"""lerobot-format checkpoints: names, round trip, key and shape checks, statistics."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from quantvla_ros.models.build import build_meta, random_model
from quantvla_ros.models.pi.checkpoint import (
    WEIGHTS,
    CheckpointError,
    config_from_lerobot,
    load_checkpoint,
    read_config,
    save_checkpoint,
)
from quantvla_ros.models.pi.config import GEMMA_VARIANTS, get_config
from quantvla_ros.models.pi.normalization import Normalizer


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = random_model(get_config("pi05-tiny"), seed=3)
    folder = tmp_path_factory.mktemp("ckpt") / "pi05-tiny"
    stats = {"observation.state.q01": np.full(7, -2.0, np.float32),
             "observation.state.q99": np.full(7, 2.0, np.float32),
             "action.q01": np.linspace(-1, 0, 6, dtype=np.float32),
             "action.q99": np.linspace(1, 2, 6, dtype=np.float32)}
    save_checkpoint(model, folder, Normalizer.from_stats(stats, "pi05"))
    return model, folder


def test_lerobot_parameter_names(saved):
    _, folder = saved
    keys = load_file(str(folder / WEIGHTS)).keys()
    pwe = "model.paligemma_with_expert."
    assert pwe + "paligemma.model.vision_tower.vision_model.embeddings.patch_embedding.weight" \
        in keys
    assert pwe + "paligemma.model.multi_modal_projector.linear.weight" in keys
    assert pwe + "paligemma.model.language_model.layers.0.self_attn.q_proj.weight" in keys
    assert pwe + "paligemma.model.language_model.embed_tokens.weight" in keys
    assert pwe + "gemma_expert.model.layers.1.input_layernorm.dense.weight" in keys
    assert pwe + "gemma_expert.model.norm.dense.bias" in keys
    assert {"model.action_in_proj.weight", "model.time_mlp_out.bias"} <= set(keys)
    assert all(k.startswith("model.") for k in keys)


def test_save_load_round_trip_bit_exact(saved):
    model, folder = saved
    loaded, cfg, normalizer = load_checkpoint(folder)
    assert cfg == model.cfg
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert normalizer.mode == "quantiles" and normalizer.dim("action") == 6
    # and saving the loaded model writes the same bytes again
    folder2 = folder.parent / "again"
    save_checkpoint(loaded, folder2, normalizer)
    assert (folder / WEIGHTS).read_bytes() == (folder2 / WEIGHTS).read_bytes()


def test_load_in_bf16(saved):
    model, folder = saved
    loaded, _, _ = load_checkpoint(folder, dtype=torch.bfloat16)
    w = loaded.state_dict()["backbone.layers.0.mlp.up_proj.weight"]
    assert w.dtype == torch.bfloat16
    assert torch.equal(w, model.state_dict()["backbone.layers.0.mlp.up_proj.weight"].bfloat16())


def _rewrite(folder, dst, edit):
    dst.mkdir()
    tensors = load_file(str(folder / WEIGHTS))
    edit(tensors)
    save_file(tensors, str(dst / WEIGHTS))
    (dst / "config.json").write_text((folder / "config.json").read_text())
    return dst


def test_missing_and_unexpected_keys_listed(saved, tmp_path):
    _, folder = saved
    gone = "model.paligemma_with_expert.gemma_expert.model.layers.0.mlp.up_proj.weight"

    def edit(t):
        del t[gone]
        t["model.extra_head.weight"] = torch.zeros(2)

    bad = _rewrite(folder, tmp_path / "bad", edit)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(bad)
    msg = str(err.value)
    assert "1 missing" in msg and gone in msg
    assert "1 unexpected" in msg and "model.extra_head.weight" in msg


def test_shape_mismatch_rejected(saved, tmp_path):
    _, folder = saved
    key = "model.action_out_proj.weight"

    def edit(t):
        t[key] = torch.zeros(7, t[key].shape[1])

    bad = _rewrite(folder, tmp_path / "bad", edit)
    with pytest.raises(CheckpointError, match="action_out_proj.weight: file"):
        load_checkpoint(bad)


def test_tied_embedding_and_dimensions_from_lerobot_config(saved, tmp_path):
    """A lerobot file: no `quantvla` block, embedding only as lm_head, lm_heads ignored."""
    model, folder = saved
    pwe = "model.paligemma_with_expert."

    def edit(t):
        t[pwe + "paligemma.lm_head.weight"] = t.pop(
            pwe + "paligemma.model.language_model.embed_tokens.weight")
        t[pwe + "gemma_expert.lm_head.weight"] = torch.zeros(3, 128)

    dst = _rewrite(folder, tmp_path / "lerobot", edit)
    raw = json.loads((folder / "config.json").read_text())
    del raw["quantvla"]
    (dst / "config.json").write_text(json.dumps(raw))
    cfg, _ = read_config(dst)
    ref = model.cfg
    assert (cfg.backbone, cfg.expert) == (ref.backbone, ref.expert)
    assert cfg.vision == ref.vision
    assert cfg.vocab_size == ref.vocab_size and cfg.cameras == ref.cameras
    loaded, _, _ = load_checkpoint(dst)
    assert torch.equal(loaded.backbone.embed_tokens.weight, model.backbone.embed_tokens.weight)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="missing config.json"):
        load_checkpoint(tmp_path)


def _as_lerobot(folder, dst, **config_changes):
    """Copy a saved folder as lerobot would hold it: no `quantvla` block, keys changed."""
    dst.mkdir()
    (dst / WEIGHTS).write_bytes((folder / WEIGHTS).read_bytes())
    raw = json.loads((folder / "config.json").read_text())
    del raw["quantvla"]
    for key, value in config_changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    (dst / "config.json").write_text(json.dumps(raw))
    return dst


def _lerobot_shapes(cfg):
    """Tensor shapes (our names) of a config, as read_shapes returns them; no memory."""
    return {k: tuple(v.shape) for k, v in build_meta(cfg).state_dict().items()}


def test_vision_heads_not_in_the_shapes_are_read_from_config_json(tmp_path):
    """A 128-wide tower with 4 heads of 32: the old width // 64 guess said 2 heads."""
    tiny = get_config("pi05-tiny")
    cfg = tiny.with_(vision=tiny.vision.__class__(**{**tiny.vision.__dict__, "num_heads": 4}))
    model = random_model(cfg, seed=2)
    folder = save_checkpoint(model, tmp_path / "ours")
    stated = _as_lerobot(folder, tmp_path / "stated")
    assert read_config(stated)[0].vision.num_heads == 4
    loaded, _, _ = load_checkpoint(stated)
    x = torch.randn(1, 3, cfg.vision.image_size, cfg.vision.image_size)
    with torch.no_grad():
        assert torch.equal(loaded.vision(x), model.vision(x))
    silent = _as_lerobot(folder, tmp_path / "silent", vision_num_heads=None)
    with pytest.raises(CheckpointError, match='128 wide, not SigLIP So400m.s 1152 .*state it in '
                                              'config.json as "vision_num_heads": N'):
        read_config(silent)
    for bad in (0, 3, "4"):
        with pytest.raises(CheckpointError, match="vision_num_heads"):
            read_config(_as_lerobot(folder, tmp_path / f"bad{bad}", vision_num_heads=bad))


def test_so400m_and_lerobot_gemma_variants_need_no_head_counts():
    """Width 1152 is So400m (16 heads of 72); lerobot's gemma_2b / gemma_300m: 8 of 256."""
    tiny = get_config("pi05-tiny")
    b, e = GEMMA_VARIANTS["gemma_2b"], GEMMA_VARIANTS["gemma_300m"]
    cfg = tiny.with_(vision=tiny.vision.__class__(width=1152, depth=1, mlp_dim=4304),
                     backbone=b.__class__(**{**b.__dict__, "depth": 2}),
                     expert=e.__class__(**{**e.__dict__, "depth": 2}))
    raw = {"type": "pi05", "input_features": {}}
    got = config_from_lerobot(raw, _lerobot_shapes(cfg), "full")
    assert got.vision.num_heads == 16
    assert (got.backbone.num_heads, got.backbone.head_dim, got.backbone.num_kv_heads) \
        == (8, 256, 1)
    assert (got.expert.width, got.expert.num_heads, got.expert.head_dim) == (1024, 8, 256)


def test_gemma_heads_of_other_sizes_must_be_stated(saved, tmp_path):
    """pi05-tiny's towers have 8 heads of 32: not a lerobot variant, so config.json says so."""
    model, folder = saved
    silent = _as_lerobot(folder, tmp_path / "silent", gemma_num_heads=None)
    with pytest.raises(CheckpointError, match=r"backbone tower: q_proj has 256 rows and k_proj "
                                              r"32, not gemma_2b's 8 heads of 256.*"
                                              r'"gemma_num_heads": N'):
        read_config(silent)
    other = read_config(_as_lerobot(folder, tmp_path / "16", gemma_num_heads=16))[0]
    assert (other.backbone.num_heads, other.backbone.head_dim, other.expert.num_kv_heads) \
        == (16, 16, 2)  # what config.json says, not a guess
    for bad in (3, 4):  # 256 rows in 3 heads; heads of 64 that k_proj's 32 rows cannot hold
        with pytest.raises(CheckpointError, match=f"gemma_num_heads {bad} does not divide"):
            read_config(_as_lerobot(folder, tmp_path / f"bad{bad}", gemma_num_heads=bad))
    stated = read_config(_as_lerobot(folder, tmp_path / "stated"))[0]
    assert (stated.backbone, stated.expert) == (model.cfg.backbone, model.cfg.expert)


def test_own_checkpoints_without_the_head_keys_still_load(saved, tmp_path):
    """Folders written before these keys existed carry the full config under `quantvla`."""
    model, folder = saved
    old = tmp_path / "old"
    old.mkdir()
    (old / WEIGHTS).write_bytes((folder / WEIGHTS).read_bytes())
    raw = json.loads((folder / "config.json").read_text())
    del raw["vision_num_heads"], raw["gemma_num_heads"]
    (old / "config.json").write_text(json.dumps(raw))
    assert read_config(old)[0] == model.cfg
