"""Training batches built by the Policy's own input processor (models.pi.processing).

Tokens come from the same prompt and tokenizer, pixels from the same [-1, 1] mapping: both
are `PiProcessor`'s, which the Policy's pi family prepares observations with. The only
training-time difference is an optional random shift of the images (pad by replication,
random crop back), a standard augmentation for behaviour cloning from few demonstrations.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from quantvla_ros.models.pi.config import PiConfig
from quantvla_ros.models.pi.normalization import Normalizer
from quantvla_ros.models.pi.processing import PiProcessor, to_model_pixels
from quantvla_ros.training.demos import DemoError, DemoSet


def frame_tokens(demos: DemoSet, processor: PiProcessor, with_state: bool = True):
    """Return token ids [N, L] and masks [N, L] of every frame's pi0.5 prompt.

    ``with_state`` False writes the prompt without the state (state_prompt "none"), else with
    the robot's own normalized values ("unpadded"). Raises DemoError if a prompt would be
    truncated (the policy would never see its end).
    """
    cfg = processor.cfg
    episode = demos.frame_episode(np.arange(demos.num_frames))
    ids = np.zeros((demos.num_frames, cfg.max_token_len), np.int64)
    masks = np.zeros((demos.num_frames, cfg.max_token_len), bool)
    for i in range(demos.num_frames):
        state, padded = processor.state(demos.state[demos.frame_step[i]])
        prompt = processor.prompt(demos.instructions[episode[i]], state, padded,
                                  "unpadded" if with_state else "none")
        n = len(processor.tokenizer.encode(prompt))
        if n > cfg.max_token_len:
            raise DemoError(f"frame {i}: prompt of {n} tokens exceeds max_token_len "
                            f"{cfg.max_token_len}: {prompt!r}")
        ids[i], masks[i] = processor.tokens(prompt)
    return ids, masks


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, V, R, R, 3] -> float [B, V, 3, R, R] in [-1, 1] (the processor's mapping)."""
    b, v, r = images.shape[:3]
    flat = torch.from_numpy(np.ascontiguousarray(images)).reshape(b * v, r, r, 3)
    return to_model_pixels(flat, r).reshape(b, v, 3, r, r)


def random_shift(pixels: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image [B, V, 3, R, R] by up to ``pad`` pixels (edges replicated)."""
    if pad <= 0:
        return pixels
    b, v, c, h, w = pixels.shape
    flat = F.pad(pixels.reshape(b * v, c, h, w), (pad, pad, pad, pad), mode="replicate")
    offsets = torch.randint(0, 2 * pad + 1, (b * v, 2), generator=gen)
    out = torch.stack([flat[i, :, y:y + h, x:x + w]
                       for i, (y, x) in enumerate(offsets.tolist())])
    return out.reshape(b, v, c, h, w)


class BatchMaker:
    """Draws seeded random batches of (pixels, tokens, normalized action chunks).

    ``state_dropout``: the probability that a frame's prompt leaves the state out (state
    prompt "none"), drawn per frame when a generator is given. A policy that sees the state
    in every prompt learns to copy it and to ignore where the object is (shared/LIBERO-REVIEW.md
    section 1.2); without the state it must read the images.
    """

    def __init__(self, demos: DemoSet, cfg: PiConfig, normalizer: Normalizer, tokenizer,
                 views=("agentview", "wrist"), shift: int = 0, state_dropout: float = 0.0,
                 action_clip: float = 0.0):
        """Tokenize every frame once and normalize every action (the normalizer's mapping).

        ``action_clip`` > 0 clips the normalized targets to +-``action_clip``: rollout labels
        far outside the demonstrations' quantiles (a tilted hand's saturated rotation, +-7.7
        in the demonstrations' units) would otherwise dominate the squared loss.
        """
        if not 0.0 <= state_dropout <= 1.0:
            raise DemoError(f"state_dropout {state_dropout} is not a probability")
        if len(views) != len(cfg.cameras):
            raise DemoError(f"{len(views)} views for a model with cameras {cfg.cameras}")
        size = demos.views[views[0]].shape[1]
        if size != cfg.vision.image_size:
            raise DemoError(f"demonstrations are {size} px, the model takes "
                            f"{cfg.vision.image_size} px: record at the model's resolution")
        self.demos, self.cfg, self.views, self.shift = demos, cfg, views, shift
        self.state_dropout = state_dropout
        self.processor = PiProcessor(cfg, tokenizer, normalizer)
        self.tokens, self.token_masks = frame_tokens(demos, self.processor)
        self.bare_tokens, self.bare_masks = (
            frame_tokens(demos, self.processor, with_state=False)
            if state_dropout > 0 else (self.tokens, self.token_masks))
        self.actions = normalizer.normalize_actions(demos.action)
        if action_clip > 0:
            self.actions = np.clip(self.actions, -action_clip, action_clip)

    def batch(self, frames: np.ndarray, gen: torch.Generator | None = None) -> dict:
        """Return the model inputs and targets of ``frames`` (shifted when ``gen`` is given)."""
        images = np.stack([self.demos.views[v][frames] for v in self.views], axis=1)
        pixels = to_pixels(images)
        if gen is not None:
            pixels = random_shift(pixels, self.shift, gen)
        steps, pad = self.demos.chunk_steps(frames, self.cfg.action_horizon)
        tokens, masks = self.tokens[frames], self.token_masks[frames]
        if gen is not None and self.state_dropout > 0:
            bare = (torch.rand(len(frames), generator=gen) < self.state_dropout).numpy()
            tokens = np.where(bare[:, None], self.bare_tokens[frames], tokens)
            masks = np.where(bare[:, None], self.bare_masks[frames], masks)
        return {
            "images": pixels,
            "image_masks": torch.ones(len(frames), len(self.views), dtype=torch.bool),
            "tokens": torch.from_numpy(tokens),
            "token_masks": torch.from_numpy(masks),
            "actions": torch.from_numpy(self.actions[steps]),
            "action_pad": torch.from_numpy(pad),
        }
