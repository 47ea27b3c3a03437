"""Repository-wide pytest setup.

Runs before any test module (and so before any Triton kernel module) is imported:

- Without a CUDA GPU, turn on Triton's CPU interpreter. Triton reads ``TRITON_INTERPRET``
  when ``@triton.jit`` decorates a kernel, so it must be set before the kernels are imported.
  An explicit ``TRITON_INTERPRET`` in the environment is left alone.
- Tests marked ``gpu`` are skipped when no CUDA GPU is present.
- ROS 2 stays on loopback, logs go to a temporary directory, and ``AMENT_PREFIX_PATH``
  covers the Python environment that holds the ROS 2 wheels.
"""

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest


def _cuda_available() -> bool:
    """Return True when torch is importable and sees a CUDA device."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


HAS_CUDA = _cuda_available()

if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# ROS 2: discovery on loopback only, logs out of ~/.ros, ament index over this environment.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
_ROS_TMP = tempfile.mkdtemp(prefix="quantvla-ros-test-")
os.environ["ROS_HOME"] = _ROS_TMP
os.environ["ROS_LOG_DIR"] = os.path.join(_ROS_TMP, "log")

_prefix = Path(sys.prefix)
if (_prefix / "share" / "ament_index").is_dir():
    _paths = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    if str(_prefix) not in _paths:
        _paths.append(str(_prefix))
        os.environ["AMENT_PREFIX_PATH"] = os.pathsep.join(_paths)


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``gpu`` when no CUDA GPU is present."""
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none present)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip_gpu)


def pytest_unconfigure(config):
    """Remove the temporary ROS home and log directory."""
    shutil.rmtree(_ROS_TMP, ignore_errors=True)
