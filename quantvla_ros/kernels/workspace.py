"""Split-K workspaces: one fixed (partial sums, tile counters) pair per (device, stream).

A split GEMM's last CTA per tile reads the int32 sums and re-zeroes them, so a workspace is
only safe for launches ordered on one stream, and its address is baked into any CUDA graph
that captured a split launch. So a workspace is keyed by (device, stream) and allocated
once, at the most any table config can use: the tables split only when 2 * tiles <= SMs,
with output tiles of at most 128 x 128 (4.3 MB at 132 SMs). A larger request (a hand-given
config) gets a new buffer outside capture, and the outgrown one is kept alive, never freed,
because a graph may still replay with its address.

Capture runs on its own stream (torch.cuda.graph's capture stream), which cannot allocate
or zero memory outside the graph, so each device keeps zeroed spares, made outside
capture, and a capturing stream takes one. Graphs captured on one stream share its
workspace: replay them in order, not on two streams at once.
"""

from __future__ import annotations

import torch

from quantvla_ros.kernels.configs import sm_count

# Largest output tile of the GEMM tables (W8A8 128 x 128; W4A8 128 weight rows x 64 tokens).
MAX_TILE_CELLS = 128 * 128
MIN_COUNTERS = 1024
# Zeroed workspaces kept per device for streams that first split while capturing:
# torch.cuda.graph's shared capture stream, and one more a caller may pass.
SPARES = 2

_SPACES: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
_SPARES: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
# Outgrown workspaces: captured graphs may still hold their addresses, so never freed.
_RETIRED: list[tuple[torch.Tensor, torch.Tensor]] = []


def stream_key(device: torch.device, stream: int | None = None) -> tuple[str, int]:
    """(device, stream handle) of a launch; CPU (the interpreter) has one stream, 0."""
    device = torch.device(device)
    if stream is None:
        stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    return str(device), int(stream)


def default_size(device) -> tuple[int, int]:
    """(cells, counters) that cover every split launch the config tables can choose."""
    tiles = max(1, sm_count(device) // 2)
    return tiles * MAX_TILE_CELLS, max(tiles, MIN_COUNTERS)


def _zeroed(dev: torch.device, cells: int, tiles: int):
    return (torch.zeros(cells, dtype=torch.int32, device=dev),
            torch.zeros(tiles, dtype=torch.int32, device=dev))


def _capturing(dev: torch.device) -> bool:
    return dev.type == "cuda" and torch.cuda.is_current_stream_capturing()


def split_workspace(device, cells: int, tiles: int, stream: int | None = None):
    """Zeroed int32 partial sums and tile counters of this (device, stream).

    The kernels re-zero what they use, so no memset is ever launched. A stream's workspace
    is made at its first split launch (a spare if it is capturing) and then fixed.
    """
    key = stream_key(device, stream)
    have = _SPACES.get(key)
    if have is not None and have[0].numel() >= cells and have[1].numel() >= tiles:
        return have
    dev = torch.device(key[0])
    spares = _SPARES.setdefault(key[0], [])
    fits = [ws for ws in spares if ws[0].numel() >= cells and ws[1].numel() >= tiles]
    if have is None and fits:
        spares.remove(fits[0])
        _SPACES[key] = fits[0]
    elif _capturing(dev):
        raise RuntimeError(f"no split-K workspace of {cells} cells / {tiles} counters for "
                           f"{key} during capture; run the same GEMM once before capturing")
    else:
        want_cells, want_tiles = default_size(dev)
        if have is not None:  # outgrown: a captured graph may still use it, so keep it
            _RETIRED.append(have)
            want_cells = max(want_cells, have[0].numel())
            want_tiles = max(want_tiles, have[1].numel())
        _SPACES[key] = _zeroed(dev, max(cells, want_cells), max(tiles, want_tiles))
    if not _capturing(dev):
        while len(spares) < SPARES:
            spares.append(_zeroed(dev, *(t.numel() for t in _SPACES[key])))
    return _SPACES[key]


def live_workspaces() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every workspace still allocated: in use, outgrown (never freed), then spares."""
    return [*_SPACES.values(), *_RETIRED, *(ws for s in _SPARES.values() for ws in s)]
