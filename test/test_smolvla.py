"""SmolVLA through the family seam: sizes, lerobot folders, quantize / report / inspect / bench.

The trained-folder path (lerobot's layout, statistics, tokenizer) is the lerobot 0.6.1 tiny
folder of ``lerobot_smolvla``; its actions are checked against lerobot's own code in
test_lerobot_smolvla.py.
"""

import json

import lerobot_smolvla as L
import numpy as np
import pytest
import safetensors.torch
import torch

from quantvla_ros.cli.main import main
from quantvla_ros.data.synthetic import synthetic_observation
from quantvla_ros.models.build import build_meta, param_count, random_model
from quantvla_ros.models.registry import get_config
from quantvla_ros.models.smolvla.checkpoint import (
    WEIGHTS,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    to_lerobot_name,
)
from quantvla_ros.runtime.policy import Policy
from quantvla_ros.workflows.quantize import QuantizeRequest, quantize_policy
from quantvla_ros.workflows.report import build_report

TINY = "smolvla-tiny"


def test_full_size_has_lerobots_parameter_count():
    """lerobot 0.6.1's SmolVLAPolicy for its default config (SmolVLM2-500M cut to 16 text
    layers, expert 0.75 wide) holds 450,046,176 parameters (counted with lerobot on the meta
    device); what never runs (untied lm_head, final norm, the last text layer's q / o / MLP)
    is not built here."""
    cfg = get_config("smolvla")
    model = build_meta(cfg)
    assert param_count(cfg) == 393_519_456
    assert param_count(cfg) + model.never_executed_params() == 450_046_176
    assert (cfg.expert.width, cfg.expert.mlp_dim, cfg.prefix_len) == (720, 2048, 3 * 64 + 49)


def test_full_checkpoint_loads_without_its_never_executed_tensors(tmp_path):
    cfg = get_config(TINY)
    model = random_model(cfg, seed=0)
    folder = save_checkpoint(model, tmp_path / "ckpt")
    b, last = cfg.backbone, f"backbone.layers.{cfg.backbone.depth - 1}"
    dead = {f"{last}.self_attn.q_proj.weight": (b.num_heads * b.head_dim, b.width),
            f"{last}.mlp.down_proj.weight": (b.width, b.mlp_dim),
            "backbone.norm.weight": (b.width,), "lm_head.weight": (cfg.vocab_size, b.width)}
    path = folder / WEIGHTS
    tensors = safetensors.torch.load_file(str(path))
    tensors.update({to_lerobot_name(k): torch.randn(s) for k, s in dead.items()})
    safetensors.torch.save_file(tensors, str(path))
    loaded, _, _ = load_checkpoint(folder)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)
    tensors[to_lerobot_name("expert.bogus.weight")] = torch.ones(1)
    safetensors.torch.save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match="1 unexpected keys"):
        load_checkpoint(folder)


def test_quantvla_layout_keeps_expert_attention_float(tmp_path):
    m = quantize_policy(QuantizeRequest(source=TINY, calib="synthetic:6", bits="w4a8"),
                        tmp_path / "a", log=lambda *_: None)
    names = set(m.quantized_modules)
    cfg = get_config(TINY)
    assert len(names) == 7 * (cfg.backbone.depth - 1) + 2 + 3 * cfg.expert.depth
    assert all(n.startswith("backbone.layers.") or ".mlp." in n for n in names)
    assert not any(n.startswith("expert.") and ".self_attn." in n for n in names)
    assert set(m.balance.alpha) == {f"expert.layers.{j}.self_attn"
                                    for j in range(cfg.expert.depth)}


def test_atm_ohb_folds_undo_exactly():
    policy = Policy.load(TINY, seed=3)
    size = policy.cfg.vision.image_size
    obs = synthetic_observation(0, 4, {c: (size, size) for c in policy.cfg.cameras}, 6)
    batch = {**policy.prepare_batches([obs])[0], "noise": policy.draw_noise()}
    want = policy.family.sample(policy.model, [batch])
    heads = policy.cfg.expert.num_heads
    alpha = {f"expert.layers.{j}.self_attn": torch.linspace(0.8, 1.2, heads).tolist()
             for j in range(policy.cfg.expert.depth)}
    beta = dict.fromkeys(alpha, 1.1)
    for stage in policy.family.attention_sites(policy.model, ("expert",)):
        for site in stage:
            site.scale_logits(torch.tensor(alpha[site.key], dtype=torch.float64))
            site.scale_output(beta[site.key])
    moved = policy.family.sample(policy.model, [batch])
    assert (moved - want).abs().max() > 1e-3
    policy.family.unfold_balance(policy.model, alpha, beta)
    torch.testing.assert_close(policy.family.sample(policy.model, [batch]), want,
                               rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="expert only"):
        policy.family.attention_sites(policy.model, ("backbone",))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A lerobot 0.6.1 SmolVLA folder, quantized (w8a8) with its statistics and tokenizer."""
    folder = L.write_folder(tmp_path_factory.mktemp("lerobot") / "smolvla")
    out = tmp_path_factory.mktemp("artifact") / "a"
    quantize_policy(QuantizeRequest(source=str(folder), calib="synthetic:6", bits="w8a8"), out,
                    log=lambda *_: None)
    return folder, out


def test_artifact_keeps_statistics_and_tokenizer_and_follows_the_teacher(trained):
    folder, out = trained
    teacher, student = Policy.load(str(folder)), Policy.load(str(out))
    assert student.normalizer.mode == "mean_std"
    assert student.family.processor.tokens("go\n").tolist() == \
        teacher.family.processor.tokens("go\n").tolist()
    obs = L.observations()[0]
    noise = torch.from_numpy(L.noise(0))
    s, t = student.infer(obs, noise).actions, teacher.infer(obs, noise).actions
    assert s.shape == (L.CHUNK, L.ACTION_DIM)
    assert np.abs(s - t).max() < 0.1 * np.abs(t).max()


def test_report_tables_every_expert_layer(trained):
    _, out = trained
    r = build_report(out, "synthetic:6")
    assert [row["layer"] for row in r["layers"]] == [
        f"expert.layers.{j}.self_attn" for j in range(L.TEXT["depth"])]
    assert all(len(row["logit_std_ratio_after"]) == L.TEXT["heads"] for row in r["layers"])
    assert len(r["per_step_after"]["expert.layers.0.self_attn"]) == L.STEPS
    assert np.isfinite(r["action_error"]["rel_l2_vs_displacement"])


def test_cli_quantize_report_inspect_bench(tmp_path, capsys):
    art = tmp_path / "art"
    assert main(["quantize", "--model", TINY, "--calib", "synthetic:6", "--out", str(art)]) == 0
    assert main(["report", "--artifact", str(art), "--calib", "synthetic:6", "--out",
                 str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.json").is_file()
    capsys.readouterr()
    assert main(["inspect", "--model", TINY, "--json"]) == 0
    inspected = json.loads(capsys.readouterr().out)
    assert inspected["quantized_modules"] == 35
    for argv in (["--model", TINY, "--precision", "w4a8"], ["--artifact", str(art)]):
        assert main(["bench", "e2e", *argv, "--runs", "2", "--warmup", "1", "--json"]) == 0
        r = json.loads(capsys.readouterr().out)
        assert r["chunk_shape"] == [10, 32] and r["prefix_ms"] > 0 and r["denoise_ms"] > 0


@pytest.mark.parametrize("preset", ["quantvla", "backbone", "expert_mlp", "backbone_expert"])
@pytest.mark.parametrize("bits", ["w8a8", "w4a8", "w4a4"])
def test_every_preset_fits_the_full_size_widths(capsys, preset, bits):
    """SmolVLM2's 960 / 720 / 320-wide inputs take no 128-wide int4 groups: those linears
    get one scale per output channel, the MLP down projections keep groups of 128."""
    assert main(["inspect", "--model", "smolvla", "--preset", preset, "--bits", bits,
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["quantized_modules"] > 0


def test_bench_launches_counts_the_full_size_with_its_per_channel_part(capsys):
    """Before: "K=960 is not a multiple of group_size=128" (the count ignored layout parts)."""
    assert main(["bench", "launches", "--model", "smolvla", "--precision", "w4a8",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["precisions"]["w4a8"]["denoise_step"]["total"] > 0


def test_a_full_size_lerobot_config_reads_as_the_named_config():
    """lerobot's config.json names no widths or heads: SmolVLM2-500M's are taken where the
    shapes are its own (no head-count keys needed)."""
    from quantvla_ros.models.smolvla.checkpoint import config_from_lerobot

    named = get_config("smolvla")
    shapes = {k: tuple(v.shape) for k, v in build_meta(named).state_dict().items()}
    image = {"type": "VISUAL", "shape": [3, 512, 512]}
    raw = {"type": "smolvla", "input_features": {
        f"observation.images.{c}": image for c in named.cameras}}
    assert config_from_lerobot(raw, shapes, name="smolvla") == named


def test_bf16_follows_fp32():
    size = get_config(TINY).vision.image_size
    fp32, bf16 = Policy.load(TINY, seed=4), Policy.load(TINY, seed=4, precision="bf16")
    obs = synthetic_observation(1, 4, {c: (size, size + 16) for c in fp32.cfg.cameras}, 6)
    noise = fp32.draw_noise()
    a, b = fp32.infer(obs, noise).actions, bf16.infer(obs, noise).actions
    assert np.abs(a - b).max() < 0.02 * np.abs(a).max()
