"""GR00T through the family-neutral layers: Policy, quantize, artifacts and the report.

The tiny config with random weights, and a "trained" NVIDIA-layout checkpoint folder written
here (random weights, statistics in experiment_cfg/metadata.json, a byte-level Qwen tokenizer
in eagle2_hg_model/), which takes the same code path a released checkpoint takes.
"""

from dataclasses import replace

import numpy as np
import pytest
import torch
from test_groot_checkpoint import BYTE_CFG, write_qwen_folder

from quantvla_ros.data.observation import Observation, ObservationError
from quantvla_ros.data.synthetic import synthetic_observation
from quantvla_ros.models.build import random_model
from quantvla_ros.models.groot import checkpoint as ck
from quantvla_ros.models.groot import processing as pr
from quantvla_ros.models.groot.normalization import GrootNormalizer
from quantvla_ros.quant.artifact import load_artifact
from quantvla_ros.runtime.policy import Policy
from quantvla_ros.workflows.quantize import QuantizeRequest, quantize_policy
from quantvla_ros.workflows.report import build_report

TINY = "groot-n15-tiny"
ARM, GRIP = 6, 1  # the checkpoint's robot: a 6-dim arm and a gripper


def _obs(policy, i, state_dim=7, instruction=None):
    size = policy.cfg.vision.image_size
    o = synthetic_observation(i, 3, {c: (size + 8, size + 4) for c in policy.cfg.cameras},
                              state_dim)
    return o if instruction is None else Observation(o.images, o.state, instruction)


@pytest.fixture(scope="module")
def tiny():
    return Policy.load(TINY, seed=1)


def test_named_policy_equals_the_model_on_processor_inputs(tiny):
    obs = _obs(tiny, 0)
    noise = tiny.draw_noise()
    out = tiny.infer(obs, noise=noise)
    assert out.actions.shape == (16, 8) and np.isfinite(out.actions).all()
    proc = pr.GrootProcessor(tiny.cfg, pr.load_tokenizer(None, tiny.cfg, stand_in=True), None,
                             tiny.cfg.embodiment)
    raw = proc([obs.images[c] for c in tiny.cfg.cameras], obs.state, obs.instruction)
    want = tiny.model.sample_actions(raw["eagle_pixel_values"], raw["eagle_input_ids"],
                                     raw["eagle_attention_mask"], raw["state"],
                                     raw["embodiment_id"], noise)
    np.testing.assert_allclose(out.actions, want[0].numpy(), rtol=0, atol=1e-6)
    assert set(out.timing_ms) == {"preprocess", "prefix", "denoise", "total"}


def _sample_rows(policy, batches, noise):
    out, row = [], 0
    for b in batches:
        n = b["state"].shape[0]
        out.append(policy.family.sample(policy.model, [{**b, "noise": noise[row:row + n]}]))
        row += n
    return torch.cat(out)


def test_batches_give_each_row_its_single_run(tiny):
    """Prompts of different lengths share one left-padded batch; the action head masks the
    padding, so each row gets its single-run actions (to 1e-5 in fp32). Unmasked, as GR00T
    runs it (GROOT.md §7.12), the padded rows move by up to 3e-4 here."""
    words = ["go", "go", "pick up the red block", "go"]
    obs = [_obs(tiny, i, instruction=w) for i, w in enumerate(words)]
    batches = tiny.prepare_batches(obs)
    assert [b["state"].shape[0] for b in batches] == [4]
    assert batches[0]["pixel_values"].shape[0] == 8  # views, batch-major
    mask = batches[0]["attention_mask"]
    assert not mask[0].all() and mask[2].all()  # the short prompts are left-padded
    noise = torch.randn(4, 16, 8, generator=torch.Generator().manual_seed(0))
    batched = _sample_rows(tiny, batches, noise)
    for i, o in enumerate(obs):
        one = _sample_rows(tiny, tiny.prepare_batches([o]), noise[i:i + 1])
        torch.testing.assert_close(batched[i:i + 1], one, rtol=0, atol=1e-5)


def test_padding_is_left_out_of_the_dit_logit_statistics(tiny):
    """A padded row's cross-attention logit std equals its single run's (padding keys out)."""
    from quantvla_ros.quant.groot_balance import backbone_features, measure_dit

    obs = [_obs(tiny, 0, instruction="go"), _obs(tiny, 1, instruction="pick up the red block")]
    noise = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(3))
    both = [{**tiny.prepare_batches(obs)[0], "noise": noise}]
    alone = [{**tiny.prepare_batches(obs[:1])[0], "noise": noise[:1]}]
    m = tiny.model
    b, a = (measure_dit(m, x, backbone_features(m, x), [0]) for x in (both, alone))
    torch.testing.assert_close(b.std_sum[(0, 0)] - _row_std(m, both, 1), a.std_sum[(0, 0)],
                               rtol=0, atol=1e-6)


def test_linear_statistics_leave_prompt_padding_out(tiny):
    """Channel absmax of LLM and VL self-attention inputs over a mixed-length batch equals
    the max over the single runs: left-padding rows are not recorded."""
    from quantvla_ros.quant.observe import LinearInputs, record_linear_inputs

    names = ["backbone.eagle_model.language_model.model.layers.0.self_attn.q_proj",
             "action_head.vl_self_attention.transformer_blocks.1.ff.net.0.proj"]
    obs = [_obs(tiny, 0, instruction="go"), _obs(tiny, 1, instruction="pick up the red block")]
    noise = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(4))

    def absmax(group, rows):
        store = LinearInputs(max_rows=0)
        with record_linear_inputs(tiny.model, names, store):
            tiny.family.sample(tiny.model, [{**tiny.prepare_batches(group)[0],
                                             "noise": noise[rows]}], store)
        return store.absmax

    both = absmax(obs, slice(0, 2))
    singles = [absmax([o], slice(i, i + 1)) for i, o in enumerate(obs)]
    for n in names:
        torch.testing.assert_close(both[n], torch.maximum(*(s[n] for s in singles)),
                                   rtol=0, atol=1e-5)


def _row_std(model, batches, row):
    """Block 0's step-0 logit std [H] of one row, measured alone in its own batch."""
    from quantvla_ros.quant.groot_balance import backbone_features, measure_dit

    one = [{k: v[row:row + 1] if k != "pixel_values" else v for k, v in batches[0].items()}]
    views = batches[0]["pixel_values"].shape[0] // batches[0]["state"].shape[0]
    one[0]["pixel_values"] = batches[0]["pixel_values"][row * views:(row + 1) * views]
    return measure_dit(model, one, backbone_features(model, one), [0]).std_sum[(0, 0)]


def test_options_belong_to_their_family():
    with pytest.raises(ValueError, match="state_prompt is not an option of groot-n15-tiny"):
        Policy.load(TINY, state_prompt="padded")
    with pytest.raises(ValueError, match="embodiment is not an option of pi05-tiny"):
        Policy.load("pi05-tiny", embodiment="gr1")
    with pytest.raises(pr.ProcessingError, match="embodiment 5 is slot 5, the model has 2"):
        Policy.load(TINY, embodiment="5")
    assert Policy.load(TINY, embodiment="1").cfg.embodiment == "1"


def test_missing_camera_slot_is_an_observation_error(tiny):
    obs = _obs(tiny, 0)
    first = tiny.cfg.cameras[0]
    with pytest.raises(ObservationError, match=f"missing \\['{tiny.cfg.cameras[1]}'\\]"):
        tiny.infer(Observation({first: obs.images[first]}, obs.state, "go"))


# ---- a trained-checkpoint folder ---------------------------------------------------------
CKPT_CFG = replace(BYTE_CFG, name="groot-byte", embodiment="new_embodiment",
                   action_head=replace(BYTE_CFG.action_head, max_num_embodiments=32))


def _stats(dim, lo, hi):
    return {"min": [lo] * dim, "max": [hi] * dim, "mean": [0.0] * dim, "std": [1.0] * dim,
            "q01": [lo] * dim, "q99": [hi] * dim}


def _write_checkpoint(folder, with_tokenizer=True):
    model = random_model(CKPT_CFG, seed=4)
    stats = {"state": {"arm": _stats(ARM, -1.0, 1.0), "gripper": _stats(GRIP, 0.0, 0.08)},
             "action": {"arm": _stats(ARM, -0.5, 0.5), "gripper": _stats(GRIP, -1.0, 1.0)}}
    ck.save_checkpoint(model, folder, metadata={"new_embodiment": {"statistics": stats}},
                       max_shard_bytes=1 << 20)
    if with_tokenizer:
        write_qwen_folder(folder / pr.TOKENIZER_DIR)
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return _write_checkpoint(tmp_path_factory.mktemp("groot") / "ckpt")


def test_checkpoint_policy_reads_statistics_tokenizer_and_embodiment(checkpoint):
    policy = Policy.load(checkpoint)
    assert (policy.state_dim, policy.action_dim) == (7, 7)
    assert isinstance(policy.normalizer, GrootNormalizer)
    assert isinstance(policy.tokenizer, pr.QwenTokenizer)
    assert policy.family.processor.embodiment_id == 31  # new_embodiment, as NVIDIA maps it
    out = policy.infer(_obs(policy, 0))
    assert out.actions.shape == (16, 7)
    # robot units: the gripper's min_max [-1, 1] maps model values back affinely
    model = policy.normalizer.normalize_state(np.zeros(7))
    np.testing.assert_allclose(model[-1], 2 * (0 - 0) / 0.08 - 1)


def test_trained_checkpoint_without_tokenizer_is_refused(tmp_path):
    folder = _write_checkpoint(tmp_path / "ckpt", with_tokenizer=False)
    with pytest.raises(pr.ProcessingError, match=str(folder / pr.TOKENIZER_DIR)):
        Policy.load(folder)


def test_quantize_report_and_artifact_from_a_sharded_checkpoint(checkpoint, tmp_path):
    out = tmp_path / "artifact"
    manifest = quantize_policy(QuantizeRequest(source=str(checkpoint), calib="synthetic:6",
                                               bits="w8a8"), out, log=lambda *_: None)
    assert len(manifest.quantized_modules) == 22  # 2 LLM layers x 7 + 4 DiT blocks x 2
    assert manifest.model_config.embodiment == "new_embodiment"
    assert len(manifest.balance.alpha) == len(manifest.balance.beta) == 4  # every DiT block
    model, cfg, normalizer, _ = load_artifact(out)
    teacher = Policy.load(checkpoint)
    for modality in ("state", "action"):  # the statistics survive the artifact exactly
        for a, b in zip(getattr(normalizer, modality), getattr(teacher.normalizer, modality),
                        strict=True):
            assert (a.key, a.mode) == (b.key, b.mode)
            for s in b.stats:
                np.testing.assert_array_equal(a.stats[s], b.stats[s])
    student = Policy.load(out)
    assert isinstance(student.tokenizer, pr.QwenTokenizer)  # copied into the artifact
    noise = student.draw_noise()
    obs = _obs(student, 2)
    s_act, t_act = student.infer(obs, noise).actions, teacher.infer(obs, noise).actions
    assert np.abs(s_act - t_act).max() < 0.05 * max(np.abs(t_act).max(), 1e-3) + 1e-4
    r = build_report(out, "synthetic:6")
    assert [row["layer"] for row in r["layers"]] == [
        f"action_head.model.transformer_blocks.{i}.attn1" for i in range(4)]
    assert all(len(row["logit_std_ratio_after"]) == CKPT_CFG.action_head.dit_heads
               for row in r["layers"])
    steps = r["per_step_after"]["action_head.model.transformer_blocks.0.attn1"]
    assert len(steps) == CKPT_CFG.action_head.num_steps
    assert r["calibration"]["held_out_samples"] == 1
    assert np.isfinite(r["action_error"]["rel_l2_vs_displacement"])
