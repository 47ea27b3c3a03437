"""A lerobot 0.6.1 SmolVLA folder: prompt, tokens and actions equal lerobot's own outputs.

``lerobot_smolvla.write_folder`` lays the folder out as lerobot 0.6.1 writes it (config.json,
model.safetensors with the whole cut SmolVLM2, policy_pre/postprocessor.json and their
statistics files). ``fixtures/lerobot061_smolvla_reference.json`` holds what lerobot 0.6.1's
own preprocessor, ``SmolVLAPolicy.predict_action_chunk`` (fixed noise) and postprocessor
produced on that folder; ``fixtures/make_lerobot_smolvla_reference.py`` regenerates it.
"""

import json
from pathlib import Path

import lerobot_smolvla as L
import numpy as np
import pytest
import torch

from quantvla_ros.models.smolvla.checkpoint import CheckpointError, read_config
from quantvla_ros.runtime.policy import Policy

REFERENCE = json.loads(
    (Path(__file__).parent / "fixtures" / "lerobot061_smolvla_reference.json").read_text())
CASES = REFERENCE["cases"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return L.write_folder(tmp_path_factory.mktemp("lerobot061") / "smolvla_tiny")


@pytest.fixture(scope="module")
def policy(folder):
    return Policy.from_checkpoint(folder)


def test_folder_reads_as_lerobot_writes_it(folder):
    assert REFERENCE["lerobot"] == "0.6.1"
    cfg, raw = read_config(folder)
    assert "quantvla" not in raw and cfg.family == "smolvla" and cfg.cameras == L.CAMERAS
    assert (cfg.vision.width, cfg.vision.num_heads, cfg.vision.image_size) == (128, 2, 64)
    b, e = cfg.backbone, cfg.expert
    assert (b.width, b.depth, b.num_heads, b.num_kv_heads, b.head_dim) == (256, 4, 8, 2, 32)
    assert (e.width, e.depth, e.mlp_dim) == (128, 4, 512)
    assert (cfg.scale_factor, cfg.image_tokens, cfg.action_horizon, cfg.num_steps) == (
        4, 4, L.CHUNK, L.STEPS)


def test_policy_reads_the_statistics(policy):
    assert policy.normalizer.mode == "mean_std"
    assert (policy.state_dim, policy.action_dim) == (L.STATE_DIM, L.ACTION_DIM)


@pytest.mark.parametrize("index", range(len(CASES)))
def test_tokens_and_actions_match_lerobot(policy, index):
    case, obs = CASES[index], L.observations()[index]
    prompt = policy.family.processor.prompt(obs["instruction"])
    assert prompt == case["prompt"]
    assert policy.family.processor.tokens(prompt).tolist() == case["token_ids"]
    out = policy.infer(obs, noise=torch.from_numpy(L.noise(index)))
    want = np.asarray(case["actions"], np.float32)
    assert out.actions.shape == want.shape == (L.CHUNK, L.ACTION_DIM)
    np.testing.assert_allclose(out.actions, want, rtol=0, atol=1e-5)


def test_a_batch_gives_each_row_its_single_run_actions(policy):
    """Prompts of different lengths share a batch: right padding is masked."""
    obs = L.observations()
    batch = policy.prepare_batches(obs)[0]
    noise = torch.cat([torch.from_numpy(L.noise(i)) for i in range(len(obs))])
    rows = policy.family.sample(policy.model, [{**batch, "noise": noise}])
    single = policy.family.sample(policy.model, [
        {**policy.prepare_batches([o])[0], "noise": noise[i:i + 1]} for i, o in enumerate(obs)])
    torch.testing.assert_close(rows, single, rtol=0, atol=1e-5)


def test_trained_folder_without_tokenizer_is_refused(tmp_path):
    folder = L.write_folder(tmp_path / "no_tok", tokenizer=False)
    with pytest.raises(CheckpointError, match="without a tokenizer"):
        Policy.from_checkpoint(folder)


def test_other_sizes_need_their_head_counts(tmp_path):
    folder = L.write_folder(tmp_path / "plain")
    raw = json.loads((folder / "config.json").read_text())
    del raw["text_num_heads"]
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="text_num_heads"):
        read_config(folder)
