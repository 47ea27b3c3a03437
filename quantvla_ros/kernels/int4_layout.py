"""The W4A8 weight format: "K-half" int4 packing and progressive (two-level) group scales.

Packing. K is cut into blocks of ``PACK_K`` = 128; byte j (0 <= j < 64) of a block holds the
weight at k = j in its low nibble and k = j + 64 in its high nibble (two's complement). The
kernel then runs two dots of K = 64 over the low and the high nibbles and never interleaves
(no join / reshape, which the old "low nibble = even k" order needed). K is zero-padded to a
whole block, so any K packs; packed rows are ``padded_k(K) // 2`` bytes.

Unpacking on the GPU works on 32-bit registers of four packed bytes with no carry between
bytes (see ``LO_ASM`` / ``HI_ASM``): ``lo = (r & 0x0F0F0F0F) | ((r & 0x08080808) * 30)``
sign-extends four nibbles at once (0x08 * 30 = 0xF0 fits a byte). :func:`unpack_words`
emulates exactly those instructions for the tests; the interpreter uses int8 shifts.

Progressive scales (after QServe, symmetric): a float scale per output channel ``s1 [N]``
and an integer scale per group ``s2 [N, K // group]`` in [1, GROUP_SCALE_MAX], so that
``w ~= s1 * s2 * q`` with q in [-7, 7]. The GEMM accumulates ``sum_g s2 * (x_g . q_g)`` in
int32 over the whole K (one IMAD per accumulator and group, no float fold in the loop) and
applies ``s_x * s1`` once in the epilogue. Groups must be multiples of PACK_K.
"""

from __future__ import annotations

import torch

PACK_K = 128
HALF_K = PACK_K // 2
INT4_MAX = 7
# Integer group scales span [1, 64]: |acc| <= 127 * 7 * 64 * K stays below 2**31 for
# K <= MAX_K; the step excess of the integer scale is at most s1 = amax_channel / (7 * 64).
GROUP_SCALE_MAX = 64
MAX_K = (2**31 - 1) // (127 * INT4_MAX * GROUP_SCALE_MAX)

LOW_NIBBLES, SIGN_BITS, SIGN_FILL = 0x0F0F0F0F, 0x08080808, 30
LO_ASM = (f"{{ .reg .b32 m, s; and.b32 m, $1, {LOW_NIBBLES}; and.b32 s, $1, {SIGN_BITS}; "
          f"mul.lo.u32 s, s, {SIGN_FILL}; or.b32 $0, m, s; }}")
HI_ASM = (f"{{ .reg .b32 h, m, s; shr.u32 h, $1, 4; and.b32 m, h, {LOW_NIBBLES}; "
          f"and.b32 s, h, {SIGN_BITS}; mul.lo.u32 s, s, {SIGN_FILL}; or.b32 $0, m, s; }}")


def padded_k(k: int) -> int:
    """K rounded up to whole packing blocks."""
    return -(-k // PACK_K) * PACK_K


def pack_khalf(q: torch.Tensor) -> torch.Tensor:
    """Pack int8 values in [-8, 7] of shape [N, K] into uint8 [N, padded_k(K) // 2]."""
    if q.dtype != torch.int8 or q.dim() != 2:
        raise ValueError(f"pack_khalf expects 2-D int8 values, got {q.dtype} {tuple(q.shape)}")
    if q.numel() and (q.min() < -8 or q.max() > 7):
        raise ValueError("int4 values must lie in [-8, 7]")
    n, k = q.shape
    nib = torch.zeros(n, padded_k(k), dtype=torch.int16, device=q.device)
    nib[:, :k] = q.to(torch.int16) & 0xF
    blocks = nib.view(n, -1, 2, HALF_K)
    return (blocks[:, :, 0] | (blocks[:, :, 1] << 4)).to(torch.uint8).reshape(n, -1)


def unpack_khalf(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Unpack uint8 [N, padded_k(k) // 2] to int8 [N, k] (inverse of :func:`pack_khalf`)."""
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(f"unpack_khalf expects 2-D uint8, got {packed.dtype} "
                         f"{tuple(packed.shape)}")
    if packed.shape[1] * 2 != padded_k(k):
        raise ValueError(f"packed rows of {packed.shape[1]} bytes do not hold K={k} "
                         f"(need {padded_k(k) // 2})")
    p = packed.to(torch.int16).view(packed.shape[0], -1, HALF_K)
    lo, hi = p & 0xF, p >> 4
    both = torch.stack((lo - ((lo & 0x8) << 1), hi - ((hi & 0x8) << 1)), dim=2)
    return both.reshape(packed.shape[0], -1)[:, :k].to(torch.int8)


def unpack_words(words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Emulate LO_ASM / HI_ASM on 32-bit words (int64 tensor holding uint32 values)."""
    def sign_extend(r):
        return ((r & LOW_NIBBLES) | ((r & SIGN_BITS) * SIGN_FILL)) & 0xFFFFFFFF

    return sign_extend(words), sign_extend(words >> 4)


def quantize_progressive(w: torch.Tensor, group_size: int | None,
                         clip: torch.Tensor | None = None):
    """Quantize float w [N, K] to (q int8 [N, K], s1 float32 [N], s2 int8 [N, G] or None).

    Per channel (group_size None): q = round(w / s1), s1 = amax / 7. Grouped: s1 = amax /
    (7 * GROUP_SCALE_MAX), s2 = ceil(group amax / (7 * s1)), q = round(w / (s1 * s2)), so
    no value clips and |w - s1 s2 q| <= s1 s2 / 2. `clip` [N] shrinks each channel's range.
    """
    w = w.float()
    n, k = w.shape
    amax = w.abs().amax(-1)
    if clip is not None:
        amax = amax * clip.float()
    if group_size is None:
        s1 = (amax / INT4_MAX).clamp(min=1e-12)
        q = torch.round(w / s1[:, None]).clamp(-INT4_MAX, INT4_MAX)
        return q.to(torch.int8), s1, None
    if group_size % PACK_K or k % group_size:
        raise ValueError(f"W4A8 groups must be multiples of {PACK_K} that divide K={k}, "
                         f"got group_size={group_size}")
    s1 = (amax / (INT4_MAX * GROUP_SCALE_MAX)).clamp(min=1e-12)
    wg = w.view(n, k // group_size, group_size)
    g_amax = wg.abs().amax(-1)
    if clip is not None:
        g_amax = g_amax * clip.float()[:, None]
    s2 = torch.ceil(g_amax / (INT4_MAX * s1[:, None])).clamp(1, GROUP_SCALE_MAX)
    step = (s1[:, None] * s2)[..., None]
    q = torch.round(wg / step).clamp(-INT4_MAX, INT4_MAX).reshape(n, k)
    return q.to(torch.int8), s1, s2.to(torch.int8)


def dequantize_progressive(q: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor | None,
                           group_size: int | None) -> torch.Tensor:
    """Float32 [N, K] from int4 values and the two-level scales."""
    if s2 is None:
        return q.float() * s1.float()[:, None]
    n, k = q.shape
    wg = q.float().view(n, k // group_size, group_size) * s2.float()[..., None]
    return (wg * s1.float()[:, None, None]).reshape(n, k)
