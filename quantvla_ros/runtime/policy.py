"""Policy: one Observation in, one unnormalized action chunk out (no ROS)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from quantvla_ros.data.observation import Observation, ObservationError
from quantvla_ros.models.build import compute_dtype, random_model
from quantvla_ros.models.checkpoint import load_checkpoint, read_config
from quantvla_ros.models.config import STATE_PROMPTS, PiConfig, get_config
from quantvla_ros.models.normalization import ACTION_KEY, STATE_KEY, Normalizer
from quantvla_ros.models.tokenizer import TOKENIZER_DIR, build_prompt, load_tokenizer, tokenize
from quantvla_ros.quant.artifact import load_artifact
from quantvla_ros.quant.fused import fuse_projections
from quantvla_ros.quant.manifest import ArtifactManifest
from quantvla_ros.runtime.cuda_graph import GraphedChunk
from quantvla_ros.runtime.fast_path import prepare_for_inference
from quantvla_ros.runtime.preprocess import images_to_pixels
from quantvla_ros.runtime.source import PolicySource

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(precision: str | torch.dtype) -> torch.dtype:
    """Return the torch dtype for "fp32" / "bf16" / "fp16"; a dtype passes through."""
    if isinstance(precision, torch.dtype):
        return precision
    if precision not in DTYPES:
        raise ValueError(f"unknown precision {precision!r}; expected one of {list(DTYPES)}")
    return DTYPES[precision]


@dataclass
class PolicyOutput:
    """One inference result: the unnormalized action chunk and its timings (ms)."""

    actions: np.ndarray  # [horizon, robot action dim], unnormalized
    timing_ms: dict[str, float] = field(default_factory=dict)


class Policy:
    """Wraps a PiModel with tokenization, normalization and image preprocessing."""

    def __init__(self, model, normalizer: Normalizer, tokenizer, device="cpu", seed: int = 0,
                 source: str = "", state_prompt: str | None = None):
        """Store the model with its pre / post-processing; seed the noise stream.

        ``state_prompt`` (pi0.5): "unpadded" writes the robot's own state values into the
        prompt (lerobot >= 0.5, openpi), "padded" the vector zero-padded to the model's
        state_dim (lerobot 0.4.x); None takes what the source declares, else "unpadded".
        """
        self.model, self.cfg = model, model.cfg
        self.normalizer, self.tokenizer = normalizer, tokenizer
        self.device = torch.device(device)
        self.dtype = compute_dtype(model)
        self.source = source
        self.manifest: ArtifactManifest | None = None  # set for quantized artifacts
        # On CUDA each chunk replays two captured graphs (see cuda_graph.py); eager otherwise.
        self.use_cuda_graphs = self.device.type == "cuda"
        self._graphed: GraphedChunk | None = None
        # Float fusions (runtime/fast_path.py) change the module tree: applied before the
        # first inference only, so calibration and quantization read `model` unfused.
        self.fuse, self._prepared = True, False
        # Statistics fix the robot's state length; without them (random-weight models) any
        # length up to the model's padded state_dim is accepted.
        self.state_dim = normalizer.dim(STATE_KEY)
        self.action_dim = normalizer.dim(ACTION_KEY) or self.cfg.action_dim
        self._choose_state_prompt(state_prompt)
        self.reseed(seed)

    def _choose_state_prompt(self, explicit: str | None) -> None:
        """Resolve the pi0.5 state prompt; note it in `source` and in the model's config.

        The model's config carries the choice so that an artifact quantized from this policy
        records it in its manifest.
        """
        self.state_prompt = None
        if explicit is not None and explicit not in STATE_PROMPTS:
            raise ValueError(f"state_prompt {explicit!r}: expected one of {list(STATE_PROMPTS)}"
                             " or None (what the source declares)")
        if self.cfg.variant != "pi05":
            return
        declared = self.cfg.state_prompt
        self.state_prompt = explicit or declared or "unpadded"
        why = "set explicitly" if explicit else "declared by the source" if declared else "default"
        if self.state_prompt != declared:
            self.model.cfg = self.cfg = self.cfg.with_(state_prompt=self.state_prompt)
        self.source += f" [state prompt: {self.state_prompt}, {why}]"

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: PiConfig | str, seed: int = 0, device="cpu", precision="fp32",
                    tokenizer: str | Path | None = None, state_prompt: str | None = None):
        """Build a random-weight policy of a named config (benchmarks, tests, demos)."""
        cfg = get_config(cfg) if isinstance(cfg, str) else cfg
        model = random_model(cfg, seed=seed, device=device, dtype=resolve_dtype(precision))
        tok = load_tokenizer(str(tokenizer) if tokenizer is not None else cfg.tokenizer_path)
        return cls(model, Normalizer.identity(), tok, device, seed,
                   source=f"{cfg.name} (random weights, seed {seed})", state_prompt=state_prompt)

    @classmethod
    def from_checkpoint(cls, folder, device="cpu", precision="fp32", seed: int = 0,
                        tokenizer: str | Path | None = None, state_prompt: str | None = None):
        """Load a lerobot-format checkpoint (its own tokenizer/ unless ``tokenizer`` is set)."""
        src = PolicySource.resolve(folder, seed=seed, tokenizer=tokenizer)
        cfg, raw = read_config(src.path)
        tok_path = str(src.tokenizer) if src.tokenizer is not None else cfg.tokenizer_path
        if tok_path is None and "quantvla" not in raw:
            # A trained lerobot checkpoint fed byte tokens would output confident garbage.
            raise ValueError(f"{folder} is a lerobot checkpoint without a tokenizer: put the "
                             f"PaliGemma tokenizer in its {TOKENIZER_DIR}/ folder or pass "
                             "tokenizer=")
        model, _, normalizer = load_checkpoint(src.path, device, resolve_dtype(precision))
        return cls(model, normalizer, load_tokenizer(tok_path), device, seed, source=str(folder),
                   state_prompt=state_prompt)

    @classmethod
    def from_artifact(cls, folder, device="cpu", precision="fp32", seed: int = 0,
                      tokenizer: str | Path | None = None, fuse: bool = True,
                      state_prompt: str | None = None):
        """Load a quantized artifact written by `quantvla quantize`.

        `fuse` merges projections that share an input (norm + q/k/v, norm + gate/up) into
        one activation quantization and one GEMM; reports keep them apart to unfold ATM/OHB.
        """
        src = PolicySource.resolve(folder, seed=seed, tokenizer=tokenizer)
        model, cfg, normalizer, manifest = load_artifact(src.path, device,
                                                         resolve_dtype(precision))
        if fuse:
            fuse_projections(model)
        tok_path = str(src.tokenizer) if src.tokenizer is not None else cfg.tokenizer_path
        policy = cls(model, normalizer, load_tokenizer(tok_path), device, seed,
                     source=f"{folder} ({manifest.bits})", state_prompt=state_prompt)
        policy.manifest, policy.fuse = manifest, fuse
        return policy

    @classmethod
    def load(cls, source: str | PolicySource, seed: int = 0,
             tokenizer: str | Path | None = None, **kwargs) -> Policy:
        """Load a named config (random weights), a checkpoint folder or a quantized artifact."""
        src = PolicySource.resolve(source, seed=seed, tokenizer=tokenizer)
        if src.kind == "artifact":
            return cls.from_artifact(src.path, seed=src.seed, tokenizer=src.tokenizer, **kwargs)
        if src.kind == "checkpoint":
            return cls.from_checkpoint(src.path, seed=src.seed, tokenizer=src.tokenizer,
                                       **kwargs)
        return cls.from_config(src.name, seed=src.seed, tokenizer=src.tokenizer, **kwargs)

    def reseed(self, seed: int) -> None:
        """Restart the noise stream: the same seed and observations give the same chunks."""
        self._gen = torch.Generator().manual_seed(seed)

    # ---- inference -------------------------------------------------------------------------
    def draw_noise(self, batch: int = 1) -> torch.Tensor:
        """Draw denoising start noise [batch, horizon, model action dim] from the stream."""
        shape = (batch, self.cfg.action_horizon, self.cfg.action_dim)
        return torch.randn(shape, generator=self._gen)

    def prepare(self, obs: Observation | Mapping) -> dict[str, torch.Tensor]:
        """Check one observation against this policy; return batched model inputs.

        ``obs`` is an Observation, or a dict with its fields (converted and validated).
        """
        obs = Observation.from_mapping(obs)
        cfg = self.cfg
        pixels, present = images_to_pixels(
            obs.images, cfg.cameras, cfg.vision.image_size, self.device, self.dtype
        )
        if self.state_dim is not None and obs.state.shape[0] != self.state_dim:
            raise ObservationError(f"state has {obs.state.shape[0]} values, the policy expects "
                                   f"{self.state_dim}")
        state = self.normalizer.normalize_state(obs.state)
        if state.shape[0] > cfg.state_dim:
            raise ObservationError(f"state has {state.shape[0]} values, model max {cfg.state_dim}")
        padded = np.zeros(cfg.state_dim, np.float32)
        padded[: state.shape[0]] = state
        # pi0.5's prompt bins: the robot's own values, or the padded vector (see __init__)
        bins = padded if self.state_prompt == "padded" else state
        prompt = build_prompt(cfg.variant, obs.instruction, bins)
        ids, mask = tokenize(self.tokenizer, prompt, cfg.max_token_len)
        dev = self.device
        return {
            "images": pixels, "image_masks": present,
            "tokens": torch.from_numpy(ids)[None].to(dev),
            "token_masks": torch.from_numpy(mask)[None].to(dev),
            "state": torch.from_numpy(padded)[None].to(dev),
        }

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def infer(self, obs: Observation | Mapping, noise: torch.Tensor | None = None) -> PolicyOutput:
        """Return the action chunk [horizon, action dim] for one observation, with timings."""
        t0 = time.perf_counter()
        inputs = self.prepare(obs)
        noise = (self.draw_noise() if noise is None else noise).to(self.device)
        if self.fuse and not self._prepared:
            prepare_for_inference(self.model)
            self._prepared = True
        run = self._run_graphed if self.use_cuda_graphs else self._run_eager
        actions, t1, prefix_ms, denoise_ms = run(inputs, noise)
        actions = actions[0].float().cpu().numpy()
        out = self.normalizer.unnormalize_actions(actions)[:, : self.action_dim]
        return PolicyOutput(out.astype(np.float32), {
            "preprocess": (t1 - t0) * 1000.0, "prefix": prefix_ms, "denoise": denoise_ms,
            "total": (time.perf_counter() - t0) * 1000.0,
        })

    def _run_eager(self, inputs, noise):
        """(actions [1, H, A], start time, prefix ms, denoise ms); syncs only to time."""
        self._sync()
        t1 = time.perf_counter()
        m = self.model
        embs, valid = m.embed_prefix(
            inputs["images"], inputs["image_masks"], inputs["tokens"], inputs["token_masks"]
        )
        cache = m.prefill(embs, valid, room=m.suffix_len)
        self._sync()
        t2 = time.perf_counter()
        actions = m.denoise_loop(cache, valid, noise, inputs["state"], self.cfg.num_steps)
        self._sync()
        return actions, t1, (t2 - t1) * 1000.0, (time.perf_counter() - t2) * 1000.0

    def _run_graphed(self, inputs, noise):
        """Do the same with two CUDA-graph replays (captured on first use or a shape change)."""
        if self._graphed is None or not self._graphed.matches(inputs, noise):
            self._graphed = GraphedChunk(self.model, inputs, noise, self.cfg.num_steps)
        t1 = time.perf_counter()
        actions, (prefix_ms, denoise_ms) = self._graphed.run(inputs, noise, timed=True)
        return actions, t1, prefix_ms, denoise_ms

    def release(self) -> None:
        """Drop the model and captured graphs (the ROS node's cleanup)."""
        self._graphed = None
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
