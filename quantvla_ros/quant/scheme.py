"""What to quantize with: bit widths, granularity and the optional refinements."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from quantvla_ros.kernels.int4_layout import PACK_K

SUPPORTED_BITS = ("w8a8", "w4a8", "w4a4")


@dataclass(frozen=True)
class QuantScheme:
    """Integer format of one QuantLinear.

    group_size None means one scale per output channel; int4 weights default to groups of
    128 along K. `hadamard` rotates activations (block size 128) before int4 quantization,
    with the inverse rotation folded into the weights offline. `act_clip` (a percentile,
    e.g. 99.9; None = off) clips each input channel of the activations at that percentile
    of |x| calibrated on the float model, before the per-token quantization (the authors'
    QuantVLA activation quantizer clips at the 99.9th percentile).
    """

    w_bits: int = 4
    a_bits: int = 8
    group_size: int | None = 128
    clip_search: bool = False
    hadamard: bool = False
    act_clip: float | None = None

    def __post_init__(self) -> None:
        """Reject unsupported bit pairs and group sizes that are not positive and even."""
        if f"w{self.w_bits}a{self.a_bits}" not in SUPPORTED_BITS:
            raise ValueError(f"unsupported bits w{self.w_bits}a{self.a_bits}; "
                             f"supported: {', '.join(SUPPORTED_BITS)}")
        if self.group_size is not None and (self.group_size <= 0 or self.group_size % 2):
            raise ValueError(f"group_size must be a positive even number, got {self.group_size}")
        if self.act_clip is not None and not 50 < self.act_clip <= 100:
            raise ValueError(f"act_clip is a percentile in (50, 100], got {self.act_clip}")
        if self.act_clip is not None and self.hadamard:
            raise ValueError("act_clip thresholds are calibrated on the unrotated inputs; "
                             "they cannot be combined with the Hadamard rotation")
        if self.bits == "w4a8" and self.group_size is not None and self.group_size % PACK_K:
            raise ValueError(f"W4A8 groups must be multiples of {PACK_K} (the K-half packing "
                             f"block), got {self.group_size}")

    @property
    def bits(self) -> str:
        """The scheme's name, e.g. ``w4a8``."""
        return f"w{self.w_bits}a{self.a_bits}"

    def to_dict(self) -> dict:
        """Return the scheme's fields as a dict (act_clip only when set: older builds read it)."""
        d = asdict(self)
        if d["act_clip"] is None:
            del d["act_clip"]
        return d


def parse_bits(bits: str, **options) -> QuantScheme:
    """`w8a8` / `w4a8` / `w4a4` -> a QuantScheme with the usual defaults for that width.

    int8 weights use per-channel scales; int4 weights groups of 128; W4A4 turns on the
    Hadamard rotation because plain int4 activations are known to collapse.
    """
    m = re.fullmatch(r"w(\d+)a(\d+)", bits.strip().lower())
    if not m or bits.strip().lower() not in SUPPORTED_BITS:
        raise ValueError(f"unsupported bits {bits!r}; supported: {', '.join(SUPPORTED_BITS)}")
    w, a = int(m.group(1)), int(m.group(2))
    defaults = {"group_size": None if w == 8 else 128, "hadamard": a == 4}
    defaults.update({k: v for k, v in options.items() if v is not None})
    if defaults["group_size"] == 0:  # explicit request for one scale per output channel
        defaults["group_size"] = None
    return QuantScheme(w_bits=w, a_bits=a, **defaults)
