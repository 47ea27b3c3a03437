"""Does the policy look at the scene? Action changes under swapped images, state and noise.

    python -m quantvla_ros.training.sensitivity --checkpoint runs/x/checkpoint \
        --demos data/libero_object --include '*_ep0000.npz' --frames 30

For held-out demonstration frames, the policy's first ``--steps`` actions (action units) are
compared with those it gives when one input is replaced:

- ``noise``: another draw of the denoising noise (the policy's own spread);
- ``state``: the state of another episode of the same task, at the nearest step;
- ``images``: both views of that other episode (another object placement and arm pose);
- ``black``: both views all black (is the vision pathway used at all?).

A policy that copies its state (shared/LIBERO-REVIEW.md, section 1.2) moves less under an
image swap than under re-drawn noise, and 3-6x more under a state swap; one that localizes
the object moves at least as much under the image swap as under the state swap. The mean
absolute change per action dimension is reported, and ``image_vs_state`` (the image swap's
mean change over the position dimensions divided by the state swap's) is the gate to read
before a long training run.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from quantvla_ros.data.observation import Observation
from quantvla_ros.models.pi.config import STATE_PROMPTS
from quantvla_ros.runtime.policy import Policy
from quantvla_ros.training.demos import DemoSet, load_demos

PERTURBATIONS = ("noise", "state", "images", "black")
POSITION_DIMS = slice(0, 3)


def partner_frame(demos: DemoSet, frame: int) -> int | None:
    """Return the frame of another episode with the same instruction at the nearest step.

    The partner episode is the next one (cyclically, by file order) with the same
    instruction; None when the frame's episode is the only one of its task.
    """
    episode = int(demos.frame_episode(np.array([frame]))[0])
    same = [e for e in range(len(demos.instructions))
            if demos.instructions[e] == demos.instructions[episode] and e != episode]
    if not same:
        return None
    other = min(same, key=lambda e: (e - episode) % len(demos.instructions))
    offset = demos.frame_step[frame] - demos.episode_start[episode]
    frames = np.flatnonzero(demos.frame_episode(np.arange(demos.num_frames)) == other)
    steps = demos.frame_step[frames] - demos.episode_start[other]
    return int(frames[np.argmin(np.abs(steps - offset))])


def observation(demos: DemoSet, frame: int, cameras: tuple[str, ...], views=("agentview",
                "wrist")) -> Observation:
    """Return the frame as the Policy sees it (views onto the first camera slots)."""
    images = {slot: demos.views[v][frame] for v, slot in zip(views, cameras, strict=False)}
    episode = int(demos.frame_episode(np.array([frame]))[0])
    return Observation(images=images, state=demos.state[demos.frame_step[frame]],
                       instruction=demos.instructions[episode])


def measure(policy: Policy, demos: DemoSet, frames: int = 30, steps: int = 5,
            seed: int = 0) -> dict:
    """Return the mean |change| per action dimension of each perturbation, and the gate."""
    rng = np.random.default_rng(seed)
    candidates = [f for f in range(demos.num_frames) if partner_frame(demos, f) is not None]
    if not candidates:
        raise ValueError("sensitivity needs at least two episodes of one task")
    chosen = rng.choice(candidates, size=min(frames, len(candidates)), replace=False)
    shape = (1, policy.cfg.action_horizon, policy.cfg.action_dim)
    deltas = {p: [] for p in PERTURBATIONS}
    cams = policy.cfg.cameras
    for k, frame in enumerate(chosen):
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed + k))
        other_noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed + k + 10**6))
        obs = observation(demos, int(frame), cams)
        partner = observation(demos, partner_frame(demos, int(frame)), cams)
        base = policy.infer(obs, noise=noise).actions[:steps]
        variants = {
            "noise": (obs, other_noise),
            "state": (Observation(obs.images, partner.state, obs.instruction), noise),
            "images": (Observation(partner.images, obs.state, obs.instruction), noise),
            "black": (Observation({s: np.zeros_like(i) for s, i in obs.images.items()},
                                  obs.state, obs.instruction), noise),
        }
        for name, (o, n) in variants.items():
            deltas[name].append(np.abs(policy.infer(o, noise=n).actions[:steps] - base))
    mean = {name: np.concatenate(d).mean(0) for name, d in deltas.items()}
    state_pos = float(mean["state"][POSITION_DIMS].mean())
    return {
        "frames": len(chosen), "steps": steps, "state_prompt": policy.option("state_prompt"),
        "mean_abs_change": {name: [round(float(x), 4) for x in v] for name, v in mean.items()},
        "image_vs_state": (float(mean["images"][POSITION_DIMS].mean()) / state_pos
                           if state_pos > 0 else float("inf")),
        "image_vs_noise": float(mean["images"][POSITION_DIMS].mean()
                                / max(float(mean["noise"][POSITION_DIMS].mean()), 1e-12)),
    }


def format_table(result: dict) -> str:
    """Return the per-dimension table as text."""
    lines = [f"{result['frames']} frames, first {result['steps']} actions, state prompt "
             f"{result['state_prompt']}; mean |change| per action dimension"]
    for name, values in result["mean_abs_change"].items():
        lines.append(f"  {name:<7}" + " ".join(f"{v:7.4f}" for v in values))
    lines.append(f"  image swap / state swap (position dims): {result['image_vs_state']:.2f}; "
                 f"image swap / noise: {result['image_vs_noise']:.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Load the policy and the held-out frames; print the table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint or artifact folder")
    parser.add_argument("--demos", required=True, help="a demonstration folder")
    parser.add_argument("--include", default="*_ep0000.npz",
                        help="file-name glob of the held-out episodes to probe")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--steps", type=int, default=5, help="actions compared per chunk")
    parser.add_argument("--state-prompt", choices=STATE_PROMPTS,
                        help="override what the checkpoint declares")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    policy = Policy.load(args.checkpoint, state_prompt=args.state_prompt)
    demos = load_demos(args.demos, include=args.include)
    result = measure(policy, demos, args.frames, args.steps, args.seed)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
