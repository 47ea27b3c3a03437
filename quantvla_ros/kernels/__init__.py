"""Integer GEMMs and activation quantization: Triton kernels plus an exact torch reference.

Import the functions below; they pick Triton on CUDA tensors and the reference on CPU
(see :mod:`quantvla_ros.kernels.dispatch`). Importing this package does not import Triton.
"""

from quantvla_ros.kernels.dispatch import (
    BACKENDS,
    gate_up,
    last_kernel,
    linear_w4a4,
    linear_w4a8,
    linear_w8a8,
    matmul_w4a4,
    matmul_w4a8,
    matmul_w8a8,
    quantize_activations,
    resolve_backend,
)
from quantvla_ros.kernels.reference import pack_int4, unpack_int4

__all__ = [
    "BACKENDS",
    "gate_up",
    "last_kernel",
    "linear_w4a4",
    "linear_w4a8",
    "linear_w8a8",
    "matmul_w4a4",
    "matmul_w4a8",
    "matmul_w8a8",
    "pack_int4",
    "quantize_activations",
    "resolve_backend",
    "unpack_int4",
]
