"""Training on demonstrations: loading, batches equal to the Policy's inputs, the loss, resume."""

import json

import numpy as np
import pytest
import torch

from quantvla_ros.models.build import random_model
from quantvla_ros.models.pi.checkpoint import load_checkpoint
from quantvla_ros.models.pi.config import get_config
from quantvla_ros.models.pi.tokenizer import ByteTokenizer
from quantvla_ros.runtime.policy import Policy
from quantvla_ros.training.batches import BatchMaker
from quantvla_ros.training.demos import DemoError, load_demos
from quantvla_ros.training.flow_loss import flow_matching_loss, sample_time
from quantvla_ros.training.train import RunConfig, learning_rate, train

MICRO = get_config("pi05-micro")  # 56 px, horizon 10, action 8, state 8


def write_episode(path, steps, image_every=1, seed=0, instruction="pick up the soup",
                  success=True, size=56):
    """Write one episode in the recorder's format (scripts/record_libero_demos.py)."""
    rng = np.random.default_rng(seed)
    image_step = np.arange(0, steps, image_every)
    expert = rng.uniform(-1, 1, (steps, 8)).astype(np.float32)
    np.savez_compressed(
        path, agentview=rng.integers(0, 256, (len(image_step), size, size, 3), np.uint8),
        wrist=rng.integers(0, 256, (len(image_step), size, size, 3), np.uint8),
        image_step=image_step, state=rng.normal(size=(steps, 8)).astype(np.float32),
        action=np.clip(expert + rng.normal(0, 0.1, expert.shape), -1, 1).astype(np.float32),
        expert_action=expert, instruction=np.str_(instruction), success=np.bool_(success))


@pytest.fixture()
def demo_folder(tmp_path):
    write_episode(tmp_path / "task00_ep0000.npz", 13, image_every=2, seed=1)
    write_episode(tmp_path / "task01_ep0000.npz", 7, seed=2, instruction="open the drawer")
    write_episode(tmp_path / "task02_ep0000.npz", 5, seed=3, success=False)
    return tmp_path


def test_frames_steps_and_chunks(demo_folder):
    demos = load_demos(demo_folder)
    assert len(demos.files) == 2  # the failed expert run is skipped
    assert demos.num_frames == 7 + 7  # steps 0, 2, .., 12 of the first; all 7 of the second
    assert demos.state.shape == (20, 8)
    steps, pad = demos.chunk_steps(np.array([6, 13]), 10)
    # frame 6 is step 12 of episode 0 (its last): every later step pads with it
    assert steps[0].tolist() == [12] * 10 and pad[0].tolist() == [False] + [True] * 9
    # frame 13 is step 6 of episode 1 (global 19, its last)
    assert steps[1, 0] == 19 and pad[1].sum() == 9
    steps, pad = demos.chunk_steps(np.array([7]), 10)  # first frame of episode 1
    assert steps[0].tolist() == list(range(13, 20)) + [19] * 3
    assert load_demos(demo_folder, exclude="task01_*").files == ["task00_ep0000.npz"]
    stats = demos.quantile_stats()
    np.testing.assert_allclose(stats["action.q99"], np.quantile(demos.action, 0.99, axis=0),
                               rtol=1e-6)


def test_bad_folders_are_named(tmp_path):
    with pytest.raises(DemoError, match="does not exist"):
        load_demos(tmp_path / "nope")
    with pytest.raises(DemoError, match="no episodes"):
        load_demos(tmp_path)
    np.savez(tmp_path / "bad.npz", state=np.zeros((3, 8)))
    with pytest.raises(DemoError, match="missing arrays"):
        load_demos(tmp_path)


def test_batches_equal_what_the_policy_feeds_the_model(demo_folder):
    """Train-serve parity: the same frame gives the same pixels, prompt tokens and state."""
    demos = load_demos(demo_folder)
    normalizer = demos.normalizer()
    maker = BatchMaker(demos, MICRO, normalizer, ByteTokenizer())
    policy = Policy(random_model(MICRO), normalizer, ByteTokenizer())
    for frame in (0, 5, 9):
        batch = maker.batch(np.array([frame]))
        step = demos.frame_step[frame]
        obs = {"images": {"base_0_rgb": demos.views["agentview"][frame],
                          "left_wrist_0_rgb": demos.views["wrist"][frame]},
               "state": demos.state[step],
               "instruction": demos.instructions[demos.episode_of[step]]}
        inputs = policy.prepare(obs)
        torch.testing.assert_close(batch["images"], inputs["images"], rtol=0, atol=0)
        assert torch.equal(batch["tokens"], inputs["tokens"])
        assert torch.equal(batch["token_masks"], inputs["token_masks"])


def test_a_too_long_prompt_is_refused(demo_folder):
    demos = load_demos(demo_folder)
    with pytest.raises(DemoError, match="exceeds max_token_len"):
        BatchMaker(demos, MICRO.with_(max_token_len=20), demos.normalizer(), ByteTokenizer())


def test_shared_prefix_loss_equals_the_joint_forward(demo_folder):
    """K noise draws over one prefix pass == the joint (uncached) forward once per draw."""
    demos = load_demos(demo_folder)
    maker = BatchMaker(demos, MICRO, demos.normalizer(), ByteTokenizer())
    model = random_model(MICRO, seed=3)
    batch = maker.batch(np.array([0, 4, 8]))
    loss = flow_matching_loss(model, batch, torch.Generator().manual_seed(5), noise_samples=2)
    gen = torch.Generator().manual_seed(5)
    actions = batch["actions"].repeat_interleave(2, 0)
    keep = (~batch["action_pad"]).repeat_interleave(2, 0)
    noise = torch.randn(actions.shape, generator=gen)
    t = sample_time(actions.shape[0], gen)
    x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * actions
    embs, valid = model.embed_prefix(*(batch[k].repeat_interleave(2, 0) for k in
                                       ("images", "image_masks", "tokens", "token_masks")))
    v = model.denoise_uncached(embs, valid, x_t, t)
    err = (v - (noise - actions)).pow(2).mean(-1)
    expected = (err * keep).sum() / keep.sum()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert bool(batch["action_pad"].any())  # the frames include padded steps, masked above


def test_time_distribution_is_beta_1_5_1():
    t = sample_time(200_000, torch.Generator().manual_seed(0))
    assert 0.001 <= float(t.min()) and float(t.max()) <= 1.0
    # Beta(1.5, 1) has mean 0.6; scaled by 0.999 and shifted by 0.001: 0.6004
    assert abs(float(t.mean()) - 0.6004) < 3e-3


def test_schedule_warms_up_then_decays_to_min():
    run = RunConfig(demos="", steps=100, warmup=10, lr=1e-3, min_lr=1e-4)
    assert learning_rate(0, run) == pytest.approx(1e-4)
    assert learning_rate(9, run) == pytest.approx(1e-3)
    assert learning_rate(55, run) == pytest.approx(5.5e-4)
    assert learning_rate(100, run) == pytest.approx(1e-4)


def test_resumed_training_equals_an_uninterrupted_run(demo_folder, tmp_path):
    """Stop after 4 steps and resume to 6: the weights are those of a straight 6-step run."""
    run = RunConfig(demos=str(demo_folder), model="pi05-micro", steps=6, batch=3,
                    noise_samples=2, warmup=2, shift=2, threads=1)
    straight = train(run, tmp_path / "a", save_every=2, log_every=2)
    train(run, tmp_path / "b", save_every=2, log_every=2, stop_at=4)
    resumed = train(run, tmp_path / "b", save_every=2, log_every=2)
    a, _, norm_a = load_checkpoint(straight)
    b, _, norm_b = load_checkpoint(resumed)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    np.testing.assert_array_equal(norm_a.stats["action.q01"], norm_b.stats["action.q01"])
    losses = [json.loads(line)["loss"] for line in (tmp_path / "a" / "loss.jsonl").open()]
    assert len(losses) == 3 and all(np.isfinite(losses))
    with pytest.raises(SystemExit, match="different run configuration"):
        train(RunConfig(**{**run.__dict__, "lr": 1.0}), tmp_path / "b")
