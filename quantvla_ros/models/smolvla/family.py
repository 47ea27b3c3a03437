"""SmolVLA as a model family: configs, build, checkpoints it claims, presets, fp32 norms."""

from __future__ import annotations

from quantvla_ros.models.family import Layout, ModelFamily, Part
from quantvla_ros.models.smolvla.config import SMOLVLA_REGISTRY, SmolVLAConfig
from quantvla_ros.models.smolvla.layers import RMSNorm
from quantvla_ros.models.smolvla.model import SmolVLAModel, init_random_weights
from quantvla_ros.models.smolvla.normalization import SmolVLANormalizer
from quantvla_ros.models.smolvla.processing import TOKENIZER_DIR

_BACKBONE = "backbone.layers.*"
_EXPERT_MLP = "expert.layers.*.mlp.*"
_EXPERT_ATTN = "expert.layers.*.self_attn.*"
_WHY = ("SmolVLM2's widths (text 960, expert 720, cross k / v 320) are not multiples of the "
        "128-wide int4 groups (W4A8 packs K by 128), so one scale per output channel; the MLP "
        "down projections (K 2560 / 2048) keep groups of 128")
_BACKBONE_K = ("backbone.layers.*.self_attn.*", "backbone.layers.*.mlp.gate_proj",
               "backbone.layers.*.mlp.up_proj")
_EXPERT_K = ("expert.layers.*.mlp.gate_proj", "expert.layers.*.mlp.up_proj")


def _per_channel(*patterns: str) -> tuple[Part, ...]:
    return (Part("per_channel", patterns, None, why=_WHY),)


PRESETS: dict[str, Layout] = {
    "quantvla": Layout("quantvla", (_BACKBONE, _EXPERT_MLP),
                       parts=_per_channel(*_BACKBONE_K, *_EXPERT_K), description=(
        "the QuantVLA layout: every kept SmolVLM2 text layer's linears and the expert's MLP; "
        "the expert's attention projections (ATM / OHB act there), vision, connector, "
        "embeddings and the action / state / time projections stay float")),
    "backbone": Layout("backbone", (_BACKBONE,), parts=_per_channel(*_BACKBONE_K),
                       description="backbone linears only"),
    "expert_mlp": Layout("expert_mlp", (_EXPERT_MLP,), parts=_per_channel(*_EXPERT_K),
                         description="expert MLP linears only"),
    "backbone_expert": Layout("backbone_expert", (_BACKBONE, _EXPERT_MLP, _EXPERT_ATTN),
                              parts=_per_channel(*_BACKBONE_K, *_EXPERT_K, _EXPERT_ATTN),
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
