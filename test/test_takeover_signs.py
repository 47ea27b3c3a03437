"""The off-course signs that hand a LIBERO rollout to the expert (no simulator needed)."""

import numpy as np
import pytest

from quantvla_ros.workflows.libero_dagger import hand_tilt_deg, off_course


def quat(axis: str, degrees: float) -> np.ndarray:
    """(w, x, y, z) of a rotation about a coordinate axis."""
    half = np.radians(degrees) / 2
    return np.array([np.cos(half), *(np.sin(half) * (np.arange(3) == "xyz".index(axis)))])


def mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product: the rotation b, then a."""
    w1, v1, w2, v2 = a[0], a[1:], b[0], b[1:]
    return np.array([w1 * w2 - v1 @ v2, *(w1 * v2 + w2 * v1 + np.cross(v1, v2))])


TOP_DOWN = quat("x", 180.0)  # LIBERO's hand at rest: its approach axis points down


def state(q: np.ndarray, width: float = 0.06) -> np.ndarray:
    """The 8-dim LIBERO state with the hand at orientation ``q`` (as an axis-angle vector)."""
    q = q if q[0] >= 0 else -q
    norm = np.linalg.norm(q[1:])
    rotvec = 2 * np.arctan2(norm, q[0]) * q[1:] / norm
    return np.array([0.0, 0.0, 1.0, *rotvec, width / 2, -width / 2])


@pytest.mark.parametrize("axis", ["x", "y"])
@pytest.mark.parametrize("tilt", [0.0, 5.0, 20.0, 45.0])
def test_tilt_is_the_approach_axis_angle_from_vertical(axis, tilt):
    yawed = mul(quat("z", 70.0), TOP_DOWN)  # yaw does not tilt
    tilted = mul(quat(axis, tilt), yawed)
    assert hand_tilt_deg(state(tilted)) == pytest.approx(tilt, abs=1e-6)


def test_off_course_names_the_sign():
    assert off_course(state(TOP_DOWN)) == ""
    assert off_course(state(TOP_DOWN, width=0.002)) == "closed on nothing"
    assert off_course(state(TOP_DOWN, width=0.03)) == ""  # closed on an object
    assert off_course(state(mul(quat("y", 12.0), TOP_DOWN))) == "hand tilted"
