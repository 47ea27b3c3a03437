"""Build models on the meta device, then either load weights or draw seeded random ones.

Every family (pi0 / pi0.5, GR00T) is one `Family`: its module class and its random init.
`build_meta` / `random_model` pick it by the config's `family`, so callers never branch on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from quantvla_ros.models.groot.model import GrootModel, init_random_weights
from quantvla_ros.models.pi.layers import AdaRMSNorm, RMSNorm
from quantvla_ros.models.pi.model import PiModel
from quantvla_ros.models.registry import ModelConfig, family_of

# Norm parameters stay float32 in every precision, as lerobot keeps them: Gemma's (1 + w) and
# SmoothQuant factors folded into it sit near -1 / 0 where bf16 is coarse (gain errors of
# percents), and adaRMS scale / shift feed every expert block.
FP32_MODULES = (RMSNorm, AdaRMSNorm)


@dataclass(frozen=True)
class Family:
    """How to build one model family: its module class and its seeded random init."""

    build: Callable[[ModelConfig], nn.Module]
    init_random: Callable[[nn.Module, torch.Generator], None]


def build_meta(cfg: ModelConfig) -> nn.Module:
    """Build the module tree with no storage: loading assigns tensors later, never copying."""
    with torch.device("meta"):
        return FAMILIES[family_of(cfg)].build(cfg)


def param_count(cfg: ModelConfig) -> int:
    """Return the config's parameter count (counted on the meta device, no memory)."""
    return sum(p.numel() for p in build_meta(cfg).parameters())


@torch.no_grad()
def random_model(cfg: ModelConfig, seed: int = 0, device="cpu",
                 dtype=torch.float32) -> nn.Module:
    """Build a seeded random-weight model: same seed, device and dtype -> same weights."""
    model = build_meta(cfg).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    FAMILIES[family_of(cfg)].init_random(model, gen)
    return cast_floating(model, dtype).eval()


def init_pi_random(model: PiModel, gen: torch.Generator) -> None:
    """Linear / embedding weights ~ N(0, 0.02); norms at identity; adaRMS gates biased to 1.

    The gate bias lets the expert's blocks pass signal (an all-zero gate would silence them).
    """
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


FAMILIES: dict[str, Family] = {
    "pi": Family(build=PiModel, init_random=init_pi_random),
    "groot": Family(build=GrootModel, init_random=init_random_weights),
}


def fp32_tensor_names(model: torch.nn.Module) -> frozenset[str]:
    """Return the state-dict names kept float32 in every precision (norm parameters)."""
    return frozenset(
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules() if isinstance(module, FP32_MODULES)
        for name, _ in [*module.named_parameters(recurse=True),
                        *module.named_buffers(recurse=True)]
    )


def tensor_dtype(name: str, stored: torch.dtype, dtype: torch.dtype | None,
                 fp32_names: frozenset[str]) -> torch.dtype:
    """Return the dtype a loaded floating tensor gets: float32 for norms, else ``dtype``."""
    if name in fp32_names:
        return torch.float32
    return dtype or stored


@torch.no_grad()
def cast_floating(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast floating parameters and buffers to ``dtype`` in place, norms to float32."""
    keep = fp32_tensor_names(model)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point():
            tensor.data = tensor.data.to(torch.float32 if name in keep else dtype)
    return model


def compute_dtype(model: torch.nn.Module) -> torch.dtype:
    """Return the model's activation dtype: that of its first non-norm floating tensor."""
    keep = fp32_tensor_names(model)
    return next(t.dtype for n, t in model.named_parameters()
                if n not in keep and t.is_floating_point())
