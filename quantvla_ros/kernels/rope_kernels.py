"""Fused RoPE of queries and keys plus the in-place key/value cache write, in one launch.

`rope_qkv` rotates q [B, H, S, D] and k [B, KVH, S, D] (any strides: views of the one q/k/v
GEMM's output) and writes the rotated k and the unchanged v straight into cache views
`k_out` / `v_out`, so a denoise step neither concatenates nor copies its keys. The rotated
q is laid out [B, S, H, D] in memory (returned as its [B, H, S, D] view), the layout
models/layers.attend folds into the query rows. Roundings follow the torch path
(`rope_qkv_reference`, the model's `apply_rope`): x * cos, rotate(x) * sin and their sum
are each rounded to the tensors' dtype. Off-GPU the reference runs.
"""

from __future__ import annotations

import torch

from quantvla_ros.kernels import dispatch


def _rope(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def rope_qkv_reference(q, k, v, cos, sin, k_out=None, v_out=None):
    """Torch path: (rope(q) or None, rope(k), v), written into k_out / v_out when given."""
    k = _rope(k, cos, sin)
    if k_out is not None:
        k_out.copy_(k)
        v_out.copy_(v)
        k, v = k_out, v_out
    return (None if q is None else _rope(q, cos, sin)), k, v


def rope_qkv(q, k, v, cos, sin, k_out=None, v_out=None, backend: str = "auto"):
    """Return (rotated q or None, rotated k, v), k / v written into k_out / v_out if given.

    q [B, H, S, D] or None, k / v [B, KVH, S, D], cos / sin [B, 1, S, D]; outputs in k's
    dtype. Without k_out / v_out, fresh [B, KVH, S, D] tensors are returned.
    """
    b, kvh, s, d = k.shape
    chosen = dispatch.resolve_backend(backend, k.device)
    if chosen == "reference" or d & (d - 1):
        dispatch.notify_launch("reference.rope_qkv")
        return rope_qkv_reference(q, k, v, cos, sin, k_out, v_out)
    if k_out is None:
        k_out, v_out = torch.empty_like(k, memory_format=torch.contiguous_format), \
            torch.empty_like(v, memory_format=torch.contiguous_format)
    nq = 0 if q is None else q.shape[1]
    q_out = None if q is None else torch.empty(b, s, nq, d, dtype=q.dtype,
                                               device=q.device).transpose(1, 2)
    dispatch.notify_launch(f"{chosen}.rope_qkv")
    if chosen == "meta" or b * s == 0:
        return q_out, k_out, v_out
    from quantvla_ros.kernels.norm_triton import rope_triton

    qq, qo = (q, q_out) if q is not None else (k, k_out)
    rope_triton(qq, k, v, cos, sin, qo, k_out, v_out, nq)
    return q_out, k_out, v_out
