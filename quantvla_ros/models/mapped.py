"""Safetensors files read through a memory map and written one tensor at a time.

Reading: each tensor is copied straight from the mapped file into its final home (device,
dtype) in slices, and the file pages it came from are dropped right after, so a load peaks at
the loaded model plus one slice, never model + file (what `safe_open().get_tensor()` costs:
the mapped pages stay resident beside the copy). Writing: the header first, then each tensor's
bytes, so a save needs no second copy of the model (`safetensors.torch.save_file` builds one).
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from pathlib import Path

import torch

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
          "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
          "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
NAMES = {v: k for k, v in DTYPES.items()}
SLICE_BYTES = 64 << 20  # what one copy step holds twice (source pages + destination)


class MappedFile:
    """One safetensors file, mapped private (copy-on-write): the file is never written."""

    def __init__(self, path):
        """Map ``path`` and parse its header (no tensor data is read)."""
        self.path = Path(path)
        with open(self.path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        self.metadata = header.pop("__metadata__", None) or {}
        self.entries = header
        self._base = 8 + n

    def __enter__(self):  # noqa: D105
        return self

    def __exit__(self, *exc):  # noqa: D105
        self.close()

    def close(self) -> None:
        """Drop the map (tensors already read own their memory)."""
        self._map = None

    def keys(self) -> list[str]:
        """Return the tensor names in file order."""
        return list(self.entries)

    def shape(self, key: str) -> tuple[int, ...]:
        """Return a tensor's shape without reading it."""
        return tuple(self.entries[key]["shape"])

    def dtype(self, key: str) -> torch.dtype:
        """Return a tensor's stored dtype without reading it."""
        return DTYPES[self.entries[key]["dtype"]]

    def nbytes(self, key: str) -> int:
        """Return a tensor's stored bytes."""
        start, end = self.entries[key]["data_offsets"]
        return end - start

    def _view(self, key: str) -> torch.Tensor:
        """Zero-copy flat view of the mapped bytes (copied when misaligned for the dtype)."""
        dtype = self.dtype(key)
        start, end = self.entries[key]["data_offsets"]
        size = torch.empty((), dtype=dtype).element_size()
        if end == start:
            return torch.empty(0, dtype=dtype)
        if (self._base + start) % size:
            return torch.frombuffer(bytearray(self._map[self._base + start:self._base + end]),
                                    dtype=dtype)
        return torch.frombuffer(self._map, dtype=dtype, count=(end - start) // size,
                                offset=self._base + start)

    def _release(self, lo: int, hi: int) -> None:
        """Drop the resident pages wholly inside file bytes [lo, hi) (reads only: no loss)."""
        page = mmap.PAGESIZE
        lo = -(-lo // page) * page
        hi = hi // page * page
        if hi > lo:
            self._map.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def get(self, key: str, device="cpu", dtype: torch.dtype | None = None) -> torch.Tensor:
        """Return tensor ``key`` on ``device`` in ``dtype`` (None: as stored), its own memory.

        Copied slice by slice from the map; each slice's source pages are dropped once
        copied, so the host never holds the file's copy of more than one slice.
        """
        src = self._view(key)
        out = torch.empty(self.shape(key), dtype=dtype or src.dtype, device=device)
        flat = out.view(-1)
        step = max(1, SLICE_BYTES // max(1, src.element_size()))
        start = self._base + self.entries[key]["data_offsets"][0]
        for i in range(0, src.numel(), step):
            j = min(i + step, src.numel())
            flat[i:j].copy_(src[i:j])
            self._release(start + i * src.element_size(), start + j * src.element_size())
        return out


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """Return a contiguous CPU tensor's raw bytes without copying them."""
    flat = t.reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    elif flat.dtype in (torch.bfloat16, torch.float16):
        flat = flat.view(torch.int16)
    return memoryview(flat.numpy()).cast("B")


def write_file(tensors: dict[str, torch.Tensor], path, metadata: dict | None = None) -> None:
    """Write a safetensors file tensor by tensor (each moved to the host alone).

    Tensors are laid out widest element first, so every offset is aligned for its dtype
    (the header is padded to 8 bytes), which lets `MappedFile` view them without copying.
    """
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for k in order:
        t = tensors[k]
        n = t.numel() * t.element_size()
        header[k] = {"dtype": NAMES[t.dtype], "shape": list(t.shape),
                     "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for k in order:
            t = tensors[k].detach()
            if t.numel():
                f.write(tensor_bytes(t.to("cpu").contiguous()))


def stored_nbytes(paths) -> int:
    """Return the tensor bytes of safetensors files (their sizes less the headers)."""
    total = 0
    for p in paths:
        with open(p, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
        total += os.path.getsize(p) - 8 - n
    return total

