"""GR00T N1.5 as a model family: configs, build, checkpoints it claims, presets."""

from __future__ import annotations

from quantvla_ros.models.family import Layout, ModelFamily
from quantvla_ros.models.groot.config import GROOT_REGISTRY, GrootConfig
from quantvla_ros.models.groot.model import GrootModel, init_random_weights
from quantvla_ros.models.groot.normalization import GrootNormalizer

# GR00T N1.5 (module names = the NVIDIA checkpoint keys, shared/GROOT.md sections 3-5).
_LLM = "backbone.eagle_model.language_model.model.layers.*"
_GROOT_LLM = (f"{_LLM}.self_attn.[qkvo]_proj", f"{_LLM}.mlp.*_proj")
_DIT = "action_head.model.transformer_blocks.*"
_DIT_FF = (f"{_DIT}.ff.net.*",)
_DIT_ATTN = (f"{_DIT}.attn1.*",)
_VLSA = ("action_head.vl_self_attention.transformer_blocks.*",)

GROOT_PRESETS: dict[str, Layout] = {
    "quantvla": Layout("quantvla", _GROOT_LLM + _DIT_FF, description=(
        "the QuantVLA authors' GR00T layout: the 12 LLM layers' linears and the DiT "
        "feed-forward linears (116); vision, mlp1, vl self-attention, DiT attention (ATM / OHB "
        "act there), adaLN / timestep / output projections and the per-embodiment MLPs stay "
        "float")),
    "llm": Layout("llm", _GROOT_LLM, description="the 12 LLM layers' linears only"),
    "dit_ff": Layout("dit_ff", _DIT_FF, description="the DiT feed-forward linears only"),
    "all": Layout("all", _GROOT_LLM + _VLSA + _DIT_FF + _DIT_ATTN, description=(
        "every LLM, vl self-attention and DiT block linear (adaLN, timestep, output "
        "projections, vision and mlp1 stay float)")),
    "none": Layout("none", (), description="nothing quantized (float reference)"),
}


def read_config(folder):
    """Return (GrootConfig, raw config.json) of an NVIDIA or lerobot GR00T folder."""
    # imported here: the checkpoint module builds models through models.build
    from quantvla_ros.models.groot.checkpoint import read_config as read

    return read(folder)


FAMILY = ModelFamily(
    name="groot", configs=GROOT_REGISTRY, config_class=GrootConfig, build=GrootModel,
    init_random=init_random_weights,
    claims=lambda raw: "action_head_cfg" in raw or raw.get("type") == "groot",
    claim_hint='NVIDIA\'s "action_head_cfg" or lerobot\'s "type": "groot"',
    read_config=read_config,
    normalizer_from_tensors=lambda tensors, meta, cfg: GrootNormalizer.from_tensors(tensors,
                                                                                    meta),
    presets=GROOT_PRESETS,
    tokenizer_dir="eagle2_hg_model",  # NVIDIA's Eagle processor folder (processing.py)
)
