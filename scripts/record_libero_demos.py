"""Record scripted-expert demonstrations on LIBERO from fresh random placements.

Runs in the LIBERO environment (``make libero``), with this repository on PYTHONPATH:

    LIBERO_CONFIG_PATH=.venv-libero/libero-config MUJOCO_GL=egl PYOPENGL_PLATFORM=egl \
    PYTHONPATH=. .venv-libero/bin/python scripts/record_libero_demos.py \
        --suite libero_object --out data/libero_object --episodes 50 --resolution 128

Every episode starts from a FRESH placement (``env.reset()`` with seed
``seed_base + 1000 * task + episode``), never from the suite's fixed evaluation init
states, then 10 settle steps of ``[0]*6 + [-1]`` (not recorded). The expert acts in closed
loop; Gaussian noise (``--noise``, action units, on the six pose dimensions) is added to what
is executed, so the data shows recoveries. One file per episode,
``OUT/task{T:02d}_ep{E:04d}.npz`` (compressed; written to a temporary name, then renamed):

- ``agentview``, ``wrist``: uint8 (F, R, R, 3), rotated 180 degrees as the policy sees them,
  at the steps ``image_step`` (int, F): every ``--image-every``-th step (cameras render only
  there, which is most of a step's cost; see ``LiberoTask.set_rendering``)
- ``state``: float32 (T, 8) eef pos, eef axis-angle, gripper qpos, before each action
- ``action``: float32 (T, 7) the executed (noisy) action; ``expert_action``: the clean one
- ``instruction``, ``suite``: str; ``task``, ``seed``, ``steps``: int; ``success``: bool

``--miss P``: with probability P an episode's first grasp is aimed 1.5-3.5 cm off the object
(a random direction), the miss a trained policy makes; the expert's own retry (the object did
not rise) then re-plans from the object's pose. Such an episode keeps images only from the
retry on, so the frames that train show the recovery and never the deliberate miss; it adds
``missed`` (true) and counts as a success only if the retry happened and succeeded.
Resumable: episodes whose file exists are skipped. Episodes go round-robin over tasks, so a
partial run covers every task. A summary line per episode goes to stdout.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from quantvla_ros.sim.libero_env import (
    MAX_STEPS,
    SETTLE_ACTION,
    LiberoTask,
    libero_state,
    policy_images,
)
from quantvla_ros.sim.libero_expert import LiberoObjectExpert

MISS_RANGE_M = (0.015, 0.035)  # the policy closes 2-3 cm from the grasp point


def record_episode(task: LiberoTask, expert, seed: int, noise: float, max_steps: int,
                   image_every: int = 1, miss: float = 0.0) -> dict:
    """Run one noisy expert episode from a fresh placement; return its arrays."""
    rng = np.random.default_rng(seed + 7)
    missed = bool(np.random.default_rng(seed + 8).random() < miss)
    obs = task.reset_fresh(seed)
    for k in range(10):
        obs, _ = task.step(SETTLE_ACTION, render=k == 9)
    expert.reset()
    if missed:
        angle = rng.uniform(0.0, 2 * np.pi)
        expert.grasp_xy = expert.grasp_xy + rng.uniform(*MISS_RANGE_M) * np.array(
            [np.cos(angle), np.sin(angle)])
    frames = {"agentview": [], "wrist": [], "image_step": [], "state": [], "action": [],
              "expert_action": []}
    done = False
    for t in range(max_steps):
        clean = expert.act(obs).astype(np.float32)
        action = clean.copy()
        action[:6] = np.clip(action[:6] + rng.normal(0.0, noise, 6), -1.0, 1.0)
        images = policy_images(obs)
        if images and (not missed or expert.attempts > 0):
            frames["agentview"].append(images["agentview"])
            frames["wrist"].append(images["wrist"])
            frames["image_step"].append(t)
        frames["state"].append(libero_state(obs))
        frames["action"].append(action)
        frames["expert_action"].append(clean)
        obs, done = task.step(action, render=(t + 1) % image_every == 0)
        if done:
            break
    size = task.resolution  # a miss that still held the object keeps no frames at all
    out = {k: np.stack(v) if v else np.zeros((0, size, size, 3), np.uint8)
           for k, v in frames.items() if k != "image_step"}
    out["image_step"] = np.asarray(frames["image_step"], np.int64)
    success = done and (not missed or expert.attempts > 0)
    out.update(instruction=np.str_(task.task.language), suite=np.str_(task.suite_name),
               task=np.int64(task.task.index), seed=np.int64(seed),
               steps=np.int64(len(frames["action"])), success=np.bool_(success),
               missed=np.bool_(missed))
    return out


def main(argv=None) -> int:
    """Parse arguments and record the missing episodes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="libero_object")
    parser.add_argument("--out", type=Path, default=Path("data/libero_object"))
    parser.add_argument("--episodes", type=int, default=50, help="episodes per task")
    parser.add_argument("--tasks", default="", help="comma-separated task indices (all)")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--image-every", type=int, default=1,
                        help="render the cameras every N-th step only (state/action: all)")
    parser.add_argument("--seed-base", type=int, default=1_000_000)
    parser.add_argument("--miss", type=float, default=0.0,
                        help="probability that the first grasp is aimed off the object")
    args = parser.parse_args(argv)
    if args.suite != "libero_object":
        parser.error("the scripted expert handles libero_object only")
    args.out.mkdir(parents=True, exist_ok=True)
    tasks = ([int(t) for t in args.tasks.split(",")] if args.tasks else list(range(10)))
    envs: dict[int, tuple[LiberoTask, LiberoObjectExpert]] = {}
    done_count = 0
    for episode in range(args.episodes):
        for t in tasks:
            path = args.out / f"task{t:02d}_ep{episode:04d}.npz"
            if path.exists():
                continue
            if t not in envs:
                task = LiberoTask(args.suite, t, args.resolution)
                envs[t] = (task, LiberoObjectExpert(task))
            task, expert = envs[t]
            seed = args.seed_base + 1000 * t + episode
            start = time.time()
            data = record_episode(task, expert, seed, args.noise, MAX_STEPS[args.suite],
                                  args.image_every, args.miss)
            tmp = path.with_name(path.stem + ".tmp.npz")
            np.savez_compressed(tmp, **data)
            os.replace(tmp, path)
            done_count += 1
            print(f"task {t} ep {episode} seed {seed}: success={bool(data['success'])} "
                  f"missed={bool(data['missed'])} frames={len(data['image_step'])} "
                  f"steps={int(data['steps'])} {time.time() - start:.1f} s "
                  f"{path.stat().st_size / 1e6:.1f} MB", flush=True)
    for task, _ in envs.values():
        task.close()
    print(f"recorded {done_count} episodes into {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
