"""Build models on the meta device, then either load weights or draw seeded random ones."""

from __future__ import annotations

import torch

from quantvla_ros.models.config import PiConfig
from quantvla_ros.models.pi0 import PiModel


def build_meta(cfg: PiConfig) -> PiModel:
    """Build the module tree with no storage: loading assigns tensors later, never copying."""
    with torch.device("meta"):
        return PiModel(cfg)


def param_count(cfg: PiConfig) -> int:
    """Return the config's parameter count (counted on the meta device, no memory)."""
    return sum(p.numel() for p in build_meta(cfg).parameters())


@torch.no_grad()
def random_model(cfg: PiConfig, seed: int = 0, device="cpu", dtype=torch.float32) -> PiModel:
    """Build a seeded random-weight model: same seed, device and dtype -> same weights.

    Linear / embedding weights ~ N(0, 0.02); norms at identity; adaRMS gates biased to 1 so
    the expert's blocks pass signal (an all-zero gate would silence them).
    """
    model = build_meta(cfg).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("dense.bias"):
            p.zero_()
            p[2 * p.numel() // 3:] = 1.0
        elif "norm" in name and name.endswith("weight") and "dense" not in name:
            p.fill_(1.0 if "layer_norm" in name or "post_layernorm" in name else 0.0)
        elif name.endswith("bias"):
            p.zero_()
        else:
            p.normal_(0.0, 0.02, generator=gen)
    return model.to(dtype).eval()
