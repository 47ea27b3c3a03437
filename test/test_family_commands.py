"""Commands that once bypassed the family interface, on every family.

Before: `quantize --smooth` on GR00T raised "'EagleBackbone' object has no attribute
'layers'" (smoothing walked pi's towers) and `inspect --checkpoint` on a GR00T folder said
"missing model.safetensors" (pi's config reader); `bench launches` is in test_launch_count.
"""

import json

import numpy as np
import pytest
import torch

from quantvla_ros.cli.main import main
from quantvla_ros.data.synthetic import synthetic_observation
from quantvla_ros.models.groot import checkpoint as groot_checkpoint
from quantvla_ros.models.pi import checkpoint as pi_checkpoint
from quantvla_ros.models.smolvla import checkpoint as smolvla_checkpoint
from quantvla_ros.quant.smoothing import absorb, fold_into_norm, norm_groups
from quantvla_ros.runtime.policy import Policy

# one small config per family
TINY = {"pi": "pi05-tiny", "groot": "groot-n15-tiny", "smolvla": "smolvla-tiny"}
SAVE = {"pi": pi_checkpoint.save_checkpoint, "groot": groot_checkpoint.save_checkpoint,
        "smolvla": smolvla_checkpoint.save_checkpoint}


def _actions(policy, noise):
    size = policy.cfg.vision.image_size
    obs = synthetic_observation(0, 5, {c: (size, size) for c in policy.cfg.cameras}, 7)
    batch = policy.prepare_batches([obs])[0]
    return policy.family.sample(policy.model, [{**batch, "noise": noise}])


@pytest.mark.parametrize("family", TINY)
def test_norm_groups_fold_without_changing_the_function(family):
    """Dividing every group's norm output by s and multiplying its readers' input columns
    by s leaves the float model's actions unchanged (1e-5): each group lists exactly the
    linears that read only that norm."""
    policy = Policy.load(TINY[family], seed=2)
    noise = policy.draw_noise()
    want = _actions(policy, noise)
    groups = norm_groups(policy.model)
    assert groups
    gen = torch.Generator().manual_seed(0)
    for norm, readers in groups:
        linears = [policy.model.get_submodule(r) for r in readers]
        s = torch.empty(linears[0].in_features).uniform_(0.5, 2.0, generator=gen)
        fold_into_norm(policy.model.get_submodule(norm), s)
        for m in linears:
            absorb(m, s)
    torch.testing.assert_close(_actions(policy, noise), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", TINY)
def test_quantize_with_smoothing(tmp_path, family, capsys):
    out = tmp_path / "artifact"
    assert main(["quantize", "--model", TINY[family], "--calib", "synthetic:6", "--smooth",
                 "0.5", "--out", str(out)]) == 0
    policy = Policy.load(str(out))
    assert policy.cfg.family == family
    assert np.isfinite(_actions(policy, policy.draw_noise()).numpy()).all()


@pytest.mark.parametrize("family", TINY)
def test_inspect_a_checkpoint_written_here(tmp_path, family, capsys):
    policy = Policy.load(TINY[family], seed=0)
    SAVE[family](policy.model, tmp_path / "ckpt")
    assert main(["inspect", "--checkpoint", str(tmp_path / "ckpt"), "--json"]) == 0
    from_folder = json.loads(capsys.readouterr().out)
    assert main(["inspect", "--model", TINY[family], "--json"]) == 0
    named = json.loads(capsys.readouterr().out)
    assert from_folder["quantized_modules"] == named["quantized_modules"] > 0
    assert from_folder["total_bytes"] == named["total_bytes"]


@pytest.mark.parametrize("family", TINY)
def test_balance_record_has_one_schema(tmp_path, family):
    """One ATM / OHB driver over every family's attention sites: the same record layout."""
    from quantvla_ros.workflows.quantize import QuantizeRequest, quantize_policy

    m = quantize_policy(QuantizeRequest(source=TINY[family], calib="synthetic:6", bits="w8a8"),
                        tmp_path / "a", log=lambda *_: None)
    b = m.balance
    assert set(b.ratios) == {"before", "after"}
    for when in ("before", "after"):
        assert set(b.ratios[when]) == {"logit_std", "oproj_rms"}
        assert set(b.ratios[when]["logit_std"]) == set(b.alpha)
        assert set(b.ratios[when]["oproj_rms"]) == set(b.beta)
    sites = Policy.load(TINY[family]).family.attention_sites(
        Policy.load(TINY[family]).model, ("expert",))
    assert set(b.alpha) == {s.key for stage in sites for s in stage}
