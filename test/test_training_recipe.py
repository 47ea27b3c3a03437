"""The training recipe: clean labels, state dropout, weight EMA, --init-from, the vision probe."""

import dataclasses

import numpy as np
import pytest
import torch
from test_training import MICRO, write_episode

from quantvla_ros.models.build import random_model
from quantvla_ros.models.pi.checkpoint import load_checkpoint, save_checkpoint
from quantvla_ros.models.pi.tokenizer import ByteTokenizer, build_prompt
from quantvla_ros.runtime.policy import Policy
from quantvla_ros.training.batches import BatchMaker
from quantvla_ros.training.demos import DemoError, load_demos
from quantvla_ros.training.sensitivity import measure, partner_frame
from quantvla_ros.training.train import STATE, RunConfig, train


@pytest.fixture()
def demo_folder(tmp_path):
    write_episode(tmp_path / "task00_ep0000.npz", 13, image_every=2, seed=1)
    write_episode(tmp_path / "task00_ep0001.npz", 9, seed=4)
    write_episode(tmp_path / "task01_ep0000.npz", 7, seed=2, instruction="open the drawer")
    return tmp_path


def test_labels_are_the_clean_or_the_executed_action(demo_folder, tmp_path):
    clean = load_demos(demo_folder, labels="expert_action")
    executed = load_demos(demo_folder)
    with np.load(demo_folder / "task00_ep0000.npz") as ep:
        np.testing.assert_array_equal(clean.action[:13], ep["expert_action"])
        np.testing.assert_array_equal(executed.action[:13], ep["action"])
    assert not np.array_equal(clean.action, executed.action)
    assert clean.quantile_stats()["action.q99"][0] == pytest.approx(
        np.quantile(clean.action[:, 0], 0.99))
    with pytest.raises(DemoError, match="labels 'noisy'"):
        load_demos(demo_folder, labels="noisy")
    old = tmp_path / "old"
    old.mkdir()
    with np.load(demo_folder / "task01_ep0000.npz") as ep:
        np.savez(old / "a.npz", **{k: ep[k] for k in ep.files if k != "expert_action"})
    with pytest.raises(DemoError, match="missing arrays.*expert_action"):
        load_demos(old, labels="expert_action")


def test_none_state_prompt_leaves_the_state_out():
    assert build_prompt("pi05", "pick_up the cup", None) == "Task: pick up the cup;\nAction: "
    state = np.array([0.1, -0.5], np.float32)
    assert "State: " in build_prompt("pi05", "pick up the cup", state)


def test_state_dropout_feeds_what_a_none_prompt_policy_sees(demo_folder):
    """Dropped prompts equal the serve-time "none" prompt; kept ones the state prompt."""
    demos = load_demos(demo_folder)
    normalizer = demos.normalizer()
    everything = BatchMaker(demos, MICRO, normalizer, ByteTokenizer(), state_dropout=1.0)
    half = BatchMaker(demos, MICRO, normalizer, ByteTokenizer(), state_dropout=0.5)
    bare = Policy(random_model(MICRO.with_(state_prompt="none")), normalizer, ByteTokenizer())
    full = Policy(random_model(MICRO), normalizer, ByteTokenizer())
    gen = torch.Generator().manual_seed(0)
    frames = np.arange(demos.num_frames)
    dropped = everything.batch(frames, gen)
    mixed = half.batch(np.repeat(frames, 20), gen)
    never = half.batch(frames)  # no generator: evaluation-style, always the state prompt
    state_rows = 0
    for k, frame in enumerate(frames):
        step = demos.frame_step[frame]
        obs = {"images": {"base_0_rgb": demos.views["agentview"][frame],
                          "left_wrist_0_rgb": demos.views["wrist"][frame]},
               "state": demos.state[step],
               "instruction": demos.instructions[demos.episode_of[step]]}
        assert torch.equal(dropped["tokens"][k], bare.prepare(obs)["tokens"][0])
        assert torch.equal(never["tokens"][k], full.prepare(obs)["tokens"][0])
        for row in range(20 * k, 20 * k + 20):
            with_state = torch.equal(mixed["tokens"][row], full.prepare(obs)["tokens"][0])
            assert with_state or torch.equal(mixed["tokens"][row],
                                             bare.prepare(obs)["tokens"][0])
            state_rows += with_state
    # Binomial(20 * frames, 0.5): well inside 5 standard deviations
    n = 20 * len(frames)
    assert abs(state_rows - n / 2) < 5 * np.sqrt(n / 4)
    with pytest.raises(DemoError, match="not a probability"):
        BatchMaker(demos, MICRO, normalizer, ByteTokenizer(), state_dropout=1.5)


def _run(demo_folder, **kw) -> RunConfig:
    base = dict(demos=str(demo_folder), model="pi05-micro", steps=1, batch=3,
                noise_samples=1, warmup=1, shift=0, threads=1)
    return RunConfig(**{**base, **kw})


def test_checkpoint_holds_the_ema_of_the_weights(demo_folder, tmp_path):
    """One step at decay 0.9: checkpoint = init + 0.1 * (trained - init), per tensor."""
    folder = train(_run(demo_folder, ema=0.9), tmp_path / "a", save_every=1)
    raw = torch.load(tmp_path / "a" / STATE, weights_only=False)["model"]
    init = random_model(MICRO, seed=0).state_dict()
    ema, _, _ = load_checkpoint(folder)
    moved = 0
    for name, value in ema.state_dict().items():
        expected = init[name] + 0.1 * (raw[name] - init[name])
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6, msg=name)
        moved += not torch.equal(raw[name], init[name])
    assert moved > 10  # the step changed the weights, so EMA and raw differ
    plain = train(_run(demo_folder, ema=0.0), tmp_path / "b", save_every=1)
    raw_b = torch.load(tmp_path / "b" / STATE, weights_only=False)["model"]
    for name, value in load_checkpoint(plain)[0].state_dict().items():
        assert torch.equal(value, raw_b[name]), name


def test_init_from_starts_at_the_checkpoint_and_declares_the_serve_prompt(demo_folder,
                                                                          tmp_path):
    first = train(_run(demo_folder, steps=2), tmp_path / "a", save_every=2)
    # lr 0: AdamW moves nothing (its decay is lr-scaled), so the weights stay the init's
    second = train(_run(demo_folder, init_from=str(first), lr=0.0, min_lr=0.0,
                        state_dropout=0.5, serve_prompt="none"), tmp_path / "b")
    a, _, _ = load_checkpoint(first)
    b, cfg, _ = load_checkpoint(second)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert cfg.state_prompt == "none"
    assert Policy.load(str(second)).option("state_prompt") == "none"
    other = MICRO.with_(expert=dataclasses.replace(MICRO.expert, mlp_dim=2 * MICRO.expert.mlp_dim))
    save_checkpoint(random_model(other), tmp_path / "wider")
    with pytest.raises(SystemExit, match="does not fit"):
        train(_run(demo_folder, init_from=str(tmp_path / "wider")), tmp_path / "c")


def test_sensitivity_probe(demo_folder):
    demos = load_demos(demo_folder)
    # frame 0 (step 0 of the first soup episode) pairs with the other soup episode's step 0
    assert partner_frame(demos, 0) == 7
    assert partner_frame(demos, 6) == 7 + 8  # step 12 -> the partner's last frame (step 8)
    assert partner_frame(demos, demos.num_frames - 1) is None  # the drawer task has one
    normalizer = demos.normalizer()
    policy = Policy(random_model(MICRO, seed=1), normalizer, ByteTokenizer())
    result = measure(policy, demos, frames=4, steps=3)
    assert result["frames"] == 4
    changes = result["mean_abs_change"]
    assert set(changes) == {"noise", "state", "images", "black"}
    assert all(len(v) == MICRO.action_dim for v in changes.values())
    assert min(np.mean(v) for v in changes.values()) > 0
    bare = Policy(random_model(MICRO.with_(state_prompt="none"), seed=1), normalizer,
                  ByteTokenizer())
    assert measure(bare, demos, frames=4, steps=3)["mean_abs_change"]["state"] == [0.0] * 8


LIBERO_TASKS = ["pick up the alphabet soup and place it in the basket",
                "pick up the chocolate pudding and place it in the basket",
                "pick up the bbq sauce and place it in the basket"]


def test_compact_bpe_makes_every_word_and_bin_one_token(tmp_path):
    from quantvla_ros.models.pi.tokenizer import HFTokenizer, clean_task
    from quantvla_ros.training.bpe import save_bpe

    folder = save_bpe(LIBERO_TASKS, tmp_path / "tok")
    tok = HFTokenizer(str(folder))  # the path a PaliGemma tokenizer folder takes
    assert tok.vocab_size <= 512
    inner = tok._tok
    assert (inner.pad_token_id, inner.eos_token_id, inner.bos_token_id) == (0, 1, 2)
    for b in range(256):
        assert len(inner.encode(f" {b}", add_special_tokens=False)) == 1, b
    state = np.linspace(-0.99, 0.99, 8)
    ids = tok.encode(build_prompt("pi05", LIBERO_TASKS[1], state))
    words = len(clean_task(LIBERO_TASKS[1]).split())
    # bos, "Task", ":", the words, ",", "State", ":", 8 bins, ";", "\nAction", ":", a space
    assert ids[0] == 2 and len(ids) == 1 + 2 + words + 3 + 8 + 4
    byte_ids = ByteTokenizer().encode(build_prompt("pi05", LIBERO_TASKS[1], state))
    assert len(byte_ids) > 3 * len(ids)
    unseen = tok.encode("Task: grab the zebra!;\nAction: ")
    assert 3 not in unseen  # printable ASCII is in the alphabet: no <unk>
    again = HFTokenizer(str(save_bpe(list(reversed(LIBERO_TASKS)), tmp_path / "tok2")))
    assert again.encode("Task: pick up the bbq sauce") == tok.encode("Task: pick up the bbq sauce")


def test_training_with_the_bpe_serves_the_same_tokens(demo_folder, tmp_path):
    """The checkpoint carries its tokenizer; Policy.load finds it and prompts match training."""
    from quantvla_ros.models.pi.tokenizer import HFTokenizer
    from quantvla_ros.training.bpe import save_bpe

    tok_dir = save_bpe(["pick up the soup", "open the drawer"], tmp_path / "tok")
    folder = train(_run(demo_folder, tokenizer=str(tok_dir), max_token_len=32), tmp_path / "r")
    assert (folder / "tokenizer" / "tokenizer.json").is_file()
    policy = Policy.load(str(folder))
    assert isinstance(policy.tokenizer, HFTokenizer) and policy.cfg.max_token_len == 32
    demos = load_demos(demo_folder)
    maker = BatchMaker(demos, policy.cfg, demos.normalizer(), HFTokenizer(str(tok_dir)))
    for frame in (0, 8, demos.num_frames - 1):
        step = demos.frame_step[frame]
        obs = {"images": {"base_0_rgb": demos.views["agentview"][frame],
                          "left_wrist_0_rgb": demos.views["wrist"][frame]},
               "state": demos.state[step],
               "instruction": demos.instructions[demos.episode_of[step]]}
        assert torch.equal(maker.batch(np.array([frame]))["tokens"][0],
                           policy.prepare(obs)["tokens"][0])
    # a quantized artifact carries the tokenizer on, and its policy prompts the same way
    from quantvla_ros.quant.balance import BalanceConfig
    from quantvla_ros.workflows.quantize import QuantizeRequest, quantize_policy

    req = QuantizeRequest(source=str(folder), calib="synthetic:2", bits="w8a8",
                          balance=BalanceConfig(atm=False, ohb=False))
    quantize_policy(req, tmp_path / "w8a8", log=lambda *_: None)
    quantized = Policy.load(str(tmp_path / "w8a8"))
    assert isinstance(quantized.tokenizer, HFTokenizer)
    assert torch.equal(quantized.prepare(obs)["tokens"], policy.prepare(obs)["tokens"])


def test_folders_combine_and_labelled_failures_are_kept(demo_folder, tmp_path):
    rollouts = tmp_path / "dagger"
    rollouts.mkdir()
    write_episode(rollouts / "task00_dagger0000.npz", 6, seed=8, success=False)
    with np.load(rollouts / "task00_dagger0000.npz") as ep:
        np.savez(rollouts / "task00_dagger0001.npz", **ep, labelled=np.bool_(True))
    both = load_demos(f"{demo_folder},{rollouts}")
    assert both.files == ["task00_ep0000.npz", "task00_ep0001.npz", "task01_ep0000.npz",
                          "task00_dagger0001.npz"]  # the unlabelled failure is skipped
    assert both.num_frames == load_demos(demo_folder).num_frames + 6
    with pytest.raises(DemoError, match="no demonstration folder"):
        load_demos(" , ")


def test_stats_from_keeps_a_checkpoints_normalization(demo_folder, tmp_path):
    from quantvla_ros.models.pi.normalization import Normalizer

    own = load_demos(demo_folder, labels="expert_action").quantile_stats()
    wide = {k: (v * 3.0 if k.startswith("action") else v) for k, v in own.items()}
    save_checkpoint(random_model(MICRO), tmp_path / "src", Normalizer("quantiles", wide))
    kept = train(_run(demo_folder, stats_from=str(tmp_path / "src")), tmp_path / "a")
    fresh = train(_run(demo_folder), tmp_path / "b")
    for key in own:
        np.testing.assert_array_equal(load_checkpoint(kept)[2].stats[key], wide[key])
        np.testing.assert_array_equal(load_checkpoint(fresh)[2].stats[key], own[key])


def test_action_clip_bounds_the_normalized_targets_only(demo_folder):
    """Targets outside +-clip (in the normalizer's units) are clipped; the rest are untouched."""
    from quantvla_ros.models.pi.normalization import Normalizer

    demos = load_demos(demo_folder, labels="expert_action")
    own = demos.quantile_stats()
    # Narrow action quantiles put many targets far outside [-1, 1].
    narrow = {k: (v * 0.2 if k.startswith("action") else v) for k, v in own.items()}
    normalizer = Normalizer("quantiles", narrow)
    free = BatchMaker(demos, MICRO, normalizer, ByteTokenizer())
    clipped = BatchMaker(demos, MICRO, normalizer, ByteTokenizer(), action_clip=1.5)
    outside = np.abs(free.actions) > 1.5
    assert outside.any() and (~outside).any()
    np.testing.assert_array_equal(clipped.actions[~outside], free.actions[~outside])
    np.testing.assert_array_equal(clipped.actions[outside], 1.5 * np.sign(free.actions[outside]))
    assert RunConfig(demos="x").action_clip == 0.0  # off unless asked


def test_normalize_actions_inverts_unnormalize_in_both_modes():
    from quantvla_ros.models.pi.normalization import Normalizer

    raw = np.array([[0.1, -0.5], [1.2, 0.0]], np.float32)
    quant = Normalizer("quantiles", {"action.q01": np.array([0.0, -1.0], np.float32),
                                     "action.q99": np.array([1.0, 1.0], np.float32)})
    np.testing.assert_allclose(quant.normalize_actions(raw), [[-0.8, -0.5], [1.4, 0.0]],
                               atol=1e-6)
    z = Normalizer("mean_std", {"action.mean": np.array([0.5, 0.0], np.float32),
                                "action.std": np.array([2.0, 0.5], np.float32)})
    for norm in (quant, z):
        np.testing.assert_allclose(norm.unnormalize_actions(norm.normalize_actions(raw)), raw,
                                   atol=1e-6)
