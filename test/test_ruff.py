"""Lint the package and its tests with ruff (configuration in ruff.toml)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff is not installed")
def test_ruff_check():
    targets = [p for p in ("quantvla_ros", "test", "launch", "conftest.py", "setup.py")
               if (ROOT / p).exists()]
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", *targets],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, (
        f"ruff check failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
    )
