"""DAgger on LIBERO: roll the policy out, let the scripted expert label the states it visits.

Behaviour cloning only sees states near the expert's path; a policy that drifts off it meets
states nobody labelled. One DAgger round runs the policy in closed loop from fresh random
placements (never the evaluation init states), asks the expert's memoryless labeller
(``LiberoObjectExpert.label``: the action for the current state alone, no phase memory) at
every step, and stores the episode in the recorder's format, so the union of demonstrations
and rollouts trains the next policy (``--labels expert_action``).

Per episode: the policy replans every ``actions_per_chunk`` steps, as in the evaluation; the
cameras render only on the step before each replan, and those are the episode's frames. With
probability ``beta`` a chunk executes the expert's labels instead of the policy's actions
(classic DAgger's mixture; 0 = the policy alone). Failed rollouts are kept: their states are
the point. The file marks itself ``labelled`` so ``training.demos.load_demos`` keeps it.
"""

from __future__ import annotations

import numpy as np
import torch

from quantvla_ros.sim.client import LiberoClient
from quantvla_ros.sim.libero_env import MAX_STEPS
from quantvla_ros.workflows.libero_eval import SIM_VIEWS, to_observation


def dagger_episode(policy, sim: LiberoClient, suite: str, task: int, seed: int,
                   resolution: int, actions_per_chunk: int = 5, beta: float = 0.0,
                   settle: int = 10, max_steps: int | None = None) -> dict:
    """Run one labelled rollout; return its arrays in the recorder's format."""
    cameras = dict(zip(SIM_VIEWS, policy.cfg.cameras, strict=False))
    obs = sim.reset(suite, task, seed=seed, resolution=resolution, settle=settle)
    rng = np.random.default_rng(seed + 11)
    gen = torch.Generator().manual_seed(seed)
    shape = (1, policy.cfg.action_horizon, policy.cfg.action_dim)
    frames = {"agentview": [], "wrist": [], "image_step": [], "state": [], "action": [],
              "expert_action": []}
    limit = MAX_STEPS[suite] if max_steps is None else max_steps
    steps, expert_chunks = 0, 0
    while steps < limit and not obs["done"]:
        frames["agentview"].append(obs["agentview"])
        frames["wrist"].append(obs["wrist"])
        frames["image_step"].append(steps)
        chunk = policy.infer(to_observation(obs, cameras),
                             noise=torch.randn(shape, generator=gen)).actions
        use_expert = bool(rng.random() < beta)
        expert_chunks += use_expert
        todo = min(actions_per_chunk, len(chunk), limit - steps)
        for j in range(todo):
            label = np.asarray(sim.expert_label(), np.float32)
            action = label if use_expert else np.clip(chunk[j], -1.0, 1.0).astype(np.float32)
            frames["state"].append(np.asarray(obs["state"], np.float32))
            frames["action"].append(action)
            frames["expert_action"].append(label)
            obs = sim.step(action, render=j == todo - 1)
            steps += 1
            if obs["done"]:
                break
    out = {k: np.stack(v) for k, v in frames.items()}
    out.update(instruction=np.str_(obs["instruction"]), suite=np.str_(suite),
               task=np.int64(task), seed=np.int64(seed), steps=np.int64(steps),
               success=np.bool_(obs["done"]), labelled=np.bool_(True),
               expert_chunks=np.int64(expert_chunks), policy=np.str_(policy.source))
    return out
