"""Held-out action error of artifacts vs their float teacher, split so one flip cannot hide.

The pooled relative error (the report's) of a LIBERO policy is dominated by the rare frame
whose gripper flips (a +-2 jump on one dim); next to it this prints the median per-frame
error, translation / rotation RMS in robot units, the gripper sign disagreements (frames x
steps) and paired bootstrap 95% intervals (frames resampled) of each artifact's pooled and
median error minus the first artifact's. Same frames and noise as `quantvla report`.

  PYTHONPATH=. .venv/bin/python scripts/daptq_eval.py --calib data/libero_object_s1_calib \
      runs/daptq/libero-quantvla runs/daptq/libero-035 ...
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from quantvla_ros.runtime.policy import Policy
from quantvla_ros.workflows.action_metrics import robot_affine
from quantvla_ros.workflows.quantize import open_buffer_for, prepare_batches
from quantvla_ros.workflows.report import REPORT_NOISE_SEED, held_out, load_teacher


def figures(t, s, z, scale, idx=None):
    """Pooled and median relative error, robot-unit RMS per group, gripper flips."""
    if idx is not None:
        t, s, z = t[idx], s[idx], z[idx]
    err, disp = ((s - t) ** 2).sum((1, 2)), ((t - z) ** 2).sum((1, 2))
    robot = (s - t) * scale
    out = {"pooled": float(np.sqrt(err.sum() / disp.sum())),
           "median": float(np.median(np.sqrt(err / disp)))}
    if idx is None:
        out["translation_rms"] = float(np.sqrt((robot[..., :3] ** 2).mean()))
        out["rotation_rms"] = float(np.sqrt((robot[..., 3:6] ** 2).mean()))
        out["gripper_sign_flips"] = int((np.sign(s[..., 6]) != np.sign(t[..., 6])).sum())
        out["frames_with_flip"] = int((np.sign(s[..., 6]) != np.sign(t[..., 6])).any(1).sum())
    return out


def main() -> None:
    """Evaluate each artifact and print one JSON object."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calib", required=True)
    p.add_argument("artifacts", nargs="+")
    args = p.parse_args()
    chunks, teacher, z, scale = {}, None, None, None
    for path in args.artifacts:
        student = Policy.from_artifact(path, fuse=False)
        if teacher is None:
            teacher = load_teacher(student.manifest, options=student.options)
            buffer = open_buffer_for(teacher, args.calib)
            held, _ = held_out(student.manifest.calibration, buffer)
            batches = prepare_batches(teacher, [buffer[i] for i in held], 8, REPORT_NOISE_SEED)
            ref = teacher.family.sample(teacher.model, batches).double().numpy()
            scale = robot_affine(teacher.normalizer, ref.shape[-1])[1]
            j = scale.shape[0]
            ref = ref[..., :j]
            z = torch.cat([b["noise"] for b in batches]).double().numpy()[..., :j]
        chunks[path] = student.family.sample(student.model, batches).double().numpy()[..., :j]
    rng = np.random.default_rng(0)
    boot = rng.integers(0, len(ref), (2000, len(ref)))
    first = args.artifacts[0]
    out = {"held_out_frames": len(ref)}
    for path, s in chunks.items():
        row = figures(ref, s, z, scale)
        if path != first:
            for key in ("pooled", "median"):
                diff = [figures(ref, s, z, scale, i)[key]
                        - figures(ref, chunks[first], z, scale, i)[key] for i in boot]
                row[f"{key}_minus_first_ci95"] = [float(np.percentile(diff, 2.5)),
                                                  float(np.percentile(diff, 97.5))]
        out[path] = row
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
