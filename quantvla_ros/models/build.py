"""Build models on the meta device, then either load weights or draw seeded random ones."""

from __future__ import annotations

import torch

from quantvla_ros.models.config import PiConfig
from quantvla_ros.models.layers import AdaRMSNorm, RMSNorm
from quantvla_ros.models.pi0 import PiModel

# Norm parameters stay float32 in every precision, as lerobot keeps them: Gemma's (1 + w) and
# SmoothQuant factors folded into it sit near -1 / 0 where bf16 is coarse (gain errors of
# percents), and adaRMS scale / shift feed every expert block.
FP32_MODULES = (RMSNorm, AdaRMSNorm)


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
    return cast_floating(model, dtype).eval()


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
