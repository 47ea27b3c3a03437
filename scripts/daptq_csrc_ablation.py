"""CSRC ablation on one policy: interface and held-out action error per compensation variant.

The student is the W4A8 `quantvla` layout (no ATM / OHB: on these policies they stay 1);
CSRC is fitted on the first --calib-frames of the buffer and scored on the rest, teacher and
student from the same noise (the report's seed). Variants: none, g only (free fold),
g + d (bias), Eq. 4-5 moments, and low-rank cross-channel maps applied at runtime (they
cannot fold into integer k / v: this measures what they would buy). Paired bootstrap 95%
intervals of each variant's pooled error minus the uncompensated one, over held-out frames.

  PYTHONPATH=. .venv/bin/python scripts/daptq_csrc_ablation.py \
      --checkpoint checkpoints/pi05-libero-object --calib data/libero_object_s1_calib
"""

from __future__ import annotations

import argparse
import copy
import json

import numpy as np
import torch

from quantvla_ros.quant.apply import QuantConfig, quantize_
from quantvla_ros.quant.daptq_compensation import (
    CsrcConfig,
    calibrate_csrc,
    interface_names,
    interface_outputs,
)
from quantvla_ros.quant.layouts import get_layout
from quantvla_ros.quant.scheme import parse_bits
from quantvla_ros.runtime.policy import Policy
from quantvla_ros.workflows.action_metrics import model_space_error, robot_affine
from quantvla_ros.workflows.quantize import open_buffer_for, prepare_batches
from quantvla_ros.workflows.report import REPORT_NOISE_SEED

VARIANTS = {
    "g": CsrcConfig(bias=False),
    "g+d": CsrcConfig(),
    "moments g": CsrcConfig(solver="moments", bias=False),
    "moments g+d": CsrcConfig(solver="moments"),
    "g+d, values only": CsrcConfig(),
    "g+d+rank4 (runtime)": CsrcConfig(rank=4),
    "g+d+rank8 (runtime)": CsrcConfig(rank=8),
    "g+d+full rank (runtime)": CsrcConfig(rank=10_000),
}


def per_frame(t, s, z, j):
    """Squared error and squared displacement per frame, robot dims only."""
    t, s, z = (np.asarray(a, np.float64)[..., :j] for a in (t, s, z))
    return ((s - t) ** 2).sum((1, 2)), ((t - z) ** 2).sum((1, 2))


def _rel(ref, z):
    return float((z - ref).norm() / ref.norm())


def bootstrap(e_a, e_b, d, n=2000, seed=0):
    """95% interval of pooled rel. error (b) minus (a), frames resampled in pairs."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), (n, len(d)))
    diff = np.sqrt(e_b[idx].sum(1) / d[idx].sum(1)) - np.sqrt(e_a[idx].sum(1) / d[idx].sum(1))
    return [float(np.percentile(diff, 2.5)), float(np.percentile(diff, 97.5))]


def main() -> None:
    """Run every variant and print one JSON object."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--calib", required=True)
    p.add_argument("--calib-frames", type=int, default=32)
    p.add_argument("--bits", default="w4a8")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), help="names to run")
    args = p.parse_args()
    teacher = Policy.load(args.checkpoint)
    buffer = open_buffer_for(teacher, args.calib)
    obs = [buffer[i] for i in range(len(buffer))]
    calib = prepare_batches(teacher, obs[:args.calib_frames], 8)
    held = prepare_batches(teacher, obs[args.calib_frames:], 8, REPORT_NOISE_SEED)
    noise = torch.cat([b["noise"] for b in held]).float()
    student = copy.deepcopy(teacher.model)
    quantize_(student, QuantConfig(parse_bits(args.bits), get_layout("quantvla")))
    ref = teacher.family.sample(teacher.model, held)
    j = robot_affine(teacher.normalizer, ref.shape[-1])[1].shape[0]
    base = teacher.family.sample(student, held)
    e0, d = per_frame(ref, base, noise, j)
    out = {"frames": {"calibration": args.calib_frames, "held_out": len(noise)},
           "none": {"rel_l2": model_space_error(ref, base, noise, teacher.normalizer)[
               "rel_l2_vs_displacement"]}}
    names = interface_names(student)
    z_t = interface_outputs(teacher.model, held, names)
    z_0 = interface_outputs(student, held, names)
    for name in args.variants:
        cfg = VARIANTS[name]
        s = copy.deepcopy(student)
        only = [n for n in interface_names(s) if n.endswith("v_proj")] if "only" in name \
            else None
        _, rows = calibrate_csrc(teacher.model, s, calib, cfg, runtime=cfg.rank > 0,
                                 names=only)
        act = teacher.family.sample(s, held)
        fitted = [r["linear"] for r in rows]
        z_c = interface_outputs(s, held, fitted)  # a runtime map's wrapper outputs the mapped z
        e, _ = per_frame(ref, act, noise, j)
        out[name] = {
            "rel_l2": model_space_error(ref, act, noise, teacher.normalizer)[
                "rel_l2_vs_displacement"],
            "minus_none_ci95": bootstrap(e0, e, d),
            "frames_better": int((e < e0).sum()),
            "interface_error_before_after": [[round(r["error_before"], 5),
                                              round(r["error_after"], 5)] for r in rows],
            "held_out_interface_error_before_after": [
                [round(_rel(z_t[n], z_0[n]), 5), round(_rel(z_t[n], z), 5)]
                for n, z in zip(fitted, z_c.values(), strict=True)],
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
