"""Artifacts written before the re-housing (issue 8) still load and give the same actions.

``fixtures/artifact_v1_micro_w8a8`` was written by commit 6ae18d8 (format version 1):
``quantvla_ros.offline.quantize.quantize_policy`` on a pi05-micro checkpoint (seed 0) with
``synthetic:6`` at w8a8. ``..._actions.npy`` is that commit's ``Policy.infer`` on the
observation in ``..._obs.npz`` with noise from ``torch.Generator().manual_seed(0)``.
"""

from pathlib import Path

import numpy as np
import torch

from quantvla_ros.data import Observation
from quantvla_ros.quant.manifest import ArtifactManifest
from quantvla_ros.runtime.policy import Policy

FIXTURES = Path(__file__).parent / "fixtures"
ARTIFACT = FIXTURES / "artifact_v1_micro_w8a8"


def test_v1_artifact_manifest_reads_typed():
    manifest = ArtifactManifest.read(ARTIFACT)
    assert manifest.format_version == 1 and manifest.bits == "w8a8"
    assert manifest.model_config.name == "pi05-micro" and manifest.source.kind == "checkpoint"
    assert len(manifest.quantized_modules) == 10
    assert set(manifest.balance.beta) == {"expert.0"} and manifest.balance.towers == ("expert",)


def test_v1_artifact_gives_the_actions_it_gave_before():
    saved = np.load(FIXTURES / "artifact_v1_micro_w8a8_obs.npz")
    images = {k[len("img_"):]: saved[k] for k in saved.files if k.startswith("img_")}
    policy = Policy.load(str(ARTIFACT))
    noise = torch.randn(1, policy.cfg.action_horizon, policy.cfg.action_dim,
                        generator=torch.Generator().manual_seed(0))
    actions = policy.infer(Observation(images, saved["state"], "pick up the red block"),
                           noise=noise).actions
    expected = np.load(FIXTURES / "artifact_v1_micro_w8a8_actions.npy")
    np.testing.assert_allclose(actions, expected, rtol=0, atol=1e-6)
