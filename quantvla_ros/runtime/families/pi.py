"""pi0 / pi0.5 behind the PolicyFamily interface (lerobot checkpoints, PaliGemma prompts)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from quantvla_ros.data.observation import ObservationError
from quantvla_ros.models.pi.checkpoint import load_checkpoint, read_config
from quantvla_ros.models.pi.config import STATE_PROMPTS
from quantvla_ros.models.pi.processing import PiProcessor, ProcessingError
from quantvla_ros.models.pi.tokenizer import TOKENIZER_DIR, load_tokenizer
from quantvla_ros.quant import pi_balance
from quantvla_ros.quant.pi_balance import PaddingRows, run_batches
from quantvla_ros.quant.pi_fused import fuse_projections
from quantvla_ros.runtime.families.pi_cuda_graph import GraphedChunk
from quantvla_ros.runtime.families.pi_fast_path import prepare_for_inference
from quantvla_ros.runtime.family import (
    LaunchProbe,
    Loaded,
    OptionSpec,
    PolicyFamily,
    PolicyOptions,
)


class PiFamily(PolicyFamily):
    """pi0 and pi0.5 (`PiModel`): prefix + KV cache, then the denoising loop."""

    name = "pi"
    supports_cuda_graphs = True
    supports_grad_chunk = True
    balance_towers = ("backbone", "expert")
    options = (OptionSpec("state_prompt", (
        "pi0.5: how the robot state enters the prompt: unpadded (its own values; lerobot >= "
        "0.5, openpi), padded (zero-padded to the model's state width; lerobot 0.4.x), none "
        "(left out: a policy trained with state dropout); auto = what the source declares"),
        STATE_PROMPTS),)

    def load_checkpoint(self, folder: Path, tokenizer: Path | None, device, dtype,
                        options: PolicyOptions) -> Loaded:
        """Load a lerobot pi0 / pi0.5 folder; its tokenizer/ (or ``tokenizer``) is required."""
        cfg, raw = read_config(folder)
        tok_path = str(tokenizer) if tokenizer is not None else cfg.tokenizer_path
        if tok_path is None and "quantvla" not in raw:
            # A trained lerobot checkpoint fed byte tokens would output confident garbage.
            raise ValueError(f"{folder} is a lerobot checkpoint without a tokenizer: put the "
                             f"PaliGemma tokenizer in its {TOKENIZER_DIR}/ folder or pass "
                             "tokenizer=")
        model, _, normalizer = load_checkpoint(folder, device, dtype)
        return Loaded(model, normalizer, load_tokenizer(tok_path))

    def tokenizer(self, cfg, folder: Path | None, trained: bool):
        """Return the folder's tokenizer, else the config's (bytes where it names none)."""
        return load_tokenizer(str(folder) if folder is not None else cfg.tokenizer_path)

    def configure(self, policy, options: PolicyOptions) -> str:
        """Resolve the pi0.5 state prompt (kept in the config so that artifacts record it).

        "unpadded" writes the robot's own state values into the prompt (lerobot >= 0.5,
        openpi), "padded" the vector zero-padded to the model's state_dim (lerobot 0.4.x),
        "none" leaves the state out (a policy trained with state dropout); None takes what
        the source declares, else "unpadded". Builds the family's input processor.
        """
        explicit = options.get("state_prompt")
        policy.options, note, chosen = PolicyOptions(), "", None
        if policy.cfg.variant == "pi05":
            declared = policy.cfg.state_prompt
            chosen = explicit or declared or "unpadded"
            why = ("set explicitly" if explicit else "declared by the source" if declared
                   else "default")
            if chosen != declared:
                policy.model.cfg = policy.cfg = policy.cfg.with_(state_prompt=chosen)
            policy.options = PolicyOptions(state_prompt=chosen)
            note = f" [state prompt: {chosen}, {why}]"
        self.processor = PiProcessor(policy.cfg, policy.tokenizer, policy.normalizer, chosen)
        return note

    def prepare(self, policy, obs) -> dict[str, torch.Tensor]:
        """Pixels and masks per camera slot, the tokenized prompt and the padded state."""
        try:
            return self.processor(obs.images, obs.state, obs.instruction, policy.device,
                                  policy.dtype)
        except ProcessingError as exc:
            raise ObservationError(str(exc)) from exc

    def collate(self, inputs):
        """Return one batch of them all (fixed shapes; right padding is masked)."""
        return [{k: torch.cat([x[k] for x in inputs]) for k in inputs[0]}]

    def run(self, model, inputs, noise, sync):
        """Prefix embedding and prefill (timed as prefix), then the denoising loop."""
        t1 = time.perf_counter()
        embs, valid = model.embed_prefix(
            inputs["images"], inputs["image_masks"], inputs["tokens"], inputs["token_masks"]
        )
        cache = model.prefill(embs, valid, room=model.suffix_len)
        sync()
        t2 = time.perf_counter()
        actions = model.denoise_loop(cache, valid, noise, inputs["state"], model.cfg.num_steps)
        sync()
        return actions, (t2 - t1) * 1000.0, (time.perf_counter() - t2) * 1000.0

    def fuse_projections(self, model):
        """Norm + q/k/v, norm + k/v and norm + gate/up share one quantization and GEMM."""
        return fuse_projections(model)

    def prepare_for_inference(self, model):
        """Fused norms, RoPE, concatenated float projections, per-step modulation."""
        return prepare_for_inference(model)

    def launch_probe(self, cfg):
        """Count vision layers and Gemma layers (backbone and expert together).

        At least 2 Gemma layers: the backbone's last layer alone is key/value only.
        """

        def with_depths(c, n):
            return c.with_(vision=replace(c.vision, depth=n["vision"]),
                           backbone=replace(c.backbone, depth=n["layers"]),
                           expert=replace(c.expert, depth=n["layers"]))

        def runs(model):
            c, meta = model.cfg, {"device": "meta"}
            s = c.vision.image_size
            images = torch.empty(1, len(c.cameras), 3, s, s, dtype=torch.bfloat16, **meta)
            image_masks = torch.empty(1, len(c.cameras), dtype=torch.bool, **meta)
            tokens = torch.empty(1, c.max_token_len, dtype=torch.long, **meta)
            token_masks = torch.empty(1, c.max_token_len, dtype=torch.bool, **meta)
            state = torch.empty(1, c.state_dim, **meta)
            noise = torch.empty(1, c.action_horizon, c.action_dim, **meta)

            def prefix():
                embs, valid = model.embed_prefix(images, image_masks, tokens, token_masks)
                return model.prefill(embs, valid, room=model.suffix_len), valid

            def loop(cache_valid, steps):
                model.denoise_loop(*cache_valid, noise, state, steps)

            return prefix, loop

        return LaunchProbe({"vision": (cfg.vision.depth, 1), "layers": (cfg.backbone.depth, 2)},
                           with_depths, runs)

    def graphed(self, model, inputs, noise):
        """Two captured graphs: prefix + prefill, then the denoising loop."""
        return GraphedChunk(model, inputs, noise, model.cfg.num_steps)

    def sample(self, model, batches, observer=None):
        """`PiModel.sample_actions` per batch; `observer` (a LinearInputs) learns the padding."""
        return run_batches(model, batches, None if observer is None else PaddingRows(observer))

    def grad_chunk(self, model, batch):
        """Run the Euler sampler on the uncached path, tracked from the prefix embeddings on.

        Uncached: the KV cache is written in place, which autograd refuses. Tracking starts
        at the embeddings, so the weights may be frozen.
        """
        b = batch
        embs, valid = model.embed_prefix(b["images"], b["image_masks"], b["tokens"],
                                         b["token_masks"])
        embs = embs.detach().requires_grad_(True)
        n = model.cfg.num_steps
        x = b["noise"].float()
        for t in model.flow_times(n):
            tt = torch.full((x.shape[0],), t, dtype=torch.float32, device=x.device)
            x = x + (-1.0 / n) * model.denoise_uncached(embs, valid, x, tt, b["state"])
        return x

    def attention_sites(self, model, towers):
        """Each Gemma layer's self-attention in the balanced towers, one stage per layer."""
        return pi_balance.attention_sites(model, towers)

    def balance_probe(self, teacher, student, batches, towers):
        """Return a StatsCollector probe (prefixes that no fold changes computed once)."""
        return pi_balance.PiBalanceProbe(teacher, student, batches, towers)
