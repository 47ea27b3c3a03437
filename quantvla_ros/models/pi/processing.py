"""pi0 / pi0.5 inputs: one processor the Policy and training both build their inputs with.

Images: uint8 HxWx3 -> [0, 1] -> aspect-kept resize, centred, zero (black) padding -> [-1, 1]
(openpi's resize_with_pad); a missing camera is an all -1 image with its tokens masked.
State: quantile-normalized, zero-padded to the model's state width. Prompt: pi0.5 writes the
discretized state into it as `state_prompt` says (unpadded: the robot's own values, padded:
the padded vector, none: no state), then tokenizes it right-padded to max_token_len.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from quantvla_ros.models.pi.config import PiConfig
from quantvla_ros.models.pi.tokenizer import build_prompt, tokenize


class ProcessingError(ValueError):
    """Inputs the pi pipeline cannot be built from; the message says why."""


def resize_with_pad(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """[N, 3, H, W] float -> [N, 3, size, size], aspect kept, centred, padded with zeros.

    Zero in [0, 1] pixel space is black, i.e. -1 after the [-1, 1] mapping, as openpi pads.
    """
    h, w = pixels.shape[-2:]
    ratio = max(h / size, w / size)
    nh, nw = max(1, int(h / ratio)), max(1, int(w / ratio))
    if (nh, nw) != (h, w):
        pixels = F.interpolate(pixels, size=(nh, nw), mode="bilinear", align_corners=False)
        pixels = pixels.clamp(0.0, 1.0)
    top, left = (size - nh) // 2, (size - nw) // 2
    return F.pad(pixels, (left, size - nw - left, top, size - nh - top), value=0.0)


def to_model_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, size, size] in [-1, 1] (resized with padding)."""
    px = images.permute(0, 3, 1, 2).float() / 255.0
    return resize_with_pad(px, size) * 2.0 - 1.0


class PiProcessor:
    """Camera images, robot state and instruction -> the inputs a PiModel takes.

    `state_prompt` (pi0.5) is the resolved choice: "unpadded", "padded" or "none".
    """

    def __init__(self, cfg: PiConfig, tokenizer, normalizer, state_prompt: str | None = None):
        """Keep the config, the tokenizer, the statistics and the state-prompt choice."""
        self.cfg, self.tokenizer, self.normalizer = cfg, tokenizer, normalizer
        self.state_prompt = state_prompt

    def pixels(self, images: dict, device=None, dtype=torch.float32):
        """Camera dict -> pixels [1, N, 3, S, S] in [-1, 1] and a presence mask [1, N]."""
        cameras, size = self.cfg.cameras, self.cfg.vision.image_size
        unknown = sorted(set(images) - set(cameras))
        if unknown:
            raise ProcessingError(f"unknown camera(s) {unknown}; this model has {list(cameras)}")
        if not images:
            raise ProcessingError(f"no camera image; expected some of {list(cameras)}")
        out = torch.full((1, len(cameras), 3, size, size), -1.0, dtype=dtype, device=device)
        present = torch.zeros(1, len(cameras), dtype=torch.bool, device=device)
        for i, cam in enumerate(cameras):
            if cam in images:
                img = torch.from_numpy(np.ascontiguousarray(images[cam])).to(device)
                out[0, i] = to_model_pixels(img[None], size)[0].to(dtype)
                present[0, i] = True
        return out, present

    def state(self, raw) -> tuple[np.ndarray, np.ndarray]:
        """Return the normalized state [n] and that state zero-padded to the model's width."""
        state = self.normalizer.normalize_state(raw)
        if state.shape[0] > self.cfg.state_dim:
            raise ProcessingError(f"state has {state.shape[0]} values, model max "
                                  f"{self.cfg.state_dim}")
        padded = np.zeros(self.cfg.state_dim, np.float32)
        padded[: state.shape[0]] = state
        return state, padded

    def prompt(self, instruction: str, state: np.ndarray, padded: np.ndarray,
               state_prompt: str | None = None) -> str:
        """Return the prompt; `state_prompt` overrides the processor's choice (training)."""
        choice = state_prompt or self.state_prompt
        bins = {"padded": padded, "none": None}.get(choice, state)
        return build_prompt(self.cfg.variant, instruction, bins)

    def tokens(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded ids [max_token_len] and their validity mask."""
        return tokenize(self.tokenizer, prompt, self.cfg.max_token_len)

    def __call__(self, images: dict, raw_state, instruction: str, device=None,
                 dtype=torch.float32) -> dict[str, torch.Tensor]:
        """Return the model inputs of one observation (batch of 1)."""
        pixels, present = self.pixels(images, device, dtype)
        state, padded = self.state(raw_state)
        ids, mask = self.tokens(self.prompt(instruction, state, padded))
        return {
            "images": pixels, "image_masks": present,
            "tokens": torch.from_numpy(ids)[None].to(device),
            "token_masks": torch.from_numpy(mask)[None].to(device),
            "state": torch.from_numpy(padded)[None].to(device),
        }
