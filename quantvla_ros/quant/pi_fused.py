"""Inference-time fusions of quantized projections that read the same input.

Each fusion builds a quantized replacement of a whole block of a Gemma layer (see
models/layers.py: `AttentionInput`, `MLPBlock`) and swaps it in; the model itself knows
nothing about fusions.
- After a plain (Gemma) RMSNorm: one kernel normalizes and quantizes to int8 per token, then
  one GEMM runs over the concatenated q/k/v (or gate/up, with a gelu(gate) * up epilogue):
  `NormQKV` replaces the attention input, `NormGateUp` the MLP block.
- After pi0.5's adaptive norm: its scale and shift (per-sample vectors, precomputed per
  flow step) go to the same kernel as pointers, then one q/k/v GEMM (`NormQKV`, when the
  expert's attention is quantized) or one gate/up GEMM (`AdaNormGateUp`, around
  `FusedGeGLU`).
- Each block also takes the previous block's deferred residual `h + out * gate`
  (models/layers.add_residual) into that kernel: `project` / `deferred` (joint_forward).

Packed weights, per-row scales and biases (zeros for a projection without one) concatenate
along N, so fusing is exact bookkeeping. The gate/up GEMM has no bias epilogue, so gate / up
fuse only without biases. The separate projections are dropped; artifacts always store them
unfused.
"""

from __future__ import annotations

import torch
from torch import nn

from quantvla_ros.kernels import dispatch, norm_kernels
from quantvla_ros.models.pi.layers import (
    AdaRMSNorm,
    AttentionInput,
    GeGLU,
    MLPBlock,
    RMSNorm,
    add_residual,
    split_heads,
)
from quantvla_ros.quant.formats import format_of
from quantvla_ros.quant.qlinear import QuantLinear


def _cat_weights(module: nn.Module, linears: list[QuantLinear]) -> None:
    """Concatenate packed weights and scales along N; biases too (zeros where one has none).

    `module.bias` is None when no linear has a bias (e.g. DA-PTQ's CSRC d folds one into
    the backbone's k / v projections only).
    """
    module.register_buffer("weight_q", torch.cat([q.weight_q for q in linears]))
    module.register_buffer("weight_scale", torch.cat([q.weight_scale for q in linears]))
    group = [q.weight_group_scale for q in linears]
    module.register_buffer("weight_group_scale",
                           torch.cat(group) if group[0] is not None else None)
    biases = [q.bias for q in linears]
    ref = next((b for b in biases if b is not None), None)
    module.register_buffer("bias", None if ref is None else torch.cat(
        [b.to(ref) if b is not None else torch.zeros(q.out_features).to(ref)
         for q, b in zip(linears, biases, strict=True)]))


def _group(module: nn.Module) -> dict:
    """Group keywords of the fused GEMM: the group size, and W4A8's int8 group scales."""
    return {"group_size": module.scheme.group_size, "group_scale": module.weight_group_scale}


def _add_norm_quant(h, res, norm_weight=None, mod=None, eps=1e-6):
    """(h + deferred residual, (int8 q, scale)) in one kernel: Gemma norm or adaRMS."""
    delta, gate = res if res is not None else (None, None)
    if mod is not None:  # the float block rounds the normalized rows to h's dtype
        return norm_kernels.add_norm(h, delta, gate, scale1=mod.scale1, shift=mod.shift,
                                     eps=eps, round_to_dtype=True, quant_bits=8)
    return norm_kernels.add_norm(h, delta, gate, weight=norm_weight, eps=eps,
                                 round_to_dtype=False, quant_bits=8)


class NormQuantProjections(nn.Module):
    """(ada)RMSNorm + int8 quantization fused, then one GEMM for several projections.

    Returns the projections' outputs split as a tuple, or with `geglu` (two projections,
    gate then up) `gelu_tanh(gate) * up`. An RMSNorm's weight is copied; an AdaRMSNorm is
    kept (its modulation comes from the condition, or precomputed per flow step).
    """

    def __init__(self, norm: nn.Module, linears: list[QuantLinear], geglu: bool = False):
        """Take the norm and concatenate the linears' packed weights and scales."""
        super().__init__()
        self.scheme, self.eps, self.geglu = linears[0].scheme, norm.eps, geglu
        self.ada = norm if isinstance(norm, AdaRMSNorm) else None
        self.register_buffer("norm_weight", None if self.ada is not None else
                             norm.weight.detach().float().clone())
        _cat_weights(self, linears)
        self.splits = [q.out_features for q in linears]

    def forward(self, h: torch.Tensor, cond=None):
        """Normalize and quantize h [..., W] in one kernel, then run the one GEMM."""
        return self.project(h, None, cond)[1]

    def project(self, h: torch.Tensor, res, cond=None):
        """Add the deferred residual, normalize and quantize (one kernel), run the GEMM.

        Returns (h with the residual, outputs as `forward`, the adaptive norm's residual
        gate or None).
        """
        lead = h.shape[:-1]
        mod = self.ada.modulation(cond, h.dtype) if self.ada is not None else None
        gate = mod.gate if mod is not None else None
        h, (q, s) = _add_norm_quant(h.reshape(-1, *h.shape[-2:]), res, self.norm_weight,
                                    mod=mod, eps=self.eps)
        h = h.view(*lead, h.shape[-1])
        if self.geglu:
            y = dispatch.gate_up(q, s, self.weight_q, self.weight_scale,
                                 weight_bits=self.scheme.w_bits, out_dtype=h.dtype,
                                 **_group(self))
            return h, y.reshape(*lead, y.shape[-1]), gate
        y = format_of(self.scheme).matmul(q, s, self.weight_q, self.weight_scale,
                                          self.weight_group_scale, bias=self.bias,
                                          group_size=self.scheme.group_size, out_dtype=h.dtype)
        return h, tuple(part.reshape(*lead, part.shape[-1])
                        for part in y.split(self.splits, -1)), gate


class FusedGeGLU(nn.Module):
    """GeGLU on an already normalized input: one activation quantization, one gate+up GEMM."""

    def __init__(self, gate: QuantLinear, up: QuantLinear, down: nn.Module):
        """Concatenate gate and up (quantized alike); `down` is kept as it is."""
        super().__init__()
        self.scheme = gate.scheme
        _cat_weights(self, [gate, up])
        self.down_proj = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return `down(gelu_tanh(gate(x)) * up(x))` for x [..., W]."""
        q, s = dispatch.quantize_activations(x, 8)
        return self.quantized(q, s, x.shape[:-1], x.dtype)

    def quantized(self, q, s, lead, dtype) -> torch.Tensor:
        """Run the MLP from already quantized rows (q, s) of an input [*lead, W]."""
        h = dispatch.gate_up(q, s, self.weight_q, self.weight_scale,
                             weight_bits=self.scheme.w_bits, out_dtype=dtype, **_group(self))
        return self.down_proj(h.reshape(*lead, h.shape[-1]))


class NormQKV(nn.Module):
    """Quantized `AttentionInput`: (ada)RMSNorm + int8 quantization, one q/k/v GEMM.

    `forward(h, cond) -> (q, k, v, gate)` with the float block's shapes; gate is None after
    an RMSNorm. It owns its tensors (and takes over an adaptive norm).
    """

    def __init__(self, block: AttentionInput):
        """Fuse the float block's norm and its (fusable) q/k/v projections."""
        super().__init__()
        attn = block.attn
        self.proj = NormQuantProjections(block.norm, [attn.q_proj, attn.k_proj, attn.v_proj])
        self.heads = (attn.num_heads, attn.num_kv_heads, attn.head_dim)

    def forward(self, h: torch.Tensor, cond: torch.Tensor | None = None):
        """Return q [B, H, S, D], k, v [B, KVH, S, D] (before RoPE) and the gate."""
        return self.project(h, None, cond)[1:]

    def project(self, h: torch.Tensor, res, cond=None):
        """Add the deferred residual `res`, then as forward: (h, q, k, v, gate)."""
        h, qkv, gate = self.proj.project(h, res, cond)
        return (h, *split_heads(*qkv, *self.heads), gate)


class NormKV(nn.Module):
    """Quantized key/value-only `AttentionInput`: norm + int8 quantization, one k/v GEMM.

    For a tower's last layer when nothing reads its outputs. Only `kv(h, cond)` is defined.
    """

    def __init__(self, block: AttentionInput):
        """Fuse the float block's RMSNorm and its (fusable) k/v projections."""
        super().__init__()
        attn = block.attn
        self.proj = NormQuantProjections(block.norm, [attn.k_proj, attn.v_proj])
        self.heads = (attn.num_kv_heads, attn.head_dim)

    def kv(self, h: torch.Tensor, cond: torch.Tensor | None = None):
        """Return k, v [B, KVH, S, D] (before RoPE)."""
        return self.project_kv(h, None, cond)

    def project_kv(self, h: torch.Tensor, res, cond=None):
        """Add the deferred residual `res`, then as kv: (k, v)."""
        _, (k, v), _ = self.proj.project(h, res)
        b, s, _ = k.shape
        kvh, d = self.heads
        return (k.view(b, s, kvh, d).transpose(1, 2), v.view(b, s, kvh, d).transpose(1, 2))


class NormGateUp(nn.Module):
    """Quantized `MLPBlock` after an RMSNorm: norm + int8 quantization, one gate/up GEMM.

    `forward(h, cond) -> h + down(gelu_tanh(gate) * up)`; down_proj is the float block's.
    """

    def __init__(self, block: MLPBlock):
        """Fuse the float block's RMSNorm with its (fusable) gate/up; take over down_proj."""
        super().__init__()
        mlp = block.mlp
        self.gate_up = NormQuantProjections(block.norm, [mlp.gate_proj, mlp.up_proj],
                                            geglu=True)
        self.down_proj = mlp.down_proj

    def forward(self, h: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Return h [B, S, W] plus the MLP of its normalization."""
        return h + self.down_proj(self.gate_up(h))

    def deferred(self, h: torch.Tensor, res, cond=None):
        """Add `res` to h; return (h, (MLP of its normalization, None)) unadded."""
        h, y, _ = self.gate_up.project(h, res)
        return h, (self.down_proj(y), None)


class AdaNormGateUp(nn.Module):
    """Quantized `MLPBlock` after pi0.5's adaptive norm: the norm, then a `FusedGeGLU`.

    `forward(h, cond) -> h + gate * MLP(norm(h, cond))`, as the float block.
    """

    def __init__(self, block: MLPBlock):
        """Take over the float block's norm and down_proj; concatenate its gate and up."""
        super().__init__()
        mlp = block.mlp
        self.norm = block.norm
        self.mlp = FusedGeGLU(mlp.gate_proj, mlp.up_proj, mlp.down_proj)

    def forward(self, h: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Return h [B, S, W] plus the gated MLP of its (time-conditioned) normalization."""
        return add_residual(*self.deferred(h, None, cond))

    def deferred(self, h: torch.Tensor, res, cond):
        """Add `res` to h, adaRMS-normalize and quantize in one kernel, run the MLP.

        Returns (h, (MLP out, gate)) unadded, as `MLPBlock.deferred`.
        """
        mod = self.norm.modulation(cond, h.dtype)
        h, (q, s) = _add_norm_quant(h, res, mod=mod, eps=self.norm.eps)
        return h, (self.mlp.quantized(q, s, h.shape[:-1], h.dtype), mod.gate)


def fusable(linears: list[nn.Module], bias: bool = True) -> bool:
    """Quantized alike, int8 activations, nothing applied to x before the kernel.

    `bias=False`: also no bias (the gate/up GEMM has no bias epilogue).
    """
    if not all(isinstance(q, QuantLinear) for q in linears):
        return False
    first = linears[0].scheme
    return all(q.scheme == first and q.scheme.a_bits == 8 and not q.hadamard_block
               and (bias or q.bias is None) and q.smooth is None and q.act_clip is None
               for q in linears)


@torch.no_grad()
def fuse_projections(model: nn.Module) -> dict[str, int]:
    """Apply every fusion the quantized model allows, in place; returns counts per kind.

    Only float blocks are fused, so a second call finds nothing more to do.
    """
    counts = {"norm_qkv": 0, "norm_kv": 0, "norm_gate_up": 0, "gate_up": 0}
    for tower in (getattr(model, "backbone", None), getattr(model, "expert", None)):
        for layer in (tower.layers if tower is not None else []):
            attn_in, mlp_block = layer.attention_input, getattr(layer, "mlp_block", None)
            if isinstance(attn_in, AttentionInput):
                attn = attn_in.attn
                if attn.kv_only and isinstance(attn_in.norm, RMSNorm) and \
                        fusable([attn.k_proj, attn.v_proj]):
                    layer.swap_attention_input(NormKV(attn_in))
                    counts["norm_kv"] += 1
                elif not attn.kv_only and fusable([attn.q_proj, attn.k_proj, attn.v_proj]):
                    layer.swap_attention_input(NormQKV(attn_in))
                    counts["norm_qkv"] += 1
            if not isinstance(mlp_block, MLPBlock):
                continue
            mlp = mlp_block.mlp
            if not isinstance(mlp, GeGLU) or not fusable([mlp.gate_proj, mlp.up_proj],
                                                           bias=False):
                continue
            if isinstance(mlp_block.norm, RMSNorm):
                layer.swap_mlp_block(NormGateUp(mlp_block))
                counts["norm_gate_up"] += 1
            else:
                layer.swap_mlp_block(AdaNormGateUp(mlp_block))
                counts["gate_up"] += 1
    return counts
