"""Artifacts of an older format are refused with the command that re-quantizes them.

``fixtures/artifact_v1_micro_w8a8`` was written by commit 6ae18d8 (format version 1):
``quantize_policy`` on a pi05-micro checkpoint (seed 0) with ``synthetic:6`` at w8a8.
Format version 2 changed the packed int4 layout and added per-part schemes and integer
embeddings, so a version 1 artifact must be quantized again from its float policy.
"""

import re
from pathlib import Path

import pytest
import yaml

from quantvla_ros.quant.artifact import load_artifact
from quantvla_ros.quant.manifest import FORMAT_VERSION, MANIFEST, ArtifactError, ArtifactManifest
from quantvla_ros.runtime.policy import Policy

ARTIFACT = Path(__file__).parent / "fixtures" / "artifact_v1_micro_w8a8"


def test_this_build_writes_version_2():
    assert FORMAT_VERSION == 2
    assert yaml.safe_load((ARTIFACT / MANIFEST).read_text())["format_version"] == 1


def test_v1_artifact_is_refused_with_the_requantize_command():
    source = yaml.safe_load((ARTIFACT / MANIFEST).read_text())["source"]["path"]
    expected = ("format version 1 is no longer supported .* re-quantize the float policy "
                "with this version: " + re.escape(
                    f"quantvla quantize --checkpoint {source} --calib synthetic:6 --bits w8a8 "
                    "--preset quantvla --out NEW_ARTIFACT"))
    with pytest.raises(ArtifactError, match=expected):
        ArtifactManifest.read(ARTIFACT)
    with pytest.raises(ArtifactError, match="re-quantize"):
        load_artifact(ARTIFACT)
    with pytest.raises(ArtifactError, match="re-quantize"):
        Policy.load(str(ARTIFACT))
