"""SmolVLA inputs: one processor the Policy builds its model inputs with (lerobot's pipeline).

Images: uint8 HxWx3 -> [0, 1] -> resized to the model's square side keeping the aspect,
padded with zeros on the LEFT and TOP (lerobot's smolvla `resize_with_pad`, no clamp) ->
[-1, 1]; a missing camera is masked (lerobot drops it: the same result, since masked tokens
take no position and no query sees them). State: mean / std normalized, zero-padded to the
model's state width. Prompt: the task with a newline appended unless it ends with one,
tokenized with the checkpoint's SmolVLM2 tokenizer (special tokens on, truncated to
max_token_len); batches pad it on the right.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from quantvla_ros.models.smolvla.config import SmolVLAConfig

TOKENIZER_DIR = "tokenizer"  # where a checkpoint or artifact keeps the tokenizer


class ProcessingError(ValueError):
    """Inputs the SmolVLA pipeline cannot be built from; the message says why."""


class ByteTokenizer:
    """A stand-in for random-weight models only: UTF-8 bytes shifted past pad 0 / bos 1."""

    pad_id = 0

    def encode(self, text: str, max_len: int) -> list[int]:
        """Return bos then the text's bytes (+2), at most ``max_len`` ids."""
        return ([1] + [b + 2 for b in text.encode("utf-8")])[:max_len]


class HFTokenizer:
    """A local Hugging Face tokenizer folder (never downloads), called as lerobot calls it."""

    def __init__(self, path):
        """Load the tokenizer in the folder ``path``."""
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.pad_id = self._tok.pad_token_id or 0

    def encode(self, text: str, max_len: int) -> list[int]:
        """Return the ids of ``text`` with the tokenizer's special tokens, truncated."""
        return list(self._tok(text, max_length=max_len, truncation=True)["input_ids"])


def load_tokenizer(path):
    """Return the tokenizer folder's tokenizer, or the byte stand-in for None."""
    if path is None:
        return ByteTokenizer()
    try:
        return HFTokenizer(path)
    except (OSError, ValueError) as exc:
        raise ProcessingError(f"{path}: no SmolVLM2 tokenizer there ({exc}); copy the "
                              f"checkpoint's tokenizer files into its {TOKENIZER_DIR}/ folder "
                              "or pass tokenizer=") from exc


def resize_with_pad(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """[N, 3, H, W] -> [N, 3, size, size]: aspect kept, zero padding on the left and top."""
    h, w = pixels.shape[-2:]
    if (h, w) == (size, size):
        return pixels
    ratio = max(w / size, h / size)
    nh, nw = int(h / ratio), int(w / ratio)
    out = F.interpolate(pixels, size=(nh, nw), mode="bilinear", align_corners=False)
    return F.pad(out, (max(0, size - nw), 0, max(0, size - nh), 0), value=0.0)


class SmolVLAProcessor:
    """Camera images, robot state and instruction -> the inputs a SmolVLAModel takes."""

    def __init__(self, cfg: SmolVLAConfig, tokenizer, normalizer):
        """Keep the config, the tokenizer and the statistics."""
        self.cfg, self.tokenizer, self.normalizer = cfg, tokenizer, normalizer

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
                px = img.permute(2, 0, 1)[None].float() / 255.0
                out[0, i] = (resize_with_pad(px, size)[0] * 2.0 - 1.0).to(dtype)
                present[0, i] = True
        return out, present

    def state(self, raw) -> np.ndarray:
        """Return the normalized state zero-padded to the model's state width."""
        state = self.normalizer.normalize_state(raw)
        if state.shape[0] > self.cfg.state_dim:
            raise ProcessingError(f"state has {state.shape[0]} values, model max "
                                  f"{self.cfg.state_dim}")
        padded = np.zeros(self.cfg.state_dim, np.float32)
        padded[: state.shape[0]] = state
        return padded

    def prompt(self, instruction: str | None) -> str:
        """Return the task with a trailing newline (lerobot's NewLineTaskProcessorStep)."""
        task = instruction or ""
        return task if task.endswith("\n") else f"{task}\n"

    def tokens(self, prompt: str) -> np.ndarray:
        """Token ids of the prompt (at most max_token_len)."""
        return np.asarray(self.tokenizer.encode(prompt, self.cfg.max_token_len), np.int64)

    def __call__(self, images: dict, raw_state, instruction: str | None, device=None,
                 dtype=torch.float32) -> dict[str, torch.Tensor]:
        """Return the model inputs of one observation (batch of 1; prompt unpadded)."""
        pixels, present = self.pixels(images, device, dtype)
        ids = torch.from_numpy(self.tokens(self.prompt(instruction)))[None].to(device)
        return {"images": pixels, "image_masks": present, "tokens": ids,
                "token_masks": torch.ones_like(ids, dtype=torch.bool),
                "state": torch.from_numpy(self.state(raw_state))[None].to(device)}


def collate(inputs: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad the prompts to the longest (masked, as lerobot's "longest") and stack."""
    width = max(x["tokens"].shape[1] for x in inputs)

    def right(t, value):
        return torch.cat([t, t.new_full((t.shape[0], width - t.shape[1]), value)], dim=1)

    rows = [{**x, "tokens": right(x["tokens"], pad_id),
             "token_masks": right(x["token_masks"], False)} for x in inputs]
    return {k: torch.cat([x[k] for x in rows]) for k in rows[0]}
