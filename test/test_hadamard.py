"""W4A4's Hadamard matrix is made once per device and dtype, never copied per forward."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from quantvla_ros.quant import hadamard
from quantvla_ros.quant.qlinear import QuantLinear
from quantvla_ros.quant.scheme import parse_bits


class CopyCounter(TorchDispatchMode):
    """Count tensor conversions/copies of square [b, b] tensors (the Hadamard matrix)."""

    def __init__(self, block: int):
        super().__init__()
        self.block, self.copies = block, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default,
                    torch.ops.aten.to.device, torch.ops.aten.to.dtype):
            src = args[1] if func is torch.ops.aten.copy_.default else args[0]
            if isinstance(src, torch.Tensor) and tuple(src.shape) == (self.block, self.block):
                self.copies += 1
        return func(*args, **kwargs)


def test_w4a4_forward_makes_no_copy_of_the_hadamard_matrix():
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 64, bias=False)
    q = QuantLinear.from_float(linear, parse_bits("w4a4"))
    assert q.hadamard_block == 128
    x = torch.randn(4, 256)
    q(x)  # warm-up: the first call may build the cached matrix
    counter = CopyCounter(128)
    with counter:
        for _ in range(3):
            q(x)
    assert counter.copies == 0


def test_hadamard_matrix_is_cached_per_device_and_dtype():
    a = hadamard.hadamard_matrix(64, torch.device("cpu"), torch.float32)
    assert hadamard.hadamard_matrix(64, torch.device("cpu"), torch.float32) is a
    b = hadamard.hadamard_matrix(64, torch.device("cpu"), torch.float64)
    assert b is not a and b.dtype == torch.float64
    torch.testing.assert_close(a @ a.T, torch.eye(64), atol=1e-6, rtol=0)
