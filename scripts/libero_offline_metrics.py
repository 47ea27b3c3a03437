"""Offline action errors on held-out demonstration frames: vs the float policy and the expert.

    PYTHONPATH=. .venv/bin/python scripts/libero_offline_metrics.py --demos data/libero_object \\
        --include '*_ep0001.npz' --policy checkpoints/pi05-libero-object --policy ART ... \\
        --json reports/offline.json

Every policy gets the same frames and the same denoising noise per frame. The first policy is
the reference ("float"): for each other one the error relative to the float policy's
displacement (``workflows.action_metrics.robot_space_error``) and in action units. Against
the expert: RMS, in action units, of the policy's chunk minus the scripted expert's clean
actions (``expert_action``) over the first ``--steps`` steps (5: what the evaluation executes).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from quantvla_ros.data.observation import Observation
from quantvla_ros.runtime.policy import Policy
from quantvla_ros.workflows.action_metrics import robot_space_error

SLOTS = {"agentview": "base_0_rgb", "wrist": "left_wrist_0_rgb"}


def frames_of(folder: Path, include: str, per_episode: int, steps: int):
    """Yield (observation, expert chunk [steps, 7]) spread over each held-out episode."""
    for path in sorted(folder.glob(include)):
        with np.load(path) as ep:
            image_step = ep["image_step"] if "image_step" in ep else np.arange(len(ep["state"]))
            usable = np.flatnonzero(image_step + steps <= len(ep["state"]))
            for k in usable[np.linspace(0, len(usable) - 1, per_episode).round().astype(int)]:
                t = int(image_step[k])
                obs = Observation(images={s: ep[v][k] for v, s in SLOTS.items()},
                                  state=ep["state"][t], instruction=str(ep["instruction"]))
                yield obs, ep["expert_action"][t:t + steps]


def main(argv=None) -> int:
    """Run every policy on the frames; print and optionally save the error table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demos", type=Path, required=True)
    parser.add_argument("--include", required=True)
    parser.add_argument("--policy", action="append", required=True)
    parser.add_argument("--per-episode", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    policies = {Path(p).name: Policy.load(p) for p in args.policy}
    data = list(frames_of(args.demos, args.include, args.per_episode, args.steps))
    chunks = {name: [] for name in policies}
    noises = []
    for i, (obs, _) in enumerate(data):
        first = next(iter(policies.values()))
        noise = torch.randn((1, first.cfg.action_horizon, first.cfg.action_dim),
                            generator=torch.Generator().manual_seed(args.seed + i))
        noises.append(noise[0].numpy())
        for name, policy in policies.items():
            chunks[name].append(policy.infer(obs, noise=noise).actions)
    expert = np.stack([e for _, e in data])
    reference = next(iter(policies))
    normalizer = policies[reference].normalizer
    rows = []
    for name in policies:
        got = np.stack(chunks[name])
        row = {"policy": name, "frames": len(data),
               "expert_rms": float(np.sqrt(((got[:, :args.steps] - expert) ** 2).mean())),
               "expert_rms_per_dim": np.sqrt(((got[:, :args.steps] - expert) ** 2)
                                             .reshape(-1, expert.shape[-1]).mean(0)).tolist()}
        if name != reference:
            err = robot_space_error(np.stack(chunks[reference]), got, np.stack(noises),
                                    normalizer)
            row.update(vs_float_rel_l2_vs_displacement=err["rel_l2_vs_displacement"],
                       vs_float_sqnr_db=err["sqnr_db"], vs_float_robot_rms=err["robot_rms"])
        rows.append(row)
    print("| policy | frames | rms vs expert (5 steps) | rel. error vs float displacement "
          "| SQNR dB | rms vs float |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        rel = r.get("vs_float_rel_l2_vs_displacement")
        print(f"| {r['policy']} | {r['frames']} | {r['expert_rms']:.4f} | "
              + (f"{rel:.4f} | {r['vs_float_sqnr_db']:.1f} | {r['vs_float_robot_rms']:.4f} |"
                 if rel is not None else "- | - | - |"))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
