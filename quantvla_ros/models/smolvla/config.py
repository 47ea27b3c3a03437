"""SmolVLA configurations (lerobot 0.6.1's `smolvla` policy) and its named configs.

lerobot builds SmolVLA from SmolVLM2-500M-Video-Instruct: the SigLIP vision tower, the pixel
shuffle connector, the SmolLM2 text model cut to its first `num_vlm_layers` (16) layers, and
an action expert: a copy of the text config at `expert_width_multiplier` (0.75) of its width,
with `get_intermediate_size` as MLP width and the same heads, whose odd layers cross-attend
to the backbone's keys / values (`self_attn_every_n_layers` 2). Head counts and widths of
both towers must agree in heads (lerobot's attention uses the backbone's head counts).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import ClassVar

from quantvla_ros.models.family import check_noise_scale
from quantvla_ros.models.names import lookup
from quantvla_ros.models.siglip import VisionConfig


@dataclass(frozen=True)
class TextConfig:
    """One Llama-style tower: the SmolLM2 backbone or the action expert."""

    width: int
    depth: int
    mlp_dim: int
    num_heads: int = 15
    num_kv_heads: int = 5
    head_dim: int = 64
    eps: float = 1e-5


def expert_mlp_dim(width: int) -> int:
    """Return lerobot's `get_intermediate_size`: 2/3 of 4x the width, rounded up to 256."""
    hidden = 4 * int(2 * width / 3)
    return 256 * ((hidden + 255) // 256)


# SmolVLM2-500M-Video-Instruct: SigLIP 512 px / 16 (768 wide, 12 layers of 12 heads), SmolLM2
# 960 wide (15 heads of 64, 5 KV heads, MLP 2560, vocabulary 49280), pixel shuffle 4.
SMOLVLM2_VISION = VisionConfig(image_size=512, patch_size=16, width=768, depth=12,
                               mlp_dim=3072, num_heads=12)
SMOLVLM2_TEXT = TextConfig(width=960, depth=32, mlp_dim=2560)


@dataclass(frozen=True)
class SmolVLAConfig:
    """A SmolVLA policy; `backbone.depth` is the kept VLM layers (lerobot's num_vlm_layers)."""

    family: ClassVar[str] = "smolvla"  # models.registry / models.build dispatch on it

    name: str
    variant: str = "smolvla"
    vision: VisionConfig = SMOLVLM2_VISION
    backbone: TextConfig = replace(SMOLVLM2_TEXT, depth=16)
    expert: TextConfig = TextConfig(width=720, depth=16, mlp_dim=expert_mlp_dim(720))
    scale_factor: int = 4  # the connector's pixel shuffle
    self_attn_every_n_layers: int = 2  # layers i % n == 0 self-attend, the others cross
    vocab_size: int = 49_280
    cameras: tuple[str, ...] = ("camera1", "camera2", "camera3")
    action_horizon: int = 50
    action_dim: int = 32
    state_dim: int = 32
    num_steps: int = 10
    max_token_len: int = 48
    min_period: float = 4e-3
    max_period: float = 4.0
    rope_theta: float = 10_000.0  # lerobot's apply_rope, not the text config's rope_theta
    tokenizer_path: str | None = None
    noise_scale: float = 1.0  # denoising start noise scale when served (models.family)

    def __post_init__(self) -> None:
        """Reject towers lerobot's joint attention cannot run."""
        check_noise_scale(self.noise_scale)
        b, e = self.backbone, self.expert
        if (b.num_heads, b.num_kv_heads, b.head_dim) != (e.num_heads, e.num_kv_heads,
                                                         e.head_dim):
            raise ValueError(f"backbone and expert must share heads and head_dim ({b}, {e})")
        if e.depth < 1 or b.depth % e.depth:
            raise ValueError(f"expert depth {e.depth} must divide backbone depth {b.depth}")
        side = self.vision.image_size // self.vision.patch_size
        if side % self.scale_factor:
            raise ValueError(f"{side} patches per side do not shuffle by {self.scale_factor}")
        if not self.cameras:
            raise ValueError("a config needs at least one camera slot")

    @property
    def image_tokens(self) -> int:
        """Tokens per camera after the pixel shuffle."""
        return self.vision.num_tokens // self.scale_factor**2

    @property
    def prefix_len(self) -> int:
        """Prefix tokens at most: every camera's tokens, the prompt and one state token."""
        return len(self.cameras) * self.image_tokens + self.max_token_len + 1

    def expert_layer_of(self, layer: int) -> int | None:
        """Return the expert layer paired with backbone layer ``layer`` (None: none)."""
        every = self.backbone.depth // self.expert.depth
        return layer // every if layer % every == 0 else None

    def is_cross(self, layer: int) -> bool:
        """Whether backbone layer ``layer`` runs the expert as cross-attention."""
        n = self.self_attn_every_n_layers
        return not (n > 0 and layer % n == 0)

    def expert_reads_backbone_kv(self, expert_layer: int) -> bool:
        """Whether expert layer ``expert_layer``'s k / v read backbone keys (lerobot's rule)."""
        n = self.self_attn_every_n_layers
        return not (n > 0 and expert_layer % n == 0)

    def to_dict(self) -> dict:
        """Return the config as JSON-ready nested dicts (cameras as a list)."""
        d = asdict(self)
        d["cameras"] = list(self.cameras)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SmolVLAConfig:
        """Rebuild a config from `to_dict` output."""
        d = dict(d)
        d["vision"] = VisionConfig(**d["vision"])
        d["backbone"] = TextConfig(**d["backbone"])
        d["expert"] = TextConfig(**d["expert"])
        d["cameras"] = tuple(d["cameras"])
        return cls(**d)

    def with_(self, **changes) -> SmolVLAConfig:
        """Return a copy with ``changes`` applied."""
        return replace(self, **changes)


# Tiny: 64 px / 8 patches -> 4 tokens per camera after the shuffle; backbone 256 wide (8 heads
# of 32, 2 KV heads), expert half as wide; widths multiples of 128 where int4 groups apply.
_TINY = dict(
    vision=VisionConfig(image_size=64, patch_size=8, width=128, depth=2, mlp_dim=256,
                        num_heads=2),
    backbone=TextConfig(width=256, depth=4, mlp_dim=512, num_heads=8, num_kv_heads=2,
                        head_dim=32),
    expert=TextConfig(width=128, depth=4, mlp_dim=expert_mlp_dim(128), num_heads=8,
                      num_kv_heads=2, head_dim=32),
    vocab_size=512, cameras=("camera1", "camera2"), action_horizon=10, num_steps=3,
)

SMOLVLA_REGISTRY: dict[str, SmolVLAConfig] = {
    "smolvla": SmolVLAConfig(name="smolvla"),
    "smolvla-tiny": SmolVLAConfig(name="smolvla-tiny", **_TINY),
}


def get_config(name: str) -> SmolVLAConfig:
    """Return the named SmolVLA config; an unknown name raises KeyError (close names)."""
    return lookup(SMOLVLA_REGISTRY, name)


