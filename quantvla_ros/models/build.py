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
    """Build a seeded random-weight model: same seed, device and dtype -> same weights.

    Weights are drawn in float32 and then cast, so a bf16 model holds the fp32 model's
    values rounded; in another dtype than float32 they are drawn a slice of the model at a
    time, so the float32 model never exists whole (`_init_in_slices`).
    """
    model = build_meta(cfg)
    gen = torch.Generator(device=device).manual_seed(seed)
    if dtype == torch.float32:
        model = model.to_empty(device=device)
        model_family(cfg).init_random(model, gen)
    else:
        _init_in_slices(model, gen, device, dtype)
    return cast_floating(model, dtype).eval()


INIT_SLICE_BYTES = 256 << 20  # float32 bytes drawn per pass of the family's init


def _init_in_slices(model: nn.Module, gen, device, dtype: torch.dtype) -> None:
    """Run the family's init on a few float32 parameters at a time (the rest on meta).

    Meta tensors take no draws from the generator, so each parameter gets exactly the values
    the whole-model init gives it; it is cast to ``dtype`` (norms float32) before the next.
    """
    keep = fp32_tensor_names(model)
    for module in model.modules():
        for n, b in module._buffers.items():
            if b is not None:
                module._buffers[n] = torch.empty_like(b, device=device)
    where: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for n, p in module._parameters.items():
            if p is not None:
                where.setdefault(id(p), []).append((module, n))
    params = list(model.named_parameters())
    done: dict[int, nn.Parameter] = {}

    def put(p, value):
        for module, n in where[id(p)]:
            module._parameters[n] = value

    i = 0
    while i < len(params):
        chunk, size = [], 0
        while i < len(params) and (not chunk or size < INIT_SLICE_BYTES):
            chunk.append(params[i])
            size += params[i][1].numel() * 4
            i += 1
        drawn = {}
        for _, p in chunk:
            drawn[id(p)] = nn.Parameter(torch.empty(p.shape, device=device),
                                        requires_grad=p.requires_grad)
            put(p, drawn[id(p)])
        model_family(model.cfg).init_random(model, gen)
        for name, p in chunk:
            real = where[id(p)][0][0]._parameters[where[id(p)][0][1]]
            done[id(p)] = nn.Parameter(real.data.to(torch.float32 if name in keep else dtype),
                                       requires_grad=p.requires_grad)
            put(p, p)  # back to meta: the next passes must not draw it again
    for _, p in params:
        put(p, done[id(p)])


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
