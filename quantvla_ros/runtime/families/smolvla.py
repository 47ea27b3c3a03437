"""SmolVLA behind the PolicyFamily interface (lerobot checkpoints, SmolVLM2 prompts).

Inputs are built by `models.smolvla.processing.SmolVLAProcessor` (lerobot's pipeline: mean /
std statistics, left/top padded images, the task plus a newline). A batch right-pads its
prompts, which the model masks, so each row gets its single-run actions. Not built for
SmolVLA yet: CUDA-graph capture and fused float blocks, so a chunk runs eagerly (integer
GEMMs for the quantized linears, PyTorch for the rest).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from quantvla_ros.data.observation import ObservationError
from quantvla_ros.models.smolvla.checkpoint import CheckpointError, load_checkpoint, read_config
from quantvla_ros.models.smolvla.processing import (
    TOKENIZER_DIR,
    ProcessingError,
    SmolVLAProcessor,
    collate,
    load_tokenizer,
)
from quantvla_ros.runtime.families import smolvla_balance
from quantvla_ros.runtime.family import LaunchProbe, Loaded, PolicyFamily, PolicyOptions


class SmolVLAFamily(PolicyFamily):
    """SmolVLA (`SmolVLAModel`): SmolVLM2 prefix and KV cache, then the expert's flow steps."""

    name = "smolvla"
    supports_cuda_graphs = False
    balance_towers = ("expert",)
    options = ()

    def __init__(self):
        """Start without a processor: `configure` builds it."""
        self.processor: SmolVLAProcessor | None = None

    def load_checkpoint(self, folder: Path, tokenizer: Path | None, device, dtype,
                        options: PolicyOptions) -> Loaded:
        """Load a lerobot smolvla folder; a trained one needs its tokenizer/ (or ``tokenizer``)."""
        _, raw = read_config(folder)
        tok_dir = Path(tokenizer) if tokenizer is not None else folder / TOKENIZER_DIR
        if not tok_dir.is_dir():
            if "quantvla" not in raw:  # byte ids into a trained model: confident garbage
                raise CheckpointError(f"{folder} is a lerobot checkpoint without a tokenizer: "
                                      f"put the SmolVLM2 tokenizer in its {TOKENIZER_DIR}/ "
                                      "folder or pass tokenizer=")
            tok_dir = None
        model, _, normalizer = load_checkpoint(folder, device, dtype)
        return Loaded(model, normalizer, load_tokenizer(tok_dir))

    def tokenizer(self, cfg, folder: Path | None, trained: bool):
        """Return the folder's tokenizer, else the config's (the byte stand-in where none)."""
        return load_tokenizer(folder if folder is not None else cfg.tokenizer_path)

    def configure(self, policy, options: PolicyOptions) -> str:
        """Build the processor (SmolVLA takes no per-deployment options)."""
        self.processor = SmolVLAProcessor(policy.cfg, policy.tokenizer, policy.normalizer)
        return ""

    def prepare(self, policy, obs) -> dict[str, torch.Tensor]:
        """Pixels and masks per camera slot, the prompt's ids and the padded state."""
        try:
            return self.processor(obs.images, obs.state, obs.instruction, policy.device,
                                  policy.dtype)
        except ProcessingError as exc:
            raise ObservationError(str(exc)) from exc

    def collate(self, inputs):
        """One batch of them all: prompts right-padded and masked (rows stay independent)."""
        if not inputs:
            return []
        return [collate(inputs, getattr(self.processor.tokenizer, "pad_id", 0))]

    def run(self, model, inputs, noise, sync):
        """Prefix embedding and prefill (timed as prefix), then the flow steps."""
        t1 = time.perf_counter()
        embs, valid, mask = model.embed_prefix(inputs["images"], inputs["image_masks"],
                                               inputs["tokens"], inputs["token_masks"],
                                               inputs["state"])
        cache = model.prefill(embs, valid, mask)
        sync()
        t2 = time.perf_counter()
        actions = model.denoise_loop(cache, valid, noise, model.cfg.num_steps)
        sync()
        return actions, (t2 - t1) * 1000.0, (time.perf_counter() - t2) * 1000.0

    def launch_probe(self, cfg):
        """Vision layers and (self, cross) layer pairs of backbone and expert together."""

        def with_depths(c, n):
            pairs = 2 * n["layer_pair"]
            return c.with_(vision=replace(c.vision, depth=n["vision"]),
                           backbone=replace(c.backbone, depth=pairs),
                           expert=replace(c.expert, depth=pairs))

        def runs(model):
            c, meta = model.cfg, {"device": "meta"}
            s = c.vision.image_size
            images = torch.empty(1, len(c.cameras), 3, s, s, dtype=torch.bfloat16, **meta)
            image_masks = torch.empty(1, len(c.cameras), dtype=torch.bool, **meta)
            tokens = torch.empty(1, 16, dtype=torch.long, **meta)  # a short task
            token_masks = torch.empty(1, 16, dtype=torch.bool, **meta)
            state = torch.empty(1, c.state_dim, **meta)
            noise = torch.empty(1, c.action_horizon, c.action_dim, **meta)

            def prefix():
                embs, valid, mask = model.embed_prefix(images, image_masks, tokens,
                                                       token_masks, state)
                return model.prefill(embs, valid, mask), valid

            def loop(cache_valid, steps):
                model.denoise_loop(*cache_valid, noise, steps)

            return prefix, loop

        pairs = cfg.backbone.depth // 2 if cfg.backbone.depth == cfg.expert.depth else None
        if pairs is None or cfg.self_attn_every_n_layers != 2:
            raise ValueError(f"{cfg.name}: bench launches counts SmolVLA layer pairs with one "
                             "expert layer per backbone layer")
        return LaunchProbe({"vision": (cfg.vision.depth, 1), "layer_pair": (pairs, 1)},
                           with_depths, runs)

    def sample(self, model, batches, observer=None):
        """`SmolVLAModel.sample_actions` per batch; `observer` (a LinearInputs) skips padding."""
        out = []
        with torch.no_grad():
            for b in batches:
                if observer is not None:
                    n = model.cfg.image_tokens
                    valid = torch.cat([b["image_masks"].bool().repeat_interleave(n, dim=1),
                                       b["token_masks"].bool(),
                                       torch.ones_like(b["token_masks"][:, :1], dtype=bool)],
                                      dim=1)
                    observer.padding("backbone", valid)
                out.append(model.sample_actions(b["images"], b["image_masks"], b["tokens"],
                                                b["token_masks"], b["state"],
                                                b["noise"]).float().cpu())
        return torch.cat(out)

    def attention_sites(self, model, towers):
        """Each expert layer's attention (self and cross), one stage per layer."""
        return smolvla_balance.attention_sites(model, towers)

    def balance_probe(self, teacher, student, batches, towers):
        """Return an ExpertStats probe (each model's prefix computed once)."""
        return smolvla_balance.SmolVLABalanceProbe(batches)
