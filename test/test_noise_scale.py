"""The declared start-noise scale: the config carries it, the Policy applies it, callers override.

`noise_scale` multiplies each chunk's standard-normal start noise inside `Policy.infer`, so the
evaluation, the node and reports all serve the sampling the source declares.
"""

import math

import pytest
import torch

from quantvla_ros.cli.main import build_parser
from quantvla_ros.data.synthetic import synthetic_observation
from quantvla_ros.models.build import random_model
from quantvla_ros.models.pi.checkpoint import save_checkpoint
from quantvla_ros.models.pi.config import get_config
from quantvla_ros.runtime.policy import Policy
from quantvla_ros.workflows.quantize import QuantizeRequest, quantize_policy


def _obs():
    return synthetic_observation(0, seed=3)


@pytest.fixture(scope="module")
def declared_zero(tmp_path_factory):
    """A pi05-tiny checkpoint whose config declares noise_scale 0."""
    folder = tmp_path_factory.mktemp("ns0") / "ckpt"
    cfg = get_config("pi05-tiny").with_(noise_scale=0.0)
    return save_checkpoint(random_model(cfg, seed=1), folder)


def test_scale_multiplies_the_given_noise():
    policy = Policy.load("pi05-tiny", seed=0)
    assert policy.noise_scale == 1.0
    noise = policy.draw_noise()
    full = policy.infer(_obs(), noise=noise).actions
    half_given = policy.infer(_obs(), noise=0.5 * noise).actions
    policy.set_noise_scale(0.5)
    half = policy.infer(_obs(), noise=noise).actions
    torch.testing.assert_close(torch.as_tensor(half), torch.as_tensor(half_given), rtol=0,
                               atol=0)
    assert float(abs(half - full).max()) > 1e-4  # the scale changed the chunk
    policy.set_noise_scale(0.0)
    mean = policy.infer(_obs(), noise=noise).actions
    again = policy.infer(_obs(), noise=torch.randn_like(noise)).actions
    zeros = Policy.load("pi05-tiny", seed=0).infer(_obs(), noise=torch.zeros_like(noise))
    assert (mean == again).all() and (mean == zeros.actions).all()


def test_checkpoint_declares_it_and_the_artifact_keeps_it(declared_zero, tmp_path):
    policy = Policy.load(str(declared_zero))
    assert policy.noise_scale == 0.0
    a = policy.infer(_obs()).actions
    b = policy.infer(_obs()).actions  # the next draw of the stream: the same chunk at 0
    assert (a == b).all()
    req = QuantizeRequest(source=str(declared_zero), calib="synthetic:4", bits="w8a8",
                          preset="expert_mlp")
    quantize_policy(req, tmp_path / "art", log=lambda *_: None)
    assert Policy.load(str(tmp_path / "art")).noise_scale == 0.0


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf])
def test_bad_scales_are_refused(bad):
    with pytest.raises(ValueError, match="noise_scale"):
        get_config("pi05-tiny").with_(noise_scale=bad)
    with pytest.raises(ValueError, match="noise_scale"):
        Policy.load("pi05-tiny").set_noise_scale(bad)


def test_eval_override_defaults_to_the_declared_scale():
    parser = build_parser()
    args = parser.parse_args(["eval", "libero", "--policy", "x"])
    assert args.noise_scale is None
    args = parser.parse_args(["eval", "libero", "--policy", "x", "--noise-scale", "0"])
    assert args.noise_scale == 0.0
