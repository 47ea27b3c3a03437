"""Model configurations for pi0 / pi0.5 and the registry of named configs.

Configs are frozen dataclasses: a config fully determines the module tree, so the same code
path builds the 3B-parameter `pi05` and the few-layer `pi05-tiny` used in tests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import ClassVar

from quantvla_ros.models.family import check_noise_scale
from quantvla_ros.models.names import lookup
from quantvla_ros.models.siglip import VisionConfig


@dataclass(frozen=True)
class GemmaConfig:
    """One Gemma tower: the backbone (gemma_2b) or the action expert (gemma_300m)."""

    width: int
    depth: int
    mlp_dim: int
    num_heads: int = 8
    num_kv_heads: int = 1
    head_dim: int = 256
    eps: float = 1e-6
    rope_theta: float = 10_000.0


# How pi0.5 writes the robot state into its prompt (see PiConfig.state_prompt); "none" leaves
# it out (a policy trained with state dropout can be served from its images and task alone).
STATE_PROMPTS = ("unpadded", "padded", "none")

GEMMA_VARIANTS = {
    "gemma_2b": GemmaConfig(width=2048, depth=18, mlp_dim=16_384),
    "gemma_300m": GemmaConfig(width=1024, depth=18, mlp_dim=4096),
}


@dataclass(frozen=True)
class PiConfig:
    """A pi0 (`variant="pi0"`) or pi0.5 (`variant="pi05"`) policy."""

    family: ClassVar[str] = "pi"  # models.registry / models.build dispatch on it

    name: str
    variant: str
    vision: VisionConfig = field(default_factory=VisionConfig)
    backbone: GemmaConfig = GEMMA_VARIANTS["gemma_2b"]
    expert: GemmaConfig = GEMMA_VARIANTS["gemma_300m"]
    vocab_size: int = 257_152
    cameras: tuple[str, ...] = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
    action_horizon: int = 50
    action_dim: int = 32
    state_dim: int = 32
    num_steps: int = 10
    max_token_len: int = 200
    min_period: float = 4e-3
    max_period: float = 4.0
    tokenizer_path: str | None = None
    # pi0.5: the prompt's state bins are the robot's own values ("unpadded") or the vector
    # zero-padded to state_dim ("padded"), or no state at all ("none"); None = not declared
    # (the Policy then uses unpadded).
    state_prompt: str | None = None
    # The denoising start noise is multiplied by this when served (1: sample; 0: start from
    # the noise's mean, deterministic). A trained checkpoint may declare what serves it best.
    noise_scale: float = 1.0

    def __post_init__(self) -> None:
        """Reject unknown variants, towers with different layouts and configs without cameras."""
        check_noise_scale(self.noise_scale)
        if self.variant not in ("pi0", "pi05"):
            raise ValueError(f"unknown variant {self.variant!r}: expected 'pi0' or 'pi05'")
        if self.state_prompt not in (None, *STATE_PROMPTS):
            raise ValueError(f"state_prompt {self.state_prompt!r}: expected one of "
                             f"{list(STATE_PROMPTS)} or None")
        b, e = self.backbone, self.expert
        if (b.depth, b.num_heads, b.num_kv_heads, b.head_dim) != (
            e.depth, e.num_heads, e.num_kv_heads, e.head_dim
        ):
            raise ValueError(
                "backbone and expert must share depth, heads, KV heads and head_dim "
                f"(backbone {b}, expert {e})"
            )
        if not self.cameras:
            raise ValueError("a config needs at least one camera slot")

    @property
    def prefix_len(self) -> int:
        """Prefix tokens per observation: every camera slot's patches plus the prompt."""
        return len(self.cameras) * self.vision.num_tokens + self.max_token_len

    def to_dict(self) -> dict:
        """Return the config as JSON-ready nested dicts (cameras as a list)."""
        d = asdict(self)
        d["cameras"] = list(self.cameras)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PiConfig:
        """Rebuild a config from `to_dict` output."""
        d = dict(d)
        d["vision"] = VisionConfig(**d["vision"])
        d["backbone"] = GemmaConfig(**d["backbone"])
        d["expert"] = GemmaConfig(**d["expert"])
        d["cameras"] = tuple(d["cameras"])
        return cls(**d)

    def with_(self, **changes) -> PiConfig:
        """Return a copy with ``changes`` applied."""
        return replace(self, **changes)


# Tiny configs keep the real head layout (8 query heads, 1 KV head: lerobot hard-codes 8)
# and widths that are multiples of 128, so int4 group-128 quantization applies as in full size.
_TINY_VISION = VisionConfig(width=128, depth=2, mlp_dim=256, num_heads=2)
_TINY_BACKBONE = GemmaConfig(width=256, depth=2, mlp_dim=512, head_dim=32)
_TINY_EXPERT = GemmaConfig(width=128, depth=2, mlp_dim=256, head_dim=32)
_TINY = dict(
    vision=_TINY_VISION,
    backbone=_TINY_BACKBONE,
    expert=_TINY_EXPERT,
    vocab_size=512,
    cameras=("base_0_rgb", "left_wrist_0_rgb"),
)

REGISTRY: dict[str, PiConfig] = {
    "pi05": PiConfig(name="pi05", variant="pi05"),
    "pi0": PiConfig(name="pi0", variant="pi0", max_token_len=48),
    "pi05-tiny": PiConfig(name="pi05-tiny", variant="pi05", **_TINY),
    "pi0-tiny": PiConfig(name="pi0-tiny", variant="pi0", max_token_len=48, **_TINY),
    # Trained here on LIBERO demonstrations (quantvla_ros/training, checkpoints/): 112 px
    # views, 4 layers per tower (the most that trains in about 75 min on the 2-core CPU:
    # 1.15 s per step of 16 frames x 4 noise draws), backbone widths that are multiples of
    # 128 (int4 groups of 128 apply), horizon 10 with LIBERO's 7-dim action and 8-dim state.
    "pi05-libero": PiConfig(
        name="pi05-libero", variant="pi05",
        vision=VisionConfig(image_size=112, width=192, depth=3, mlp_dim=384, num_heads=4),
        backbone=GemmaConfig(width=256, depth=4, mlp_dim=512, head_dim=32),
        expert=GemmaConfig(width=128, depth=4, mlp_dim=384, head_dim=32),
        vocab_size=512, cameras=("base_0_rgb", "left_wrist_0_rgb"), action_horizon=10,
        action_dim=7, state_dim=8, num_steps=10, max_token_len=120,
    ),
    # 56 px images, one layer per tower, 3 denoising steps, horizon 10: a chunk takes tens of
    # milliseconds on a CPU, for multi-process ROS tests and smoke runs.
    "pi05-micro": PiConfig(
        name="pi05-micro", variant="pi05",
        vision=VisionConfig(image_size=56, width=64, depth=1, mlp_dim=128, num_heads=2),
        backbone=GemmaConfig(width=128, depth=1, mlp_dim=256, head_dim=16),
        expert=GemmaConfig(width=64, depth=1, mlp_dim=128, head_dim=16),
        vocab_size=512, cameras=("base_0_rgb", "left_wrist_0_rgb"), action_horizon=10,
        action_dim=8, state_dim=8, num_steps=3, max_token_len=96,
    ),
}


def get_config(name: str) -> PiConfig:
    """Return the named pi0 / pi0.5 config; an unknown name raises KeyError (close names)."""
    return lookup(REGISTRY, name)
