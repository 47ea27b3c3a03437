"""From a float policy and an unlabeled buffer to a quantized, balanced artifact."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

import torch

from quantvla_ros.data.buffer import ObservationBuffer
from quantvla_ros.data.sources import open_observations
from quantvla_ros.quant.apply import QuantConfig, student_of
from quantvla_ros.quant.apply_plan import apply_plan, plan_config
from quantvla_ros.quant.artifact import save_artifact
from quantvla_ros.quant.balance import BalanceConfig
from quantvla_ros.quant.layouts import get_layout, select, select_embeddings
from quantvla_ros.quant.manifest import (
    ArtifactManifest,
    BalanceRecord,
    PartRecord,
    QuantizationRecord,
    SourceRecord,
)
from quantvla_ros.quant.observe import LinearInputs, record_linear_inputs
from quantvla_ros.quant.scheme import parse_bits
from quantvla_ros.runtime.policy import Policy
from quantvla_ros.runtime.source import PolicySource
from quantvla_ros.workflows.memory_fit import check_fits, quantize_need
from quantvla_ros.workflows.methods import (
    method_context,
    method_record,
    plan_method,
    refine_method,
)


@dataclass
class QuantizeRequest:
    """One quantization job: float source, calibration data, scheme, layout, balance."""

    source: str  # a named config (random weights, `seed`) or a checkpoint folder
    calib: str  # a buffer folder or synthetic:N
    bits: str = "w4a8"
    preset: str | None = "quantvla"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    clip_search: bool = False
    act_clip: float | None = None  # percentile of |x| each activation channel is clipped at
    smooth_alpha: float | None = None
    group_size: int | None = None  # None: the default for the bit width; 0: per channel
    hadamard: bool | None = None  # None: on for w4a4 only
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    batch_size: int = 8
    max_samples: int | None = None
    # per-linear bits by module name (e.g. {"expert.layers.0.mlp.down_proj": "w8a8"}), with
    # the main scheme's options; recorded per layer in the manifest (format version 3)
    layers: dict[str, str] = field(default_factory=dict)
    # the family's deployment choices by name (PolicyFamily.options; unset: as declared)
    options: dict[str, str] = field(default_factory=dict)
    # the post-training method (workflows/methods.py) and its byte budget, a fraction of the
    # layout's bf16 bytes (None: the bytes of method quantvla at `bits`)
    method: str = "quantvla"
    budget: float | None = None
    method_options: dict[str, str] = field(default_factory=dict)


MIN_SAMPLES = 2  # at least one to calibrate on and one held out for `quantvla report`


def holdout_count(n: int) -> int:
    """Return how many samples `quantvla report` holds out (a quarter, at least one; n < 2: 0)."""
    return max(1, n // 4) if n >= MIN_SAMPLES else 0


def check_buffer_size(n: int, spec: str) -> None:
    """Refuse a buffer too small to calibrate on and hold samples out of."""
    if n < MIN_SAMPLES:
        raise ValueError(
            f"calibration buffer {spec!r} has {n} sample{'s' if n != 1 else ''}; at least "
            f"{MIN_SAMPLES} are needed (calibration samples plus at least one held out, so "
            "that `quantvla report` never scores a sample used for calibration)")


def open_buffer_for(policy: Policy, spec: str) -> ObservationBuffer:
    """Open ``spec``; synthetic observations take the policy's cameras and state length."""
    cams = {c: (policy.cfg.vision.image_size,) * 2 for c in policy.cfg.cameras}
    return open_observations(spec, cameras=cams, state_dim=policy.state_dim or 8)


def prepare_batches(policy: Policy, observations, batch_size: int, noise_seed: int = 0):
    """Batched model inputs plus seeded noise, so teacher and student see the same draws."""
    gen = torch.Generator().manual_seed(noise_seed)
    batches = []
    for i in range(0, len(observations), batch_size):
        for batch in policy.prepare_batches(observations[i:i + batch_size]):
            rows = batch["state"].shape[0]
            shape = (rows, policy.cfg.action_horizon, policy.cfg.action_dim)
            batch["noise"] = torch.randn(shape, generator=gen).to(policy.device)
            batches.append(batch)
    return batches


def quantize_policy(req: QuantizeRequest, out_dir, progress=None,
                    log=print) -> ArtifactManifest:
    """Quantize, calibrate ATM / OHB, write the artifact; returns its manifest."""
    scheme = parse_bits(req.bits, group_size=req.group_size, clip_search=req.clip_search,
                        hadamard=req.hadamard, act_clip=req.act_clip)
    source = PolicySource.resolve(req.source, seed=req.seed)
    identity = source.identity()  # refuses an artifact as the source, before any work
    check_fits(quantize_need(source, req.precision, scheme, req.preset, req.include,
                             req.exclude), req.device,
               f"quantizing {req.source} ({req.precision} teacher, {req.bits})")
    teacher = Policy.load(source, device=req.device, precision=req.precision, **req.options)
    layers = {name: parse_bits(bits, group_size=req.group_size, clip_search=req.clip_search,
                               hadamard=req.hadamard, act_clip=req.act_clip)
              for name, bits in req.layers.items()}
    qcfg = QuantConfig(scheme, get_layout(req.preset, req.include, req.exclude,
                                          family=teacher.family.name), req.smooth_alpha,
                       layers)
    buffer = open_buffer_for(teacher, req.calib)
    check_buffer_size(len(buffer), req.calib)
    calib_idx, _ = buffer.split(holdout_count(len(buffer)))
    if req.max_samples:
        calib_idx = calib_idx[: req.max_samples]
    # `quantvla report` scores every sample after the calibration ones (also those that
    # --max-samples left out), not only the held-out tail.
    log(f"calibrating on {len(calib_idx)} samples ({len(buffer) - len(calib_idx)} after them "
        "left for the report)")
    batches = prepare_batches(teacher, [buffer[i] for i in calib_idx], req.batch_size)
    inputs = None
    student = student_of(teacher.model)  # shares the float tensors: packed bytes only
    ctx = method_context(teacher, student, qcfg, req.budget, batches, req.method_options, log)
    plan = plan_method(req.method, ctx)
    qcfg = plan_config(qcfg, plan)
    if qcfg.needs_calibration():
        inputs = LinearInputs(percentile=scheme.act_clip)
        with record_linear_inputs(teacher.model, select(student, qcfg.layout), inputs):
            teacher.family.sample(teacher.model, batches, inputs)  # pi: drops padding rows
    embeddings = tuple(select_embeddings(student, qcfg.layout))
    names = apply_plan(student, qcfg, plan, inputs, progress=progress)
    refined = refine_method(req.method, ctx, student, plan)
    log(f"quantized {len(names)} linears to {scheme.bits}"
        + (f", {', '.join(embeddings)} to int{qcfg.embedding_bits()} rows" if embeddings
           else ""))
    balance = teacher.family.calibrate_balance(teacher.model, student, batches, req.balance,
                                               progress=progress)
    manifest = ArtifactManifest(
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        model_config=student.cfg,
        source=SourceRecord(**identity),
        quantization=QuantizationRecord(
            scheme, req.preset, qcfg.layout.include, qcfg.layout.exclude, req.smooth_alpha,
            parts={p.name: PartRecord(p.include, p.scheme(scheme), p.why)
                   for p in qcfg.layout.parts},
            embeddings=embeddings, embedding_bits=qcfg.embedding_bits() if embeddings else None,
            layers=dict(qcfg.layers), **method_record(req.method, ctx, plan, refined, student)),
        quantized_modules=tuple(names),
        balance=BalanceRecord(config=req.balance.to_dict(), **balance),
        calibration={**buffer.summary(), "spec": req.calib,
                     "calibration_samples": len(calib_idx),
                     "held_out": len(buffer) - len(calib_idx),
                     "noise_seed": 0},
    )
    save_artifact(student, out_dir, manifest, teacher.normalizer, source.tokenizer)
    return manifest


def quantize_hook(source: str = "pi05-tiny", bits: str = "w4a8", preset: str = "quantvla",
                  seed: int = 0, device: str = "cpu", log=print, options: dict | None = None):
    """Build a `(buffer_path, out_dir) -> artifact path` hook for the calibration node / demo."""
    scheme = parse_bits(bits)  # fail at start-up, not after a recording
    resolved = PolicySource.resolve(source, seed=seed)
    get_layout(preset, family=resolved.family())
    check_fits(quantize_need(resolved, "fp32", scheme, preset), device,
               f"quantizing {source} (fp32 teacher, {bits}) after the recording")

    def run(buffer_path: Path, out_dir: Path) -> Path:
        req = QuantizeRequest(source=source, calib=str(buffer_path), bits=bits, preset=preset,
                              seed=seed, device=device, options=dict(options or {}))
        quantize_policy(req, out_dir, log=log)
        return Path(out_dir)

    return run
