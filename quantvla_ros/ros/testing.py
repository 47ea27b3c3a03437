"""Support for tests and smoke runs of the ROS layer: a micro checkpoint that infers fast.

A pi0.5 model with 56 px images, one layer per tower, 3 denoising steps and a horizon of 10
runs a chunk in tens of milliseconds on a CPU (pi05-tiny takes hundreds), so multi-process
tests stay quick while still loading through the real checkpoint path.
"""

from __future__ import annotations

from pathlib import Path

from ..models.build import random_model
from ..models.checkpoint import save_checkpoint
from ..models.config import GemmaConfig, PiConfig, VisionConfig

MICRO_CAMERAS = ("base_0_rgb", "left_wrist_0_rgb")


def micro_config(state_dim: int = 8, action_dim: int = 8, horizon: int = 10) -> PiConfig:
    """A minimal pi0.5 config (random weights, ByteTokenizer)."""
    return PiConfig(
        name="pi05-micro", variant="pi05",
        vision=VisionConfig(image_size=56, width=64, depth=1, mlp_dim=128, num_heads=2),
        backbone=GemmaConfig(width=128, depth=1, mlp_dim=256, head_dim=16),
        expert=GemmaConfig(width=64, depth=1, mlp_dim=128, head_dim=16),
        vocab_size=512, cameras=MICRO_CAMERAS, action_horizon=horizon,
        action_dim=action_dim, state_dim=state_dim, num_steps=3, max_token_len=96,
    )


def write_micro_checkpoint(folder: str | Path, *, seed: int = 0, **config) -> Path:
    """Write a micro checkpoint folder loadable by ``Policy.load``; return its path."""
    return save_checkpoint(random_model(micro_config(**config), seed=seed), folder)
