"""Host-side GR00T N1.5 inputs, built as NVIDIA's pipeline builds them (GROOT.md §1.1 / §1.2).

Images: uint8 HWC -> [0, 1] -> center crop 0.95 -> bilinear antialiased resize -> truncating
uint8 cast -> one Eagle tile -> [-1, 1]. Prompt: Eagle's chat template (system turn, the image
blocks, the text) with `<IMG_CONTEXT>` x tokens-per-image between `<img>` and `</img>`, tokenized
by the Qwen2 BPE tokenizer from a local folder and left-padded. State: normalized per key,
zero-padded to max_state_dim. Embodiment: a tag mapped as NVIDIA (and lerobot) map it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from quantvla_ros.models.groot.config import GrootConfig
from quantvla_ros.models.groot.normalization import GrootNormalizer

SYSTEM = "You are a helpful assistant."
DEFAULT_TEXT = "Perform the default behavior."  # NVIDIA's; lerobot's is "Perform the task."
IMG_CONTEXT, IMG_START, IMG_END = "<IMG_CONTEXT>", "<img>", "</img>"
IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
# NVIDIA's added_tokens.json ids (the stand-in reuses them where the vocabulary is full size).
QWEN_SPECIAL_IDS = {PAD: 151_643, IM_START: 151_644, IM_END: 151_645, IMG_CONTEXT: 151_669,
                    IMG_START: 151_670, IMG_END: 151_671}
# gr00t/data/embodiment_tags.py EMBODIMENT_TAG_MAPPING; lerobot's processor adds two.
EMBODIMENT_IDS = {"new_embodiment": 31, "oxe_droid": 17, "agibot_genie1": 26, "gr1": 24}
LEROBOT_EMBODIMENT_IDS = {**EMBODIMENT_IDS, "so100": 2, "unitree_g1": 3}
CROP_SCALE = 0.95
# Where a checkpoint folder keeps the Eagle processor files (NVIDIA ships them in the code
# repository under gr00t/model/backbone/eagle2_hg_model/, not in the model repository).
TOKENIZER_DIR = "eagle2_hg_model"
_TOKENIZER_FILES = (("vocab.json", "merges.txt"), ("tokenizer.json",))
_SPECIAL = re.compile("|".join(re.escape(t) for t in (IMG_CONTEXT, IMG_START, IMG_END,
                                                      IM_START, IM_END, PAD)))


class ProcessingError(ValueError):
    """Inputs (or files) the GR00T pipeline cannot be built from; the message says why."""


# ---- text --------------------------------------------------------------------------------
def instruction_text(instruction: str | None, numpy_repr: bool = True) -> str:
    """Return the text the template receives.

    `Gr00tPolicy.get_action` wraps the instruction in a numpy array that the transform does not
    unwrap, so at inference the template sees its repr, `['put the bowl on the plate']`;
    lerobot reproduces it with `str([lang])`. Training saw plain text (``numpy_repr=False``).
    No instruction: NVIDIA's default text, which never passed through the array.
    """
    if instruction is None:  # the transform's own default is a plain string
        return DEFAULT_TEXT
    return str([instruction]) if numpy_repr else instruction


def build_prompt(text: str, num_views: int, tokens_per_view: int) -> str:
    """Eagle's chat template with add_generation_prompt, image placeholders expanded."""
    images = "".join(f"<image {k}>{IMG_START}{IMG_CONTEXT * tokens_per_view}{IMG_END}"
                     for k in range(1, num_views + 1))
    return (f"{IM_START}system\n{SYSTEM}{IM_END}\n{IM_START}user\n{images}{text}{IM_END}\n"
            f"{IM_START}assistant\n")


class QwenTokenizer:
    """The checkpoint's Qwen2 BPE tokenizer from a local folder (never downloads)."""

    def __init__(self, folder, cfg: GrootConfig):
        """Load ``folder``; its `<IMG_CONTEXT>` id must be the config's image token."""
        folder = Path(folder)
        if not folder.is_dir() or not any(all((folder / n).is_file() for n in group)
                                          for group in _TOKENIZER_FILES):
            raise ProcessingError(
                f"no Qwen tokenizer in {folder} (needs vocab.json + merges.txt or "
                f"tokenizer.json, with added_tokens / tokenizer_config.json): copy NVIDIA's "
                "gr00t/model/backbone/eagle2_hg_model/ or lerobot/eagle2hg-processor-groot-n1p5"
                " there; a trained checkpoint has no stand-in")
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        ids = {t: self._tok.convert_tokens_to_ids(t) for t in (IMG_CONTEXT, IMG_START, IMG_END,
                                                                IM_START, IM_END)}
        if ids[IMG_CONTEXT] != cfg.image_token_id or len(set(ids.values())) != len(ids):
            raise ProcessingError(f"{folder}: special token ids {ids} do not give "
                                  f"{IMG_CONTEXT} = {cfg.image_token_id} (the config's)")
        self.pad_id = cfg.pad_token_id
        self.special_ids = ids

    def encode(self, prompt: str) -> list[int]:
        """Token ids of a built prompt (no bos: Qwen's add_bos_token is False)."""
        return list(self._tok(prompt, add_special_tokens=False)["input_ids"])


class StandInTokenizer:
    """A byte-level stand-in for random-weight configs: NOT the trained model's tokenizer.

    Special tokens get NVIDIA's ids when the vocabulary is full size, else the ids after the
    image token; text bytes map into [1, 256], or below the first special id (wrapping) in tiny
    vocabularies.
    """

    def __init__(self, cfg: GrootConfig):
        """Lay the special ids out inside ``cfg``'s vocabulary."""
        vocab, img = cfg.llm.vocab_size, cfg.image_token_id
        if vocab > max(QWEN_SPECIAL_IDS.values()) and img == QWEN_SPECIAL_IDS[IMG_CONTEXT]:
            ids = dict(QWEN_SPECIAL_IDS)
        else:
            ids = {IMG_CONTEXT: img, IMG_START: img + 1, IMG_END: img + 2, IM_START: img + 3,
                   IM_END: img + 4}
        ids[PAD] = cfg.pad_token_id
        self.special_ids = ids
        self.pad_id = cfg.pad_token_id
        self._text = min(257, *(v for k, v in ids.items() if k != PAD)) - 1
        if max(ids.values()) >= vocab or self._text < 1 or 1 <= self.pad_id <= self._text:
            raise ProcessingError(f"no byte stand-in fits vocabulary {vocab} with image token "
                                  f"{img} and pad {self.pad_id}")

    def encode(self, prompt: str) -> list[int]:
        """Encode special tokens by id, every other UTF-8 byte b as 1 + b mod (text ids)."""
        out, pos = [], 0
        for m in [*_SPECIAL.finditer(prompt), None]:
            end = len(prompt) if m is None else m.start()
            out += [1 + b % self._text for b in prompt[pos:end].encode("utf-8")]
            if m is not None:
                out.append(self.special_ids[m.group()])
                pos = m.end()
        return out


def load_tokenizer(folder, cfg: GrootConfig, stand_in: bool = False):
    """Load the folder's Qwen tokenizer; the byte stand-in only if asked for and no folder."""
    if folder is None:
        if not stand_in:
            raise ProcessingError("no tokenizer folder given; pass stand_in=True only for a "
                                  "random-weight config (a trained checkpoint needs its own)")
        return StandInTokenizer(cfg)
    return QwenTokenizer(folder, cfg)


def pad_left(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids (B, L) int64 and the 0/1 attention mask, as Eagle's processor pads."""
    n = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), n), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(sequences), n), dtype=torch.int64)
    for i, s in enumerate(sequences):
        if s:
            ids[i, n - len(s):] = torch.tensor(s, dtype=torch.int64)
            mask[i, n - len(s):] = 1
    return ids, mask


# ---- images -------------------------------------------------------------------------------
def libero_view(image: np.ndarray) -> np.ndarray:
    """LIBERO's eval client rotates both cameras by 180 degrees before the policy sees them."""
    return np.ascontiguousarray(image[::-1, ::-1])


def video_transform(image: np.ndarray, size: int = 224, crop: float = CROP_SCALE) -> np.ndarray:
    """GR00T's eval video transforms: crop, resize, back to uint8 (HWC uint8 -> CHW uint8)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ProcessingError(f"expected an HxWx3 uint8 image, got {image.shape} {image.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
    h, w = x.shape[1:]
    ch, cw = int(crop * h), int(crop * w)
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))  # torchvision CenterCrop
    x = x[:, top:top + ch, left:left + cw]
    x = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True,
                      align_corners=False)[0]
    return (x * 255.0).to(torch.uint8).numpy()  # truncates, as VideoToNumpy does


def eagle_pixels(image_chw: np.ndarray, tile: int = 224) -> torch.Tensor:
    """Eagle's image processor for one tile: bicubic to the tile if needed, then [-1, 1].

    GR00T's resize makes every view one tile without a thumbnail (the grid search gives 1x1 for
    a square image of <= 289 px); lerobot forces 1 tile, so the multi-tile path is not built.
    """
    x = torch.from_numpy(np.asarray(image_chw)).float()
    if tuple(x.shape[1:]) != (tile, tile):
        x = F.interpolate(x[None], size=(tile, tile), mode="bicubic", align_corners=False)[0]
        x = x.round().clamp(0, 255)
    return (x / 255.0 - 0.5) / 0.5


def image_tensor(image: np.ndarray, size: int = 224) -> torch.Tensor:
    """One camera frame (HWC uint8) as the backbone's pixels (3, size, size) in [-1, 1]."""
    return eagle_pixels(video_transform(image, size), size)


# ---- state and embodiment ------------------------------------------------------------------
def pad_state(state: np.ndarray, max_state_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad a normalized state [..., d] to (B, 1, max_state_dim); also its (unused) mask."""
    s = torch.as_tensor(np.asarray(state, np.float32)).reshape(-1, 1, np.shape(state)[-1])
    if s.shape[-1] > max_state_dim:
        raise ProcessingError(f"state is {s.shape[-1]} wide, the model takes {max_state_dim}")
    out = torch.zeros(s.shape[0], 1, max_state_dim)
    out[..., :s.shape[-1]] = s
    mask = torch.zeros(s.shape[0], 1, max_state_dim, dtype=torch.bool)
    mask[..., :s.shape[-1]] = True
    return out, mask


def embodiment_id(embodiment: str | int, cfg: GrootConfig, lerobot: bool = False) -> int:
    """Map to a projector slot: an int as it is, a tag as NVIDIA (or ``lerobot``) maps it."""
    table = LEROBOT_EMBODIMENT_IDS if lerobot else EMBODIMENT_IDS
    if isinstance(embodiment, str) and embodiment.isdigit():  # a slot given as text (ROS)
        embodiment = int(embodiment)
    if isinstance(embodiment, str):
        if embodiment not in table:
            raise ProcessingError(f"unknown embodiment {embodiment!r}; known: {sorted(table)}")
        idx = table[embodiment]
    else:
        idx = int(embodiment)
    slots = cfg.action_head.max_num_embodiments
    if not 0 <= idx < slots:
        raise ProcessingError(f"embodiment {embodiment!r} is slot {idx}, the model has {slots}")
    return idx


class GrootProcessor:
    """One observation -> the tensors `GrootModel` takes (§1.1), and actions back (§1.9)."""

    def __init__(self, cfg: GrootConfig, tokenizer, normalizer: GrootNormalizer | None,
                 embodiment: str | int, numpy_repr: bool = True, lerobot_tags: bool = False):
        """Fix the per-deployment choices: tokenizer, statistics, embodiment, the text quirk."""
        self.cfg, self.tokenizer, self.normalizer = cfg, tokenizer, normalizer
        self.embodiment_id = embodiment_id(embodiment, cfg, lerobot_tags)
        self.numpy_repr = numpy_repr

    def __call__(self, images: list[np.ndarray], state, instruction: str | None) -> dict:
        """Images in `cfg.cameras` order (HWC uint8), raw state, instruction -> batch of 1."""
        cfg = self.cfg
        if len(images) != len(cfg.cameras):
            raise ProcessingError(f"{len(images)} images for cameras {list(cfg.cameras)}")
        pixels = torch.stack([image_tensor(im, cfg.vision.image_size) for im in images])
        prompt = build_prompt(instruction_text(instruction, self.numpy_repr), len(images),
                              cfg.vision.num_tokens)
        ids, mask = pad_left([self.tokenizer.encode(prompt)], self.tokenizer.pad_id)
        norm = (np.asarray(state, np.float32) if self.normalizer is None
                else self.normalizer.normalize_state(state))
        state_t, state_mask = pad_state(norm, cfg.action_head.max_state_dim)
        return {"eagle_input_ids": ids, "eagle_attention_mask": mask,
                "eagle_pixel_values": pixels, "state": state_t, "state_mask": state_mask,
                "embodiment_id": torch.tensor([self.embodiment_id], dtype=torch.int64)}

    def actions(self, action_pred: torch.Tensor) -> np.ndarray:
        """(B, horizon, action_dim) normalized -> robot units (the padding dropped)."""
        a = action_pred.detach().float().cpu().numpy()
        return a if self.normalizer is None else self.normalizer.unnormalize_actions(a)
