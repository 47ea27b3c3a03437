"""pi0 / pi0.5 as a model family: configs, build, checkpoints it claims, presets, fp32 norms."""

from __future__ import annotations

from quantvla_ros.models.family import Layout, ModelFamily, Part
from quantvla_ros.models.pi.config import REGISTRY, PiConfig
from quantvla_ros.models.pi.layers import AdaRMSNorm, RMSNorm
from quantvla_ros.models.pi.model import PiModel
from quantvla_ros.models.pi.normalization import Normalizer

_BACKBONE = "backbone.layers.*"
_EXPERT_MLP = "expert.layers.*.mlp.*"
_EXPERT_ATTN = "expert.layers.*.self_attn.*"
_VISION = "vision.*"
_TOKENS = "backbone.embed_tokens"


_VISION_PART = Part("vision", (_VISION,), None, why=(
    "SigLIP widths are not multiples of the 128-wide int4 groups (So400m MLP 4304, "
    "pi05-libero 192), so one scale per output channel; int4 weights (not int8) because "
    "int8 leaves pi05 at 36% of bf16"))


PRESETS: dict[str, Layout] = {
    "quantvla": Layout("quantvla", (_BACKBONE, _EXPERT_MLP), description=(
        "the paper's: every backbone linear and the expert's MLP; expert attention, vision, "
        "projector, embeddings and action heads stay float")),
    "full": Layout("full", (_BACKBONE, _EXPERT_MLP), parts=(_VISION_PART,),
                   embeddings=(_TOKENS,), description=(
        "quantvla plus the SigLIP tower's linears (per output channel) and the token "
        "embedding (integer rows at the weight bits, per-row scales); expert attention, "
        "projector and action heads stay float")),
    "backbone": Layout("backbone", (_BACKBONE,), description="backbone linears only"),
    "expert_mlp": Layout("expert_mlp", (_EXPERT_MLP,), description="expert MLP linears only"),
    "backbone_expert": Layout("backbone_expert", (_BACKBONE, _EXPERT_MLP, _EXPERT_ATTN),
                              description="every backbone and expert linear (norms stay float)"),
    "none": Layout("none", (), description="nothing quantized (float reference)"),
}


def init_random(model: PiModel, gen) -> None:
    """Linear / embedding weights ~ N(0, 0.02); norms at identity; adaRMS gates biased to 1.

    The gate bias lets the expert's blocks pass signal (an all-zero gate would silence them).
    """
    for name, p in model.named_parameters():
        if name.endswith("dense.bias"):
            p.zero_()
            p[2 * p.numel() // 3:] = 1.0
        elif "norm" in name and name.endswith("weight") and "dense" not in name:
            p.fill_(1.0 if "layer_norm" in name or "post_layernorm" in name else 0.0)
        elif name.endswith("bias"):
            p.zero_()
        else:
            p.normal_(0.0, 0.02, generator=gen)


def read_config(folder):
    """Return (PiConfig, raw config.json) of a lerobot pi0 / pi0.5 folder."""
    # imported here: the checkpoint module builds models through models.build
    from quantvla_ros.models.pi.checkpoint import read_config as read

    return read(folder)


FAMILY = ModelFamily(
    name="pi", configs=REGISTRY, config_class=PiConfig, build=PiModel, init_random=init_random,
    claims=lambda raw: raw.get("type") in ("pi0", "pi05"),
    claim_hint='lerobot\'s "type": "pi0" / "pi05"', read_config=read_config,
    normalizer_from_tensors=lambda tensors, meta, cfg: Normalizer.from_stats(tensors,
                                                                             cfg.variant),
    presets=PRESETS,
    # Norm parameters stay float32 in every precision, as lerobot keeps them: Gemma's (1 + w)
    # and SmoothQuant factors folded into it sit near -1 / 0 where bf16 is coarse (gain errors
    # of percents), and adaRMS scale / shift feed every expert block.
    fp32_modules=(RMSNorm, AdaRMSNorm),
)
