"""Fidelity report: teacher vs quantized student on held-out buffer samples, same noise.

Held-out means not used for calibration: on the calibration buffer itself (or what may be
it: a synthetic buffer of the same seed, a recorded one of the same path or source) the
samples after the artifact's calibration samples; on another buffer, all of them. Action
errors are measured against the teacher's displacement (workflows/action_metrics.py).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from quantvla_ros.quant.manifest import ArtifactError, ArtifactManifest, method_summary
from quantvla_ros.runtime.family import PolicyOptions
from quantvla_ros.runtime.policy import Policy
from quantvla_ros.runtime.source import PolicySource, PolicySourceError, checkpoint_digest
from quantvla_ros.workflows.action_metrics import model_space_error
from quantvla_ros.workflows.quantize import holdout_count, open_buffer_for, prepare_batches

REPORT_NOISE_SEED = 1234


def load_teacher(manifest: ArtifactManifest, device="cpu", precision="fp32",
                 checkpoint=None, options: PolicyOptions | None = None) -> Policy:
    """Load the float policy the artifact was made from; a checkpoint must match its sha256.

    `options` (the student's resolved ones) make the teacher read inputs as the student does.
    """
    src = manifest.source
    opts = dict(options or {})
    if src.kind == "named":
        return Policy.from_config(src.model, seed=src.seed, device=device, precision=precision,
                                  **opts)
    folder = Path(checkpoint or src.path)
    try:
        found = PolicySource.resolve(folder).kind == "checkpoint"
    except PolicySourceError:
        found = False
    if not found:
        raise ArtifactError(f"source checkpoint {folder} not found; pass its current folder")
    digest = checkpoint_digest(folder)
    if digest != src.sha256:
        raise ArtifactError(
            f"source hash mismatch: the weights in {folder} have sha256 {digest[:12]}..., "
            f"the artifact was made from {src.sha256[:12]}...")
    return Policy.from_checkpoint(folder, device=device, precision=precision, **opts)


def held_out(calibration: dict, buffer) -> tuple[list[int], str]:
    """Return the indices of `buffer` not used for calibration, and how they were chosen.

    `calibration` is the manifest's record. Raises ValueError where none are left.
    """
    summary, n = buffer.summary(), len(buffer)
    used = calibration.get("calibration_samples")
    if summary.get("synthetic") != bool(calibration.get("synthetic")):
        same = False
    elif summary.get("synthetic"):  # observation i depends on (seed, i, cameras, state_dim)
        same = all(summary.get(k) == calibration.get(k) for k in ("seed", "cameras",
                                                                  "state_dim"))
    else:
        same = (summary.get("path") == calibration.get("path")
                or summary.get("source") == calibration.get("source"))
    if not same:
        return list(range(n)), "a buffer other than the calibration buffer: every sample"
    if used is None:  # an artifact that did not record it: the split quantize made
        start = n - holdout_count(n)
        how = "the tail quarter quantize holds out"
    else:
        start, how = int(used), f"the samples after the {used} calibration samples"
    if start >= n:
        raise ValueError(
            f"the calibration buffer has {n} samples and the artifact was calibrated on the "
            f"first {start}: nothing is held out to report on (give a buffer with more than "
            f"{start} samples, e.g. a longer recording or synthetic:{start + 1}+)")
    return list(range(start, n)), how


def build_report(artifact, calib: str, device="cpu", precision="fp32", batch_size=8,
                 checkpoint=None, options: dict | None = None) -> dict:
    """Compare teacher, student and student without ATM / OHB on held-out samples.

    All three see the same noise (REPORT_NOISE_SEED). Returns JSON-ready action errors,
    per-layer ratios before / after balancing and per-denoising-step ratios. `options`
    are the student's deployment choices by name (PolicyFamily.options).
    """
    student = Policy.from_artifact(artifact, device=device, precision=precision, fuse=False,
                                   **(options or {}))
    manifest = student.manifest
    # the teacher writes the prompt the way the student does
    teacher = load_teacher(manifest, device, precision, checkpoint, student.options)
    buffer = open_buffer_for(teacher, calib)
    held, how = held_out(manifest.calibration, buffer)
    batches = prepare_batches(teacher, [buffer[i] for i in held], batch_size,
                              REPORT_NOISE_SEED)
    noise = torch.cat([b["noise"] for b in batches]).float().cpu()
    balance = manifest.balance
    unbalanced = copy.deepcopy(student.model)
    student.family.unfold_balance(unbalanced, balance.alpha, balance.beta)
    tables = student.family.balance_tables(teacher.model, student.model, unbalanced, batches,
                                           balance.towers)
    t_act, s_act, u_act = (tables[n] for n in ("teacher", "student", "unbalanced"))
    layers = [{"layer": row["layer"], "alpha": balance.alpha.get(row["layer"]),
               "beta": balance.beta.get(row["layer"]),
               **{k: v for k, v in row.items() if k != "layer"}} for row in tables["layers"]]
    summary = buffer.summary()
    return {
        "artifact": str(artifact), "bits": manifest.bits,
        "preset": manifest.quantization.preset, "parts": manifest.parts_summary(),
        **method_summary(manifest),
        "source": manifest.source.to_dict(), "balance_config": balance.config,
        "calibration": {"spec": calib, "synthetic": bool(summary.get("synthetic")),
                        "source": summary.get("source"), "held_out_samples": len(held),
                        "held_out_indices": [held[0], held[-1] + 1], "held_out": how},
        "action_error": model_space_error(t_act, s_act, noise, teacher.normalizer),
        "action_error_without_balance": model_space_error(t_act, u_act, noise,
                                                          teacher.normalizer),
        "layers": layers,
        "per_step_after": tables["per_step_after"],
    }
