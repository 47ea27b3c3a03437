"""Message <-> numpy conversion: every supported encoding, and clear errors for the rest."""

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed")
pytest.importorskip("rosbags", reason="the rosbags library is not installed")

from rosbags.typesys import Stores, get_typestore  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image, JointState  # noqa: E402

from quantvla_ros.ros.convert import (  # noqa: E402
    ImageError,
    JointStateError,
    compressed_to_rgb,
    encode_compressed,
    image_to_rgb,
    joint_positions,
    ns_to_sec_nsec,
    rgb_to_image_fields,
    stamp_to_ns,
    to_rgb,
)

RGB = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
TYPES = get_typestore(Stores.ROS2_KILTED).types


def image(pixels: np.ndarray, encoding: str, *, pad: int = 0, bigendian: bool = False):
    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1)
    if pixels.dtype == np.uint16:
        rows = pixels.astype(">u2" if bigendian else "<u2").view(np.uint8).reshape(h, -1)
    rows = np.concatenate([rows, np.zeros((h, pad), np.uint8)], axis=1)
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian),
                step=rows.shape[1])
    msg.data = rows.tobytes()
    return msg


@pytest.mark.parametrize("encoding, pixels", [
    ("rgb8", RGB),
    ("bgr8", RGB[:, :, ::-1]),
    ("rgba8", np.dstack([RGB, np.full(RGB.shape[:2], 255, np.uint8)])),
    ("bgra8", np.dstack([RGB[:, :, ::-1], np.zeros(RGB.shape[:2], np.uint8)])),
])
@pytest.mark.parametrize("pad", [0, 3])
def test_color_encodings(encoding, pixels, pad):
    out = image_to_rgb(image(np.ascontiguousarray(pixels), encoding, pad=pad))
    assert out.dtype == np.uint8 and out.flags.c_contiguous and out.flags.writeable
    np.testing.assert_array_equal(out, RGB)


def test_mono8_and_16_bit_with_byte_order():
    gray = RGB[:, :, 0]
    np.testing.assert_array_equal(image_to_rgb(image(gray[:, :, None], "mono8")),
                                  np.dstack([gray] * 3))
    wide = RGB.astype(np.uint16) * 256 + 7
    for big in (False, True):
        np.testing.assert_array_equal(image_to_rgb(image(wide, "rgb16", bigendian=big)), RGB)
        out = image_to_rgb(image(wide[:, :, :1], "mono16", bigendian=big))
        np.testing.assert_array_equal(out, np.dstack([RGB[:, :, 0]] * 3))


@pytest.mark.parametrize("mutate, message", [
    (lambda m: setattr(m, "encoding", "yuv422"), "unsupported image encoding 'yuv422'"),
    (lambda m: setattr(m, "encoding", "32FC1"), "unsupported image encoding"),
    (lambda m: setattr(m, "data", m.data[:20]), "image data has 20 bytes"),
    (lambda m: setattr(m, "step", 3), "step 3 is shorter"),
    (lambda m: setattr(m, "width", 0), "unsupported image size"),
    (lambda m: setattr(m, "height", 100_000), "unsupported image size"),
])
def test_bad_raw_images(mutate, message):
    msg = image(RGB, "rgb8")
    mutate(msg)
    with pytest.raises(ImageError, match=message):
        image_to_rgb(msg)


@pytest.mark.parametrize("fmt, exact", [("png", True), ("jpeg", False)])
def test_compressed_round_trip(fmt, exact):
    big = np.repeat(np.repeat(RGB, 8, axis=0), 8, axis=1)  # smooth enough for jpeg
    for label in (fmt, f"rgb8; {fmt} compressed bgr8", ""):
        out = compressed_to_rgb(CompressedImage(format=label, data=encode_compressed(big, fmt)))
        assert out.shape == big.shape and out.flags.writeable
        if exact:
            np.testing.assert_array_equal(out, big)
        else:
            assert np.abs(out.astype(int) - big).mean() < 8


def test_bad_compressed_images():
    with pytest.raises(ImageError, match="unsupported compressed image format 'tiff'"):
        compressed_to_rgb(CompressedImage(format="tiff", data=b"II*\x00"))
    with pytest.raises(ImageError, match="compressed depth"):
        compressed_to_rgb(CompressedImage(format="16UC1; compressedDepth png", data=b"x"))
    with pytest.raises(ImageError, match="cannot decode jpeg"):
        compressed_to_rgb(CompressedImage(format="jpeg", data=b"\xff\xd8garbage"))


def test_rosbags_messages_convert_like_rclpy_ones():
    header = TYPES["std_msgs/msg/Header"](
        stamp=TYPES["builtin_interfaces/msg/Time"](sec=3, nanosec=5), frame_id="")
    msg = TYPES["sensor_msgs/msg/Image"](header=header, **rgb_to_image_fields(RGB, "bgr8"))
    np.testing.assert_array_equal(to_rgb(msg), RGB)
    assert stamp_to_ns(msg.header.stamp) == 3_000_000_005
    assert ns_to_sec_nsec(3_000_000_005) == (3, 5)
    data = np.frombuffer(encode_compressed(RGB, "png"), np.uint8)
    comp = TYPES["sensor_msgs/msg/CompressedImage"](header=header, format="png", data=data)
    np.testing.assert_array_equal(to_rgb(comp), RGB)
    js = TYPES["sensor_msgs/msg/JointState"](header=header, name=["b", "a"],
                                             position=np.array([2.0, 1.0]),
                                             velocity=np.zeros(0), effort=np.zeros(0))
    np.testing.assert_array_equal(joint_positions(js, ["a", "b"]), [1.0, 2.0])


def test_joint_states_reordered_by_name():
    msg = JointState(name=["wrist", "elbow", "shoulder", "extra"], position=[3.0, 2.0, 1.0, 9.0])
    out = joint_positions(msg, ["shoulder", "elbow", "wrist"])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [1.0, 2.0, 3.0])


@pytest.mark.parametrize("names, positions, message", [
    (["a", "b"], [1.0], "2 names but 1 positions"),
    (["a"], [1.0], r"lacks joint\(s\) \['b'\]"),
    (["a", "b"], [1.0, float("nan")], r"NaN or inf for \['b'\]"),
    (["a", "b"], [float("inf"), 1.0], "NaN or inf"),
    (["a", "a", "b"], [1.0, 1.0, 1.0], "names 'a' twice"),
])
def test_bad_joint_states(names, positions, message):
    with pytest.raises(JointStateError, match=message):
        joint_positions(JointState(name=names, position=positions), ["a", "b"])
