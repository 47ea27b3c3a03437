"""Refuse up front what the device cannot hold: a load or a quantization that would be killed.

Needs are counted on the meta device (exact tensor bytes at the loaded dtype) plus the
margins of quant/footprint.py; what is available is the kernel's MemAvailable (and a cgroup
limit) for the host, `torch.cuda.mem_get_info` for a GPU. A Jetson's GPU shares the host's
memory, so there both must hold the whole need. QUANTVLA_MEMORY_CHECK=off skips the check
(for a margin that is wrong on some machine).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from quantvla_ros.models.build import build_meta
from quantvla_ros.models.registry import get_config, read_checkpoint_config
from quantvla_ros.quant.artifact import load_bytes
from quantvla_ros.quant.footprint import (
    INFER_MARGIN,
    LOAD_MARGIN,
    QUANTIZE_MARGIN,
    inspect_layout,
    state_bytes,
)
from quantvla_ros.quant.layouts import get_layout
from quantvla_ros.quant.scheme import QuantScheme
from quantvla_ros.runtime.policy import resolve_dtype
from quantvla_ros.runtime.source import PolicySource

GiB = float(1 << 30)


class MemoryFitError(ValueError):
    """What is about to be loaded does not fit; the message names the need and what is free."""


def _meminfo_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise OSError("/proc/meminfo has no MemAvailable")


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup v2 memory limit, None without one."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - used)


def host_available() -> int:
    """Return the bytes the host can still give this process."""
    room = _cgroup_room()
    avail = _meminfo_available()
    return avail if room is None else min(avail, room)


def available(device: str) -> tuple[int, str]:
    """Return (bytes available for tensors on ``device``, how that was read)."""
    if not str(device).startswith("cuda"):
        return host_available(), "host memory available (MemAvailable)"
    dev = torch.device(device)
    free, _ = torch.cuda.mem_get_info(dev)
    if torch.cuda.get_device_properties(dev).is_integrated:  # Jetson: one shared memory
        return min(free, host_available()), "unified memory available (GPU and host)"
    return free, "free GPU memory"


def load_need(source: PolicySource, precision: str = "fp32", infer: bool = False) -> int:
    """Return the bytes loading ``source`` at ``precision`` (and one inference) needs."""
    dtype = resolve_dtype(precision)
    margin = INFER_MARGIN if infer else LOAD_MARGIN
    if source.kind == "artifact":
        return load_bytes(source.path, dtype) + margin
    cfg = read_checkpoint_config(source.path) if source.kind == "checkpoint" \
        else get_config(source.name)
    return state_bytes(build_meta(cfg), dtype) + margin


def quantize_need(source: PolicySource, precision: str, scheme: QuantScheme,
                  preset: str | None, include=(), exclude=()) -> int:
    """Return the bytes quantizing ``source`` needs: teacher, packed layers and the margin."""
    cfg = read_checkpoint_config(source.path) if source.kind == "checkpoint" \
        else get_config(source.name)
    model = build_meta(cfg)
    layout = get_layout(preset, include, exclude, family=source.family())
    packed = inspect_layout(model, layout, scheme)["quantized_bytes"]
    return state_bytes(model, resolve_dtype(precision)) + packed + QUANTIZE_MARGIN


def check_fits(need: int, device: str, what: str) -> None:
    """Raise MemoryFitError when ``need`` bytes exceed what ``device`` has available."""
    if os.environ.get("QUANTVLA_MEMORY_CHECK", "").lower() in ("off", "0", "no"):
        return
    have, how = available(device)
    if need > have:
        raise MemoryFitError(
            f"{what} needs about {need / GiB:.1f} GiB on {device}, but only "
            f"{have / GiB:.1f} GiB is {how}; free memory, use a smaller precision (bf16) or "
            "preset, or another machine (QUANTVLA_MEMORY_CHECK=off skips this check)")
