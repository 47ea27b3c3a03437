"""Kernel interface for the quantization layer: one call per op, backend chosen per call.

``backend="auto"`` runs Triton on CUDA tensors and the exact torch reference elsewhere;
``"reference"`` always runs the reference; ``"triton"`` runs Triton and, on CPU, is only
allowed under the interpreter (TRITON_INTERPRET=1 before import). Setting the environment
variable QUANTVLA_KERNELS=reference forces the reference everywhere (QUANTVLA_KERNELS=triton
makes "auto" pick Triton). :func:`last_kernel` names the kernel that ran last in this thread.

Meta tensors (shape-only dry runs, e.g. `quantvla bench launches`) get outputs of the right
shape on the meta device and no computation; every op reports the GPU kernel launches it
makes to the listeners added with :func:`add_launch_listener`, on every backend.
"""

from __future__ import annotations

import os
import threading

import torch

from quantvla_ros.kernels import reference
from quantvla_ros.kernels.checks import check_act_quant, check_out_dtype

BACKENDS = ("auto", "reference", "triton")
ENV_VAR = "QUANTVLA_KERNELS"

_last = threading.local()
_listeners: list = []


def add_launch_listener(fn) -> None:
    """Call ``fn(kernel_name)`` once per GPU kernel launch an op makes (or would make)."""
    _listeners.append(fn)


def remove_launch_listener(fn) -> None:
    """Stop calling a listener added with :func:`add_launch_listener`."""
    _listeners.remove(fn)


def notify_launch(name: str) -> None:
    """Report one launch of kernel ``name`` to the listeners (kernel files call this)."""
    for fn in list(_listeners):
        fn(name)


def last_kernel() -> str | None:
    """Return the name of the last kernel run in this thread, e.g. ``"triton.w4a8"``, or None."""
    return getattr(_last, "name", None)


def _record(backend: str, op: str) -> None:
    _last.name = f"{backend}.{op}"
    notify_launch(_last.name)


def triton_interpreted() -> bool:
    """Tell whether the Triton kernels were built for the CPU interpreter (TRITON_INTERPRET=1)."""
    from quantvla_ros.kernels.configs import is_interpreted
    from quantvla_ros.kernels.scaled_gemm import scaled_gemm_kernel

    return is_interpreted(scaled_gemm_kernel)


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """Map a requested backend and the tensors' device to "reference", "triton" or "meta"."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env not in ("", "auto", "reference", "triton"):
        raise ValueError(f"{ENV_VAR} must be 'reference', 'triton' or 'auto', got {env!r}")
    device = torch.device(device)
    if device.type == "meta":
        return "meta"
    if env == "reference":
        return "reference"
    if backend == "auto":
        if env == "triton" or (device.type == "cuda" and _triton_importable()):
            backend = "triton"
        else:
            return "reference"
    if backend == "triton" and device.type != "cuda":
        if not (_triton_importable() and triton_interpreted()):
            raise ValueError(f"the Triton backend needs CUDA tensors (got {device}); on CPU "
                             "set TRITON_INTERPRET=1 before importing quantvla_ros.kernels")
    return backend


def quantize_activations(
    x: torch.Tensor,
    bits: int = 8,
    *,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    gemma_style: bool = False,
    smooth: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` [..., K] per token to int8 / int4, optionally fused with RMSNorm.

    Returns ``(q, scale)``: int8 [M, K] for 8 bits or packed uint8 [M, K // 2] for 4 bits,
    and float32 [M, 1], with M the product of the leading dims.
    """
    k = check_act_quant(x, bits, norm_weight, smooth)
    chosen = resolve_backend(backend, x.device)
    if chosen == "meta":
        m = x.numel() // k
        out = (torch.empty(m, k if bits == 8 else k // 2, device="meta",
                           dtype=torch.int8 if bits == 8 else torch.uint8),
               torch.empty(m, 1, device="meta"))
        _record(chosen, f"act_quant{bits}")
        return out
    if chosen == "triton":
        from quantvla_ros.kernels.act_quant import quantize_activations as fn
    else:
        fn = reference.quantize_activations
    out = fn(x, bits, norm_weight=norm_weight, eps=eps, gemma_style=gemma_style, smooth=smooth)
    _record(chosen, f"act_quant{bits}")
    return out


def _meta_out(a, n, out_dtype):
    return torch.empty(a.shape[0], n, dtype=out_dtype, device="meta")


def _matmul(op, a, a_scale, w, w_scale, group_size, bias, residual, out_dtype, backend):
    chosen = resolve_backend(backend, a.device)
    check_out_dtype(out_dtype)
    options = dict(group_size=group_size, bias=bias, residual=residual, out_dtype=out_dtype)
    if chosen == "meta":
        _record(chosen, op)  # split K stays inside the one launch
        return _meta_out(a, w.shape[0], out_dtype)
    if chosen == "triton":
        from quantvla_ros.kernels.scaled_gemm import INT4_OPERANDS, scaled_gemm

        a_int4, w_int4 = INT4_OPERANDS[op]
        out = scaled_gemm(a, a_scale, w, w_scale, a_int4=a_int4, w_int4=w_int4, **options)
    else:
        out = getattr(reference, f"matmul_{op}")(a, a_scale, w, w_scale, **options)
    _record(chosen, op)
    return out


def _matmul_w4a8(a, a_scale, w, w_scale, group_scale, group_size, bias, residual, out_dtype,
                 backend, gate_up=False):
    chosen = resolve_backend(backend, a.device)
    check_out_dtype(out_dtype)
    name = "gate_up_w4a8" if gate_up else "w4a8"
    n = w.shape[0] // 2 if gate_up else w.shape[0]
    options = dict(group_scale=group_scale, group_size=group_size, out_dtype=out_dtype)
    if chosen == "meta":
        _record(chosen, name)  # split K stays inside the one launch
        return _meta_out(a, n, out_dtype)
    if chosen == "triton":
        from quantvla_ros.kernels.w4a8_gemm import w4a8_gemm

        out = w4a8_gemm(a, a_scale, w, w_scale, bias=bias, residual=residual, gate_up=gate_up,
                        **options)
    elif gate_up:
        out = reference.gate_up(a, a_scale, w, w_scale, weight_bits=4, **options)
    else:
        out = reference.matmul_w4a8(a, a_scale, w, w_scale, bias=bias, residual=residual,
                                    **options)
    _record(chosen, name)
    return out


def matmul_w8a8(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    *,
    group_size: int | None = None,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    backend: str = "auto",
) -> torch.Tensor:
    """Scaled GEMM of pre-quantized int8 activations [M, K] and int8 weights [N, K]."""
    return _matmul("w8a8", x_q, x_scale, w_q, w_scale, group_size, bias, residual, out_dtype,
                   backend)


def matmul_w4a8(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    w_packed: torch.Tensor,
    w_scale: torch.Tensor,
    *,
    group_scale: torch.Tensor | None = None,
    group_size: int | None = None,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    backend: str = "auto",
) -> torch.Tensor:
    """Scaled GEMM of int8 activations [M, K] and K-half packed int4 weights.

    ``w_scale`` float32 [N] per channel, ``group_scale`` int8 [N, K // group_size] or None
    (see kernels/int4_layout.py).
    """
    return _matmul_w4a8(x_q, x_scale, w_packed, w_scale, group_scale, group_size, bias,
                        residual, out_dtype, backend)


def matmul_w4a4(
    x_packed: torch.Tensor,
    x_scale: torch.Tensor,
    w_packed: torch.Tensor,
    w_scale: torch.Tensor,
    *,
    group_size: int | None = None,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    backend: str = "auto",
) -> torch.Tensor:
    """Scaled GEMM of packed int4 activations [M, K // 2] and packed int4 weights."""
    return _matmul("w4a4", x_packed, x_scale, w_packed, w_scale, group_size, bias, residual,
                   out_dtype, backend)


def gate_up(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_scale: torch.Tensor,
    *,
    weight_bits: int = 8,
    group_size: int | None = None,
    group_scale: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    backend: str = "auto",
) -> torch.Tensor:
    """Fused GeGLU ``gelu_tanh(gate) * up`` [M, N] over concatenated [gate; up] weights."""
    if weight_bits not in (4, 8):
        raise ValueError(f"weight_bits must be 4 or 8, got {weight_bits}")
    if w_gate_up.dim() != 2 or w_gate_up.shape[0] % 2:
        raise ValueError(f"gate/up weights must be [2N, ...], got {tuple(w_gate_up.shape)}")
    if weight_bits == 4:
        return _matmul_w4a8(x_q, x_scale, w_gate_up, w_scale, group_scale, group_size, None,
                            None, out_dtype, backend, gate_up=True)
    chosen = resolve_backend(backend, x_q.device)
    check_out_dtype(out_dtype)
    if chosen == "meta":
        _record(chosen, "gate_up_w8a8")
        return _meta_out(x_q, w_gate_up.shape[0] // 2, out_dtype)
    if chosen == "triton":
        from quantvla_ros.kernels.gate_up_gemm import gate_up_gemm as fn
    else:
        fn = reference.gate_up
    out = fn(x_q, x_scale, w_gate_up, w_scale, weight_bits=8, group_size=group_size,
             out_dtype=out_dtype)
    _record(chosen, "gate_up_w8a8")
    return out


def _linear(op, bits, x, w, w_scale, group_size, bias, out_dtype, residual, smooth, backend,
            group_scale=None):
    out_dtype = check_out_dtype(out_dtype or x.dtype)
    lead = tuple(x.shape[:-1])
    q, s = quantize_activations(x, bits, smooth=smooth, backend=backend)
    res = None
    if residual is not None:
        if tuple(residual.shape) != lead + (w.shape[0],):
            raise ValueError(f"residual must have shape {lead + (w.shape[0],)}, got "
                             f"{tuple(residual.shape)}")
        res = residual.reshape(q.shape[0], -1)
    if op == "w4a8":
        y = _matmul_w4a8(q, s, w, w_scale, group_scale, group_size, bias, res, out_dtype,
                         backend)
    else:
        y = _matmul(op, q, s, w, w_scale, group_size, bias, res, out_dtype, backend)
    return y.reshape(*lead, y.shape[-1])


def linear_w8a8(
    x: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    *,
    group_size: int | None = None,
    residual: torch.Tensor | None = None,
    smooth: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """``y = (acc * s_token * s_weight) (+ bias) (+ residual)``, int8 activations and weights.

    ``x`` [..., K] float; ``w_q`` int8 [N, K]; ``w_scale`` float32 [N] (or [N, G] with
    ``group_size``); ``smooth`` [K] divides x per channel before quantizing. Output
    [..., N] in ``out_dtype`` (default x.dtype).
    """
    return _linear("w8a8", 8, x, w_q, w_scale, group_size, bias, out_dtype, residual, smooth,
                   backend)


def linear_w4a8(
    x: torch.Tensor,
    w_packed: torch.Tensor,
    w_scale: torch.Tensor,
    group_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    *,
    group_size: int | None = None,
    residual: torch.Tensor | None = None,
    smooth: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Linear with int8 per-token activations and K-half packed int4 weights.

    ``w_scale`` float32 [N]; ``group_scale`` int8 [N, K // group_size] or None (per channel).
    """
    return _linear("w4a8", 8, x, w_packed, w_scale, group_size, bias, out_dtype, residual,
                   smooth, backend, group_scale=group_scale)


def linear_w4a4(
    x: torch.Tensor,
    w_packed: torch.Tensor,
    w_scale: torch.Tensor,
    group_size: int | None = None,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    *,
    residual: torch.Tensor | None = None,
    smooth: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Linear with int4 per-token activations and packed int4 weights [N, K // 2]."""
    return _linear("w4a4", 4, x, w_packed, w_scale, group_size, bias, out_dtype, residual,
                   smooth, backend)
