"""Action-chunk error of a student against its teacher, measured against what the flow moves.

Both policies integrate the flow from the same noise, so a chunk is noise plus the teacher's
displacement. Relative to the chunk itself, most of its size is that shared noise (on random
weights W4A8 looked about 4.5x better that way), so the headline figures are relative to the
teacher's displacement (actions minus noise, model space), and in the robot's action units:

- ``rel_l2_vs_displacement`` = ||student - teacher|| / ||teacher - noise|| and
  ``sqnr_db`` = 20 log10 of its inverse, over the robot's action dims in model space;
- ``robot_rms_per_joint`` / ``robot_max_abs_per_joint``: the error unnormalized through the
  policy's normalizer (robot units; equal to model units for an identity normalizer);
- ``rel_l2_vs_actions_incl_noise`` = ||student - teacher|| / ||teacher||: the old figure,
  kept under a name that says what it divides by.

All are given pooled and per sample.
"""

from __future__ import annotations

import math

import numpy as np


def robot_affine(normalizer, model_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(offset, scale) [J] with robot action = model action * scale + offset, J robot dims."""
    zero = np.zeros((1, model_dim), np.float64)
    offset = np.asarray(normalizer.unnormalize_actions(zero), np.float64)[0]
    scale = np.asarray(normalizer.unnormalize_actions(zero + 1.0), np.float64)[0] - offset
    return offset, scale


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else (0.0 if num == 0 else None)


def _sqnr(err: float, signal: float) -> float | None:
    """SQNR in dB; None where undefined (no error at all, or no signal): JSON has no inf."""
    return 20 * math.log10(signal / err) if err > 0 and signal > 0 else None


def chunk_error(teacher, student, noise, scale) -> dict:
    """Errors of student vs teacher chunks, both from `noise`; model space, [N, H, J] each.

    ``scale`` [J] converts model units to robot units (robot_affine); J are the robot's
    dims (padded model dims are left out: their displacement is not the robot's motion).
    Returns pooled figures, ``per_sample`` dicts and ``per_step_rel_l2_vs_displacement`` [H].
    """
    t, s, z = (np.asarray(a, np.float64) for a in (teacher, student, noise))
    if not t.shape == s.shape == z.shape or t.ndim != 3:
        raise ValueError(f"chunks must share one [N, H, J] shape, got {t.shape}, {s.shape}, "
                         f"{z.shape}")
    scale = np.asarray(scale, np.float64)
    err, disp = s - t, t - z
    robot = err * scale

    def figures(e, d, ref, r) -> dict:
        en, dn, rn = (float(np.sqrt((x**2).sum())) for x in (e, d, ref))
        return {
            "rel_l2_vs_displacement": _ratio(en, dn),
            "sqnr_db": _sqnr(en, dn),
            "rel_l2_vs_actions_incl_noise": _ratio(en, rn),
            "max_abs_model": float(np.abs(e).max()) if e.size else 0.0,
            "robot_rms": float(np.sqrt((r**2).mean())) if r.size else 0.0,
            "robot_rms_per_joint": np.sqrt((r**2).reshape(-1, r.shape[-1]).mean(0)).tolist(),
        }

    pooled = figures(err, disp, t, robot)
    pooled["robot_max_abs_per_joint"] = np.abs(robot).reshape(-1, robot.shape[-1]).max(0) \
        .tolist()
    pooled["displacement_rms_model"] = float(np.sqrt((disp**2).mean()))
    pooled["per_sample"] = [figures(err[i], disp[i], t[i], robot[i]) for i in range(len(t))]
    pooled["per_step_rel_l2_vs_displacement"] = [
        _ratio(float(np.sqrt((err[:, k]**2).sum())), float(np.sqrt((disp[:, k]**2).sum())))
        for k in range(t.shape[1])]
    return pooled


def model_space_error(teacher, student, noise, normalizer) -> dict:
    """`chunk_error` for model-space chunks [N, H, A]: the first J dims, J robot dims."""
    t = np.asarray(teacher, np.float64)
    _, scale = robot_affine(normalizer, t.shape[-1])
    j = scale.shape[0]
    return chunk_error(t[..., :j], np.asarray(student)[..., :j], np.asarray(noise)[..., :j],
                       scale)


def robot_space_error(teacher_robot, student_robot, noise, normalizer) -> dict:
    """`chunk_error` for chunks in robot units [N, P, J] and model-space noise [N, >= P, >= J].

    Robot units map back to model space through the normalizer's affine map; a joint whose
    scale is 0 (a constant joint) carries no information and counts as error-free.
    """
    t, s = np.asarray(teacher_robot, np.float64), np.asarray(student_robot, np.float64)
    z = np.asarray(noise, np.float64)
    p, j = t.shape[1:]
    offset, scale = robot_affine(normalizer, z.shape[-1])
    offset, scale = offset[:j], scale[:j]
    z = z[:, :p, :j]
    keep = scale != 0
    safe = np.where(keep, scale, 1.0)
    t_model = np.where(keep, (t - offset) / safe, z)
    s_model = np.where(keep, (s - offset) / safe, z)
    return chunk_error(t_model, s_model, z, scale)
