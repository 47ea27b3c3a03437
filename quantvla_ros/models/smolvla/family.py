"""SmolVLA as a model family: configs, build, checkpoints it claims, presets, fp32 norms."""

from __future__ import annotations

from quantvla_ros.models.family import Layout, ModelFamily
from quantvla_ros.models.smolvla.config import SMOLVLA_REGISTRY, SmolVLAConfig
from quantvla_ros.models.smolvla.layers import RMSNorm
from quantvla_ros.models.smolvla.model import SmolVLAModel, init_random_weights
from quantvla_ros.models.smolvla.normalization import SmolVLANormalizer
from quantvla_ros.models.smolvla.processing import TOKENIZER_DIR

_BACKBONE = "backbone.layers.*"
_EXPERT_MLP = "expert.layers.*.mlp.*"
_EXPERT_ATTN = "expert.layers.*.self_attn.*"

PRESETS: dict[str, Layout] = {
    "quantvla": Layout("quantvla", (_BACKBONE, _EXPERT_MLP), description=(
        "the QuantVLA layout: every kept SmolVLM2 text layer's linears and the expert's MLP; "
        "the expert's attention projections (ATM / OHB act there), vision, connector, "
        "embeddings and the action / state / time projections stay float")),
    "backbone": Layout("backbone", (_BACKBONE,), description="backbone linears only"),
    "expert_mlp": Layout("expert_mlp", (_EXPERT_MLP,), description="expert MLP linears only"),
    "backbone_expert": Layout("backbone_expert", (_BACKBONE, _EXPERT_MLP, _EXPERT_ATTN),
                              description="every backbone and expert linear (norms stay float)"),
    "none": Layout("none", (), description="nothing quantized (float reference)"),
}


def read_config(folder):
    """Return (SmolVLAConfig, raw config.json) of a lerobot smolvla folder."""
    # imported here: the checkpoint module builds models through models.build
    from quantvla_ros.models.smolvla.checkpoint import read_config as read

    return read(folder)


FAMILY = ModelFamily(
    name="smolvla", configs=SMOLVLA_REGISTRY, config_class=SmolVLAConfig, build=SmolVLAModel,
    init_random=init_random_weights,
    claims=lambda raw: raw.get("type") == "smolvla",
    claim_hint='lerobot\'s "type": "smolvla"', read_config=read_config,
    normalizer_from_tensors=lambda tensors, meta, cfg: SmolVLANormalizer.from_stats(tensors),
    presets=PRESETS,
    # Norm weights stay float32 in every precision: SmoothQuant factors folded into them
    # would lose percents in bf16 (as for pi's norms).
    fp32_modules=(RMSNorm,),
    tokenizer_dir=TOKENIZER_DIR,
)
