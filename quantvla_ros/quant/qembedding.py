"""QuantEmbedding: a token table stored as int8 or int4 rows, dequantized only where looked up.

pi0.5's token embedding (257152 x 2048) is the largest single tensor of the model and is read
a few dozen rows per prompt, so storing it as integers costs one gather and one multiply
per token. The table is never used as an LM head here (pi0 / pi0.5 emit actions, not
tokens; checkpoints' `lm_head.weight` is skipped at load), so only lookups need serving.
Gemma's sqrt(width) scaling stays in the model (PiModel.embed_prefix), after the lookup.
"""

from __future__ import annotations

import torch
from torch import nn

QMAX = {8: 127, 4: 7}
FROM_FLOAT_SLICE_BYTES = 64 << 20  # float32 bytes of the rows quantized per pass


def quantize_rows(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric round-to-nearest per row: (int8 [V, D] in [-qmax, qmax], scale f32 [V])."""
    qmax = QMAX[bits]
    scale = (w.float().abs().amax(1) / qmax).clamp(min=1e-12)
    q = torch.round(w.float() / scale[:, None]).clamp(-qmax, qmax).to(torch.int8)
    return q, scale


def pack_rows(q: torch.Tensor) -> torch.Tensor:
    """Two int4 values per byte along each row: even column in the low nibble."""
    u = q.to(torch.uint8) & 0xF
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_rows(packed: torch.Tensor) -> torch.Tensor:
    """Invert pack_rows: uint8 [..., D/2] -> int8 [..., D] (sign-extended nibbles)."""
    low = (packed & 0xF).to(torch.int8)
    high = (packed >> 4).to(torch.int8)
    both = torch.stack([low, high], -1).flatten(-2)
    return (both ^ 8) - 8


class QuantEmbedding(nn.Module):
    """Lookup of integer rows times their float32 scale, returned in `out_dtype`.

    Buffers: `weight_q` int8 [V, D] (8 bits) or uint8 [V, D/2] (4 bits, two per byte, even
    column in the low nibble), `weight_scale` float32 [V]. `out_dtype` is the model's
    compute dtype (the float nn.Embedding's weight dtype); the artifact loader sets it.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, bits: int, device=None,
                 out_dtype: torch.dtype = torch.float32):
        """Allocate empty buffers for the packed rows and their scales."""
        super().__init__()
        if bits not in QMAX:
            raise ValueError(f"embedding bits must be 8 or 4, got {bits}")
        if bits == 4 and embedding_dim % 2:
            raise ValueError(f"int4 rows need an even width, got {embedding_dim}")
        self.num_embeddings, self.embedding_dim, self.bits = num_embeddings, embedding_dim, bits
        self.out_dtype = out_dtype
        cols, dtype = (embedding_dim // 2, torch.uint8) if bits == 4 else (embedding_dim,
                                                                           torch.int8)
        self.register_buffer("weight_q", torch.empty(num_embeddings, cols, dtype=dtype,
                                                     device=device))
        self.register_buffer("weight_scale", torch.empty(num_embeddings, dtype=torch.float32,
                                                         device=device))

    @classmethod
    @torch.no_grad()
    def from_float(cls, embedding: nn.Embedding, bits: int) -> QuantEmbedding:
        """Quantize a float table row by row; the result returns the table's dtype."""
        w = embedding.weight
        m = cls(w.shape[0], w.shape[1], bits, device=w.device, out_dtype=w.dtype)
        # A slice of rows at a time (rows are independent, so the result is the same): the
        # whole table's float32 temporaries were ~4x its fp32 bytes, 8 GiB for pi0.5's.
        step = max(1, FROM_FLOAT_SLICE_BYTES // (4 * w.shape[1]))
        for r0 in range(0, w.shape[0], step):
            q, scale = quantize_rows(w[r0:r0 + step], bits)
            m.weight_q[r0:r0 + step] = pack_rows(q) if bits == 4 else q
            m.weight_scale[r0:r0 + step] = scale
        return m

    def int_rows(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Return the integer values (int8) of rows `ids`, or of the whole table."""
        rows = self.weight_q if ids is None else self.weight_q[ids]
        return unpack_rows(rows) if self.bits == 4 else rows

    def dequantized_weight(self) -> torch.Tensor:
        """Return the whole table as the lookup sees it (for tests and reports; allocates)."""
        return (self.int_rows().float() * self.weight_scale[:, None]).to(self.out_dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Gather rows `ids` [...], dequantize in float32, return [..., D] in out_dtype."""
        rows = self.int_rows(ids).float() * self.weight_scale[ids][..., None]
        return rows.to(self.out_dtype)

    def extra_repr(self) -> str:
        """Describe shape and bits for repr()."""
        return f"{self.num_embeddings}, {self.embedding_dim}, int{self.bits} rows"
