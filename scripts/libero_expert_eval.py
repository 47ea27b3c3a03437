"""Measure the scripted libero_object expert: success and wall time, without cameras.

Runs in the LIBERO environment (``make libero``), with this repository on PYTHONPATH:

    LIBERO_CONFIG_PATH=.venv-libero/libero-config MUJOCO_GL=egl PYOPENGL_PLATFORM=egl \
    PYTHONPATH=. .venv-libero/bin/python scripts/libero_expert_eval.py --fresh 2 --inits 0,1

``--fresh N``: N fresh random placements per task (seeds ``--seed-base + 1000 * task + i``);
``--inits``: fixed evaluation init states per task. Each episode: 10 settle steps, then up to
the suite's step limit (280 for libero_object). Prints one line per episode and a summary.
"""

import argparse
import json
import sys
import time

from quantvla_ros.sim.libero_env import MAX_STEPS, SETTLE_ACTION, LiberoTask
from quantvla_ros.sim.libero_expert import LiberoObjectExpert


def run(task: LiberoTask, expert: LiberoObjectExpert, max_steps: int) -> tuple[bool, int]:
    """Settle, then let the expert act; return (success, steps)."""
    for _ in range(10):
        task.step(SETTLE_ACTION)
    expert.reset()
    for step in range(1, max_steps + 1):
        _, done = task.step(expert.act())
        if done:
            return True, step
    return False, max_steps


def main(argv=None) -> int:
    """Parse arguments, run the episodes, print the summary (and JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="libero_object")
    parser.add_argument("--tasks", default="", help="comma-separated task indices (all)")
    parser.add_argument("--fresh", type=int, default=2)
    parser.add_argument("--inits", default="", help="comma-separated fixed init indices")
    parser.add_argument("--seed-base", type=int, default=5_000_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    tasks = [int(t) for t in args.tasks.split(",")] if args.tasks else list(range(10))
    inits = [int(i) for i in args.inits.split(",")] if args.inits else []
    results = {"fresh": [], "fixed": []}
    start = time.time()
    for t in tasks:
        task = LiberoTask(args.suite, t, 0)
        expert = LiberoObjectExpert(task)
        episodes = [("fresh", i) for i in range(args.fresh)] + [("fixed", i) for i in inits]
        for kind, i in episodes:
            t0 = time.time()
            if kind == "fresh":
                task.reset_fresh(args.seed_base + 1000 * t + i)
            else:
                task.reset_fixed(i)
            ok, steps = run(task, expert, MAX_STEPS[args.suite])
            results[kind].append({"task": t, "index": i, "success": ok, "steps": steps,
                                  "retries": expert.attempts, "s": time.time() - t0})
            print(f"task {t} {kind} {i}: success={ok} steps={steps} retries={expert.attempts}"
                  f" {time.time() - t0:.1f} s", flush=True)
        task.close()
    summary = {k: {"success": sum(r["success"] for r in v), "n": len(v)}
               for k, v in results.items()}
    summary["wall_s"] = time.time() - start
    n = sum(len(v) for v in results.values())
    summary["s_per_episode"] = summary["wall_s"] / max(n, 1)
    print(json.dumps(summary if not args.json else {**summary, **results}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
