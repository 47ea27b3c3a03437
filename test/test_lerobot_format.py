"""A lerobot 0.6.1 pi0.5 folder: prompt, tokens and actions equal lerobot's own outputs.

``lerobot_pi05.write_folder`` lays the folder out as lerobot 0.6.1 writes it (config.json,
model.safetensors, policy_pre/postprocessor.json and their normalizer statistics files).
``fixtures/lerobot061_pi05_reference.json`` holds what lerobot 0.6.1's own preprocessor,
``PI05Policy.predict_action_chunk`` (fixed noise) and postprocessor produced on that folder;
``fixtures/make_lerobot_pi05_reference.py`` regenerates it and checks the layout.
"""

import json
from pathlib import Path

import lerobot_pi05 as L
import numpy as np
import pytest
import torch

from quantvla_ros.models.pi.checkpoint import read_config, read_state_prompt
from quantvla_ros.runtime.policy import Policy

REFERENCE = json.loads(
    (Path(__file__).parent / "fixtures" / "lerobot061_pi05_reference.json").read_text())
CASES = REFERENCE["cases"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return L.write_folder(tmp_path_factory.mktemp("lerobot061") / "pi05_tiny")


@pytest.fixture(scope="module")
def policy(folder):
    return Policy.from_checkpoint(folder)


def _text(ids: np.ndarray, mask: np.ndarray) -> str:
    """Decode the character tokenizer: bos, then one character per id."""
    vocab = {i + 4: chr(c) for i, c in enumerate(range(32, 127))} | {99: "\n"}
    assert ids[0] == 2
    return "".join(vocab[int(i)] for i in ids[mask][1:])


def test_folder_reads_as_lerobot_writes_it(folder):
    assert REFERENCE["lerobot"] == "0.6.1"
    cfg, raw = read_config(folder)
    assert "quantvla" not in raw
    assert cfg.variant == "pi05" and cfg.cameras == L.CAMERAS
    assert (cfg.vision.width, cfg.vision.num_heads, cfg.vision.image_size) == (48, 3, 56)
    assert (cfg.backbone.num_heads, cfg.backbone.head_dim, cfg.expert.num_kv_heads) == (4, 16, 1)
    assert (cfg.action_horizon, cfg.num_steps, cfg.vocab_size) == (L.CHUNK, L.STEPS, L.VOCAB)
    # lerobot 0.6.1 saves the state step with an empty config: the robot's own values
    assert read_state_prompt(folder) == "unpadded" and cfg.state_prompt == "unpadded"


def test_policy_reports_the_state_prompt_with_its_source(policy, folder):
    assert policy.option("state_prompt") == "unpadded"
    assert policy.source == f"{folder} [state prompt: unpadded, declared by the source]"
    assert (policy.state_dim, policy.action_dim) == (L.STATE_DIM, L.ACTION_DIM)


@pytest.mark.parametrize("index", range(len(CASES)))
def test_prompt_and_tokens_equal_lerobot(policy, index):
    case, obs = CASES[index], L.observations()[index]
    inputs = policy.prepare(obs)
    ids, mask = inputs["tokens"][0].numpy(), inputs["token_masks"][0].numpy()
    assert _text(ids, mask) == case["prompt"]
    assert ids[mask].tolist() == case["token_ids"]
    assert len(ids) == case["padded_length"] and not ids[~mask].any()


def test_exact_prompts():
    """The prompts lerobot 0.6.1 wrote: 8 bins (the robot's), < -1 gives -1, > 1 gives 255."""
    assert CASES[0]["prompt"] == (
        "Task: pick up the red block, State: 30 192 113 179 238 136 128 29;\nAction: ")
    assert CASES[1]["prompt"] == (
        "Task: put the bowl on the plate, State: -1 255 113 -1 238 136 255 29;\nAction: ")


@pytest.mark.parametrize("index", range(len(CASES)))
def test_actions_equal_lerobot(policy, index):
    obs, noise = L.observations()[index], torch.from_numpy(L.noise(index))
    actions = policy.infer(obs, noise=noise).actions
    expected = np.asarray(CASES[index]["actions"])
    assert actions.shape == expected.shape == (L.CHUNK, L.ACTION_DIM)
    np.testing.assert_allclose(actions, expected, rtol=0, atol=1e-5)


def test_padded_override_writes_the_padded_vector(folder):
    padded = Policy.from_checkpoint(folder, state_prompt="padded")
    assert padded.source.endswith("[state prompt: padded, set explicitly]")
    inputs = padded.prepare(L.observations()[0])
    text = _text(inputs["tokens"][0].numpy(), inputs["token_masks"][0].numpy())
    bins = "30 192 113 179 238 136 128 29" + " 128" * (L.MODEL_DIM - L.STATE_DIM)
    assert text == f"Task: pick up the red block, State: {bins};\nAction: "


def test_step_config_with_max_state_dim_reads_as_padded(tmp_path):
    """A pipeline whose state step serialises max_state_dim (a padding fork) is padded."""
    folder = L.write_folder(tmp_path / "fork", state_step_config={"max_state_dim": 32},
                            tokenizer=False)
    assert read_state_prompt(folder) == "padded"
    assert read_config(folder)[0].state_prompt == "padded"


def test_no_pipeline_defaults_to_unpadded(tmp_path):
    folder = L.write_folder(tmp_path / "bare")
    for name in ("policy_preprocessor.json", "policy_postprocessor.json"):
        (folder / name).unlink()
    assert read_state_prompt(folder) is None and read_config(folder)[0].state_prompt is None
    policy = Policy.from_checkpoint(folder)
    assert policy.option("state_prompt") == "unpadded"
    assert policy.source.endswith("unpadded, default]")
    with pytest.raises(ValueError, match="state_prompt 'pad'"):
        Policy.from_checkpoint(folder, state_prompt="pad")
