"""Fixtures shared by the test modules (the repository-root conftest sets up the environment)."""

from pathlib import Path

import pytest

from quantvla_ros.models.build import random_model
from quantvla_ros.models.pi.checkpoint import save_checkpoint
from quantvla_ros.models.pi.config import get_config


def write_micro_checkpoint(folder: Path, *, seed: int = 0) -> Path:
    """Write a random-weight ``pi05-micro`` checkpoint folder (loads through the real path)."""
    return save_checkpoint(random_model(get_config("pi05-micro"), seed=seed), folder)


@pytest.fixture(scope="session")
def micro_checkpoint(tmp_path_factory) -> Path:
    """Return a ``pi05-micro`` lerobot-format checkpoint folder: a chunk in tens of ms on a CPU."""
    return write_micro_checkpoint(tmp_path_factory.mktemp("micro") / "ckpt")
