"""What `joint_forward` shares across layers: KV cache, attention context, float ops.

The float ops are what a runtime may replace by fused kernels. Everything here is built once
per forward (or once per action chunk for the denoise loop: the suffix's positions and mask
do not change between steps), so no layer rebuilds it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantvla_ros.models.pi.config import GemmaConfig
from quantvla_ros.models.pi.layers import attention_bias, fold_bias
from quantvla_ros.models.rope import apply_rope, rope_cos_sin


@dataclass
class KVCache:
    """Post-RoPE keys and values of the prefix, per layer [B, KVH, P (+ room), D].

    `length` None: the tensors hold exactly the prefix, and new keys are concatenated
    (training, which also builds caches by hand). Otherwise the first `length` positions are
    the prefix and the rest is room (`PiModel.prefill(room=)`): a denoise step writes its keys
    and values there in place, with no allocation or concatenation per step.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int | None = None

    def has_room(self, n: int) -> bool:
        """Return whether `n` new positions fit after the prefix, to be written in place."""
        return self.length is not None and self.keys[0].shape[2] >= self.length + n


@dataclass
class AttentionContext:
    """RoPE angles, the boolean mask, its additive bias and folded bias, for one forward.

    cos / sin [B, 1, S, D] for the new tokens; mask [B, S, T] (True = may attend) and bias
    [B, 1, S, T]; `folded` is `fold_bias(bias, heads)` when the towers have one KV head.
    """

    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor
    bias: torch.Tensor
    folded: torch.Tensor | None


def attention_context(cfg: GemmaConfig, positions: torch.Tensor, mask: torch.Tensor,
                      dtype: torch.dtype) -> AttentionContext:
    """Build the context for integer positions [B, S] and a boolean mask [B, S, T]."""
    cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta, dtype)
    bias = attention_bias(mask, dtype)
    folded = fold_bias(bias, cfg.num_heads) if cfg.num_kv_heads == 1 else None
    return AttentionContext(cos, sin, mask, bias, folded)


class TorchOps:
    """The float ops of `joint_forward` in plain torch (training, CPU, the reference).

    A runtime installs a drop-in with fused kernels as `PiModel.ops`
    (runtime/families/pi_fast_path.py); models never import kernels.
    """

    def rope_qkv(self, q, k, v, cos, sin, k_out=None, v_out=None):
        """Rotate q [B, H, S, D] (or None) and k [B, KVH, S, D]; return (q, k, v).

        With `k_out` / `v_out` (views of a cache), the rotated k and v are written there and
        those views returned.
        """
        k = apply_rope(k, cos, sin)
        if k_out is not None:
            k_out.copy_(k)
            v_out.copy_(v)
            k, v = k_out, v_out
        return (None if q is None else apply_rope(q, cos, sin)), k, v


TORCH_OPS = TorchOps()
