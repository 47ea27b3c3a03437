"""The CPU reference W4A8 GEMM sums its K groups in place: no [G, M, N] stack of partials.

pi0.5's fused gate / up (N = 32768) on an 800-token prefix with 16 groups of 128 held 8 GiB of
stacked int32 / int64 partials in the reference path (measured: one CPU inference peaked at
13.5 GB resident for a 3.6 GB artifact); the running sum needs one int64 [M, N].
"""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from quantvla_ros.kernels import reference as ref
from quantvla_ros.kernels.int4_layout import pack_khalf


class LargestOutput(TorchDispatchMode):
    """Record the bytes of the largest tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def _case(m=16, k=1024, n=96, gs=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
    w = torch.randint(-7, 8, (n, k), generator=g, dtype=torch.int8)
    s2 = torch.randint(1, 256, (n, k // gs), generator=g, dtype=torch.int32)
    return x, w, s2, gs


def test_grouped_w4a8_accumulator_is_exact():
    x, w, s2, gs = _case()
    got = ref.accumulate_w4a8(x, pack_khalf(w), s2, gs)
    want = sum(x[:, k0:k0 + gs].long() @ w[:, k0:k0 + gs].long().t() * s2[:, g].long()
               for g, k0 in enumerate(range(0, x.shape[1], gs)))
    assert got.dtype == torch.int32 and torch.equal(got.long(), want)


def test_grouped_w4a8_never_holds_all_group_partials():
    x, w, s2, gs = _case(m=256, k=4096, n=96)  # 32 groups
    packed = pack_khalf(w)
    with LargestOutput() as probe:
        ref.accumulate_w4a8(x, packed, s2, gs)
    out_int64 = x.shape[0] * w.shape[0] * 8
    unpacked = 2 * w.numel()  # unpacking the int4 weights (an int16 step)
    # Bound: the int64 running sum, the unpacking or one group's float64 GEMM operand; the
    # stacked partials were 32 x [M, N] int64, 8x the bound.
    bound = max(out_int64, unpacked, 128 * x.shape[0] * 8)
    assert probe.largest <= bound, (probe.largest, bound)


def test_embedding_rows_quantize_a_slice_at_a_time(monkeypatch):
    """pi0.5's 257152 x 2048 table: whole-table float32 temporaries were ~8 GiB."""
    from torch import nn

    from quantvla_ros.quant import qembedding
    from quantvla_ros.quant.qembedding import QuantEmbedding, pack_rows, quantize_rows

    emb = nn.Embedding(1000, 64).to(torch.bfloat16)
    monkeypatch.setattr(qembedding, "FROM_FLOAT_SLICE_BYTES", 96 * 64 * 4, raising=False)
    for bits in (8, 4):
        q, scale = quantize_rows(emb.weight, bits)  # the whole table at once
        with LargestOutput() as probe:
            m = QuantEmbedding.from_float(emb, bits)
        assert torch.equal(m.weight_q, pack_rows(q) if bits == 4 else q)
        assert torch.equal(m.weight_scale, scale)
        # the stored int8 rows are the largest tensor; float32 temporaries stay one slice
        assert probe.largest <= max(m.weight_q.numel(), 96 * 64 * 4), probe.largest
