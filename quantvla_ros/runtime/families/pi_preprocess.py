"""Image preprocessing: camera images to the model's pixel tensor."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from quantvla_ros.data.observation import ObservationError


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

    ``images`` holds validated uint8 HxWx3 arrays (an Observation's). Cameras absent from the
    dict become all -1 images with their tokens masked out.
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
        img = torch.from_numpy(np.ascontiguousarray(images[cam])).to(device)
        px = img.permute(2, 0, 1)[None].float() / 255.0
        out[0, i] = (resize_with_pad(px, size)[0] * 2.0 - 1.0).to(dtype)
        present[0, i] = True
    return out, present
