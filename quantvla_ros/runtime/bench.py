"""End-to-end latency benchmark of one action chunk (prefix + all denoising steps)."""

from __future__ import annotations

import resource
import statistics

import numpy as np
import torch

from ..models.config import get_config
from .policy import Policy


def synthetic_observation(policy: Policy, seed: int = 0) -> dict:
    """Every camera slot filled (the longest prefix), a plausible state and instruction."""
    rng = np.random.default_rng(seed)
    size = policy.cfg.vision.image_size
    images = {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
              for c in policy.cfg.cameras}
    state = rng.uniform(-1, 1, policy.state_dim or 8).astype(np.float32)
    return {"images": images, "state": state, "instruction": "pick up the red block"}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def bench_e2e(model: str, precision: str = "fp32", device: str = "cpu", runs: int = 10,
              warmup: int = 2, seed: int = 0, allow_full_on_cpu: bool = False) -> dict:
    """Median / p90 chunk latency after warm-up, prefix vs denoise split and peak memory."""
    get_config(model)  # an unknown name fails here, with suggestions
    if device == "cpu" and not model.endswith("-tiny") and not allow_full_on_cpu:
        raise ValueError(
            f"{model!r} is full size: on a CPU one chunk takes minutes. Use pi05-tiny or "
            "pi0-tiny, or run on --device cuda"
        )
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda requested but no CUDA GPU is available")
        torch.cuda.reset_peak_memory_stats()
    policy = Policy.from_config(model, seed=seed, device=device, precision=precision)
    obs = synthetic_observation(policy, seed)
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
        "weight_bytes": sum(p.numel() * p.element_size() for p in policy.model.parameters()),
    }
    if device == "cuda":
        result["device_name"] = torch.cuda.get_device_name()
        result["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        result["device_name"] = "cpu"
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result
