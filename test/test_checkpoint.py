"""lerobot-format checkpoints: names, round trip, key and shape checks, statistics."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from quantvla_ros.models.build import random_model
from quantvla_ros.models.checkpoint import (
    WEIGHTS,
    CheckpointError,
    load_checkpoint,
    read_config,
    save_checkpoint,
)
from quantvla_ros.models.config import get_config
from quantvla_ros.models.normalization import Normalizer


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
