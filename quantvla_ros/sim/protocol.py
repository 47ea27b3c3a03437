"""The wire format between the LIBERO server and its client: length-prefixed messages.

Both sides import this module (numpy and the standard library only; no pickle). A message is

    u32 big-endian N | N bytes of UTF-8 JSON header | the arrays' raw bytes, back to back

The header is a JSON object. Its ``"arrays"`` entry (added and removed here) lists the arrays
that follow as ``[key, dtype, shape]`` (dtype as numpy's ``dtype.str``, e.g. ``"|u1"``,
``"<f4"``); the decoded message holds each array under its key, next to the JSON fields.
Only plain numeric and boolean dtypes cross; object and structured dtypes are refused.

Requests carry ``"op"``; replies carry ``"ok": true`` and the results, or ``"ok": false``
with ``"error"`` (one line) and ``"traceback"`` (the server's, for the log).
"""

import json
import struct

import numpy as np

PROTOCOL_VERSION = 1
MAX_HEADER = 1 << 20        # bytes of JSON header
MAX_PAYLOAD = 1 << 30       # bytes of arrays in one message
_ALLOWED_KINDS = set("biuf")


class ProtocolError(RuntimeError):
    """A malformed message (bad length, header, dtype or size)."""


def encode(message: dict) -> bytes:
    """Return the bytes of ``message``; numpy arrays among its values go as raw bytes."""
    header, blobs = {}, []
    arrays = []
    for key, value in message.items():
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in _ALLOWED_KINDS or value.dtype.fields is not None:
                raise ProtocolError(f"array {key!r}: dtype {value.dtype} cannot be sent")
            value = np.ascontiguousarray(value)
            arrays.append([key, value.dtype.str, list(value.shape)])
            blobs.append(value.tobytes())
        else:
            header[key] = value
    if "arrays" in header:
        raise ProtocolError("'arrays' is a reserved header key")
    header["arrays"] = arrays
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    if len(head) > MAX_HEADER:
        raise ProtocolError(f"header of {len(head)} bytes is over {MAX_HEADER}")
    return struct.pack(">I", len(head)) + head + b"".join(blobs)


def _array_sizes(arrays) -> list[tuple[str, np.dtype, tuple[int, ...], int]]:
    out = []
    for entry in arrays:
        try:
            key, dtype_str, shape = entry
            dtype = np.dtype(dtype_str)
            shape = tuple(int(s) for s in shape)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"bad array entry {entry!r}: {exc}") from None
        if dtype.kind not in _ALLOWED_KINDS or any(s < 0 for s in shape):
            raise ProtocolError(f"array {key!r}: dtype {dtype} / shape {shape} refused")
        out.append((key, dtype, shape, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize))
    return out


def decode_header(head: bytes) -> tuple[dict, list]:
    """Parse a header; return (fields, [(key, dtype, shape, nbytes), ...])."""
    try:
        header = json.loads(head.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"bad header: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    sizes = _array_sizes(header.pop("arrays", []))
    if sum(s[3] for s in sizes) > MAX_PAYLOAD:
        raise ProtocolError("payload over the size limit")
    return header, sizes


def read_message(read_exact) -> dict | None:
    """Read one message with ``read_exact(n) -> bytes`` (b"" at a clean end of stream).

    Returns None when the stream ends before a message starts.
    """
    prefix = read_exact(4)
    if not prefix:
        return None
    if len(prefix) != 4:
        raise ProtocolError("stream ended inside a length prefix")
    (n,) = struct.unpack(">I", prefix)
    if n > MAX_HEADER:
        raise ProtocolError(f"header length {n} is over {MAX_HEADER}")
    head = read_exact(n)
    if len(head) != n:
        raise ProtocolError("stream ended inside a header")
    message, sizes = decode_header(head)
    for key, dtype, shape, nbytes in sizes:
        data = read_exact(nbytes) if nbytes else b""
        if len(data) != nbytes:
            raise ProtocolError(f"stream ended inside array {key!r}")
        message[key] = np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    return message


def file_reader(stream):
    """Return a ``read_exact`` over a binary file object (blocking)."""
    def read_exact(n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = stream.read(left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    return read_exact
