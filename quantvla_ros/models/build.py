"""Build models on the meta device, then either load weights or draw seeded random ones.

Each family's module class, random init and float32-kept modules come from its `ModelFamily`
(models/registry.py), so callers never branch on the family.
"""

from __future__ import annotations

import torch
from torch import nn

from quantvla_ros.models.registry import ModelConfig, model_family


def build_meta(cfg: ModelConfig) -> nn.Module:
    """Build the module tree with no storage: loading assigns tensors later, never copying."""
    with torch.device("meta"):
        return model_family(cfg).build(cfg)


def param_count(cfg: ModelConfig) -> int:
    """Return the config's parameter count (counted on the meta device, no memory)."""
    return sum(p.numel() for p in build_meta(cfg).parameters())


@torch.no_grad()
def random_model(cfg: ModelConfig, seed: int = 0, device="cpu",
                 dtype=torch.float32) -> nn.Module:
    """Build a seeded random-weight model: same seed, device and dtype -> same weights."""
    model = build_meta(cfg).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    model_family(cfg).init_random(model, gen)
    return cast_floating(model, dtype).eval()


def fp32_tensor_names(model: torch.nn.Module) -> frozenset[str]:
    """Return the state-dict names kept float32 in every precision (the family's choice)."""
    fp32_modules = model_family(model.cfg).fp32_modules
    return frozenset(
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules() if isinstance(module, fp32_modules)
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
