"""Write a trained checkpoint's card (README.md) and loss curve (loss_curve.png).

    .venv/bin/python scripts/checkpoint_card.py --run runs/pi05-libero \\
        --dest checkpoints/pi05-libero-object

Copies ``RUN/checkpoint`` to ``DEST`` (config.json, model.safetensors, statistics), draws the
loss curve from ``RUN/loss.jsonl`` and writes the card from ``RUN/run.json`` plus the
demonstration folder's contents. Numbers on the card are read from the run's files.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    """Copy the checkpoint and write its card."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--dest", type=Path, required=True)
    parser.add_argument("--notes", default="", help="extra markdown appended to the card")
    args = parser.parse_args(argv)
    run = json.loads((args.run / "run.json").read_text())
    log = [json.loads(line) for line in (args.run / "loss.jsonl").read_text().splitlines()]
    if args.dest.exists():
        shutil.rmtree(args.dest)
    shutil.copytree(args.run / "checkpoint", args.dest)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in log])
    loss = np.array([r["loss"] for r in log])
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(steps, loss, lw=0.8, alpha=0.5, label="per 10 steps")
    if len(loss) >= 20:
        k = 20
        ax.plot(steps[k - 1:], np.convolve(loss, np.ones(k) / k, "valid"), lw=1.5,
                label=f"mean of {k}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.dest / "loss_curve.png", dpi=110)
    plt.close(fig)

    demos = sorted(p for folder in run["demos"].split(",") for p in Path(folder).glob("*.npz"))
    held = [p for p in demos if run.get("exclude") and p.match(run["exclude"])]
    tokenizer = ("a compact BPE (`tokenizer/`, `quantvla_ros.training.bpe`)"
                 if run.get("tokenizer")
                 else "byte tokenizer")
    start = (f"continued from `{run['init_from']}` (weights only, fresh optimizer)"
             if run.get("init_from") else "trained from scratch")
    cfg = json.loads((args.dest / "config.json").read_text())["quantvla"]
    size = sum(f.stat().st_size for f in args.dest.rglob("*") if f.is_file())
    command = ("PYTHONPATH=. .venv/bin/python -m quantvla_ros.training.train --out RUN "
               + " ".join(f"--{k.replace('_', '-')} '{v}'" for k, v in run.items()))
    card = f"""# {cfg['name']}: a pi0.5-architecture policy trained here on LIBERO-Object

{start[0].upper() + start[1:]} on a 2-core CPU by `quantvla_ros.training` on
scripted-expert demonstrations recorded with `scripts/record_libero_demos.py` (fresh random
placements, never the 50 fixed evaluation init states; Gaussian noise on the executed pose
actions).

- Data: {len(demos) - len(held)} training episodes of `{run['demos']}`; {len(held)} held out
  (`{run.get('exclude')}`) for calibration and offline metrics. Labels:
  `{run.get('labels', 'action')}`.
- Steps: {int(steps[-1])} at batch {run['batch']} x {run['noise_samples']} noise draws per
  frame; AdamW (lr {run['lr']}, warm-up {run['warmup']}, cosine to {run['min_lr']}, weight
  decay {run['weight_decay']}), image shift augmentation {run['shift']} px; weight EMA
  {run.get('ema', 0.0)} (the weights here are the EMA's); state left out of
  {run.get('state_dropout', 0.0):.0%} of the prompts; declared state prompt
  `{cfg.get('state_prompt')}`.
- Final loss (mean of the last 10 logged points): {loss[-10:].mean():.4f}.
- Model: vision {cfg['vision']['depth']} x {cfg['vision']['width']} at
  {cfg['vision']['image_size']} px / patch {cfg['vision']['patch_size']}; backbone
  {cfg['backbone']['depth']} x {cfg['backbone']['width']} (MLP {cfg['backbone']['mlp_dim']});
  expert {cfg['expert']['depth']} x {cfg['expert']['width']} (MLP {cfg['expert']['mlp_dim']});
  horizon {cfg['action_horizon']}, {cfg['num_steps']} denoising steps; {tokenizer}
  (`max_token_len` {cfg['max_token_len']}). Folder size {size / 1e6:.1f} MB.
- Cameras: `base_0_rgb` = LIBERO agentview, `left_wrist_0_rgb` = eye-in-hand, both rotated
  by 180 degrees; state: eef position, axis-angle, gripper qpos (8); action: 7.

![loss](loss_curve.png)

Reproduce (about the same wall time on 2 cores; resumable):

    make libero
    <record the demonstrations as in scripts/record_libero_demos.py's docstring>
    {command}

{args.notes}
"""
    (args.dest / "README.md").write_text(card)
    print(f"wrote {args.dest} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
