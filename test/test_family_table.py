"""The family table: one ModelFamily per family, claims on checkpoint folders, the contract."""

import json

import pytest

from quantvla_ros.models.family import ModelConfig
from quantvla_ros.models.registry import FAMILIES, REGISTRY, checkpoint_family
from quantvla_ros.quant.layouts import presets_of
from quantvla_ros.runtime.families import FAMILIES as RUNTIME_FAMILIES

CONTRACT = [n for n in ModelConfig.__annotations__] + [
    n for n, v in vars(ModelConfig).items() if isinstance(v, property) or
    (callable(v) and not n.startswith("_"))]


def test_both_tables_name_the_same_families():
    assert [f.name for f in FAMILIES] == list(RUNTIME_FAMILIES)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_named_config_meets_the_contract(name):
    cfg = REGISTRY[name]
    missing = [a for a in CONTRACT if not hasattr(cfg, a)]
    assert not missing, missing
    assert cfg.action_horizon > 0 and cfg.vision.image_size > 0 and cfg.cameras


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_every_family_has_presets_and_a_float_reference(family):
    presets = presets_of(family.name)
    assert "quantvla" in presets and presets["none"].include == ()


@pytest.mark.parametrize(("raw", "family"), [
    ({"type": "pi05"}, "pi"), ({"type": "pi0"}, "pi"), ({"type": "groot"}, "groot"),
    ({"action_head_cfg": {}}, "groot"), ({"type": "smolvla"}, "smolvla")])
def test_a_folder_belongs_to_the_family_that_claims_it(tmp_path, raw, family):
    (tmp_path / "config.json").write_text(json.dumps(raw))
    assert checkpoint_family(tmp_path) == family


def test_a_folder_no_family_claims_is_refused_with_what_each_looks_for(tmp_path):
    """Before: anything not GR00T was read as pi ("not GR00T means pi")."""
    (tmp_path / "config.json").write_text(json.dumps({"type": "act"}))
    with pytest.raises(ValueError, match="no model family claims it") as err:
        checkpoint_family(tmp_path)
    assert "pi0" in str(err.value) and "action_head_cfg" in str(err.value)


def test_a_new_option_is_declared_in_its_family_only(monkeypatch):
    """An option added to one family's `options` becomes a CLI flag and a node parameter,
    is checked against its choices, and is refused by the other families."""
    from quantvla_ros.cli.main import build_parser
    from quantvla_ros.cli.options import options_of
    from quantvla_ros.ros.settings import _option_params
    from quantvla_ros.runtime.families.pi import PiFamily
    from quantvla_ros.runtime.family import OptionSpec
    from quantvla_ros.runtime.policy import Policy

    spec = OptionSpec("gripper_flip", "a test option", ("yes", "no"))
    monkeypatch.setattr(PiFamily, "options", (*PiFamily.options, spec))
    args = build_parser().parse_args(["quantize", "--model", "pi05-tiny", "--calib",
                                      "synthetic:2", "--out", "x", "--gripper-flip", "yes"])
    assert options_of(args) == {"gripper_flip": "yes"}
    assert {"gripper_flip", "quantize_gripper_flip"} <= {
        p.name for p in (*_option_params(""), *_option_params("quantize_"))}
    with pytest.raises(ValueError, match="gripper_flip 'maybe'"):
        Policy.load("pi05-tiny", gripper_flip="maybe")
    with pytest.raises(ValueError, match="gripper_flip is not an option of groot-n15-tiny"):
        Policy.load("groot-n15-tiny", gripper_flip="yes")
