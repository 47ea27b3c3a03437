"""The ROS-free Policy API: observation dict -> unnormalized action chunk."""

import numpy as np
import pytest
import torch

from quantvla_ros.models.build import random_model
from quantvla_ros.models.checkpoint import save_checkpoint
from quantvla_ros.models.config import get_config
from quantvla_ros.models.normalization import Normalizer
from quantvla_ros.models.tokenizer import ByteTokenizer, build_prompt, discretize_state, tokenize
from quantvla_ros.runtime.policy import Policy
from quantvla_ros.runtime.preprocess import ObservationError, resize_with_pad


def observation(cams=("base_0_rgb",), shape=(120, 160), state_dim=32, seed=0):
    rng = np.random.default_rng(seed)
    return {"images": {c: rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for c in cams},
            "state": rng.uniform(-1, 1, state_dim).astype(np.float32),
            "instruction": "put the bowl on the plate"}


@pytest.mark.parametrize("name", ["pi05-tiny", "pi0-tiny"])
def test_infer_chunk(name):
    policy = Policy.from_config(name, seed=0)
    out = policy.infer(observation())
    assert out.actions.shape == (50, 32) and out.actions.dtype == np.float32
    assert np.isfinite(out.actions).all()
    assert set(out.timing_ms) == {"preprocess", "prefix", "denoise", "total"}
    assert all(v >= 0 for v in out.timing_ms.values())


def test_seeded_noise_is_deterministic():
    obs = observation()
    a = Policy.from_config("pi05-tiny", seed=5).infer(obs).actions
    b = Policy.from_config("pi05-tiny", seed=5).infer(obs).actions
    np.testing.assert_array_equal(a, b)
    p = Policy.from_config("pi05-tiny", seed=5)
    p.reseed(6)
    assert np.abs(p.infer(obs).actions - a).max() > 1e-3  # another noise draw, another chunk


def test_checkpoint_policy_unnormalizes_with_statistics(tmp_path):
    model = random_model(get_config("pi05-tiny"), seed=1)
    q01, q99 = np.linspace(-3, -1, 7, dtype=np.float32), np.linspace(1, 4, 7, dtype=np.float32)
    stats = {"observation.state.q01": np.full(9, -1.0, np.float32),
             "observation.state.q99": np.full(9, 1.0, np.float32),
             "action.q01": q01, "action.q99": q99}
    save_checkpoint(model, tmp_path / "ckpt", Normalizer.from_stats(stats, "pi05"))
    policy = Policy.from_checkpoint(tmp_path / "ckpt")
    assert (policy.state_dim, policy.action_dim) == (9, 7)
    noise = policy.draw_noise()
    out = policy.infer(observation(state_dim=9), noise=noise)
    assert out.actions.shape == (50, 7)
    # the same chunk, normalized, from the raw model: (a + 1)(q99 - q01)/2 + q01
    reference = Policy(model, Normalizer.identity(), ByteTokenizer())
    obs9 = observation(state_dim=9)
    # q01=-1, q99=1 normalizes the state to itself; the policy then zero-pads it to 32
    padded = {**obs9, "state": np.pad(obs9["state"], (0, 23))}
    raw = reference.infer(padded, noise=noise).actions
    np.testing.assert_allclose(out.actions, (raw[:, :7] + 1) * (q99 - q01) / 2 + q01,
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ObservationError, match="state has 32 values, the policy expects 9"):
        policy.infer(observation(state_dim=32))


def test_bad_observations_rejected():
    policy = Policy.from_config("pi05-tiny")
    obs = observation()
    with pytest.raises(ObservationError, match="unknown camera"):
        policy.infer({**obs, "images": {"top": obs["images"]["base_0_rgb"]}})
    with pytest.raises(ObservationError, match="uint8 HxWx3"):
        policy.infer({**obs, "images": {"base_0_rgb": np.zeros((8, 8), np.uint8)}})
    with pytest.raises(ObservationError, match="NaN"):
        policy.infer({**obs, "state": np.full(32, np.nan, np.float32)})
    with pytest.raises(ObservationError, match="non-empty"):
        policy.infer({**obs, "instruction": "  "})
    with pytest.raises(ObservationError, match=r"observation keys: missing \['state'\]"):
        policy.infer({"images": obs["images"], "instruction": "x"})


def test_missing_camera_is_masked_not_zero():
    """A camera left out must not change the chunk the way a black frame would."""
    policy = Policy.from_config("pi05-tiny")
    obs = observation(cams=("base_0_rgb",))
    noise = policy.draw_noise()
    a = policy.infer(obs, noise=noise).actions
    black = {**obs, "images": {**obs["images"],
                               "left_wrist_0_rgb": np.zeros((120, 160, 3), np.uint8)}}
    b = policy.infer(black, noise=noise).actions
    assert np.abs(a - b).max() > 1e-4


def test_resize_with_pad_keeps_aspect_and_pads_black():
    img = torch.ones(1, 3, 100, 200)
    out = resize_with_pad(img, 224)
    assert out.shape == (1, 3, 224, 224)
    assert torch.all(out[..., :56, :] == 0) and torch.all(out[..., 168:, :] == 0)
    assert torch.allclose(out[..., 56:168, :], torch.ones(1))


def test_pi05_prompt_and_tokens():
    state = np.array([-1.0, 0.0, 0.999, 1.5, -1.2])
    assert discretize_state(state).tolist() == [0, 128, 255, 255, -1]
    prompt = build_prompt("pi05", " pick_up the\ncup ", state[:3])
    assert prompt == "Task: pick up the cup, State: 0 128 255;\nAction: "
    ids, mask = tokenize(ByteTokenizer(), prompt, 200)
    assert ids[0] == 2 and mask.sum() == 1 + len(prompt.encode()) and ids[mask.sum()] == 0
    ids, mask = tokenize(ByteTokenizer(), "x" * 500, 200)
    assert mask.all()  # over-long prompts are truncated to the model's length


@pytest.mark.gpu
def test_cuda_graph_chunk_matches_eager():
    """GPU only: the two-graph replay gives the eager chunk (bf16 tolerance)."""
    eager = Policy.from_config("pi05-tiny", seed=0, device="cuda", precision="bf16")
    eager.use_cuda_graphs = False
    graphed = Policy.from_config("pi05-tiny", seed=0, device="cuda", precision="bf16")
    assert graphed.use_cuda_graphs
    obs = observation()
    for _ in range(3):  # capture on the first call, replay afterwards
        noise = eager.draw_noise()
        a = eager.infer(obs, noise=noise).actions
        out = graphed.infer(obs, noise=noise)
        np.testing.assert_allclose(out.actions, a, rtol=2e-2, atol=2e-2)
        assert out.timing_ms["prefix"] > 0 and out.timing_ms["denoise"] > 0


def test_lerobot_checkpoint_needs_a_tokenizer(tmp_path):
    import json

    save_checkpoint(random_model(get_config("pi05-tiny")), tmp_path / "ck")
    raw = json.loads((tmp_path / "ck" / "config.json").read_text())
    del raw["quantvla"]  # as lerobot writes it
    (tmp_path / "ck" / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="without a tokenizer"):
        Policy.from_checkpoint(tmp_path / "ck")
