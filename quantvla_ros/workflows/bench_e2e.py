"""End-to-end latency benchmark of one action chunk (prefix + all denoising steps)."""

from __future__ import annotations

import resource
import statistics

import numpy as np
import torch

from quantvla_ros.data.observation import Observation
from quantvla_ros.models.registry import get_config
from quantvla_ros.runtime.policy import Policy


def bench_observation(policy: Policy, seed: int = 0) -> Observation:
    """Every camera slot filled (the longest prefix), a plausible state and instruction."""
    rng = np.random.default_rng(seed)
    size = policy.cfg.vision.image_size
    images = {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
              for c in policy.cfg.cameras}
    state = rng.uniform(-1, 1, policy.state_dim or 8).astype(np.float32)
    return Observation(images, state, "pick up the red block")


def percentile(values: list[float], q: float) -> float:
    """Return the ``q``-th percentile (0 to 100) of ``values``."""
    return float(np.percentile(np.asarray(values), q))


FLOAT_PRECISIONS = ("fp32", "bf16", "fp16")


def quantized_random_policy(model: str, bits: str, device: str, seed: int,
                            preset: str = "quantvla", options: dict | None = None) -> Policy:
    """Build a random-weight policy quantized round-to-nearest, for latency only.

    Latency does not depend on the calibration, and ATM / OHB are folded into weights, so
    they cost nothing at runtime.
    """
    from quantvla_ros.quant.apply import QuantConfig, quantize_
    from quantvla_ros.quant.layouts import get_layout
    from quantvla_ros.quant.scheme import parse_bits

    act = "bf16" if device == "cuda" else "fp32"
    policy = Policy.from_config(model, seed=seed, device=device, precision=act,
                                **(options or {}))
    layout = get_layout(preset, family=policy.family.name)
    quantize_(policy.model, QuantConfig(parse_bits(bits), layout))
    fused = policy.family.fuse_projections(policy.model)  # as Policy.from_artifact serves it
    policy.source += f", {bits} {preset} round-to-nearest, fused {fused}"
    return policy


def bench_e2e(model: str, precision: str = "fp32", device: str = "cpu", runs: int = 10,
              warmup: int = 2, seed: int = 0, allow_full_on_cpu: bool = False,
              artifact: str | None = None, options: dict | None = None) -> dict:
    """Median / p90 chunk latency after warm-up, prefix vs denoise split and peak memory.

    `precision` is a float dtype (fp32 / bf16 / fp16) or integer bits (w8a8 / w4a8 / w4a4,
    quantized from random weights); `artifact` benchmarks a quantized artifact instead;
    `options` are the family's deployment choices (see `PolicyFamily.options`).
    """
    check_bench_request(model, device, artifact, allow_full_on_cpu)
    policy, model, precision = build_bench_policy(model, precision, device, seed, artifact,
                                                  options)
    return measure_policy(policy, model, precision, device, runs, warmup, seed)


def check_bench_request(model: str, device: str, artifact: str | None = None,
                        allow_full_on_cpu: bool = False) -> None:
    """Raise ValueError for an unknown model, a full-size model on CPU or a missing GPU."""
    if artifact is None:
        get_config(model)  # an unknown name fails here, with suggestions
    if device == "cpu" and artifact is None and not model.endswith(("-tiny", "-micro")) \
            and not allow_full_on_cpu:
        raise ValueError(
            f"{model!r} is full size: on a CPU one chunk takes minutes. Use a -tiny or "
            "-micro config (`quantvla models`), or run on --device cuda"
        )
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA GPU is available")


def build_bench_policy(model: str, precision: str, device: str, seed: int = 0,
                       artifact: str | None = None, options: dict | None = None):
    """Return (policy, model name, precision) as :func:`bench_e2e` benchmarks them."""
    if artifact is not None:
        act = precision if precision in FLOAT_PRECISIONS else "fp32"
        policy = Policy.from_artifact(artifact, device=device, precision=act, seed=seed,
                                      **(options or {}))
        model = policy.cfg.name
        precision = policy.manifest.bits
    elif precision in FLOAT_PRECISIONS:
        policy = Policy.from_config(model, seed=seed, device=device, precision=precision,
                                    **(options or {}))
    else:
        policy = quantized_random_policy(model, precision, device, seed, options=options)
    return policy, model, precision


def measure_policy(policy: Policy, model: str, precision: str, device: str, runs: int,
                   warmup: int, seed: int = 0) -> dict:
    """Time ``runs`` chunks after ``warmup``; the result dict of :func:`bench_e2e`."""
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    obs = bench_observation(policy, seed)
    for _ in range(warmup):
        policy.infer(obs)
    timings = [policy.infer(obs).timing_ms for _ in range(runs)]
    chunk = [t["prefix"] + t["denoise"] for t in timings]
    out = policy.infer(obs)
    result = {
        "model": model, "precision": precision, "device": device, "runs": runs,
        "warmup": warmup, "weights": policy.source,
        "latency_ms": {"median": statistics.median(chunk), "p90": percentile(chunk, 90)},
        "prefix_ms": statistics.median(t["prefix"] for t in timings),
        "denoise_ms": statistics.median(t["denoise"] for t in timings),
        "preprocess_ms": statistics.median(t["preprocess"] for t in timings),
        "prefix_tokens": policy.cfg.prefix_len, "num_steps": policy.cfg.num_steps,
        "chunk_shape": list(out.actions.shape),
        "weight_bytes": sum(t.numel() * t.element_size() for t in
                            [*policy.model.parameters(), *policy.model.buffers()]),
    }
    if device == "cuda":
        result["device_name"] = torch.cuda.get_device_name()
        result["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        result["device_name"] = "cpu"
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result
