"""Row-blocked linears: W8A8 rows and W4A8 rows of one weight, one int8 activation pass.

QVLA gives each output channel its own bit width; a standard integer GEMM cannot mix widths
inside one weight. Sorting the rows so that each width is one contiguous block makes the
layer two ordinary GEMMs (formats.py's `matmul` entries, the same kernels as whole layers)
on the same per-token int8 activations, concatenated along N. The row order is a
permutation: for gate / up it is folded offline into down_proj's input columns (GeGLU is
elementwise, so nothing runs at inference); elsewhere an int32 index buffer gathers the
outputs back into order (one index op, said so in the manifest by `consumer: None`).
"""

from __future__ import annotations

import torch
from torch import nn

from quantvla_ros.kernels import dispatch
from quantvla_ros.quant.plan import RowBlocks
from quantvla_ros.quant.qlinear import QuantLinear


class RowBlockLinear(nn.Module):
    """y = [GEMM_hi(q, W_hi) ; GEMM_lo(q, W_lo)] (+ bias) [gathered by out_index].

    Children `hi` (rows [0, hi_rows)) and `lo` (the rest) are bias-free QuantLinears that
    hold the packed rows in the permuted order; `bias` [N] is stored in that order too;
    `out_index` int32 [N] (only when no consumer absorbed the permutation) maps output
    column j to permuted row out_index[j].
    """

    def __init__(self, in_features: int, out_features: int, spec: RowBlocks,
                 bias: bool = False, device=None, dtype: torch.dtype = torch.float32):
        """Allocate both blocks' empty buffers, the bias and the index buffer."""
        super().__init__()
        if not 0 < spec.hi_rows < out_features:
            raise ValueError(f"hi_rows={spec.hi_rows} must split {out_features} rows in two")
        self.in_features, self.out_features, self.spec = in_features, out_features, spec
        self.hi = QuantLinear(in_features, spec.hi_rows, spec.hi, device=device, dtype=dtype)
        self.lo = QuantLinear(in_features, out_features - spec.hi_rows, spec.lo,
                              device=device, dtype=dtype)
        self.register_buffer("bias", torch.empty(out_features, dtype=dtype, device=device)
                             if bias else None)
        self.register_buffer("out_index", torch.empty(out_features, dtype=torch.int32,
                                                      device=device)
                             if spec.consumer is None else None)

    @classmethod
    @torch.no_grad()
    def from_float(cls, linear: nn.Linear, spec: RowBlocks,
                   perm: torch.Tensor | None = None) -> RowBlockLinear:
        """Pack a float linear whose rows are already in block order.

        With `spec.consumer` None, `perm` (new row i = old row perm[i]) is applied here and
        its inverse stored as `out_index`, so the module's output keeps the original order.
        """
        w = linear.weight
        b = linear.bias
        if spec.consumer is None:
            if perm is None:
                raise ValueError("a row-blocked linear without a consumer needs its permutation")
            w, b = w[perm], (b[perm] if b is not None else None)
        m = cls(linear.in_features, linear.out_features, spec, b is not None,
                device=w.device, dtype=w.dtype)
        h = spec.hi_rows
        for block, rows in ((m.hi, w[:h]), (m.lo, w[h:])):
            block.store_packed(block.format.pack(rows.float(), block.scheme.group_size))
        if b is not None:
            m.bias.copy_(b)
        if m.out_index is not None:
            m.out_index.copy_(torch.argsort(perm).to(torch.int32))
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize x once per token to int8, run both blocks' GEMMs, concatenate."""
        lead = x.shape[:-1]
        q, s = dispatch.quantize_activations(x.reshape(-1, self.in_features), 8)
        y = torch.cat([blk.format.matmul(q, s, blk.weight_q, blk.weight_scale,
                                         blk.weight_group_scale,
                                         group_size=blk.scheme.group_size, out_dtype=x.dtype)
                       for blk in (self.hi, self.lo)], -1)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        if self.out_index is not None:
            y = y.index_select(-1, self.out_index)
        return y.reshape(*lead, self.out_features)

    def dequantized_weight(self) -> torch.Tensor:
        """Float32 [N, K] weight in the module's output order (for tests and reports)."""
        w = torch.cat([self.hi.dequantized_weight(), self.lo.dequantized_weight()])
        return w if self.out_index is None else w[self.out_index.long()]

    def scale_output_channels(self, factor: torch.Tensor) -> None:
        """Multiply output channels (the module's output order) by factor [N] (ATM / OHB)."""
        f = factor.float()
        if self.out_index is not None:  # permuted row i is output column perm[i]
            f = f[torch.argsort(self.out_index.long())]
        h = self.spec.hi_rows
        self.hi.scale_output_channels(f[:h])
        self.lo.scale_output_channels(f[h:])
        if self.bias is not None:
            self.bias.mul_(f.to(self.bias))

    def extra_repr(self) -> str:
        """Shape, the rows of each block and where the permutation went."""
        s = self.spec
        where = f"folded into {s.consumer}" if s.consumer else "index gather"
        return (f"in={self.in_features}, out={self.out_features}, {s.hi.bits} rows "
                f"{s.hi_rows}, {s.lo.bits} rows {self.out_features - s.hi_rows}, "
                f"permutation: {where}")


@torch.no_grad()
def fold_permutation(model: nn.Module, producers: list[str], consumer: str,
                     perm: torch.Tensor) -> None:
    """Permute the producers' output rows and the consumer's input columns alike.

    For gate / up -> down through an elementwise GeGLU the float model's output is
    unchanged (up to float summation order in the consumer). New tensors are assigned, never
    written in place: a quantization student shares its float tensors with the teacher.
    """
    idx = perm.to(torch.long)
    for name in producers:
        lin = model.get_submodule(name)
        _replace(lin, "weight", lin.weight[idx])
        if lin.bias is not None:
            _replace(lin, "bias", lin.bias[idx])
    down = model.get_submodule(consumer)
    _replace(down, "weight", down.weight[:, idx])


def _replace(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(value.contiguous(), requires_grad=old.requires_grad))


def empty_row_blocks(module: nn.Module, spec: RowBlocks, bias: bool | None = None,
                     dtype: torch.dtype = torch.float32) -> RowBlockLinear:
    """Return the storage-free (meta) row-blocked form of a float linear (loading)."""
    return RowBlockLinear(module.in_features, module.out_features, spec,
                          bias=module.bias is not None if bias is None else bias,
                          device="meta", dtype=dtype)
