"""Building blocks of pi's Gemma towers: norms, attention, MLP (RoPE is models/rope.py).

Parameter names follow Hugging Face / lerobot (`q_proj`, `gate_proj`, `input_layernorm`, ...)
so checkpoints map onto modules by a prefix rename only. `AttentionInput` and `MLPBlock` are
the float versions of a layer's two swappable blocks (see `gemma.GemmaLayer`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from quantvla_ros.models.rope import MASK_VALUE


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class RMSNorm(nn.Module):
    """Gemma RMSNorm: `x * rsqrt(mean(x^2) + eps) * (1 + w)`, computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        """Norm over the last dimension `dim`; the weight starts at 0 (identity)."""
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None):
        """Return (normalized x, None): a plain norm has no residual gate; cond is unused."""
        # Rounded to x's dtype before the weight, as lerobot does (identical in fp32).
        y = _rms(x, self.eps)
        return (y * (1.0 + self.weight.float())).to(x.dtype), None

    def add_forward(self, h: torch.Tensor, res, cond=None):
        """Return (h + gated res, its normalization, None): see `add_residual`."""
        h = add_residual(h, res)
        return (h, *self(h, cond))

    @torch.no_grad()
    def divide_output_(self, s: torch.Tensor) -> None:
        """Make the output y / s per channel (SmoothQuant folding): (1 + w) / s."""
        w = self.weight
        w.copy_(((1.0 + w.float()) / s - 1.0).to(w.dtype))


class Modulation(NamedTuple):
    """adaRMS modulation of one norm: y = rms(x) * scale1 + shift; residual gate `gate`.

    scale1 (= 1 + scale) and shift are float32 [B or 1, 1, W], gate is in the model dtype.
    """

    scale1: torch.Tensor
    shift: torch.Tensor
    gate: torch.Tensor


class StepCondition:
    """Every adaptive norm's modulation at one flow time, computed once (PiModel caches it).

    The modulation depends on t only, and the flow times are fixed, so the denoise loop
    passes this instead of the condition vector: no `dense(cond)` GEMM runs per step.
    """

    def __init__(self, mods: dict[nn.Module, Modulation], temb: torch.Tensor | None = None):
        """Map each AdaRMSNorm module to its `Modulation`; pi0 keeps its time embedding."""
        self.mods, self.temb = mods, temb


class AdaRMSNorm(nn.Module):
    """pi0.5 adaptive RMSNorm: `dense(cond)` -> [scale | shift | gate]; returns (y, gate)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        """Norm over the last dimension `dim`, modulated by a condition of width `dim`."""
        super().__init__()
        self.eps = eps
        self.dense = nn.Linear(dim, 3 * dim)

    def modulation(self, cond, dtype: torch.dtype) -> Modulation:
        """Return the modulation for cond [B, W], or the precomputed one of a StepCondition."""
        if isinstance(cond, StepCondition):
            return cond.mods[self]
        # dense stays float32 whatever the model dtype (fp32_modules, models/pi/family.py).
        mod = F.linear(cond.to(self.dense.weight.dtype), self.dense.weight, self.dense.bias)
        scale, shift, gate = mod.unsqueeze(1).chunk(3, dim=-1)
        return Modulation(1.0 + scale.float(), shift.float(), gate.to(dtype))

    def forward(self, x: torch.Tensor, cond):
        """Return (normalized x [B, S, W], residual gate [B, 1, W]) for cond [B, W]."""
        m = self.modulation(cond, x.dtype)
        return (_rms(x, self.eps) * m.scale1 + m.shift).to(x.dtype), m.gate

    @torch.no_grad()
    def divide_output_(self, s: torch.Tensor) -> None:
        """Make y / s per channel: scale and shift rows of `dense` over s (the gate stays)."""
        d = s.numel()
        weight, bias = self.dense.weight, self.dense.bias
        weight[:d] = (weight[:d].float() / s[:, None]).to(weight.dtype)
        bias[:d] = ((1.0 + bias[:d].float()) / s - 1.0).to(bias.dtype)
        weight[d:2 * d] = (weight[d:2 * d].float() / s[:, None]).to(weight.dtype)
        bias[d:2 * d] = (bias[d:2 * d].float() / s).to(bias.dtype)

    def add_forward(self, h: torch.Tensor, res, cond):
        """Return (h + gated res, its normalization, gate): see `add_residual`."""
        h = add_residual(h, res)
        return (h, *self(h, cond))


def gated_residual(x: torch.Tensor, out: torch.Tensor, gate: torch.Tensor | None):
    """Return `x + out`, with `out` scaled by the adaptive norm's gate when there is one."""
    return x + out if gate is None else x + out * gate


def add_residual(h: torch.Tensor, res) -> torch.Tensor:
    """Apply a deferred residual `res = (out, gate)` (or None: nothing) to h.

    `joint_forward` defers each block's residual add into the next norm, so that a fused
    kernel (runtime/families/pi_fast_path.py, quant/pi_fused.py) adds and normalizes in one pass.
    """
    return h if res is None else gated_residual(h, *res)


class Attention(nn.Module):
    """q/k/v/o projections of one tower; the attention itself runs jointly across towers."""

    def __init__(self, width: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 kv_only: bool = False):
        """Projections for `num_heads` query and `num_kv_heads` key/value heads of `head_dim`.

        `kv_only` builds k_proj / v_proj alone: a layer whose queries and output nothing reads
        (the backbone's last layer, see GemmaTower) only supplies keys and values.
        """
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.kv_only = kv_only
        if not kv_only:
            self.q_proj = nn.Linear(width, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(width, num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(width, num_kv_heads * head_dim, bias=False)
        if not kv_only:
            self.o_proj = nn.Linear(num_heads * head_dim, width, bias=False)

    def qkv(self, x: torch.Tensor):
        """Project to q [B, H, S, D] and k, v [B, KVH, S, D] (before RoPE)."""
        return self.split_heads(self.q_proj(x), self.k_proj(x), self.v_proj(x))

    def kv(self, x: torch.Tensor):
        """Project to k, v [B, KVH, S, D] only (before RoPE)."""
        b, s, _ = x.shape
        k = self.k_proj(x).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return k, v

    def split_heads(self, q, k, v):
        """Reshape [B, S, H*D] projections to [B, heads, S, D]."""
        return split_heads(q, k, v, self.num_heads, self.num_kv_heads, self.head_dim)


def split_heads(q, k, v, num_heads: int, num_kv_heads: int, head_dim: int):
    """Reshape [B, S, H*D] q and [B, S, KVH*D] k, v to q [B, H, S, D] and k, v [B, KVH, S, D]."""
    b, s, _ = q.shape
    q = q.view(b, s, num_heads, head_dim).transpose(1, 2)
    k = k.view(b, s, num_kv_heads, head_dim).transpose(1, 2)
    v = v.view(b, s, num_kv_heads, head_dim).transpose(1, 2)
    return q, k, v


def attention_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean [B, S, T] mask -> additive [B, 1, S, T] bias with a finite negative."""
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return bias.masked_fill(~mask, MASK_VALUE)[:, None]


def fold_bias(bias: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, 1, S, T] bias -> [B, 1, S * heads, T], row s * heads + h = row s (see `attend`).

    Made once per forward (or chunk). Its rows are padded to a multiple of 16 elements so a
    GPU's memory-efficient attention takes it as it is instead of padding it every call.
    """
    b, _, s, t = bias.shape
    buf = bias.new_empty(b, 1, s * heads, t + (-t % 16))[..., :t]
    buf.view(b, 1, s, heads, t).copy_(bias[:, :, :, None, :].expand(b, 1, s, heads, t))
    return buf


def attend(q, k, v, bias: torch.Tensor, folded: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention over [B, H, S, D] with an additive [B, 1, S, T] bias.

    Returns [B, S, H*D]. Build the bias once per forward with `attention_bias`. With one
    key/value head and q laid out [B, S, H, D] in memory, pass `folded` (`fold_bias`): the
    heads fold into the query rows, so SDPA needs no GQA (which rules out the fused GPU
    kernels) and the output is already [B, S, H*D] (no transpose copy). Same math per row.
    """
    b, h, s, d = q.shape
    if folded is not None and k.shape[1] == 1 and q.transpose(1, 2).is_contiguous():
        out = F.scaled_dot_product_attention(q.transpose(1, 2).reshape(b, 1, s * h, d), k, v,
                                             attn_mask=folded)
        return out.view(b, s, h * d)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=bias, enable_gqa=k.shape[1] != q.shape[1]
    )
    return out.transpose(1, 2).reshape(b, s, h * d)


class GeGLU(nn.Module):
    """Gemma MLP: `down(gelu_tanh(gate(x)) * up(x))`."""

    def __init__(self, width: int, mlp_dim: int):
        """Gate and up projections `width -> mlp_dim`, down projection back to `width`."""
        super().__init__()
        self.gate_proj = nn.Linear(width, mlp_dim, bias=False)
        self.up_proj = nn.Linear(width, mlp_dim, bias=False)
        self.down_proj = nn.Linear(mlp_dim, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP to an already normalized x [..., W]."""
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class AttentionInput(nn.Module):
    """Input norm + q/k/v projections of one layer: `forward(h, cond) -> (q, k, v, gate)`.

    q is [B, H, S, D] and k, v are [B, KVH, S, D], all before RoPE; gate is the adaptive
    norm's residual gate for the attention output, or None. `joint_forward` calls
    `project(h, res, cond)` / `project_kv`, which first add the previous block's deferred
    residual `res` (`add_residual`) and also return the new h. This float block only views
    modules its layer owns and registers, so it adds no parameter or state-dict key. A
    replacement (quant/pi_fused.py, runtime/families/pi_fast_path.py) keeps this contract,
    owns its tensors.
    """

    def __init__(self, norm: nn.Module, attn: Attention):
        """View `norm` (RMSNorm or AdaRMSNorm) and the q/k/v projections of `attn`."""
        super().__init__()
        self._parts = (norm, attn)  # a tuple: nn.Module does not register them a second time

    @property
    def norm(self) -> nn.Module:
        """The input norm (owned by the layer)."""
        return self._parts[0]

    @property
    def attn(self) -> Attention:
        """The attention projections (owned by the layer); only q/k/v are used here."""
        return self._parts[1]

    def forward(self, h: torch.Tensor, cond: torch.Tensor | None):
        """Normalize h [B, S, W] (with cond for the adaptive norm) and project to q, k, v."""
        x, gate = self.norm(h, cond)
        return (*self.attn.qkv(x), gate)

    def kv(self, h: torch.Tensor, cond: torch.Tensor | None):
        """Normalize h and project to k, v only (what a key/value-only layer computes)."""
        x, _ = self.norm(h, cond)
        return self.attn.kv(x)

    def project(self, h: torch.Tensor, res, cond):
        """Add the deferred residual `res` to h, then as forward: (h, q, k, v, gate)."""
        h, x, gate = self.norm.add_forward(h, res, cond)
        return (h, *self.attn.qkv(x), gate)

    def project_kv(self, h: torch.Tensor, res, cond):
        """Add the deferred residual `res` to h, then as kv: (k, v)."""
        _, x, _ = self.norm.add_forward(h, res, cond)
        return self.attn.kv(x)

    def extra_repr(self) -> str:
        """Say that the block views its layer's modules."""
        return "views input_layernorm, self_attn.q_proj / k_proj / v_proj"


class MLPBlock(nn.Module):
    """Post-attention norm + GeGLU with residual: `forward(h, cond) -> h + gated MLP(norm(h))`.

    The MLP output is scaled by the adaptive norm's gate when the norm has one.
    `joint_forward` calls `deferred(h, res, cond)`, which leaves that residual add to the
    next norm. Like `AttentionInput`, this float block views its layer's modules and owns
    no tensors.
    """

    def __init__(self, norm: nn.Module, mlp: nn.Module):
        """View `norm` (RMSNorm or AdaRMSNorm) and `mlp` (a GeGLU)."""
        super().__init__()
        self._parts = (norm, mlp)  # a tuple: nn.Module does not register them a second time

    @property
    def norm(self) -> nn.Module:
        """The post-attention norm (owned by the layer)."""
        return self._parts[0]

    @property
    def mlp(self) -> nn.Module:
        """The MLP (owned by the layer)."""
        return self._parts[1]

    def forward(self, h: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Return h [B, S, W] plus the (gated) MLP of its normalization."""
        x, gate = self.norm(h, cond)
        return gated_residual(h, self.mlp(x), gate)

    def deferred(self, h: torch.Tensor, res, cond):
        """Add `res` to h, run the MLP on its norm; return (h, (MLP out, gate)) unadded."""
        h, x, gate = self.norm.add_forward(h, res, cond)
        return h, (self.mlp(x), gate)

    def extra_repr(self) -> str:
        """Say that the block views its layer's modules."""
        return "views post_attention_layernorm, mlp"
