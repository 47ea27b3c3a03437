"""Action-chunk error figures: against the displacement, in robot units, per sample."""

import math

import numpy as np
import pytest

from quantvla_ros.models.pi.normalization import Normalizer
from quantvla_ros.workflows.action_metrics import (
    chunk_error,
    model_space_error,
    robot_affine,
    robot_space_error,
)


def _chunks(n=3, h=10, a=8, seed=0):
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n, h, a))
    teacher = noise + 0.2 * rng.standard_normal((n, h, a))  # the flow moves noise a little
    student = teacher + 0.01 * rng.standard_normal((n, h, a))
    return teacher, student, noise


def _quantile_normalizer(joints=6):
    lo = np.linspace(-2.0, 0.0, joints).astype(np.float32)
    hi = lo + np.linspace(0.5, 3.0, joints).astype(np.float32)
    stats = {"action.q01": lo, "action.q99": hi,
             "observation.state.q01": lo, "observation.state.q99": hi}
    return Normalizer("quantiles", stats)


def test_error_is_relative_to_the_displacement_not_the_noise():
    t, s, z = _chunks()
    e = chunk_error(t, s, z, np.ones(8))
    err, disp = np.linalg.norm(s - t), np.linalg.norm(t - z)
    assert e["rel_l2_vs_displacement"] == pytest.approx(err / disp)
    assert e["rel_l2_vs_actions_incl_noise"] == pytest.approx(err / np.linalg.norm(t))
    # most of a chunk is the shared noise: the old figure flatters by about 5x here
    assert e["rel_l2_vs_displacement"] > 4 * e["rel_l2_vs_actions_incl_noise"]
    assert e["sqnr_db"] == pytest.approx(20 * math.log10(disp / err))
    assert len(e["per_sample"]) == 3 and len(e["per_step_rel_l2_vs_displacement"]) == 10
    i = 1
    assert e["per_sample"][i]["rel_l2_vs_displacement"] == pytest.approx(
        np.linalg.norm(s[i] - t[i]) / np.linalg.norm(t[i] - z[i]))
    assert e["robot_rms_per_joint"] == pytest.approx(
        np.sqrt(((s - t) ** 2).reshape(-1, 8).mean(0)).tolist())


def test_robot_units_through_the_normalizer():
    norm = _quantile_normalizer()
    offset, scale = robot_affine(norm, 8)
    assert offset.shape == scale.shape == (6,)
    t, s, z = _chunks()
    m = model_space_error(t, s, z, norm)  # padded model dims 6, 7 are not the robot's
    assert m["rel_l2_vs_displacement"] == pytest.approx(
        np.linalg.norm((s - t)[..., :6]) / np.linalg.norm((t - z)[..., :6]))
    robot_err = (norm.unnormalize_actions(s) - norm.unnormalize_actions(t))
    assert m["robot_rms_per_joint"] == pytest.approx(
        np.sqrt((robot_err**2).reshape(-1, 6).mean(0)).tolist(), rel=1e-5)
    # the demo sees only robot-unit chunks (the first 5 points) and the model-space noise
    r = robot_space_error(norm.unnormalize_actions(t)[:, :5], norm.unnormalize_actions(s)[:, :5],
                          z, norm)
    m5 = model_space_error(t[:, :5], s[:, :5], z[:, :5], norm)
    for key in ("rel_l2_vs_displacement", "sqnr_db", "robot_rms"):
        assert r[key] == pytest.approx(m5[key], rel=1e-5), key


def test_identical_chunks_are_error_free():
    t, _, z = _chunks()
    e = chunk_error(t, t, z, np.ones(8))
    assert e["rel_l2_vs_displacement"] == 0.0 and e["sqnr_db"] is None
    with pytest.raises(ValueError, match="one \\[N, H, J\\] shape"):
        chunk_error(t, t[:, :5], z, np.ones(8))
