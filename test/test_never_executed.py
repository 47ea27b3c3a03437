"""What never runs is never built, loaded, quantized or stored; every option works everywhere.

The action expert reads only the backbone's keys and values, so the backbone's last layer
needs nothing but its input norm and k/v projections (issue 9, item 4).
"""

import pytest
import safetensors.torch
import torch

from quantvla_ros.models.build import random_model
from quantvla_ros.models.pi.checkpoint import (
    WEIGHTS,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    to_lerobot_name,
)
from quantvla_ros.models.pi.config import get_config
from quantvla_ros.quant.apply import QuantConfig, quantize_
from quantvla_ros.quant.footprint import inspect_layout
from quantvla_ros.quant.layouts import get_layout
from quantvla_ros.quant.observe import LinearInputs, record_linear_inputs
from quantvla_ros.quant.pi_balance import PaddingRows
from quantvla_ros.quant.scheme import parse_bits
from quantvla_ros.runtime.policy import Policy
from quantvla_ros.workflows.quantize import QuantizeRequest, quantize_policy


def _add_tensors(folder, extra: dict[str, torch.Tensor]) -> None:
    path = folder / WEIGHTS
    tensors = safetensors.torch.load_file(str(path))
    tensors.update(extra)
    safetensors.torch.save_file(tensors, str(path), metadata={"format": "pt"})


def test_full_checkpoint_loads_without_its_never_executed_tensors(tmp_path):
    """A lerobot checkpoint holds the full backbone; those tensors are skipped, others not."""
    cfg = get_config("pi05-tiny")
    model = random_model(cfg, seed=0)
    folder = save_checkpoint(model, tmp_path / "ckpt")
    w, m = cfg.backbone.width, cfg.backbone.mlp_dim
    hq = cfg.backbone.num_heads * cfg.backbone.head_dim
    last = "backbone.layers.1"
    dead = {f"{last}.self_attn.q_proj.weight": (hq, w),
            f"{last}.self_attn.o_proj.weight": (w, hq),
            f"{last}.post_attention_layernorm.weight": (w,),
            f"{last}.mlp.gate_proj.weight": (m, w), f"{last}.mlp.up_proj.weight": (m, w),
            f"{last}.mlp.down_proj.weight": (w, m), "backbone.norm.weight": (w,)}
    _add_tensors(folder, {to_lerobot_name(k): torch.randn(s) for k, s in dead.items()})
    loaded, _, _ = load_checkpoint(folder)
    assert set(loaded.state_dict()) == set(model.state_dict())
    assert not set(dead) & set(loaded.state_dict())
    _add_tensors(folder, {to_lerobot_name("backbone.layers.1.mlp.extra.weight"): torch.ones(1),
                          to_lerobot_name("expert.bogus.weight"): torch.ones(1)})
    with pytest.raises(CheckpointError, match="1 unexpected keys"):
        load_checkpoint(folder)  # only the never-executed modules are forgiven


@pytest.mark.parametrize(("preset", "bits"), [
    ("quantvla", "w8a8"), ("quantvla", "w4a8"), ("quantvla", "w4a4"),
    ("backbone", "w8a8"), ("expert_mlp", "w8a8"), ("backbone_expert", "w8a8"),
])
def test_smoothing_and_clip_search_work_with_every_preset(tmp_path, preset, bits):
    """Before: "no calibration inputs recorded for ['backbone.layers.1.mlp.gate_proj', ...]"."""
    req = QuantizeRequest(source="pi05-tiny", calib="synthetic:4", bits=bits, preset=preset,
                          smooth_alpha=0.5, clip_search=True)
    manifest = quantize_policy(req, tmp_path / "a", log=lambda *_: None)
    assert manifest.quantized_modules
    assert not any(n.startswith("backbone.layers.1.") and ("q_proj" in n or "mlp" in n
                   or "o_proj" in n) for n in manifest.quantized_modules)
    policy = Policy.load(str(tmp_path / "a"))
    obs = {"images": {"base_0_rgb": torch.zeros(224, 224, 3, dtype=torch.uint8).numpy()},
           "state": torch.zeros(8).numpy(), "instruction": "pick"}
    assert torch.isfinite(torch.from_numpy(policy.infer(obs).actions)).all()


def test_inspect_reports_the_never_executed_modules():
    from quantvla_ros.models.build import build_meta

    r = inspect_layout(build_meta(get_config("pi05")), get_layout("quantvla"),
                       parse_bits("w4a8"))
    assert r["quantized_modules"] == 175  # 180 before: 5 never-executed linears were counted
    assert r["never_executed_modules"][-1] == "backbone.norm"
    # q, o (2048 x 2048), gate / up / down (2048 x 16384) and two 2048 norms
    assert r["never_executed_params"] == 2 * 2048 * 2048 + 3 * 2048 * 16384 + 2 * 2048
    assert r["checkpoint_bytes_bf16"] == r["total_bytes_bf16"] + 2 * r["never_executed_params"]


def test_recorded_linear_inputs_leave_padding_rows_out():
    """Smoothing and clip statistics come from real tokens only, not padded prompt rows."""
    torch.manual_seed(0)
    policy = Policy.from_config("pi05-tiny")
    model = policy.model
    with torch.no_grad():  # the pad token: all its energy in channel 5, after the norm too
        model.backbone.embed_tokens.weight[0] = 0.0
        model.backbone.embed_tokens.weight[0, 5] = 1.0
    obs = {"images": {"base_0_rgb": torch.zeros(224, 224, 3, dtype=torch.uint8).numpy()},
           "state": torch.zeros(8).numpy(), "instruction": "pick up the cup"}
    batch = policy.prepare(obs)
    assert not batch["token_masks"].all()  # the prompt is right-padded
    name = "backbone.layers.0.self_attn.q_proj"
    store, seen = LinearInputs(), []
    hook = model.get_submodule(name).register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].detach().clone()))
    try:
        with record_linear_inputs(model, [name], store):
            model.observer = PaddingRows(store)  # what the pi family's sample attaches
            try:
                embs, valid = model.embed_prefix(batch["images"], batch["image_masks"],
                                                 batch["tokens"], batch["token_masks"])
                model.prefill(embs, valid)
            finally:
                model.observer = None
    finally:
        hook.remove()
    x = seen[0]
    want = x[valid].abs().amax(0)
    torch.testing.assert_close(store.absmax[name], want)
    assert x[~valid][:, 5].abs().max() > 3 * want[5]  # padding rows would have set channel 5
    assert store.rows[name].shape[0] == min(256, int(valid.sum()))


def test_missing_calibration_inputs_name_the_layer():
    model = random_model(get_config("pi05-tiny"), seed=0)
    store = LinearInputs()
    cfg = QuantConfig(parse_bits("w8a8", clip_search=True), get_layout("expert_mlp"))
    with pytest.raises(ValueError, match=r"expert\.layers\.0\.mlp\.gate_proj: it never ran"):
        quantize_(model, cfg, store)
