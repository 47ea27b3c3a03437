"""Record one DAgger round: the policy's rollouts on LIBERO, labelled by the scripted expert.

Runs in the project's environment (``.venv``; the simulator runs in ``.venv-libero`` behind
``quantvla_ros.sim.client``):

    .venv/bin/python scripts/record_libero_dagger.py --policy runs/x/checkpoint \
        --out data/dagger_r1 --episodes 10 --seed-base 3000000

Every episode starts from a FRESH placement (seed ``seed_base + 1000 * task + episode``),
never the suite's fixed evaluation init states. One file per episode,
``OUT/task{T:02d}_dagger{E:04d}.npz``, in the recorder's format
(``scripts/record_libero_demos.py``) plus ``labelled`` (true), ``policy`` (its source) and
``expert_chunks``; ``action`` is what was executed, ``expert_action`` the expert's label.
Resumable: episodes whose file exists are skipped; tasks go round-robin.

``--takeover``: the policy drives until it goes off course (gripper closed on nothing, hand
tilted) or a random step, then the expert's labeller drives to the end; only the expert part
is kept (``takeover_episode``), as ``OUT/task{T:02d}_takeover{E:04d}.npz``, images every
``--image-every`` steps. An episode the policy solves first leaves ``...npz.solved``.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from quantvla_ros.runtime.policy import Policy
from quantvla_ros.sim.client import LiberoClient
from quantvla_ros.workflows.libero_dagger import dagger_episode, takeover_episode


def main(argv=None) -> int:
    """Parse arguments and record the missing rollouts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", required=True, help="a checkpoint or artifact folder")
    parser.add_argument("--suite", default="libero_object")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--episodes", type=int, default=10, help="rollouts per task")
    parser.add_argument("--tasks", default="", help="comma-separated task indices (all)")
    parser.add_argument("--beta", type=float, default=0.0,
                        help="probability that a chunk executes the expert's labels")
    parser.add_argument("--actions-per-chunk", type=int, default=5)
    parser.add_argument("--seed-base", type=int, default=3_000_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--takeover", action="store_true",
                        help="record expert takeovers from the policy's states instead")
    parser.add_argument("--image-every", type=int, default=4, help="(--takeover)")
    parser.add_argument("--latest", type=int, default=300,
                        help="(--takeover) the random takeover step is below this")
    args = parser.parse_args(argv)
    if args.suite != "libero_object":
        parser.error("the scripted expert handles libero_object only")
    torch.set_num_threads(args.threads)
    policy = Policy.load(args.policy)
    resolution = policy.cfg.vision.image_size
    args.out.mkdir(parents=True, exist_ok=True)
    tasks = [int(t) for t in args.tasks.split(",")] if args.tasks else list(range(10))
    recorded = 0
    with LiberoClient() as sim:
        for episode in range(args.episodes):
            for t in tasks:
                kind = "takeover" if args.takeover else "dagger"
                path = args.out / f"task{t:02d}_{kind}{episode:04d}.npz"
                solved = path.with_name(path.name + ".solved")
                if path.exists() or solved.exists():
                    continue
                seed = args.seed_base + 1000 * t + episode
                start = time.time()
                if args.takeover:
                    data = takeover_episode(policy, sim, args.suite, t, seed, resolution,
                                            args.image_every, args.actions_per_chunk,
                                            args.latest)
                else:
                    data = dagger_episode(policy, sim, args.suite, t, seed, resolution,
                                          args.actions_per_chunk, args.beta)
                recorded += 1
                if "action" not in data:
                    solved.touch()
                    print(f"task {t} ep {episode} seed {seed}: solved by the policy "
                          f"{time.time() - start:.1f} s", flush=True)
                    continue
                tmp = path.with_name(path.stem + ".tmp.npz")
                np.savez_compressed(tmp, **data)
                os.replace(tmp, path)
                agree = float(np.mean(np.abs(data["action"] - data["expert_action"])))
                extra = (f"takeover at {int(data['takeover'])} ({data['takeover_reason']})"
                         if args.takeover else f"|policy - expert| {agree:.3f}")
                print(f"task {t} ep {episode} seed {seed}: success={bool(data['success'])} "
                      f"steps={int(data['steps'])} {extra} {time.time() - start:.1f} s",
                      flush=True)
    print(f"recorded {recorded} rollouts into {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
