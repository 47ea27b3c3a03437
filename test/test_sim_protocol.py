"""The LIBERO pipe without LIBERO: wire format, error replies, a dead server (runs in CI).

The server module imports libero lazily, so it starts in this test's own interpreter; a
request that needs the simulator then comes back as an error reply, which is the path under
test here. test_libero_sim.py covers the real simulator when .venv-libero exists.
"""

import struct
import sys
import time

import numpy as np
import pytest

from quantvla_ros.sim.client import LiberoClient, SimRequestError, SimServerError
from quantvla_ros.sim.protocol import (
    ProtocolError,
    decode_header,
    encode,
    file_reader,
    read_message,
)


def _roundtrip(message):
    import io

    return read_message(file_reader(io.BytesIO(encode(message))))


def test_roundtrip_arrays_and_fields():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    state = np.linspace(-1, 1, 8, dtype=np.float32)
    out = _roundtrip({"op": "x", "n": 3, "s": "text", "image": image, "state": state,
                      "empty": np.zeros((0, 4), np.int64), "flag": np.array([True, False])})
    assert out["op"] == "x" and out["n"] == 3 and out["s"] == "text"
    for key, value in (("image", image), ("state", state)):
        assert out[key].dtype == value.dtype and np.array_equal(out[key], value)
    assert out["empty"].shape == (0, 4) and out["flag"].tolist() == [True, False]
    # A non-contiguous view (the 180-degree rotation) goes through as its values.
    rotated = image[::-1, ::-1]
    assert np.array_equal(_roundtrip({"a": rotated})["a"], rotated)


def test_refuses_object_arrays_bad_headers_and_truncation():
    with pytest.raises(ProtocolError):
        encode({"a": np.array([object()], dtype=object)})
    with pytest.raises(ProtocolError):
        encode({"arrays": 1})
    with pytest.raises(ProtocolError):
        decode_header(b'{"arrays": [["a", "|O", [1]]]}')
    with pytest.raises(ProtocolError):
        decode_header(b"[1, 2]")
    import io

    data = encode({"a": np.zeros(10, np.float32)})
    with pytest.raises(ProtocolError):
        read_message(file_reader(io.BytesIO(data[:-3])))
    assert read_message(file_reader(io.BytesIO(b""))) is None
    with pytest.raises(ProtocolError):
        read_message(file_reader(io.BytesIO(struct.pack(">I", 1 << 30))))


@pytest.fixture
def local_server(monkeypatch, tmp_path):
    """A server running in this interpreter (no libero): only hello works."""
    monkeypatch.setenv("QUANTVLA_LIBERO_PYTHON", sys.executable)
    client = LiberoClient(log_path=tmp_path / "server.log", timeout_s=60)
    yield client
    client.close()


def test_errors_come_back_as_messages_and_the_server_keeps_serving(local_server):
    hello = local_server.hello()
    assert hello["protocol"] == 1 and hello["pid"] == local_server.proc.pid
    with pytest.raises(SimRequestError, match="unknown op"):
        local_server.request("no_such_op")
    with pytest.raises(SimRequestError, match="send 'reset' first"):
        local_server.step(np.zeros(7))
    with pytest.raises(SimRequestError) as info:
        local_server.reset("libero_object", 0, init=0)   # libero is not importable here
    assert "Error" in str(info.value) and info.value.remote_traceback
    with pytest.raises(ValueError):
        local_server.reset("libero_object", 0)          # neither init nor seed
    assert local_server.hello()["pid"] == local_server.proc.pid


def test_a_dead_server_is_a_clear_error(local_server):
    local_server.hello()
    local_server.proc.kill()
    local_server.proc.wait(timeout=10)
    start = time.monotonic()
    with pytest.raises(SimServerError, match="LIBERO server"):
        local_server.hello()
    assert time.monotonic() - start < 10
    with pytest.raises(SimServerError, match="unusable"):
        local_server.hello()


def test_a_missing_venv_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("QUANTVLA_LIBERO_PYTHON", raising=False)
    with pytest.raises(SimServerError, match="make libero"):
        LiberoClient(venv=tmp_path / "nothing")
