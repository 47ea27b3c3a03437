"""Inference-time fusions of quantized projections that read the same input.

- After a plain (Gemma) RMSNorm: one kernel normalizes and quantizes to int8 per token, then
  one GEMM runs over the concatenated q/k/v (or gate/up, with a gelu(gate) * up epilogue).
- After pi0.5's adaptive norm (not fusable: its scale and shift come from the time
  condition): gate and up still share one activation quantization and one GEMM.

Packed weights and per-row scales concatenate along N, so fusing is exact bookkeeping. The
separate projections are dropped; artifacts always store them unfused.
"""

from __future__ import annotations

import torch
from torch import nn

from ..kernels import dispatch
from ..models.layers import GeGLU, RMSNorm
from .qlinear import QuantLinear

_MATMUL = {8: dispatch.matmul_w8a8, 4: dispatch.matmul_w4a8}


def _cat_weights(module: nn.Module, linears: list[QuantLinear]) -> None:
    module.register_buffer("weight_q", torch.cat([q.weight_q for q in linears]))
    module.register_buffer("weight_scale", torch.cat([q.weight_scale for q in linears]))


class NormQuantProjections(nn.Module):
    """RMSNorm + int8 quantization fused, then one GEMM for several projections.

    Returns the projections' outputs split as a tuple, or with `geglu` (two projections,
    gate then up) `gelu_tanh(gate) * up`.
    """

    def __init__(self, norm: RMSNorm, linears: list[QuantLinear], geglu: bool = False):
        super().__init__()
        self.scheme, self.eps, self.geglu = linears[0].scheme, norm.eps, geglu
        self.register_buffer("norm_weight", norm.weight.detach().float().clone())
        _cat_weights(self, linears)
        self.splits = [q.out_features for q in linears]

    def forward(self, h: torch.Tensor):
        lead = h.shape[:-1]
        q, s = dispatch.quantize_activations(h, 8, norm_weight=self.norm_weight, eps=self.eps,
                                             gemma_style=True)
        if self.geglu:
            y = dispatch.gate_up(q, s, self.weight_q, self.weight_scale,
                                 weight_bits=self.scheme.w_bits,
                                 group_size=self.scheme.group_size, out_dtype=h.dtype)
            return y.reshape(*lead, y.shape[-1])
        y = _MATMUL[self.scheme.w_bits](q, s, self.weight_q, self.weight_scale,
                                        group_size=self.scheme.group_size, out_dtype=h.dtype)
        return tuple(part.reshape(*lead, part.shape[-1]) for part in y.split(self.splits, -1))


class FusedGeGLU(nn.Module):
    """GeGLU on an already normalized input: one activation quantization, one gate+up GEMM."""

    def __init__(self, gate: QuantLinear, up: QuantLinear, down: nn.Module):
        super().__init__()
        self.scheme = gate.scheme
        _cat_weights(self, [gate, up])
        self.down_proj = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        q, s = dispatch.quantize_activations(x, 8)
        h = dispatch.gate_up(q, s, self.weight_q, self.weight_scale,
                             weight_bits=self.scheme.w_bits,
                             group_size=self.scheme.group_size, out_dtype=x.dtype)
        return self.down_proj(h.reshape(*lead, h.shape[-1]))


def fusable(linears: list[nn.Module]) -> bool:
    """Quantized alike, int8 activations, nothing applied to x before the kernel."""
    if not all(isinstance(q, QuantLinear) for q in linears):
        return False
    first = linears[0].scheme
    return all(q.scheme == first and q.scheme.a_bits == 8 and not q.hadamard_block
               and q.bias is None and q.smooth is None for q in linears)


@torch.no_grad()
def fuse_projections(model: nn.Module) -> dict[str, int]:
    """Apply every fusion the quantized model allows, in place; returns counts per kind."""
    counts = {"norm_qkv": 0, "norm_gate_up": 0, "gate_up": 0}
    for tower in (getattr(model, "backbone", None), getattr(model, "expert", None)):
        for layer in (tower.layers if tower is not None else []):
            attn, mlp = layer.self_attn, layer.mlp
            qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
            if isinstance(layer.input_layernorm, RMSNorm) and fusable(qkv):
                layer.fused_qkv = NormQuantProjections(layer.input_layernorm, qkv)
                attn.q_proj = attn.k_proj = attn.v_proj = None
                counts["norm_qkv"] += 1
            if not isinstance(mlp, GeGLU) or not fusable([mlp.gate_proj, mlp.up_proj]):
                continue
            if isinstance(layer.post_attention_layernorm, RMSNorm):
                layer.fused_gate_up = NormQuantProjections(
                    layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj], geglu=True)
                mlp.gate_proj = mlp.up_proj = None
                counts["norm_gate_up"] += 1
            else:
                layer.mlp = FusedGeGLU(mlp.gate_proj, mlp.up_proj, mlp.down_proj)
                counts["gate_up"] += 1
    return counts
