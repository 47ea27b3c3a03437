"""PolicySource: one resolution of a policy string for the Policy, node, CLI and report."""

import pytest

from quantvla_ros.models.pi.tokenizer import TOKENIZER_DIR
from quantvla_ros.quant.manifest import MANIFEST
from quantvla_ros.runtime.policy import Policy
from quantvla_ros.runtime.source import PolicySource, PolicySourceError


def test_named_model_with_seed():
    src = PolicySource.resolve("pi05-micro", seed=3)
    assert (src.kind, src.name, src.seed, src.path, src.tokenizer) == (
        "named", "pi05-micro", 3, None, None)
    assert src.identity() == {"kind": "named", "model": "pi05-micro", "seed": 3,
                              "sha256": "seed:3"}


def test_checkpoint_folder_and_its_tokenizer(micro_checkpoint, tmp_path):
    src = PolicySource.resolve(micro_checkpoint)
    assert src.kind == "checkpoint" and src.path == micro_checkpoint and src.tokenizer is None
    assert src.identity()["kind"] == "checkpoint" and len(src.identity()["sha256"]) == 64
    explicit = tmp_path / "tok"
    explicit.mkdir()
    assert PolicySource.resolve(micro_checkpoint, tokenizer=explicit).tokenizer == explicit


def test_folder_kind_comes_from_its_files(tmp_path):
    artifact = tmp_path / "a"
    (artifact / TOKENIZER_DIR).mkdir(parents=True)
    (artifact / MANIFEST).write_text("format: quantvla-artifact\n")
    src = PolicySource.resolve(str(artifact))
    assert src.kind == "artifact" and src.tokenizer == artifact / TOKENIZER_DIR
    with pytest.raises(PolicySourceError, match="already a quantized artifact"):
        src.identity()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PolicySourceError, match="neither a quantized artifact"):
        PolicySource.resolve(empty)
    (tmp_path / "file").write_text("x")
    with pytest.raises(PolicySourceError, match="is a file"):
        PolicySource.resolve(tmp_path / "file")


@pytest.mark.parametrize("spec", ["pi05-tiy", "no/such/folder", "./pi05-tiny", "ckpt"])
def test_unknown_sources_name_both_readings_without_guessing(spec):
    """A string that is neither an existing folder nor a name gets one message for both."""
    with pytest.raises(PolicySourceError) as err:
        PolicySource.resolve(spec)
    message = str(err.value)
    assert f"policy {spec!r} does not exist as a folder" in message
    assert f"unknown model {spec!r}" in message and "Known models: pi05" in message
    if spec == "pi05-tiy":
        assert "Did you mean 'pi05-tiny'" in message


def test_missing_tokenizer_folder_is_reported(micro_checkpoint, tmp_path):
    with pytest.raises(PolicySourceError, match="tokenizer folder .* does not exist"):
        PolicySource.resolve(micro_checkpoint, tokenizer=tmp_path / "nope")


def test_policy_load_uses_the_resolved_source(micro_checkpoint):
    policy = Policy.load(PolicySource.resolve(micro_checkpoint, seed=5))
    assert policy.source == f"{micro_checkpoint} [state prompt: unpadded, default]"
    assert policy.cfg.name == "pi05-micro"
    with pytest.raises(PolicySourceError, match="does not exist as a folder"):
        Policy.load("pi05-tiy")
