"""GR00T N1.5 behind the PolicyFamily interface (NVIDIA / lerobot checkpoints, Eagle inputs).

Inputs are built by `models.groot.processing.GrootProcessor` (GROOT.md §1.2): every camera
slot must be filled (GR00T has no image mask), the Qwen tokenizer comes from the source's
`tokenizer/` or `eagle2_hg_model/` folder (a byte stand-in only for random weights), and the
embodiment picks both the projector slot and the statistics of `metadata.json`. Not built for
GR00T yet: CUDA-graph capture and the fused float / norm blocks of pi's fast path, so a chunk
runs eagerly (integer GEMMs for the quantized linears, PyTorch for the rest).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from quantvla_ros.data.observation import ObservationError
from quantvla_ros.models.groot.checkpoint import load_checkpoint, read_metadata, read_normalizer
from quantvla_ros.models.groot.normalization import GrootNormalizer
from quantvla_ros.models.groot.processing import (
    TOKENIZER_DIR,
    GrootProcessor,
    ProcessingError,
    embodiment_id,
    load_tokenizer,
)
from quantvla_ros.quant import groot_balance
from quantvla_ros.runtime.family import (
    LaunchProbe,
    Loaded,
    OptionSpec,
    PolicyFamily,
    PolicyOptions,
)

BATCH_KEYS = ("pixel_values", "input_ids", "attention_mask", "state", "embodiment_id")
# The stacks whose linears see one row per prompt token (padding rows included).
PADDED_STACKS = ("backbone.eagle_model.language_model", "action_head.vl_self_attention")


def statistics_tag(folder: Path, embodiment: str | None, default: str) -> str:
    """Return the metadata.json tag to read: the embodiment if a tag, else the only one."""
    if embodiment is not None and not embodiment.isdigit():
        return embodiment
    tags = sorted(read_metadata(folder) or {})
    return tags[0] if len(tags) == 1 else default


class GrootFamily(PolicyFamily):
    """GR00T N1.5 (`GrootModel`): Eagle backbone, then the flow-matching DiT head."""

    name = "groot"
    supports_cuda_graphs = False
    balance_towers = ("dit",)
    options = (OptionSpec("embodiment", (
        "GR00T: embodiment tag (new_embodiment, gr1, oxe_droid, ...) or projector slot "
        "number; picks the projector slot and the statistics; auto = what the source "
        "declares"),),)

    def __init__(self):
        """Start without a processor: `configure` builds it once the choices are known."""
        self.processor: GrootProcessor | None = None

    def load_checkpoint(self, folder: Path, tokenizer: Path | None, device, dtype,
                        options: PolicyOptions) -> Loaded:
        """Load an NVIDIA (sharded) or lerobot GR00T folder, statistics and tokenizer."""
        tok_dir = tokenizer or folder / TOKENIZER_DIR
        if not tok_dir.is_dir():  # before the (long) weight load
            load_tokenizer(tok_dir, None)  # raises: names the folder and what to copy there
        model, cfg = load_checkpoint(folder, device, dtype)
        tok = self.tokenizer(cfg, tok_dir, trained=True)
        tag = statistics_tag(folder, options.get("embodiment"), cfg.embodiment)
        normalizer = read_normalizer(folder, tag)
        if normalizer is None:
            raise ProcessingError(f"{folder}: no statistics (experiment_cfg/metadata.json or "
                                  "lerobot's processor files); a trained policy needs them")
        if "embodiment" not in options and tag != cfg.embodiment:
            model.cfg = cfg.with_(embodiment=tag)  # the statistics' tag is the robot's
        return Loaded(model, normalizer, tok)

    def tokenizer(self, cfg, folder: Path | None, trained: bool):
        """Return the folder's Qwen tokenizer; the byte stand-in for random weights only."""
        if folder is not None or trained:
            return load_tokenizer(folder, cfg)  # a missing folder raises, naming it
        return load_tokenizer(None, cfg, stand_in=True)

    def configure(self, policy, options: PolicyOptions) -> str:
        """Resolve the embodiment into the config; build the processor."""
        cfg = policy.cfg
        embodiment = options.get("embodiment") or cfg.embodiment
        why = "set explicitly" if "embodiment" in options else "declared by the source"
        embodiment_id(embodiment, cfg)  # raises a ProcessingError naming the problem
        if embodiment != cfg.embodiment:
            policy.model.cfg = policy.cfg = cfg = cfg.with_(embodiment=embodiment)
        policy.options = PolicyOptions(embodiment=embodiment)
        normalizer = policy.normalizer if isinstance(policy.normalizer, GrootNormalizer) \
            else None
        self.processor = GrootProcessor(cfg, policy.tokenizer, normalizer, embodiment,
                                        numpy_repr=cfg.instruction_repr)
        return f" [embodiment: {embodiment}, {why}]"

    def prepare(self, policy, obs) -> dict[str, torch.Tensor]:
        """Eagle pixels of every slot, the templated prompt, padded state, embodiment id."""
        cfg = policy.cfg
        missing = [c for c in cfg.cameras if c not in obs.images]
        if missing:
            raise ObservationError(f"GR00T needs every camera slot; missing {missing} "
                                   f"(slots: {list(cfg.cameras)})")
        try:
            raw = self.processor([obs.images[c] for c in cfg.cameras], obs.state,
                                 obs.instruction or None)
        except ProcessingError as exc:
            raise ObservationError(str(exc)) from exc
        dev = policy.device
        return {"pixel_values": raw["eagle_pixel_values"].to(dev, policy.dtype),
                "input_ids": raw["eagle_input_ids"].to(dev),
                "attention_mask": raw["eagle_attention_mask"].to(dev),
                "state": raw["state"].to(dev),
                "embodiment_id": raw["embodiment_id"].to(dev)}

    def collate(self, inputs):
        """Left-pad every prompt to the longest and batch them all, in order.

        The action head masks the padding (`FlowMatchingActionHead.sample_actions`) and RoPE
        is relative, so each row gets its single-run actions whatever the lengths.
        """
        if not inputs:
            return []
        width = max(x["input_ids"].shape[1] for x in inputs)
        pad = self.processor.tokenizer.pad_id if self.processor else 0

        def left_pad(t, value):
            fill = t.new_full((t.shape[0], width - t.shape[1]), value)
            return torch.cat([fill, t], dim=1)

        rows = [{**x, "input_ids": left_pad(x["input_ids"], pad),
                 "attention_mask": left_pad(x["attention_mask"], 0)} for x in inputs]
        return [{k: torch.cat([x[k] for x in rows]) for k in BATCH_KEYS}]

    def run(self, model, inputs, noise, sync):
        """Run the Eagle backbone (timed as prefix), then the action head's flow steps."""
        t1 = time.perf_counter()
        features = model.backbone(inputs["pixel_values"], inputs["input_ids"],
                                  inputs["attention_mask"])
        sync()
        t2 = time.perf_counter()
        actions = model.action_head.sample_actions(features, inputs["state"],
                                                   inputs["embodiment_id"], noise,
                                                   attention_mask=inputs["attention_mask"])
        sync()
        return actions, (t2 - t1) * 1000.0, (time.perf_counter() - t2) * 1000.0

    def launch_probe(self, cfg):
        """Vision, LLM and VL self-attention layers, and DiT cross + self block pairs."""

        def with_depths(c, n):
            h = c.action_head
            return c.with_(vision=replace(c.vision, depth=n["vision"]),
                           llm=replace(c.llm, depth=n["llm"]),
                           action_head=replace(h, vlsa_depth=n["vl_self_attention"],
                                               dit_depth=2 * n["dit_pair"]))

        def runs(model):
            c, meta = model.cfg, {"device": "meta"}
            s, prompt = c.vision.image_size, c.prefix_len + 32  # the text: about 32 tokens
            pixels = torch.empty(len(c.cameras), 3, s, s, dtype=torch.bfloat16, **meta)
            ids = torch.empty(1, prompt, dtype=torch.long, **meta)
            mask = torch.empty(1, prompt, dtype=torch.long, **meta)
            state = torch.empty(1, 1, c.state_dim, **meta)
            embodiment = torch.empty(1, dtype=torch.long, **meta)
            noise = torch.empty(1, c.action_horizon, c.action_dim, **meta)

            def prefix():
                return model.backbone(pixels, ids, mask)

            def loop(features, steps):  # batch 1 has no padding: no mask
                model.action_head.sample_actions(features, state, embodiment, noise, steps)

            return prefix, loop

        h = cfg.action_head
        return LaunchProbe({"vision": (cfg.vision.depth, 1), "llm": (cfg.llm.depth, 1),
                            "vl_self_attention": (h.vlsa_depth, 1),
                            "dit_pair": (h.dit_depth // 2, 1)}, with_depths, runs)

    def sample(self, model, batches, observer=None):
        """Run `GrootModel.sample_actions` per batch.

        An `observer` (quant.observe.LinearInputs) learns each batch's padding, so the LLM's
        and the VL self-attention's linears leave left-padding rows out of their statistics.
        """
        out = []
        with torch.no_grad():
            for b in batches:
                if observer is not None:
                    for prefix in PADDED_STACKS:
                        observer.padding(prefix, b["attention_mask"].bool())
                out.append(model.sample_actions(
                    b["pixel_values"], b["input_ids"], b["attention_mask"], b["state"],
                    b["embodiment_id"], b["noise"]).float().cpu())
        return torch.cat(out)

    def attention_sites(self, model, towers):
        """Every DiT attention (cross and self), one stage per block; `towers` is moot."""
        return groot_balance.attention_sites(model)

    def balance_probe(self, teacher, student, batches, towers):
        """Return a DiTStats probe of the action head (backbone features computed once)."""
        return groot_balance.GrootBalanceProbe(batches)
