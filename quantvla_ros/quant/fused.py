"""Fused gate+up for quantized GeGLU MLPs: one activation quantization, one GEMM.

gate_proj and up_proj read the same input, so their packed weights and per-row scales
concatenate along N; the kernel's epilogue applies gelu_tanh(gate) * up. An inference-time
transform (artifacts store the two projections separately).
"""

from __future__ import annotations

import torch
from torch import nn

from ..kernels import dispatch
from ..models.layers import GeGLU
from .qlinear import QuantLinear


class FusedGeGLU(nn.Module):
    def __init__(self, gate: QuantLinear, up: QuantLinear, down: nn.Module):
        super().__init__()
        self.scheme = gate.scheme
        self.register_buffer("weight_q", torch.cat([gate.weight_q, up.weight_q]))
        self.register_buffer("weight_scale", torch.cat([gate.weight_scale, up.weight_scale]))
        self.down_proj = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        q, s = dispatch.quantize_activations(x, 8)
        h = dispatch.gate_up(q, s, self.weight_q, self.weight_scale,
                             weight_bits=self.scheme.w_bits,
                             group_size=self.scheme.group_size, out_dtype=x.dtype)
        return self.down_proj(h.reshape(*lead, h.shape[-1]))


def fusable(mlp: nn.Module) -> bool:
    g, u = getattr(mlp, "gate_proj", None), getattr(mlp, "up_proj", None)
    return (isinstance(mlp, GeGLU) and isinstance(g, QuantLinear) and isinstance(u, QuantLinear)
            and g.scheme == u.scheme and g.scheme.a_bits == 8 and not g.hadamard_block
            and g.bias is None and u.bias is None and g.smooth is None and u.smooth is None)


@torch.no_grad()
def fuse_gate_up(model: nn.Module) -> int:
    """Replace every fusable quantized GeGLU in place; returns how many were fused."""
    count = 0
    for tower in (getattr(model, "backbone", None), getattr(model, "expert", None)):
        for layer in (tower.layers if tower is not None else []):
            if fusable(layer.mlp):
                m = layer.mlp
                layer.mlp = FusedGeGLU(m.gate_proj, m.up_proj, m.down_proj)
                count += 1
    return count
