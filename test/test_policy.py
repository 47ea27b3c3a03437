"""The ROS-free Policy API: observation dict -> unnormalized action chunk."""

import numpy as np
import pytest
import torch

from quantvla_ros.data.observation import ObservationError
from quantvla_ros.models.build import random_model
from quantvla_ros.models.pi.checkpoint import save_checkpoint
from quantvla_ros.models.pi.config import get_config
from quantvla_ros.models.pi.normalization import Normalizer
from quantvla_ros.models.pi.processing import resize_with_pad
from quantvla_ros.models.pi.tokenizer import (
    ByteTokenizer,
    build_prompt,
    discretize_state,
    tokenize,
)
from quantvla_ros.runtime.policy import Policy


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
    # q01=-1, q99=1 normalizes the state to itself; both prompts show the robot's 9 values
    raw = reference.infer(observation(state_dim=9), noise=noise).actions
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


def _prompt(policy, obs) -> str:
    inputs = policy.prepare(obs)
    ids = inputs["tokens"][0][inputs["token_masks"][0]].tolist()
    assert ids[0] == 2  # bos, then ByteTokenizer's bytes shifted by 3
    return bytes(i - 3 for i in ids[1:]).decode()


def test_pi05_prompt_shows_the_robot_state_not_the_padded_vector():
    """8 robot values give 8 bins (lerobot 0.6.1, openpi), not 32 with 24 zero bins."""
    obs = observation(state_dim=8)
    bins = " ".join(str(int(b)) for b in discretize_state(obs["state"]))
    policy = Policy.from_config("pi05-tiny")
    assert policy.option("state_prompt") == "unpadded"
    assert policy.source == "pi05-tiny (random weights, seed 0) [state prompt: unpadded, default]"
    assert _prompt(policy, obs) == f"Task: put the bowl on the plate, State: {bins};\nAction: "
    padded = Policy.from_config("pi05-tiny", state_prompt="padded")
    assert padded.source.endswith("[state prompt: padded, set explicitly]")
    assert _prompt(padded, obs) == (
        f"Task: put the bowl on the plate, State: {bins}{' 128' * 24};\nAction: ")
    # pi0 has no state in its prompt
    assert Policy.from_config("pi0-tiny").option("state_prompt") is None


def test_state_prompt_choice_travels_with_the_model_config(tmp_path):
    """The choice is in the model's config, so a checkpoint (or artifact) keeps it."""
    padded = Policy.from_config("pi05-tiny", state_prompt="padded")
    assert padded.cfg.state_prompt == padded.model.cfg.state_prompt == "padded"
    save_checkpoint(padded.model, tmp_path / "ck")
    again = Policy.from_checkpoint(tmp_path / "ck")
    assert again.option("state_prompt") == "padded"
    assert again.source.endswith("[state prompt: padded, declared by the source]")
    again = Policy.from_checkpoint(tmp_path / "ck", state_prompt="unpadded")
    assert again.option("state_prompt") == "unpadded"


def test_quantized_artifact_records_the_state_prompt(tmp_path):
    from quantvla_ros.workflows.quantize import QuantizeRequest, quantize_policy

    req = QuantizeRequest(source="pi05-micro", calib="synthetic:4", bits="w8a8",
                          options={"state_prompt": "padded"})
    manifest = quantize_policy(req, tmp_path / "art", log=lambda *_: None)
    assert manifest.model_config.state_prompt == "padded"
    loaded = Policy.load(str(tmp_path / "art"))
    assert loaded.option("state_prompt") == "padded" and "declared by the source" in loaded.source


def test_state_prompt_cli_flag_and_node_parameter():
    from quantvla_ros.cli.main import build_parser
    from quantvla_ros.ros.inference_node import load_policy
    from quantvla_ros.ros.settings import (
        INFERENCE_PARAMS,
        SettingsError,
        defaults,
        parse_inference,
    )

    for argv in (["quantize", "--model", "pi05-tiny", "--calib", "synthetic:2", "--out", "x"],
                 ["report", "--artifact", "a", "--calib", "synthetic:2"], ["bench", "e2e"]):
        assert build_parser().parse_args(argv).state_prompt == "auto"
        assert build_parser().parse_args([*argv, "--state-prompt", "padded"]).state_prompt \
            == "padded"
    values = {**defaults(INFERENCE_PARAMS), "policy": "pi05-micro", "camera_topics": ["/cam"],
              "camera_slots": ["base_0_rgb"], "joint_names": ["j1", "j2"]}
    assert parse_inference(values).options == {}
    with pytest.raises(SettingsError, match="state_prompt must be auto, unpadded, padded or none"):
        parse_inference({**values, "state_prompt": "pad"})
    policy = load_policy(parse_inference({**values, "state_prompt": "padded"}))
    assert policy.option("state_prompt") == "padded"
