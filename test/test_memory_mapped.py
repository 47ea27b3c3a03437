"""models/mapped.py: memory-mapped reads and tensor-by-tensor writes of safetensors files."""

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from quantvla_ros.models import mapped
from quantvla_ros.models.mapped import MappedFile, stored_nbytes, write_file

TENSORS = {
    "w": torch.randn(33, 17),
    "h": torch.randn(5, 3).to(torch.bfloat16),
    "q": torch.randint(-128, 127, (7, 9), dtype=torch.int8),
    "i": torch.arange(5, dtype=torch.int64),
    "empty": torch.zeros(0, 4),
    "mask": torch.tensor([True, False, True]),
}


@pytest.mark.parametrize("writer", ["safetensors", "ours"])
def test_round_trip_both_ways(tmp_path, writer):
    """Files of either writer read back exactly, in the stored or a requested dtype."""
    path = tmp_path / "x.safetensors"
    if writer == "ours":
        write_file(TENSORS, path, metadata={"format": "pt"})
    else:
        save_file(TENSORS, str(path), metadata={"format": "pt"})
    with MappedFile(path) as f:
        assert f.metadata == {"format": "pt"} and set(f.keys()) == set(TENSORS)
        for k, t in TENSORS.items():
            got = f.get(k)
            assert got.dtype == t.dtype and torch.equal(got, t)
            assert f.shape(k) == tuple(t.shape) and f.nbytes(k) == t.numel() * t.element_size()
        assert torch.equal(f.get("h", dtype=torch.float32), TENSORS["h"].float())
        assert torch.equal(f.get("w", dtype=torch.bfloat16), TENSORS["w"].bfloat16())
    assert all(torch.equal(load_file(str(path))[k], t) for k, t in TENSORS.items())
    assert stored_nbytes([path]) == sum(t.numel() * t.element_size() for t in TENSORS.values())


def test_slices_copy_a_large_tensor_exactly(tmp_path, monkeypatch):
    """A tensor copied in many slices (each slice's pages dropped) equals the stored one."""
    monkeypatch.setattr(mapped, "SLICE_BYTES", 4096 + 12)  # slices straddle page edges
    t = torch.randn(300, 257)
    write_file({"t": t, "b": torch.ones(3, dtype=torch.int8)}, tmp_path / "x.safetensors")
    with MappedFile(tmp_path / "x.safetensors") as f:
        assert torch.equal(f.get("t"), t)
        assert torch.equal(f.get("t"), t)  # the dropped pages are read again from the file


def test_our_offsets_are_aligned_and_misaligned_ones_are_copied(tmp_path):
    """Widest dtype first keeps offsets aligned; a misaligned file still reads correctly."""
    write_file(TENSORS, tmp_path / "a.safetensors")
    raw = (tmp_path / "a.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    sizes = {"F32": 4, "BF16": 2, "I8": 1, "I64": 8, "BOOL": 1}
    assert (8 + n) % 8 == 0
    assert all(v["data_offsets"][0] % sizes[v["dtype"]] == 0 for v in header.values())
    # one int8 byte first puts the float32 tensor at an odd offset
    header = {"b": {"dtype": "I8", "shape": [1], "data_offsets": [0, 1]},
              "w": {"dtype": "F32", "shape": [2], "data_offsets": [1, 9]}}
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    body = b"\x07" + torch.tensor([1.5, -2.0]).numpy().tobytes()
    (tmp_path / "m.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + body)
    with MappedFile(tmp_path / "m.safetensors") as f:
        assert f.get("w").tolist() == [1.5, -2.0] and f.get("b").tolist() == [7]
