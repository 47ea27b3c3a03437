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
from quantvla_ros.models.family import check_noise_scale
from quantvla_ros.models.registry import ModelConfig, get_config
from quantvla_ros.models.statistics import ACTION_KEY, STATE_KEY, IdentityStatistics
from quantvla_ros.quant.artifact import load_artifact
from quantvla_ros.quant.manifest import ArtifactManifest
from quantvla_ros.runtime.families import family_for, family_named
from quantvla_ros.runtime.family import PolicyOptions
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
    """Wraps a model of any family with its tokenization, normalization and preprocessing.

    What differs between families (inputs, batching, the chunk's phases) is the
    `PolicyFamily` of the model's config (runtime/family.py).
    """

    def __init__(self, model, normalizer, tokenizer, device="cpu", seed: int = 0,
                 source: str = "", **options: str | None):
        """Store the model with its pre / post-processing; seed the noise stream.

        ``options`` are the family's deployment choices by name (its `PolicyFamily.options`,
        e.g. pi0.5's state_prompt, GR00T's embodiment); None or "auto" takes what the source
        declares, and an option of another family is refused.
        """
        self.model, self.cfg = model, model.cfg
        self.family = family_for(model.cfg)
        self.normalizer, self.tokenizer = normalizer, tokenizer
        self.device = torch.device(device)
        self.dtype = compute_dtype(model)
        self.source = source
        self.manifest: ArtifactManifest | None = None  # set for quantized artifacts
        # On CUDA each chunk replays captured graphs (families/pi_cuda_graph.py) where the
        # family supports it; eager otherwise.
        self.use_cuda_graphs = self.device.type == "cuda" and self.family.supports_cuda_graphs
        self._graphed = None
        # Float fusions (families/pi_fast_path.py) change the module tree: applied before the
        # first inference only, so calibration and quantization read `model` unfused.
        self.fuse, self._prepared = True, False
        # Statistics fix the robot's state length; without them (random-weight models) any
        # length up to the model's padded state_dim is accepted.
        self.state_dim = normalizer.dim(STATE_KEY)
        self.action_dim = normalizer.dim(ACTION_KEY) or self.cfg.action_dim
        self.options = PolicyOptions()  # the resolved choices (set by the family)
        # Each chunk's start noise is multiplied by this: what the source declares, unless a
        # caller (eval --noise-scale, a node parameter) sets another through `set_noise_scale`.
        self.noise_scale = float(model.cfg.noise_scale)
        if self.noise_scale != 1.0:
            self.source += f" [noise scale {self.noise_scale:g}, declared by the source]"
        asked = PolicyOptions(options)
        self.family.check_options(self.cfg.name, asked)
        self.source += self.family.configure(self, asked)
        self.reseed(seed)

    def option(self, name: str) -> str | None:
        """Return a resolved deployment choice (e.g. "state_prompt"), None if not set."""
        return self.options.get(name)

    @property
    def max_state_dim(self) -> int:
        """The most state values the model takes (the robot's are zero-padded to it)."""
        return self.cfg.state_dim

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: ModelConfig | str, seed: int = 0, device="cpu",
                    precision="fp32", tokenizer: str | Path | None = None, **options):
        """Build a random-weight policy of a named config (benchmarks, tests, demos)."""
        cfg = get_config(cfg) if isinstance(cfg, str) else cfg
        model = random_model(cfg, seed=seed, device=device, dtype=resolve_dtype(precision))
        tok = family_for(cfg).tokenizer(cfg, Path(tokenizer) if tokenizer else None,
                                        trained=False)
        return cls(model, IdentityStatistics(), tok, device, seed,
                   source=f"{cfg.name} (random weights, seed {seed})", **options)

    @classmethod
    def from_checkpoint(cls, folder, device="cpu", precision="fp32", seed: int = 0,
                        tokenizer: str | Path | None = None, **options):
        """Load a checkpoint of any family (its own tokenizer folder unless ``tokenizer``)."""
        src = PolicySource.resolve(folder, seed=seed, tokenizer=tokenizer)
        family = family_named(src.family())
        asked = PolicyOptions(options)
        family.check_options(str(folder), asked)  # before the (long) weight load
        loaded = family.load_checkpoint(src.path, src.tokenizer, device, resolve_dtype(precision),
                                     asked)
        return cls(loaded.model, loaded.normalizer, loaded.tokenizer, device, seed,
                   source=str(folder), **options)

    @classmethod
    def from_artifact(cls, folder, device="cpu", precision="fp32", seed: int = 0,
                      tokenizer: str | Path | None = None, fuse: bool = True, **options):
        """Load a quantized artifact written by `quantvla quantize`.

        `fuse` merges projections that share an input (norm + q/k/v, norm + gate/up) into
        one activation quantization and one GEMM; reports keep them apart to unfold ATM/OHB.
        """
        src = PolicySource.resolve(folder, seed=seed, tokenizer=tokenizer)
        model, cfg, normalizer, manifest = load_artifact(src.path, device,
                                                         resolve_dtype(precision))
        family = family_for(cfg)
        if fuse:
            family.fuse_projections(model)
        tok = family.tokenizer(cfg, src.tokenizer, trained=manifest.source.kind != "named")
        policy = cls(model, normalizer, tok, device, seed,
                     source=f"{folder} ({manifest.bits})", **options)
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

    def set_noise_scale(self, scale: float) -> None:
        """Serve with another start-noise scale than the source declares (0: the mean)."""
        check_noise_scale(scale)
        self.noise_scale = float(scale)

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
        if self.state_dim is not None and obs.state.shape[0] != self.state_dim:
            raise ObservationError(f"state has {obs.state.shape[0]} values, the policy expects "
                                   f"{self.state_dim}")
        if obs.state.shape[0] > self.max_state_dim:
            raise ObservationError(f"state has {obs.state.shape[0]} values, model max "
                                   f"{self.max_state_dim}")
        return self.family.prepare(self, obs)

    def prepare_batches(self, observations) -> list[dict[str, torch.Tensor]]:
        """Prepare several observations as batches, in order (calibration, reports).

        Each row of a batch gets the actions it would get alone (see PolicyFamily.collate).
        """
        return self.family.collate([self.prepare(o) for o in observations])

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def infer(self, obs: Observation | Mapping, noise: torch.Tensor | None = None) -> PolicyOutput:
        """Return the action chunk [horizon, action dim] for one observation, with timings.

        ``noise`` (default: the next draw of the seeded stream) is standard normal; it is
        scaled by `noise_scale` here, so every caller serves the same declared sampling.
        """
        t0 = time.perf_counter()
        inputs = self.prepare(obs)
        noise = (self.draw_noise() if noise is None else noise) * self.noise_scale
        noise = noise.to(self.device)
        if self.fuse and not self._prepared:
            self.family.prepare_for_inference(self.model)
            self._prepared = True
        self._sync()
        t1 = time.perf_counter()
        if self.use_cuda_graphs:
            actions, prefix_ms, denoise_ms = self._run_graphed(inputs, noise)
        else:
            actions, prefix_ms, denoise_ms = self.family.run(self.model, inputs, noise,
                                                             self._sync)
        actions = actions[0].float().cpu().numpy()
        out = self.normalizer.unnormalize_actions(actions)[:, : self.action_dim]
        return PolicyOutput(out.astype(np.float32), {
            "preprocess": (t1 - t0) * 1000.0, "prefix": prefix_ms, "denoise": denoise_ms,
            "total": (time.perf_counter() - t0) * 1000.0,
        })

    def _run_graphed(self, inputs, noise):
        """Replay the captured chunk (captured on first use or a shape change)."""
        if self._graphed is None or not self._graphed.matches(inputs, noise):
            self._graphed = self.family.graphed(self.model, inputs, noise)
        actions, (prefix_ms, denoise_ms) = self._graphed.run(inputs, noise, timed=True)
        return actions, prefix_ms, denoise_ms

    def release(self) -> None:
        """Drop the model and captured graphs (the ROS node's cleanup)."""
        self._graphed = None
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
