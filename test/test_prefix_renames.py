"""The shared checkpoint pieces: prefix renames and one CheckpointError for every family."""

import pytest

from quantvla_ros.models import files
from quantvla_ros.models.groot import checkpoint as groot_ck
from quantvla_ros.models.pi import checkpoint as pi_ck
from quantvla_ros.models.smolvla import checkpoint as smolvla_ck


def test_renames_round_trip_and_first_prefix_wins():
    renames = files.PrefixRenames([("model.a.b.", "ab."), ("model.a.", "a."), ("model.", "")])
    assert renames.to_ours("model.a.b.w") == "ab.w"
    assert renames.to_ours("model.a.w") == "a.w"
    assert renames.to_ours("model.w") == "w"
    assert renames.to_ours("other.w") is None
    for ours in ("ab.w", "a.w", "w"):
        assert renames.to_ours(renames.to_theirs(ours)) == ours


def test_renames_refuse_a_list_that_cannot_map_back():
    with pytest.raises(ValueError, match="empty prefix"):
        files.PrefixRenames([("model.a.", "a.")])
    with pytest.raises(ValueError, match="empty prefix"):
        files.PrefixRenames([])


def test_every_family_raises_the_same_checkpoint_error(tmp_path):
    assert pi_ck.CheckpointError is smolvla_ck.CheckpointError is groot_ck.CheckpointError
    assert issubclass(files.CheckpointError, ValueError)
    (tmp_path / files.CONFIG).write_text("{}")
    with pytest.raises(files.CheckpointError, match="missing model.safetensors"):
        files.require_checkpoint(tmp_path)


def test_pi_names_keep_their_mapping():
    name = "backbone.layers.0.mlp.gate_proj.weight"
    theirs = pi_ck.to_lerobot_name(name)
    assert theirs == ("model.paligemma_with_expert.paligemma.model.language_model."
                      "layers.0.mlp.gate_proj.weight")
    assert pi_ck.from_lerobot_name(theirs) == name
    # openpi-converted files omit the leading "model."
    assert pi_ck.from_lerobot_name(theirs[len("model."):]) == name
    assert smolvla_ck.from_lerobot_name("model.vlm_with_expert.lm_expert.layers.0.w") == \
        "expert.layers.0.w"
