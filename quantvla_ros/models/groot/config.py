"""GR00T N1.5 configurations: the released 3B size and a tiny one of the same structure.

Dimensions follow the released `config.json` (shared/GROOT.md §2); the tiny config is §6's.
A config fully determines the module tree, like `models.config.PiConfig`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import ClassVar

from quantvla_ros.models.family import check_noise_scale
from quantvla_ros.models.siglip import VisionConfig


@dataclass(frozen=True)
class Qwen3Config:
    """The Qwen3 LLM as GR00T keeps it: `depth` = select_layer layers, then the final norm."""

    vocab_size: int = 151_680
    width: int = 2048
    depth: int = 12  # select_layer: Qwen3-1.7B has 28 layers, layers 12..27 are dropped
    mlp_dim: int = 6144
    num_heads: int = 16
    num_kv_heads: int = 8
    head_dim: int = 128
    eps: float = 1e-6
    rope_theta: float = 1_000_000.0


@dataclass(frozen=True)
class ActionHeadConfig:
    """Flow-matching action head: vlln + VL self-attention, encoders, DiT, decoder."""

    backbone_dim: int = 2048  # project_to_dim is null: the LLM width reaches the head
    vlsa_depth: int = 4
    vlsa_heads: int = 32
    vlsa_head_dim: int = 64
    vlsa_mlp_dim: int = 8192
    dit_depth: int = 16  # even blocks cross-attend to the VL tokens, odd blocks self-attend
    dit_heads: int = 32
    dit_head_dim: int = 48
    dit_mlp_dim: int = 6144
    hidden_size: int = 1024  # DiT output_dim, state-encoder hidden, decoder input and hidden
    input_embedding_dim: int = 1536
    max_state_dim: int = 64
    action_dim: int = 32
    action_horizon: int = 16
    num_future_tokens: int = 32  # num_target_vision_tokens
    max_num_embodiments: int = 32
    max_seq_len: int = 1024  # rows of the action position table
    num_steps: int = 4  # num_inference_timesteps
    num_timestep_buckets: int = 1000
    timestep_channels: int = 256  # hard-coded in NVIDIA's TimestepEncoder

    def __post_init__(self) -> None:
        """Reject dimensions the module tree cannot wire (GROOT.md §6 constraints)."""
        if self.dit_heads * self.dit_head_dim != self.input_embedding_dim:
            raise ValueError("DiT heads * head_dim must equal input_embedding_dim")
        if self.vlsa_heads * self.vlsa_head_dim != self.backbone_dim:
            raise ValueError("VL self-attention heads * head_dim must equal backbone_dim")
        if self.max_seq_len < self.action_horizon:
            raise ValueError("max_seq_len must be at least action_horizon")

    @property
    def sequence_len(self) -> int:
        """DiT tokens: state (1), future tokens, action tokens."""
        return 1 + self.num_future_tokens + self.action_horizon


@dataclass(frozen=True)
class GrootConfig:
    """A GR00T N1.5 policy: SigLIP -> mlp1 -> truncated Qwen3 -> action head."""

    family: ClassVar[str] = "groot"
    variant: ClassVar[str] = "groot-n15"

    name: str
    vision: VisionConfig = field(default_factory=VisionConfig)
    llm: Qwen3Config = field(default_factory=Qwen3Config)
    action_head: ActionHeadConfig = field(default_factory=ActionHeadConfig)
    image_token_id: int = 151_669  # <IMG_CONTEXT>
    pad_token_id: int = 151_643  # <|endoftext|>, left padding
    cameras: tuple[str, ...] = ("video.image", "video.wrist_image")  # LIBERO's two views
    # Deployment choices an artifact records (the Policy sets them from its options): the
    # projector slot / statistics tag, and the instruction quirk of GROOT.md §1.2.
    embodiment: str = "new_embodiment"
    instruction_repr: bool = True
    noise_scale: float = 1.0  # denoising start noise scale when served (models.family)

    def __post_init__(self) -> None:
        """Reject configs whose parts disagree on widths or lack cameras."""
        check_noise_scale(self.noise_scale)
        if self.llm.width != self.action_head.backbone_dim:
            raise ValueError("the LLM width must equal action_head.backbone_dim")
        if not 0 <= self.image_token_id < self.llm.vocab_size:
            raise ValueError("image_token_id must be a token of the vocabulary")
        if not self.cameras:
            raise ValueError("a config needs at least one camera slot")

    @property
    def action_horizon(self) -> int:
        """Actions per chunk."""
        return self.action_head.action_horizon

    @property
    def action_dim(self) -> int:
        """Padded action width (normalized actions come out this wide)."""
        return self.action_head.action_dim

    @property
    def state_dim(self) -> int:
        """Padded state width the model takes (normalized state is zero-padded to it)."""
        return self.action_head.max_state_dim

    @property
    def num_steps(self) -> int:
        """Flow-matching Euler steps per chunk."""
        return self.action_head.num_steps

    @property
    def prefix_len(self) -> int:
        """Image tokens per observation; the prompt's text (variable length) comes on top."""
        return len(self.cameras) * self.vision.num_tokens

    def to_dict(self) -> dict:
        """Return the config as JSON-ready nested dicts (cameras as a list)."""
        d = asdict(self)
        d["cameras"] = list(self.cameras)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> GrootConfig:
        """Rebuild a config from `to_dict` output."""
        d = dict(d)
        d["vision"] = VisionConfig(**d["vision"])
        d["llm"] = Qwen3Config(**d["llm"])
        d["action_head"] = ActionHeadConfig(**d["action_head"])
        d["cameras"] = tuple(d["cameras"])
        return cls(**d)

    def with_(self, **changes) -> GrootConfig:
        """Return a copy with ``changes`` applied."""
        return replace(self, **changes)


# GROOT.md §6: every structural feature of the full size (GQA 2:1, q/k norms, cross/self
# alternation, category-specific weights) at widths a CPU test runs in milliseconds. Unlike
# §6's suggestion the chunk is the released 16 steps (the node publishes what a robot gets)
# and actions / state are 8 wide, so a 7-joint arm fits; the quantized linears' widths (LLM,
# DiT feed-forward) are multiples of 128, so the default W4A8 with groups of 128 runs.
_TINY = dict(
    vision=VisionConfig(image_size=28, patch_size=14, width=32, depth=2, mlp_dim=64,
                        num_heads=2),
    llm=Qwen3Config(vocab_size=160, width=256, depth=2, mlp_dim=512, num_heads=4,
                    num_kv_heads=2, head_dim=64),
    action_head=ActionHeadConfig(
        backbone_dim=256, vlsa_depth=2, vlsa_heads=2, vlsa_head_dim=128, vlsa_mlp_dim=512,
        dit_depth=4, dit_heads=2, dit_head_dim=64, dit_mlp_dim=256, hidden_size=24,
        input_embedding_dim=128, max_state_dim=8, action_dim=8, action_horizon=16,
        num_future_tokens=3, max_num_embodiments=2, max_seq_len=16,
    ),
    image_token_id=150,
    pad_token_id=0,
    embodiment="0",  # two projector slots: NVIDIA's tags (new_embodiment = 31) do not fit
)

GROOT_REGISTRY: dict[str, GrootConfig] = {
    "groot-n15": GrootConfig(name="groot-n15"),
    "groot-n15-tiny": GrootConfig(name="groot-n15-tiny", **_TINY),
}
