"""The one interface a model family implements for the layers above the models.

The Policy, the quantize and report workflows, the calibration node and the inference node
talk to a model only through a `PolicyFamily`: how to load it and its tokenizer, how an
Observation becomes model inputs and a batch, how a chunk is run, and how ATM / OHB are
calibrated, undone and tabulated. `runtime.families.family_for(cfg)` picks the implementation
by the config's family, so nothing above `runtime/` branches on it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from quantvla_ros.models.family import ModelConfig
from quantvla_ros.quant import balance

UNSET = ("", "auto")  # option values that mean "what the source declares"


@dataclass(frozen=True)
class OptionSpec:
    """One per-deployment choice a family takes: its name, what it does, allowed values.

    The CLI flags, the node parameters and the Python keyword arguments are made from these,
    so a new option is declared in its family only. Empty `choices`: free text the family
    checks in `configure`.
    """

    name: str
    help: str
    choices: tuple[str, ...] = ()


class PolicyOptions(Mapping[str, str]):
    """Per-deployment choices by option name; None, "" and "auto" are left out (declared)."""

    def __init__(self, values: Mapping[str, str | None] | None = None, **named: str | None):
        """Keep the set values of ``values`` and ``named`` (the latter win)."""
        merged = {**(values or {}), **named}
        self._values = {k: str(v) for k, v in merged.items() if v is not None and v not in UNSET}

    def __getitem__(self, name: str) -> str:
        """Return the value set for ``name`` (KeyError if unset)."""
        return self._values[name]

    def __iter__(self):
        """Iterate over the names that are set."""
        return iter(self._values)

    def __len__(self) -> int:
        """Return how many options are set."""
        return len(self._values)

    def __repr__(self) -> str:
        """Show the set values."""
        return f"PolicyOptions({self._values!r})"


@dataclass(frozen=True)
class LaunchProbe:
    """What `bench launches` needs of a family to count a chunk on the meta device.

    stacks: repeated stack -> (its count in the config, the fewest to build); with_depths
    (cfg, {stack: count}) -> cfg; runs(model) -> (prefix() -> state, loop(state, steps)).
    """

    stacks: dict[str, tuple[int, int]]
    with_depths: Callable
    runs: Callable


@dataclass
class Loaded:
    """What a checkpoint gives a Policy: the model, its statistics and its tokenizer."""

    model: torch.nn.Module
    normalizer: object
    tokenizer: object


class PolicyFamily(ABC):
    """How one model family is loaded, fed, run and balanced."""

    name: str = ""
    supports_cuda_graphs: bool = False  # whether the Policy may capture its chunk
    supports_grad_chunk: bool = False  # whether `grad_chunk` exists (QVLA's row errors)
    options: tuple[OptionSpec, ...] = ()  # the per-deployment choices this family takes
    balance_towers: tuple[str, ...] = ()  # every stack ATM / OHB can balance (BalanceConfig)
    # the family's input processor (Observation parts -> model inputs), built by `configure`;
    # training builds its batches with the same class
    processor = None

    def check_options(self, what: str, options: PolicyOptions) -> None:
        """Refuse an option this family does not take, or a value outside its choices.

        ``what`` names the policy in the message (a config name or a folder).
        """
        specs = {o.name: o for o in self.options}
        for name, value in options.items():
            if name not in specs:
                raise ValueError(f"{name} is not an option of {what} ({self.name} family); "
                                 f"its options: {', '.join(specs) or 'none'}")
            choices = specs[name].choices
            if choices and value not in choices:
                raise ValueError(f"{name} {value!r}: expected one of {list(choices)} or auto "
                                 "(what the source declares)")

    @abstractmethod
    def load_checkpoint(self, folder: Path, tokenizer: Path | None, device, dtype,
                        options: PolicyOptions) -> Loaded:
        """Load a trained checkpoint; a missing tokenizer is an error, never a stand-in."""

    @abstractmethod
    def tokenizer(self, cfg: ModelConfig, folder: Path | None, trained: bool):
        """Return `folder`'s tokenizer; the config's default (or a stand-in) only if untrained."""

    @abstractmethod
    def configure(self, policy, options: PolicyOptions) -> str:
        """Resolve the (checked) options into `policy.cfg` and `policy.options`.

        Returns a note for the policy's source line. `policy.options` holds the resolved
        choices, which a teacher of the same source takes.
        """

    @abstractmethod
    def prepare(self, policy, obs) -> dict[str, torch.Tensor]:
        """Check one Observation against the policy; return the model inputs (batch of 1)."""

    @abstractmethod
    def collate(self, inputs: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        """Merge prepared single observations into batches, in order.

        A batch must give each row the actions it gets alone (the node runs one observation
        at a time), so a family whose batched padding changes results splits there.
        """

    @abstractmethod
    def run(self, model, inputs: dict, noise: torch.Tensor, sync) -> tuple:
        """Return (actions [B, H, A], prefix ms, denoise ms) of one eager chunk.

        `sync()` synchronizes the device for timing (the caller has just before); "prefix" is
        everything before the flow steps (vision and language), "denoise" the steps.
        """

    def fuse_projections(self, model) -> dict[str, int]:
        """Merge quantized projections that share an input, in place; counts per kind.

        The default leaves the modules as they are: a family without fused blocks.
        """
        return {}

    def prepare_for_inference(self, model) -> dict[str, int]:
        """Swap float blocks for their fused-kernel forms, in place; counts per kind.

        The default leaves the modules as they are (eager PyTorch plus the integer GEMMs).
        """
        return {}

    @abstractmethod
    def launch_probe(self, cfg: ModelConfig) -> LaunchProbe:
        """Return the stacks and runs `bench launches` counts (meta device, batch 1)."""

    def graphed(self, model, inputs: dict, noise: torch.Tensor):
        """Return a captured chunk for CUDA (only where `supports_cuda_graphs`)."""
        raise NotImplementedError(f"{self.name}: no CUDA-graph chunk")

    @abstractmethod
    def sample(self, model, batches: list[dict], observer=None) -> torch.Tensor:
        """Return every batch's actions [N, H, A] (model space, float32 on the CPU).

        Each batch holds its own noise; `observer` (quant.observe.LinearInputs) sees the runs.
        """

    def grad_chunk(self, model, batch: dict) -> torch.Tensor:
        """Return one batch's actions [B, H, A], differentiable in the model's activations.

        QVLA's first-order row errors (quant/sensitivity.py) backpropagate random probes
        through it with the weights frozen. Only where `supports_grad_chunk`; the default:
        this family offers no differentiable sampler, hence no first-order rows.
        """
        raise NotImplementedError(f"{self.name}: no differentiable sampler, so no first-order "
                                  "row errors (QVLA allocates whole layers)")

    # ---- ATM / OHB: the family gives its sites and its probe; the driver is shared ----------
    @abstractmethod
    def attention_sites(self, model, towers: tuple[str, ...]) -> list:
        """Return the balanced attentions (quant.balance.AttentionSite), staged in order."""

    @abstractmethod
    def balance_probe(self, teacher, student, batches: list[dict], towers: tuple[str, ...]):
        """Return the family's quant.balance.BalanceProbe (observer, caches) for the batches."""

    def calibrate_balance(self, teacher, student, batches: list[dict], cfg,
                          progress=None) -> dict:
        """Fold ATM / OHB into `student` in place; "alpha", "beta", "ratios" as recorded."""
        probe = self.balance_probe(teacher, student, batches, cfg.towers)
        if cfg.logit_std == "per_sample" and hasattr(probe, "per_sample"):
            probe.per_sample = True  # a probe measuring it only on request (pi)
        return balance.calibrate(probe, teacher, student,
                                 self.attention_sites(student, cfg.towers), cfg, progress)

    def unfold_balance(self, model, alpha: dict, beta: dict) -> None:
        """Undo folded ATM / OHB factors (the report compares with and without them)."""
        balance.unfold(self.attention_sites(model, self.balance_towers), alpha, beta)

    def balance_tables(self, teacher, student, unbalanced, batches: list[dict],
                       towers: tuple[str, ...]) -> dict:
        """Return the three models' actions and the report's per-site ratio tables."""
        probe = self.balance_probe(teacher, student, batches, towers)
        return balance.tables(probe, teacher, student, unbalanced)
