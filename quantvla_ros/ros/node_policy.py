"""quantvla_node's model at configure: load the policy, check it, warm it up.

The checks compare the policy with the robot's parameters (cameras, joints, action names,
chunk length); nothing here creates ROS entities.
"""

from __future__ import annotations

import numpy as np
import torch

from quantvla_ros.data.observation import Observation, ObservationError
from quantvla_ros.ros.noise import policy_noise
from quantvla_ros.ros.settings import InferenceSettings
from quantvla_ros.runtime.policy import Policy
from quantvla_ros.runtime.source import PolicySource, PolicySourceError
from quantvla_ros.workflows.memory_fit import check_fits, load_need


class ConfigureError(Exception):
    """A reason to fail the configure transition (logged, never raised out of it)."""


def load_policy(s: InferenceSettings) -> Policy:
    """Load and check the policy for these settings, or raise ConfigureError saying why."""
    try:
        source = PolicySource.resolve(s.policy, seed=s.seed)
    except PolicySourceError as exc:
        raise ConfigureError(f"cannot load policy {s.policy!r}: {exc}") from exc
    if s.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigureError(f"device {s.device!r} requested but CUDA is not available")
    try:
        # refused before loading when it cannot fit (MemoryFitError says need and free)
        check_fits(load_need(source, s.precision, infer=True), s.device,
                   f"loading {s.policy!r} and running it")
        policy = Policy.load(source, device=s.device, precision=s.precision, **s.options)
    except Exception as exc:  # CheckpointError, KeyError (unknown model), artifact errors, ...
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise ConfigureError(f"cannot load policy {s.policy!r}: {msg}") from exc
    joints = len(s.inputs.joint_names)
    unknown = [c.slot for c in s.inputs.cameras if c.slot not in policy.cfg.cameras]
    if unknown:
        raise ConfigureError(f"camera_slots {unknown} are not slots of this policy; it has "
                             f"{list(policy.cfg.cameras)}")
    outputs = len(s.output_names)
    if policy.action_dim < outputs:
        what = "action_names" if s.action_names else "joint_names"
        raise ConfigureError(f"the policy outputs {policy.action_dim} action dims but "
                             f"{what} lists {outputs}")
    # Statistics fix the robot's state length; without them the policy zero-pads any length
    # up to the model's state width.
    if policy.state_dim is not None and policy.state_dim != joints:
        raise ConfigureError(f"the policy's statistics describe a {policy.state_dim}-dim state "
                             f"but joint_names lists {joints} joints")
    if joints > policy.max_state_dim:
        raise ConfigureError(f"the policy takes at most {policy.max_state_dim} state values but "
                             f"joint_names lists {joints} joints")
    if s.actions_per_chunk > policy.cfg.action_horizon:
        raise ConfigureError(f"actions_per_chunk {s.actions_per_chunk} exceeds the policy's "
                             f"action horizon {policy.cfg.action_horizon}")
    if s.points > policy.cfg.action_horizon:
        raise ConfigureError(f"trajectory_points {s.points} exceeds the policy's action "
                             f"horizon {policy.cfg.action_horizon}")
    # A family that needs every slot (GR00T) rejects a partial mapping here, not per message.
    try:
        policy.prepare(_blank_observation(policy, s))
    except ObservationError as exc:
        raise ConfigureError(f"camera_slots {list(s.inputs.slots)} do not suit this policy: "
                             f"{exc}") from exc
    return policy


def _blank_observation(policy: Policy, s: InferenceSettings) -> Observation:
    size = policy.cfg.vision.image_size
    return Observation({c.slot: np.full((size, size, 3), 128, np.uint8) for c in s.inputs.cameras},
                       np.zeros(len(s.inputs.joint_names), np.float32),
                       s.inputs.default_instruction.strip() or "warm up")


def warm_up(policy: Policy, s: InferenceSettings) -> None:
    """Run ``s.warmup_runs`` inferences on a blank observation (noise from (seed, i))."""
    obs = _blank_observation(policy, s)
    for i in range(s.warmup_runs):
        policy.infer(obs, noise=policy_noise(policy, s.seed, i))
