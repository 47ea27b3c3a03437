"""One call that quantizes a model in place, torchao style: `quantize_(model, config)`.

Also the empty (storage-free) quantized modules that artifact loading assigns into and the
footprint sizes, built here so both follow exactly what quantize_ stores.
"""

from __future__ import annotations

import copy
import ctypes
from dataclasses import dataclass, field

import torch
from torch import nn

from quantvla_ros.models.family import Layout
from quantvla_ros.quant.layouts import schemes, select_embeddings
from quantvla_ros.quant.observe import LinearInputs
from quantvla_ros.quant.qembedding import QuantEmbedding
from quantvla_ros.quant.qlinear import QuantLinear
from quantvla_ros.quant.scheme import QuantScheme
from quantvla_ros.quant.smoothing import absorb, fold_into_norm, norm_groups, smoothing_factors

try:
    _LIBC = ctypes.CDLL("libc.so.6")
    _LIBC.malloc_trim  # noqa: B018 (glibc only)
except (OSError, AttributeError):
    _LIBC = None


@dataclass(frozen=True)
class QuantConfig:
    """What `quantize_` applies: the integer scheme, the layout and optional smoothing."""

    scheme: QuantScheme
    layout: Layout
    smooth_alpha: float | None = None  # SmoothQuant migration strength; None = off
    # per-linear schemes by module name, before any part's (mixed-precision allocations)
    layers: dict[str, QuantScheme] = field(default_factory=dict)

    def needs_calibration(self) -> bool:
        """Return whether recorded linear inputs are needed (clip search or smoothing)."""
        every = (self.scheme, *self.layers.values())
        return (any(s.clip_search or s.act_clip is not None for s in every)
                or self.smooth_alpha is not None)

    def schemes(self, model: nn.Module) -> dict[str, QuantScheme]:
        """Return each quantized linear's scheme (its own, a part's, else the main one)."""
        chosen = schemes(model, self.layout, self.scheme)
        unknown = sorted(set(self.layers) - set(chosen))
        if unknown:
            raise ValueError(f"per-layer schemes for linears the layout does not quantize: "
                             f"{', '.join(unknown[:5])}")
        return {**chosen, **self.layers}

    def embedding_bits(self) -> int:
        """Return the bits of quantized embedding rows: the scheme's weight bits."""
        return self.scheme.w_bits


def empty_quantized(module: nn.Module, scheme: QuantScheme | None = None,
                    embedding_bits: int | None = None, bias: bool | None = None,
                    smooth: bool = False, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Return the storage-free (meta) quantized counterpart of a float linear or embedding.

    ``bias`` None takes the linear's own; ``dtype`` is that of the float remainder (a
    linear's bias) and an embedding's output.
    """
    if isinstance(module, nn.Embedding):
        return QuantEmbedding(module.num_embeddings, module.embedding_dim, embedding_bits,
                              device="meta", out_dtype=dtype)
    return QuantLinear(module.in_features, module.out_features, scheme,
                       bias=module.bias is not None if bias is None else bias, smooth=smooth,
                       device="meta", dtype=dtype)


def student_of(model: nn.Module) -> nn.Module:
    """Return a copy of the module tree that shares every parameter and buffer with ``model``.

    `quantize_` replaces the student's layers by packed ones and never writes a shared tensor
    in place (`own_tensors` first), so the student costs only its packed bytes and ``model``
    stays the float teacher.
    """
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, shared)


def own_tensors(module: nn.Module) -> None:
    """Give ``module`` its own copies of its parameters and buffers (before an in-place write)."""
    for m in module.modules():
        for n, p in m._parameters.items():
            if p is not None:
                m._parameters[n] = nn.Parameter(p.detach().clone(),
                                                requires_grad=p.requires_grad)
        for n, b in m._buffers.items():
            if b is not None:
                m._buffers[n] = b.clone()


def _absorbed(linear: nn.Module, s: torch.Tensor) -> nn.Module:
    """Return a private float copy of ``linear`` with smoothing ``s`` absorbed, as `absorb`."""
    out = copy.copy(linear)
    out._parameters = dict(linear._parameters)
    out._parameters["weight"] = nn.Parameter(
        (linear.weight.float() * s[None, :]).to(linear.weight.dtype), requires_grad=False)
    return out


def release_freed() -> None:
    """Hand freed heap memory back to the kernel (glibc; elsewhere nothing).

    Packing leaves each layer's packed tensors between the freed temporaries of the next, and
    glibc keeps such holes: 16 W4A8 layers of 8192 x 2048 grew the resident set by 2.6x their
    packed bytes without this, by exactly those bytes with it (2026-12-06).
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


@torch.no_grad()
def quantize_(model: nn.Module, config: QuantConfig, inputs: LinearInputs | None = None,
              progress=None) -> list[str]:
    """Replace the layout's linears by QuantLinears, its embeddings by QuantEmbeddings.

    Returns the linears' names. `inputs` (recorded on the float model) feeds smoothing and
    the clip search; it is required when the config asks for either.
    """
    per_module = config.schemes(model)
    names = list(per_module)
    if config.needs_calibration() and inputs is None:
        raise ValueError("smoothing / clip search / activation clipping need calibration "
                         "inputs")
    for p in {s.act_clip for s in per_module.values()} - {None}:
        if config.smooth_alpha is not None:
            raise ValueError("activation clipping cannot be combined with smoothing")
        if inputs.percentile != p:
            raise ValueError(f"activation clipping at p{p:g} needs inputs recorded at that "
                             f"percentile (got {inputs.percentile})")
    chosen = set(names)
    divisor: dict[str, torch.Tensor] = {}  # what each chosen linear's input is divided by
    folded: set[str] = set()
    absorbed: dict[str, torch.Tensor] = {}
    if config.smooth_alpha is not None:
        for norm_name, consumers in norm_groups(model):
            if not chosen.intersection(consumers):
                continue
            linears = [model.get_submodule(c) for c in consumers]
            s = smoothing_factors(_absmax_of(inputs, consumers), [m.weight for m in linears],
                                  config.smooth_alpha).to(linears[0].weight.device)
            norm = model.get_submodule(norm_name)
            own_tensors(norm)  # a student shares its tensors with the float teacher
            fold_into_norm(norm, s)
            for c, m in zip(consumers, linears, strict=True):
                if c in chosen:
                    absorbed[c] = s  # taken when packed: one float copy at a time
                else:
                    own_tensors(m)
                    absorb(m, s)
                divisor[c] = s
            folded.update(consumers)
        # The kernel divides by a buffer factor after the Hadamard rotation, which would be
        # the wrong basis: with rotation on, only norm-folded smoothing applies.
        for name in names:
            if name not in folded and not per_module[name].hadamard:
                w = model.get_submodule(name).weight
                divisor[name] = smoothing_factors(_recorded(inputs.absmax, name), [w],
                                                  config.smooth_alpha).to(w.device)
    for name in (progress(names) if progress else names):
        linear, scheme = model.get_submodule(name), per_module[name]
        if name in absorbed:
            linear = _absorbed(linear, absorbed[name])
        x = None
        if scheme.clip_search:
            x = _recorded(inputs.rows, name).to(linear.weight.device)
            if name in divisor:
                x = x / divisor[name]
        smooth = divisor.get(name) if name not in folded else None
        clip = None
        if scheme.act_clip is not None:
            clip = _recorded(inputs.clip, name).to(linear.weight.device)
        _set_module(model, name, QuantLinear.from_float(linear, scheme, x_calib=x,
                                                        smooth=smooth, act_clip=clip))
        release_freed()
    for name in select_embeddings(model, config.layout):
        _set_module(model, name, QuantEmbedding.from_float(model.get_submodule(name),
                                                           config.embedding_bits()))
    return names


def _absmax_of(inputs: LinearInputs, names: list[str]) -> torch.Tensor:
    for n in names:
        if n in inputs.absmax:
            return inputs.absmax[n]
    return _recorded(inputs.absmax, names[0])


def _recorded(table: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """Return the statistics recorded for linear ``name``, or say why there are none."""
    if name not in table:
        raise ValueError(
            f"no calibration inputs recorded for {name}: it never ran during the calibration "
            "passes (or saw only padding rows), so its smoothing factor or clip ratio cannot "
            "be chosen; exclude it from the layout (--exclude) or check the calibration data")
    return table[name]
