"""`GrootModel`: the GR00T N1.5 module tree (`backbone`, `action_head`) and its sampler.

Its state-dict keys are the NVIDIA checkpoint's unprefixed keys, minus what GR00T never
reads: `language_model.lm_head` (tied to embed_tokens), LLM layers beyond select_layer and
the SigLIP pooling `head`.
"""

from __future__ import annotations

import torch
from torch import nn

from quantvla_ros.models.groot.action_head import CategorySpecificLinear, FlowMatchingActionHead
from quantvla_ros.models.groot.config import GrootConfig
from quantvla_ros.models.groot.eagle import EagleBackbone
from quantvla_ros.models.groot.qwen3 import Qwen3RMSNorm


class GrootModel(nn.Module):
    """Pixels, prompt ids and state -> a normalized action chunk [B, H, action_dim]."""

    def __init__(self, cfg: GrootConfig):
        """Build the Eagle backbone and the flow-matching action head."""
        super().__init__()
        self.cfg = cfg
        self.backbone = EagleBackbone(cfg)
        self.action_head = FlowMatchingActionHead(cfg.action_head)

    def never_executed_modules(self) -> tuple[str, ...]:
        """Names of modules a checkpoint may hold that GR00T never runs (not built here).

        lerobot files store the tied lm_head instead of embed_tokens (GROOT.md §7.1); the
        loader uses it as the token table. LLM layers beyond select_layer are popped before
        NVIDIA saves, and the SigLIP pooling `head` is unused.
        """
        return ("backbone.eagle_model.language_model.lm_head",
                "backbone.eagle_model.vision_model.vision_model.head")

    def never_executed_params(self) -> int:
        """Return the parameters of the never-run modules a full checkpoint holds: lm_head.

        Whether the released file also stores the pooling head is unconfirmed (GROOT.md §3.1);
        it is not counted.
        """
        return self.cfg.llm.vocab_size * self.cfg.llm.width

    def never_executes(self, name: str) -> bool:
        """Return True if ``name`` (a module or a tensor) lies in a never-executed module."""
        return any(name == m or name.startswith(m + ".") for m in self.never_executed_modules())

    def norm_groups(self) -> list[tuple[str, list[str]]]:
        """(norm, the linears that read only its output): where smoothing folds into a norm.

        LLM layers (RMSNorm -> q/k/v, -> gate/up), VL self-attention blocks (affine
        LayerNorm -> q/k/v, -> ff.net.0.proj) and the DiT's AdaLayerNorm -> its queries (and
        keys / values in self-attention blocks; cross-attention ones read the VL tokens).
        The DiT's norm3 has no affine part to fold into: its consumers keep a divisor.
        """
        groups = []
        lm = "backbone.eagle_model.language_model.model.layers"
        for i in range(self.cfg.llm.depth):
            p = f"{lm}.{i}"
            groups.append((f"{p}.input_layernorm", [f"{p}.self_attn.{x}_proj" for x in "qkv"]))
            groups.append((f"{p}.post_attention_layernorm",
                           [f"{p}.mlp.{x}_proj" for x in ("gate", "up")]))
        head = self.cfg.action_head
        for i in range(head.vlsa_depth):
            p = f"action_head.vl_self_attention.transformer_blocks.{i}"
            groups.append((f"{p}.norm1", [f"{p}.attn1.to_{x}" for x in "qkv"]))
            groups.append((f"{p}.norm3", [f"{p}.ff.net.0.proj"]))
        for i, block in enumerate(self.action_head.model.transformer_blocks):
            p = f"action_head.model.transformer_blocks.{i}"
            reads = "q" if block.attn1.is_cross else "qkv"
            groups.append((f"{p}.norm1", [f"{p}.attn1.to_{x}" for x in reads]))
        return groups

    @torch.no_grad()
    def sample_actions(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor, state: torch.Tensor,
                       embodiment_id: torch.Tensor, noise: torch.Tensor,
                       num_steps: int | None = None) -> torch.Tensor:
        """Return normalized actions [B, H, A] from the given noise [B, H, A].

        pixel_values [N_img, 3, H, W] in [-1, 1] (all images, batch-major); input_ids and
        attention_mask [B, L] with one `<IMG_CONTEXT>` id per image token; state
        [B, 1, max_state_dim]; embodiment_id [B]. The noise is an argument so that a result
        depends on the inputs only.
        """
        features = self.backbone(pixel_values, input_ids, attention_mask)
        return self.action_head.sample_actions(features, state, embodiment_id, noise,
                                               num_steps, attention_mask)


@torch.no_grad()
def init_random_weights(model: GrootModel, generator: torch.Generator) -> None:
    """Seeded random weights: norms at identity, biases 0, other tensors ~ N(0, 0.02)."""
    norms = (nn.LayerNorm, Qwen3RMSNorm)
    for module in model.modules():
        if isinstance(module, norms):
            for name, p in module.named_parameters(recurse=False):
                p.fill_(1.0 if name == "weight" else 0.0)
            continue
        for name, p in module.named_parameters(recurse=False):
            if name == "bias" or (isinstance(module, CategorySpecificLinear) and name == "b"):
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=generator)
