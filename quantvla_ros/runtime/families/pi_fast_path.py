"""Inference-time float fusions: the bf16 baseline gets every fusion that is not quantization.

`prepare_for_inference` swaps a model's float blocks (models/layers.AttentionInput,
MLPBlock, the towers' final norms) for blocks that run fused kernels, and installs the fused
RoPE + in-place KV write as `PiModel.ops`:

- residual add + (ada)RMSNorm in one kernel (kernels/norm_kernels.add_norm): joint_forward
  defers each block's residual into the next norm;
- q/k/v (and gate/up) of plain float linears concatenated into one GEMM (biases too, zeros
  for a linear without one), with a one-kernel GeGLU activation after the gate/up GEMM;
- RoPE of q and k with the key/value cache write in one kernel (kernels/rope_kernels.py).

It lives here, not in models/ (which imports nothing of the package) nor quant/ (these are
not quantization): the runtime decides how a loaded model executes, as quant/pi_fused.py
does for integer blocks, which are left as they are. Blocks keep their contracts; on CPU the
kernels' torch references run, so results equal the unfused model up to float rounding.
The swap changes the module tree, so the Policy applies it only before its first inference
(calibration and quantization read the model unfused).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quantvla_ros.kernels import norm_kernels, rope_kernels
from quantvla_ros.models.pi.attention import TorchOps
from quantvla_ros.models.pi.layers import (
    AdaRMSNorm,
    AttentionInput,
    GeGLU,
    MLPBlock,
    RMSNorm,
    add_residual,
    split_heads,
)


class FusedOps(TorchOps):
    """`joint_forward`'s float ops on fused kernels (Triton on CUDA, reference elsewhere)."""

    def rope_qkv(self, q, k, v, cos, sin, k_out=None, v_out=None):
        """Rotate q and k, write k / v into the cache views, in one launch."""
        return rope_kernels.rope_qkv(q, k, v, cos, sin, k_out, v_out)


FUSED_OPS = FusedOps()


def fused_add_norm(norm: nn.Module, h: torch.Tensor, res, cond):
    """Return (h + deferred residual, its norm, gate) with one kernel, for a float norm."""
    delta, g = res if res is not None else (None, None)
    if isinstance(norm, AdaRMSNorm):
        m = norm.modulation(cond, h.dtype)
        h, y = norm_kernels.add_norm(h, delta, g, scale1=m.scale1, shift=m.shift, eps=norm.eps)
        return h, y, m.gate
    h, y = norm_kernels.add_norm(h, delta, g, weight=norm.weight, eps=norm.eps)
    return h, y, None


def _concat(linears: list[nn.Module]):
    """(one [sum N, K] weight, its bias or None) for plain float linears of one dtype.

    Biases concatenate with zeros for a linear without one (DA-PTQ's CSRC d may give k / v
    one); (None, None) when the linears cannot be concatenated.
    """
    if not all(type(m) is nn.Linear for m in linears):
        return None, None
    if len({(m.weight.dtype, m.weight.device) for m in linears}) != 1:
        return None, None
    bias = None
    if any(m.bias is not None for m in linears):
        w = linears[0].weight
        bias = torch.cat([m.bias.detach().to(w) if m.bias is not None else
                          w.new_zeros(m.out_features) for m in linears])
    return torch.cat([m.weight.detach() for m in linears]), bias


class FusedNorm(nn.Module):
    """A tower's final norm on the fused add + norm kernel."""

    def __init__(self, norm: nn.Module):
        """Take over `norm` (RMSNorm or AdaRMSNorm)."""
        super().__init__()
        self.norm = norm

    def add_forward(self, h: torch.Tensor, res, cond=None):
        """Return (h + deferred residual, its norm, gate)."""
        return fused_add_norm(self.norm, h, res, cond)

    def forward(self, x: torch.Tensor, cond=None):
        """Return (normalized x, gate), as the norm it replaces."""
        return self.add_forward(x, None, cond)[1:]


class FusedAttentionInput(nn.Module):
    """`AttentionInput` with the fused add + norm and one GEMM over concatenated q/k/v.

    Projections that cannot be concatenated (quantized ones left unfused by quant/pi_fused.py,
    e.g. with a Hadamard rotation) run one by one after the fused norm.
    """

    def __init__(self, block: AttentionInput):
        """Take over the block's norm; concatenate (or keep) its projections."""
        super().__init__()
        attn = block.attn
        self.norm, self.kv_only = block.norm, attn.kv_only
        self.heads = (attn.num_heads, attn.num_kv_heads, attn.head_dim)
        names = ("k_proj", "v_proj") if attn.kv_only else ("q_proj", "k_proj", "v_proj")
        linears = [getattr(attn, n) for n in names]
        self.splits = [m.out_features for m in linears]
        weight, bias = _concat(linears)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.projs = nn.ModuleList(linears) if weight is None else None

    def _outputs(self, x: torch.Tensor):
        if self.weight is None:
            return [p(x) for p in self.projs]
        return F.linear(x, self.weight, self.bias).split(self.splits, -1)

    def project(self, h: torch.Tensor, res, cond):
        """Return (h + res, q [B, H, S, D], k, v [B, KVH, S, D], gate)."""
        h, x, gate = fused_add_norm(self.norm, h, res, cond)
        return (h, *split_heads(*self._outputs(x), *self.heads), gate)

    def project_kv(self, h: torch.Tensor, res, cond):
        """Return (k, v) [B, KVH, S, D] of h + res."""
        _, x, _ = fused_add_norm(self.norm, h, res, cond)
        k, v = self._outputs(x)[-2:]
        _, kvh, d = self.heads
        b, s, _ = k.shape
        return k.view(b, s, kvh, d).transpose(1, 2), v.view(b, s, kvh, d).transpose(1, 2)

    def forward(self, h: torch.Tensor, cond):
        """Return (q, k, v, gate) as `AttentionInput`."""
        return self.project(h, None, cond)[1:]

    def kv(self, h: torch.Tensor, cond):
        """Return (k, v) as `AttentionInput.kv`."""
        return self.project_kv(h, None, cond)


class FusedMLPBlock(nn.Module):
    """`MLPBlock` with the fused add + norm, one gate/up GEMM and a one-kernel GeGLU."""

    def __init__(self, block: MLPBlock):
        """Take over the block's norm and down_proj; concatenate float gate / up."""
        super().__init__()
        mlp = block.mlp
        self.norm = block.norm
        weight, bias = _concat([mlp.gate_proj, mlp.up_proj]) if isinstance(mlp, GeGLU) \
            else (None, None)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        if weight is None:
            self.mlp = mlp
        else:
            self.down_proj = mlp.down_proj

    def deferred(self, h: torch.Tensor, res, cond):
        """Return (h + res, (MLP out, gate)) with the MLP's residual left to the next norm."""
        h, x, gate = fused_add_norm(self.norm, h, res, cond)
        if self.weight is None:
            return h, (self.mlp(x), gate)
        return h, (self.down_proj(norm_kernels.geglu(F.linear(x, self.weight, self.bias))), gate)

    def forward(self, h: torch.Tensor, cond):
        """Return h plus the (gated) MLP of its norm, as `MLPBlock`."""
        return add_residual(*self.deferred(h, None, cond))


@torch.no_grad()
def prepare_for_inference(model: nn.Module) -> dict[str, int]:
    """Swap every float block of `model` for its fused form, in place; counts per kind.

    Integer blocks (quant/pi_fused.py) are kept. A second call finds nothing more to do.
    """
    counts = {"attention_input": 0, "mlp_block": 0, "final_norm": 0}
    for tower in model.towers:
        for layer in tower.layers:
            if isinstance(layer.attention_input, AttentionInput):
                layer.swap_attention_input(FusedAttentionInput(layer.attention_input))
                counts["attention_input"] += 1
            if isinstance(getattr(layer, "mlp_block", None), MLPBlock):
                layer.swap_mlp_block(FusedMLPBlock(layer.mlp_block))
                counts["mlp_block"] += 1
        if tower.outputs and isinstance(tower.norm, RMSNorm | AdaRMSNorm):
            tower.norm = FusedNorm(tower.norm)
            counts["final_norm"] += 1
    model.ops = FUSED_OPS
    return counts
