"""GR00T N1.5 quantization layouts and their exact bytes (meta device, nothing allocated)."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from quantvla_ros.kernels import dispatch
from quantvla_ros.models.build import build_meta, random_model
from quantvla_ros.models.registry import family_of, get_config
from quantvla_ros.quant.apply import QuantConfig, quantize_
from quantvla_ros.quant.artifact import load_artifact, save_artifact
from quantvla_ros.quant.footprint import inspect_layout
from quantvla_ros.quant.layouts import get_layout, select
from quantvla_ros.quant.manifest import (
    ArtifactManifest,
    BalanceRecord,
    QuantizationRecord,
    SourceRecord,
)
from quantvla_ros.quant.qlinear import QuantLinear
from quantvla_ros.quant.scheme import parse_bits

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def groot():
    return build_meta(get_config("groot-n15"))


def test_presets_pick_the_authors_layers(groot):
    family = family_of(groot.cfg)
    names = {p: select(groot, get_layout(p, family=family))
             for p in ("quantvla", "llm", "dit_ff", "all")}
    # shared/GROOT.md 5.2: 84 LLM linears (12 layers x 7) + 32 DiT feed-forward (16 x 2).
    assert len(names["llm"]) == 84 and len(names["dit_ff"]) == 32
    assert set(names["quantvla"]) == set(names["llm"]) | set(names["dit_ff"])
    assert not any(".attn1." in n or "vision" in n or "mlp1" in n for n in names["quantvla"])
    # all adds the vl self-attention blocks (4 x 6) and the DiT attention (16 x 4).
    assert len(names["all"]) == 116 + 24 + 64
    with pytest.raises(ValueError, match="unknown preset 'full' for groot models"):
        get_layout("full", family=family)


def test_inspect_bytes_are_exact_for_w4a8(groot):
    r = inspect_layout(groot, get_layout("quantvla", family="groot"), parse_bits("w4a8"))
    assert r["quantized_modules"] == 116
    by_name = {m["name"]: m for m in r["modules"]}
    for name, m in by_name.items():
        if not m["quantized"]:
            continue
        n, k = m["shape"]
        has_bias = name.startswith("action_head")  # the DiT's linears have biases
        # int4 K-half rows + float32 channel scale + int8 group scales + bf16 bias
        assert m["bytes"] == n * k // 2 + 4 * n + n * (k // 128) + (2 * n if has_bias else 0)
    assert 0.2 < r["quantized_fraction"] < 0.3


def test_inspect_command_sizes_groot():
    proc = subprocess.run(
        [sys.executable, "-m", "quantvla_ros.cli.main", "inspect", "--model", "groot-n15",
         "--preset", "quantvla", "--bits", "w4a8", "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout)
    assert r["quantized_modules"] == 116 and r["layout"] == "quantvla"
    assert r["total_bytes"] < r["total_bytes_bf16"]


def _tiny_inputs(cfg):
    head = cfg.action_head
    ids = torch.tensor([[1, 2] + [150] * (2 * cfg.vision.num_tokens) + [3 + i, 4]
                        for i in range(2)])
    gen = torch.Generator().manual_seed(13)
    return (torch.rand(4, 3, 28, 28, generator=gen) * 2 - 1, ids, torch.ones_like(ids),
            torch.randn(2, 1, head.max_state_dim, generator=gen), torch.tensor([0, 1]),
            torch.randn(2, head.action_horizon, head.action_dim, generator=gen))


@pytest.mark.parametrize(("bits", "group_size", "rtol"), [("w8a8", None, 1e-4), ("w4a8", 0, 1e-3)])
def test_quantized_groot_runs_its_integer_gemms(bits, group_size, rtol):
    """The quantvla layout swaps 22 tiny-GR00T linears for integer ones, each one running.

    The tiny widths (32 / 64) are below the 128-wide groups, so W4A8 runs per channel here.
    """
    cfg = get_config("groot-n15-tiny")
    head, llm = cfg.action_head, cfg.llm
    model = random_model(cfg, seed=0)
    inputs = _tiny_inputs(cfg)
    want = model.sample_actions(*inputs)
    quant = copy.deepcopy(model)
    names = quantize_(quant, QuantConfig(parse_bits(bits, group_size=group_size),
                                         get_layout("quantvla", family="groot")))
    assert len(names) == llm.depth * 7 + head.dit_depth * 2 == 22
    assert sum(isinstance(m, QuantLinear) for m in quant.modules()) == 22
    seen = []
    dispatch.add_launch_listener(seen.append)
    try:
        got = quant.sample_actions(*inputs)
    finally:
        dispatch.remove_launch_listener(seen.append)
    # LLM linears run once; the DiT feed-forward once per flow step (4 steps).
    assert seen.count(f"reference.{bits}") == llm.depth * 7 + head.dit_depth * 2 * head.num_steps
    assert (got - want).norm() / want.norm() < rtol


def test_quantized_groot_artifact_round_trips(tmp_path):
    """Save -> load (meta skeleton + assign) -> identical tensors and identical actions."""
    cfg = get_config("groot-n15-tiny")
    model = random_model(cfg, seed=1)
    scheme = parse_bits("w8a8")
    names = quantize_(model, QuantConfig(scheme, get_layout("quantvla", family="groot")))
    manifest = ArtifactManifest(
        model_config=cfg, source=SourceRecord("named", "seed:1", "groot-n15-tiny", 1),
        quantization=QuantizationRecord(scheme, "quantvla"), quantized_modules=tuple(names),
        balance=BalanceRecord({}, {}, {}), calibration={})
    save_artifact(model, tmp_path / "a", manifest)
    loaded, loaded_cfg, _, read = load_artifact(tmp_path / "a")
    assert loaded_cfg == cfg and read.model_config.family == "groot"
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sum(isinstance(m, QuantLinear) for m in loaded.modules()) == len(names) == 22
    inputs = _tiny_inputs(cfg)
    torch.testing.assert_close(loaded.sample_actions(*inputs), model.sample_actions(*inputs),
                               rtol=0, atol=0)
