"""Observation preprocessing: images to model pixels, validation of raw inputs."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


class ObservationError(ValueError):
    """An observation the policy cannot use; the message names the field and the problem."""


def check_image(name: str, image) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ObservationError(
            f"camera {name!r}: expected uint8 HxWx3, got {image.dtype} {tuple(image.shape)}"
        )
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ObservationError(f"camera {name!r}: image {image.shape[:2]} is too small")
    return image


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


def images_to_pixels(images: dict, cameras: tuple[str, ...], size: int, device, dtype):
    """Camera dict -> pixels [1, N, 3, size, size] in [-1, 1] and a presence mask [1, N].

    Cameras absent from the dict become all -1 images with their tokens masked out.
    """
    unknown = sorted(set(images) - set(cameras))
    if unknown:
        raise ObservationError(f"unknown camera(s) {unknown}; this model has {list(cameras)}")
    if not images:
        raise ObservationError(f"no camera image; expected some of {list(cameras)}")
    out = torch.full((1, len(cameras), 3, size, size), -1.0, dtype=dtype, device=device)
    present = torch.zeros(1, len(cameras), dtype=torch.bool, device=device)
    for i, cam in enumerate(cameras):
        if cam not in images:
            continue
        img = torch.from_numpy(check_image(cam, images[cam])).to(device)
        px = img.permute(2, 0, 1)[None].float() / 255.0
        out[0, i] = (resize_with_pad(px, size)[0] * 2.0 - 1.0).to(dtype)
        present[0, i] = True
    return out, present


def check_state(state, dim: int | None) -> np.ndarray:
    state = np.asarray(state, dtype=np.float32).reshape(-1)
    if dim is not None and state.shape[0] != dim:
        raise ObservationError(f"state has {state.shape[0]} values, the policy expects {dim}")
    if not np.all(np.isfinite(state)):
        raise ObservationError("state contains NaN or inf")
    return state


def check_instruction(text, max_chars: int = 2000) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ObservationError("instruction must be a non-empty string")
    if len(text) > max_chars:
        raise ObservationError(f"instruction has {len(text)} characters (limit {max_chars})")
    return text
