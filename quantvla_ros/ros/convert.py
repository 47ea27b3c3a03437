"""Message <-> numpy conversion for camera images and joint states (no cv_bridge).

The functions read fields by name, so they accept rclpy messages and rosbags messages alike.
Every image comes out as a C-contiguous uint8 HxWx3 RGB array, the Policy's input format.
Problems raise :class:`ImageError` or :class:`JointStateError` (both ValueError) with a
message that names the encoding, size or joint at fault.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

try:  # Pillow decodes CompressedImage (jpeg / png); without it only raw images work
    from PIL import Image as _PILImage
except ImportError:  # pragma: no cover - Pillow is installed in the project venv
    _PILImage = None

# Largest accepted image side: a corrupt header must not make us allocate gigabytes.
MAX_IMAGE_SIDE = 8192
MIN_IMAGE_SIDE = 2

# encoding -> (channels, bytes per channel, channel order to reach RGB)
_ENCODINGS: dict[str, tuple[int, int, tuple[int, ...]]] = {
    "rgb8": (3, 1, (0, 1, 2)),
    "bgr8": (3, 1, (2, 1, 0)),
    "rgba8": (4, 1, (0, 1, 2)),
    "bgra8": (4, 1, (2, 1, 0)),
    "mono8": (1, 1, (0, 0, 0)),
    "rgb16": (3, 2, (0, 1, 2)),
    "bgr16": (3, 2, (2, 1, 0)),
    "mono16": (1, 2, (0, 0, 0)),
}
SUPPORTED_ENCODINGS = tuple(_ENCODINGS)
COMPRESSED_FORMATS = ("jpeg", "png")


class ImageError(ValueError):
    """An image message that cannot become an RGB uint8 array."""


class JointStateError(ValueError):
    """A joint state message that cannot become the state vector."""


def stamp_to_ns(stamp) -> int:
    """Return a builtin_interfaces/Time as integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_sec_nsec(ns: int) -> tuple[int, int]:
    """Split nanoseconds into the (sec, nanosec) fields of a builtin_interfaces/Time."""
    sec, nsec = divmod(int(ns), 1_000_000_000)
    return sec, nsec


def _check_size(w: int, h: int) -> None:
    if not (MIN_IMAGE_SIDE <= h <= MAX_IMAGE_SIDE and MIN_IMAGE_SIDE <= w <= MAX_IMAGE_SIDE):
        raise ImageError(f"unsupported image size {w}x{h} (each side must be "
                         f"{MIN_IMAGE_SIDE}..{MAX_IMAGE_SIDE} pixels)")


def check_image_header(msg) -> tuple[int, int, int, int]:
    """Validate a sensor_msgs/Image's metadata without touching pixels.

    Returns (height, width, channels, bytes per channel). Cheap enough for every callback.
    """
    encoding = str(msg.encoding).lower()
    if encoding not in _ENCODINGS:
        raise ImageError(
            f"unsupported image encoding {msg.encoding!r}; supported: {', '.join(_ENCODINGS)}"
        )
    channels, depth, _ = _ENCODINGS[encoding]
    h, w = int(msg.height), int(msg.width)
    _check_size(w, h)
    row = w * channels * depth
    step = int(msg.step)
    if step < row:
        raise ImageError(f"image step {step} is shorter than a {w}-pixel {encoding} row ({row})")
    size = len(msg.data)
    if size < step * (h - 1) + row:
        raise ImageError(
            f"image data has {size} bytes, {w}x{h} {encoding} with step {step} needs {step * h}"
        )
    return h, w, channels, depth


def image_to_rgb(msg) -> np.ndarray:
    """Convert a sensor_msgs/Image (8- or 16-bit RGB / BGR / RGBA / BGRA / mono) to HxWx3 RGB.

    Rows may be padded (``step`` larger than a row). 16-bit images honour ``is_bigendian``
    and keep their high byte; for 8-bit encodings byte order does not apply.
    """
    h, w, channels, depth = check_image_header(msg)
    step = int(msg.step)
    order = _ENCODINGS[str(msg.encoding).lower()][2]
    raw = np.frombuffer(msg.data, dtype=np.uint8)
    if raw.size < step * h:  # a last row without padding: pad so every row has `step` bytes
        raw = np.concatenate([raw, np.zeros(step * h - raw.size, np.uint8)])
    rows = raw[: step * h].reshape(h, step)[:, : w * channels * depth]
    if depth == 2:
        dtype = ">u2" if msg.is_bigendian else "<u2"
        pixels = (rows.copy().view(dtype).reshape(h, w, channels) >> 8).astype(np.uint8)
    else:
        pixels = rows.reshape(h, w, channels)
    return np.ascontiguousarray(pixels[:, :, list(order)])


def compressed_format(msg) -> str:
    """Return "jpeg" or "png" for a sensor_msgs/CompressedImage, or raise ImageError.

    image_transport writes formats such as ``"jpeg"`` or ``"rgb8; jpeg compressed bgr8"``;
    an empty format is sniffed from the data's magic bytes.
    """
    fmt = str(msg.format).lower()
    if "compresseddepth" in fmt:
        raise ImageError(f"compressed depth images are not supported (format {msg.format!r})")
    if "jpeg" in fmt or "jpg" in fmt:
        return "jpeg"
    if "png" in fmt:
        return "png"
    if not fmt.strip():
        head = bytes(np.frombuffer(msg.data, dtype=np.uint8)[:8])
        if head.startswith(b"\xff\xd8"):
            return "jpeg"
        if head.startswith(b"\x89PNG"):
            return "png"
    raise ImageError(
        f"unsupported compressed image format {msg.format!r}; supported: "
        f"{', '.join(COMPRESSED_FORMATS)}"
    )


def compressed_to_rgb(msg) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (jpeg or png) to HxWx3 RGB with Pillow.

    The decoded file is RGB whatever image_transport's format string says about the BGR
    buffer it encoded from, so no channel swap is needed.
    """
    fmt = compressed_format(msg)
    if _PILImage is None:
        raise ImageError(
            "CompressedImage needs Pillow, which is not installed; publish raw "
            "sensor_msgs/Image instead or install Pillow"
        )
    data = bytes(np.frombuffer(msg.data, dtype=np.uint8))
    try:
        with _PILImage.open(io.BytesIO(data)) as img:
            _check_size(*img.size)
            pixels = np.array(img.convert("RGB"), dtype=np.uint8)
    except ImageError:
        raise
    except Exception as exc:  # Pillow raises several types for truncated or corrupt data
        raise ImageError(f"cannot decode {fmt} image ({len(data)} bytes): {exc}") from exc
    return np.ascontiguousarray(pixels)


def to_rgb(msg) -> np.ndarray:
    """Convert either image message type (told apart by its ``format`` field)."""
    return compressed_to_rgb(msg) if hasattr(msg, "format") else image_to_rgb(msg)


def rgb_to_image_fields(rgb: np.ndarray, encoding: str = "rgb8") -> dict:
    """Return the sensor_msgs/Image fields (no header) for an HxWx3 RGB uint8 array."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected uint8 HxWx3, got {rgb.dtype} {rgb.shape}")
    if encoding == "rgb8":
        pixels = rgb
    elif encoding == "bgr8":
        pixels = rgb[:, :, ::-1]
    elif encoding == "mono8":
        pixels = rgb.mean(axis=2, keepdims=True).astype(np.uint8)
    else:
        raise ValueError(f"cannot write encoding {encoding!r} (rgb8, bgr8 or mono8)")
    pixels = np.ascontiguousarray(pixels)
    h, w, c = pixels.shape
    return {"height": h, "width": w, "encoding": encoding, "is_bigendian": 0,
            "step": w * c, "data": pixels.reshape(-1)}


def encode_compressed(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> bytes:
    """Encode an HxWx3 RGB uint8 array as jpeg or png bytes (needs Pillow)."""
    if _PILImage is None:
        raise ImageError("encoding compressed images needs Pillow, which is not installed")
    if fmt not in COMPRESSED_FORMATS:
        raise ValueError(f"format must be one of {COMPRESSED_FORMATS}, got {fmt!r}")
    out = io.BytesIO()
    kwargs = {"quality": quality} if fmt == "jpeg" else {}
    _PILImage.fromarray(np.ascontiguousarray(rgb), "RGB").save(out, format=fmt.upper(), **kwargs)
    return out.getvalue()


def joint_positions(msg, joint_names: Sequence[str]) -> np.ndarray:
    """Return positions of ``joint_names``, in that order, from a sensor_msgs/JointState.

    Extra joints in the message are ignored. Raises JointStateError for missing joints,
    duplicate names, a position array whose length differs from the name list, or NaN / inf.
    """
    names = [str(n) for n in msg.name]
    positions = np.asarray(msg.position, dtype=np.float64)
    if positions.shape != (len(names),):
        raise JointStateError(
            f"joint state has {len(names)} names but {positions.size} positions"
        )
    index = {}
    for i, name in enumerate(names):
        if name in index:
            raise JointStateError(f"joint state names {name!r} twice")
        index[name] = i
    missing = [n for n in joint_names if n not in index]
    if missing:
        raise JointStateError(f"joint state lacks joint(s) {missing}")
    values = positions[[index[n] for n in joint_names]]
    if not np.isfinite(values).all():
        bad = [n for n, v in zip(joint_names, values, strict=True) if not np.isfinite(v)]
        raise JointStateError(f"joint state has NaN or inf for {bad}")
    return values.astype(np.float32)
