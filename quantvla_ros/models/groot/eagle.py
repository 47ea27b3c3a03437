"""Eagle 2.5 VL backbone: SigLIP tokens, projected by `mlp1`, spliced into a Qwen3 prompt.

Module names are NVIDIA's (`backbone.eagle_model.vision_model.vision_model.*`, `mlp1.0`,
`language_model.model.*`). GR00T's `eagle_linear` is Identity (project_to_dim null), so no
module stands for it.
"""

from __future__ import annotations

import torch
from torch import nn

from quantvla_ros.models.groot.config import GrootConfig
from quantvla_ros.models.groot.qwen3 import Qwen3LanguageModel
from quantvla_ros.models.siglip import SiglipVision


def splice_image_tokens(embeds: torch.Tensor, input_ids: torch.Tensor, image_token_id: int,
                        image_embeds: torch.Tensor) -> torch.Tensor:
    """Replace, in order, every `image_token_id` row of embeds [B, L, W] by image_embeds rows.

    image_embeds [N_img, T, W] is flattened image-major (batch-major over all images), the
    order in which Eagle fills the `<IMG_CONTEXT>` positions.
    """
    sel = input_ids == image_token_id
    rows = image_embeds.reshape(-1, embeds.shape[-1]).to(embeds.dtype)
    # a meta tensor (launch counting) has no values to count
    if not sel.is_meta and int(sel.sum()) != rows.shape[0]:
        raise ValueError(f"{int(sel.sum())} image-token positions but {rows.shape[0]} image "
                         "token rows")
    return embeds.masked_scatter(sel[..., None], rows)


class EagleModel(nn.Module):
    """The Eagle VLM: `vision_model`, `mlp1` (one Linear, no LN) and `language_model`."""

    def __init__(self, cfg: GrootConfig):
        """Build SigLIP (no pooling head), the 1-layer projector and the truncated Qwen3."""
        super().__init__()
        self.image_token_id = cfg.image_token_id
        self.vision_model = SiglipVision(cfg.vision)
        self.mlp1 = nn.Sequential(nn.Linear(cfg.vision.width, cfg.llm.width))
        self.language_model = Qwen3LanguageModel(cfg.llm)

    def image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels [N_img, 3, H, W] in [-1, 1] -> projected tokens [N_img, T, llm width]."""
        return self.mlp1(self.vision_model(pixel_values))

    def forward(self, pixel_values, input_ids, attention_mask) -> torch.Tensor:
        """Return the LLM's final-normed hidden states [B, L, llm width]."""
        embeds = self.language_model.model.embed_tokens(input_ids)
        embeds = splice_image_tokens(embeds, input_ids, self.image_token_id,
                                     self.image_embeds(pixel_values))
        return self.language_model(embeds, attention_mask)


class EagleBackbone(nn.Module):
    """GR00T's `backbone`: the Eagle model under `eagle_model.`."""

    def __init__(self, cfg: GrootConfig):
        """Build the Eagle model."""
        super().__init__()
        self.eagle_model = EagleModel(cfg)

    def forward(self, pixel_values, input_ids, attention_mask) -> torch.Tensor:
        """Return backbone features [B, L, llm width] (select_layer's output, normed)."""
        return self.eagle_model(pixel_values, input_ids, attention_mask)
