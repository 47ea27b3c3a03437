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


# ---- expert takeover (recovery demonstrations) ------------------------------------------------
CLOSED_ON_NOTHING = 0.004   # finger opening (m) below which the gripper holds nothing
TILT_LIMIT_DEG = 8.0        # demonstrations stay within 3.4 degrees of a vertical hand


def hand_tilt_deg(state: np.ndarray) -> float:
    """Angle between the hand's approach axis and the vertical, from the 8-dim LIBERO state."""
    rotvec = np.asarray(state[3:6], np.float64)
    angle = float(np.linalg.norm(rotvec))
    if angle < 1e-9:
        return 0.0
    k = rotvec / angle
    # R[2, 2] of the axis-angle rotation (Rodrigues): cos + (1 - cos) k_z^2
    r22 = np.cos(angle) + (1.0 - np.cos(angle)) * k[2] ** 2
    return float(np.degrees(np.arccos(np.clip(abs(r22), 0.0, 1.0))))


def off_course(state: np.ndarray) -> str:
    """Name the sign of a rollout gone wrong in ``state`` ('' when none)."""
    if float(state[6] - state[7]) < CLOSED_ON_NOTHING:
        return "closed on nothing"
    if hand_tilt_deg(state) > TILT_LIMIT_DEG:
        return "hand tilted"
    return ""


def takeover_episode(policy, sim: LiberoClient, suite: str, task: int, seed: int,
                     resolution: int, image_every: int = 4, actions_per_chunk: int = 5,
                     latest: int = 300, settle: int = 10, max_steps: int | None = None) -> dict:
    """Run the policy until it goes off course, then let the expert finish; keep the expert part.

    Per-step labels along the policy's own path (:func:`dagger_episode`) make a target chunk
    of ten labels the expert would never execute in a row (a saturated "rotate back" after a
    missed grasp). Here the expert's memoryless labeller *drives* from the takeover on, so
    every recorded chunk is a plan the expert executed, starting from a state the policy
    reached. Takeover: the first off-course sign (:func:`off_course`) or a random step in
    ``[0, latest)``, whichever comes first. Images are kept every ``image_every`` steps of the
    expert part, as the recorder does; ``takeover`` records the step and ``takeover_reason``
    why. An episode the policy solves before any takeover comes back with no frames.
    """
    cameras = dict(zip(SIM_VIEWS, policy.cfg.cameras, strict=False))
    obs = sim.reset(suite, task, seed=seed, resolution=resolution, settle=settle)
    rng = np.random.default_rng(seed + 13)
    gen = torch.Generator().manual_seed(seed)
    shape = (1, policy.cfg.action_horizon, policy.cfg.action_dim)
    limit = MAX_STEPS[suite] if max_steps is None else max_steps
    deadline, steps, reason, sign = int(rng.integers(0, latest)), 0, "random step", ""
    while steps < min(deadline, limit) and not obs["done"] and not sign:
        chunk = policy.infer(to_observation(obs, cameras),
                             noise=torch.randn(shape, generator=gen)).actions
        todo = min(actions_per_chunk, len(chunk), deadline - steps, limit - steps)
        for j in range(todo):
            obs = sim.step(np.clip(chunk[j], -1.0, 1.0), render=j == todo - 1)
            steps += 1
            sign = off_course(obs["state"])
            if sign or obs["done"]:
                break
    reason = sign or reason
    policy_solved = bool(obs["done"])
    if not policy_solved and steps < limit and "agentview" not in obs:
        # the policy's last step did not render: the expert's first step does, unrecorded
        obs = sim.step(np.asarray(sim.expert_label(), np.float32), render=True)
        steps += 1
    start = steps
    frames = {"agentview": [], "wrist": [], "image_step": [], "state": [], "action": []}
    while not policy_solved and steps < limit and not obs["done"]:
        if (steps - start) % image_every == 0:
            frames["agentview"].append(obs["agentview"])
            frames["wrist"].append(obs["wrist"])
            frames["image_step"].append(steps - start)
        label = np.asarray(sim.expert_label(), np.float32)
        frames["state"].append(np.asarray(obs["state"], np.float32))
        frames["action"].append(label)
        obs = sim.step(label, render=(steps - start) % image_every == image_every - 1)
        steps += 1
    out = {k: np.stack(v) for k, v in frames.items() if v}
    if "action" in out:
        out["expert_action"] = out["action"]
    # not ``labelled``: like a demonstration, a takeover the expert fails is left out of training
    out.update(instruction=np.str_(obs["instruction"]), suite=np.str_(suite),
               task=np.int64(task), seed=np.int64(seed), steps=np.int64(steps - start),
               success=np.bool_(obs["done"] and not policy_solved),
               takeover=np.int64(start), takeover_reason=np.str_(reason),
               policy_solved=np.bool_(policy_solved), policy=np.str_(policy.source))
    return out
