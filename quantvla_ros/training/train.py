"""Train a pi0.5 policy on recorded demonstrations; resumable; writes lerobot-format folders.

    python -m quantvla_ros.training.train --demos data/libero_object --model pi05-libero
        --out runs/pi05-libero --steps 6000 --batch 16

AdamW with linear warm-up and cosine decay (openpi's recipe: betas 0.9 / 0.95, gradient
clipping at 1.0, an exponential moving average of the weights, ``--ema`` 0.99, which is what
the checkpoint holds). Labels are the expert's clean actions by default (``--labels``; the
executed ones carry the recording noise). ``--state-dropout`` leaves the state out of that
fraction of prompts; ``--serve-prompt`` is the state prompt the checkpoint declares.
``--init-from`` starts from a checkpoint's weights with a fresh optimizer (and this run's
warm-up and statistics). ``--tokenizer`` takes a Hugging Face tokenizer folder (e.g. the
compact BPE of ``training.bpe``), copied into the checkpoint; ``--max-token-len`` sets the
prompt length; ``--stats-from`` keeps a checkpoint's normalization statistics instead of
recomputing them (fine-tuning on rollouts whose labels would widen them).

Every ``--save-every`` steps, ``OUT/checkpoint`` (EMA weights + quantile statistics,
loadable by every ``quantvla`` command) and ``OUT/train_state.pt`` (raw weights, optimizer,
step, random generators) are replaced atomically; a rerun with the same ``--out`` resumes
from there. ``OUT/loss.jsonl`` holds one line per logged step.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from quantvla_ros.data.atomic import folder_atomic, write_file_atomic
from quantvla_ros.models.build import random_model
from quantvla_ros.models.pi.checkpoint import (
    load_checkpoint,
    read_config,
    read_stats,
    save_checkpoint,
)
from quantvla_ros.models.pi.config import get_config
from quantvla_ros.models.pi.tokenizer import TOKENIZER_DIR, load_tokenizer
from quantvla_ros.training.batches import BatchMaker
from quantvla_ros.training.demos import load_demos
from quantvla_ros.training.flow_loss import flow_matching_loss

CHECKPOINT, STATE, LOSS_LOG, RUN_CONFIG = "checkpoint", "train_state.pt", "loss.jsonl", "run.json"


@dataclass
class RunConfig:
    """Everything that defines a run (saved in OUT/run.json; a resume must match it)."""

    demos: str
    model: str = "pi05-libero"
    exclude: str = ""  # file-name glob of held-out episodes
    steps: int = 6000
    batch: int = 16
    noise_samples: int = 4
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup: int = 300
    weight_decay: float = 1e-4
    shift: int = 4
    seed: int = 0
    threads: int = 2
    labels: str = "expert_action"  # or "action": the executed (noisy) action
    state_dropout: float = 0.0  # fraction of prompts without the state
    ema: float = 0.99  # weight EMA decay; 0 = the raw weights
    init_from: str = ""  # a checkpoint folder to start from (weights only)
    serve_prompt: str = "unpadded"  # the state prompt the checkpoint declares
    tokenizer: str = ""  # a Hugging Face tokenizer folder (training.bpe); "" = bytes
    max_token_len: int = 0  # prompt tokens; 0 = the named config's
    stats_from: str = ""  # a checkpoint whose statistics to keep; "" = from these demos
    action_clip: float = 0.0  # clip normalized action targets to +-this; 0 = no clip


def learning_rate(step: int, run: RunConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``min_lr`` at ``steps``."""
    if step < run.warmup:
        return run.lr * (step + 1) / run.warmup
    progress = min(1.0, (step - run.warmup) / max(1, run.steps - run.warmup))
    return run.min_lr + 0.5 * (run.lr - run.min_lr) * (1.0 + math.cos(math.pi * progress))


def _save(out: Path, model, ema_model, normalizer, optimizer, step: int, gens,
          tokenizer_dir: str) -> None:
    with folder_atomic(out / CHECKPOINT) as folder:
        save_checkpoint(ema_model, folder, normalizer)
        if tokenizer_dir:  # where Policy.load looks for the checkpoint's own tokenizer
            shutil.copytree(tokenizer_dir, Path(folder) / TOKENIZER_DIR)
    state = {"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "generators": [g.get_state() for g in gens],
             "numpy": np.random.get_state()}
    tmp = out / f".{STATE}.tmp"
    torch.save(state, tmp)
    write_file_atomic(out / STATE, tmp.read_bytes())
    tmp.unlink()


def train(run: RunConfig, out: Path, save_every: int = 250, log_every: int = 10,
          stop_at: int | None = None) -> Path:
    """Run (or resume) training; return the checkpoint folder.

    ``stop_at`` ends this invocation early (saving), as an interruption would; the schedule
    is still that of ``run.steps``.
    """
    torch.set_num_threads(run.threads)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / RUN_CONFIG
    if saved.exists() and json.loads(saved.read_text()) != asdict(run):
        raise SystemExit(f"{saved} holds a different run configuration; use another --out")
    write_file_atomic(saved, json.dumps(asdict(run), indent=2).encode())
    cfg = get_config(run.model).with_(state_prompt=run.serve_prompt)
    if run.max_token_len:
        cfg = cfg.with_(max_token_len=run.max_token_len)
    if not 0.0 <= run.ema < 1.0:
        raise SystemExit(f"--ema {run.ema}: expected a decay in [0, 1)")
    tokenizer = load_tokenizer(run.tokenizer or None)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise SystemExit(f"tokenizer {run.tokenizer} has {tokenizer.vocab_size} ids, the model "
                         f"{cfg.vocab_size} embedding rows")
    demos = load_demos(run.demos, exclude=run.exclude, labels=run.labels)
    # Rollout labels can widen the quantiles (saturated rotations took rx / ry from +-0.13
    # to +-1 in a DAgger round): keeping the demonstrations' statistics keeps the scale.
    normalizer = (read_stats(run.stats_from, read_config(run.stats_from)[0].variant)
                  if run.stats_from else demos.normalizer())
    maker = BatchMaker(demos, cfg, normalizer, tokenizer, shift=run.shift,
                       state_dropout=run.state_dropout, action_clip=run.action_clip)
    model = random_model(cfg, seed=run.seed).train()
    if run.init_from:
        _load_weights(model, Path(run.init_from))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": run.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}],
                                  lr=run.lr, betas=(0.9, 0.95), eps=1e-8)
    frame_gen, noise_gen = (torch.Generator().manual_seed(run.seed + k) for k in (1, 2))
    step = 0
    ema_model = copy.deepcopy(model).requires_grad_(False)
    ema_params, params = list(ema_model.parameters()), list(model.parameters())
    if (out / STATE).exists() and (out / CHECKPOINT).exists():
        _load_weights(ema_model, out / CHECKPOINT)
        state = torch.load(out / STATE, weights_only=False)
        # runs saved before the EMA kept their (raw) weights in the checkpoint only
        model.load_state_dict(state.get("model", ema_model.state_dict()))
        optimizer.load_state_dict(state["optimizer"])
        for g, s in zip((frame_gen, noise_gen), state["generators"], strict=True):
            g.set_state(s)
        step = state["step"]
        print(f"resumed at step {step}", flush=True)
    print(f"{run.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, "
          f"{demos.num_frames} frames from {len(demos.files)} episodes", flush=True)
    start, window = time.time(), []
    log = (out / LOSS_LOG).open("a")
    last = run.steps if stop_at is None else min(stop_at, run.steps)
    while step < last:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, run)
        frames = torch.randint(0, demos.num_frames, (run.batch,), generator=frame_gen).numpy()
        batch = maker.batch(frames, frame_gen)
        loss = flow_matching_loss(model, batch, noise_gen, run.noise_samples)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():  # ema += (1 - decay) * (weights - ema)
            torch._foreach_lerp_(ema_params, params, 1.0 - run.ema)
        step += 1
        window.append(float(loss.detach()))
        if step % log_every == 0 or step == run.steps:
            rate = (time.time() - start) / len(window) if step % log_every == 0 else 0.0
            log.write(json.dumps({"step": step, "loss": float(np.mean(window)),
                                  "lr": learning_rate(step - 1, run),
                                  "grad_norm": float(grad_norm)}) + "\n")
            log.flush()
            print(f"step {step}/{run.steps} loss {np.mean(window):.4f} "
                  f"lr {learning_rate(step - 1, run):.2e} {rate:.2f} s/step", flush=True)
            window, start = [], time.time()
        if step % save_every == 0 or step == last:
            _save(out, model, ema_model.eval(), normalizer, optimizer, step,
                  (frame_gen, noise_gen), run.tokenizer)
    log.close()
    return out / CHECKPOINT


def _load_weights(model, folder: Path) -> None:
    """Copy a checkpoint's weights into ``model`` (same architecture, else a clear exit)."""
    loaded, cfg, _ = load_checkpoint(folder)
    try:
        model.load_state_dict(loaded.state_dict())
    except RuntimeError as exc:
        raise SystemExit(f"{folder} ({cfg.name}) does not fit {model.cfg.name}: {exc}") from exc


def main(argv=None) -> int:
    """Parse the run configuration and train."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--save-every", type=int, default=250)
    defaults = RunConfig(demos="")
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value,
                            required=name == "demos")
    args = vars(parser.parse_args(argv))
    out, save_every = args.pop("out"), args.pop("save_every")
    print(train(RunConfig(**args), out, save_every), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
