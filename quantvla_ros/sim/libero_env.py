"""LIBERO environments for the simulator side: creation, the two kinds of reset, observations.

Runs in ``.venv-libero`` only (imports libero lazily, so the module itself loads anywhere).
Conventions follow openpi / OpenVLA on LIBERO (see shared/LIBERO.md): images of both cameras
rotated by 180 degrees, the 8-dim state = end-effector position, axis-angle of its quaternion,
gripper finger positions; actions are 7 values in [-1, 1] (OSC_POSE deltas, gripper -1 open).
"""

import os
from dataclasses import dataclass

import numpy as np

# Environment variables every LIBERO process needs (headless EGL rendering on the CPU).
RENDER_ENV = {"MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": "egl"}
# Step limits of the evaluation protocol, per suite (openpi's LIBERO example).
MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300,
             "libero_10": 520, "libero_90": 400}
SETTLE_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)
# The camera observables robosuite renders (once per control step while enabled).
CAMERA_OBSERVABLES = ("agentview_image", "robot0_eye_in_hand_image")


def quat_to_axis_angle(quat_xyzw: np.ndarray) -> np.ndarray:
    """Return the axis-angle vector (3,) of a unit quaternion in (x, y, z, w) order."""
    q = np.asarray(quat_xyzw, dtype=np.float64)
    w = float(np.clip(q[3], -1.0, 1.0))
    den = np.sqrt(max(1.0 - w * w, 0.0))
    if den < 1e-10:
        return np.zeros(3)
    return q[:3] * (2.0 * np.arccos(w)) / den


def libero_state(obs: dict) -> np.ndarray:
    """Return the 8-dim policy state: eef position, eef axis-angle, gripper qpos (float32)."""
    return np.concatenate([obs["robot0_eef_pos"], quat_to_axis_angle(obs["robot0_eef_quat"]),
                           obs["robot0_gripper_qpos"]]).astype(np.float32)


def policy_images(obs: dict) -> dict[str, np.ndarray]:
    """Return both camera images rotated by 180 degrees (contiguous uint8 HxWx3).

    Returns {} for an observation of a step without rendering.
    """
    if "agentview_image" not in obs:
        return {}
    return {"agentview": np.ascontiguousarray(obs["agentview_image"][::-1, ::-1]),
            "wrist": np.ascontiguousarray(obs["robot0_eye_in_hand_image"][::-1, ::-1])}


@dataclass
class TaskInfo:
    """One task of a suite."""

    index: int
    name: str
    language: str
    bddl_file: str


def get_suite(name: str):
    """Return the LIBERO benchmark suite object named ``name`` (e.g. ``libero_object``)."""
    from libero.libero import benchmark

    suites = benchmark.get_benchmark_dict()
    if name not in suites:
        raise ValueError(f"unknown LIBERO suite {name!r}; known: {sorted(suites)}")
    return suites[name]()


def list_tasks(suite) -> list[TaskInfo]:
    """Return the suite's tasks with their instruction and BDDL file."""
    from libero.libero import get_libero_path

    out = []
    for i in range(suite.n_tasks):
        task = suite.get_task(i)
        bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
        out.append(TaskInfo(i, task.name, task.language, bddl))
    return out


class LiberoTask:
    """One task's environment, created once and reset many times.

    ``resolution`` is the camera size in pixels (square); 0 creates the environment without
    cameras or renderer (about 8x faster per step), for the expert's own evaluation.
    """

    def __init__(self, suite_name: str, task_index: int, resolution: int = 128):
        """Create the environment of task ``task_index`` of ``suite_name``."""
        from libero.libero.envs import OffScreenRenderEnv

        for key, value in RENDER_ENV.items():
            os.environ.setdefault(key, value)
        self.suite_name = suite_name
        self.suite = get_suite(suite_name)
        tasks = list_tasks(self.suite)
        if not 0 <= task_index < len(tasks):
            raise ValueError(f"task index {task_index} out of range: {suite_name} has "
                             f"{len(tasks)} tasks")
        self.task = tasks[task_index]
        self.resolution = int(resolution)
        kwargs = ({"camera_heights": self.resolution, "camera_widths": self.resolution}
                  if self.resolution > 0 else
                  {"use_camera_obs": False, "has_offscreen_renderer": False})
        self.env = OffScreenRenderEnv(bddl_file_name=self.task.bddl_file, **kwargs)
        self._init_states = None
        self._rendering = self.resolution > 0
        self.steps = 0
        self.last_obs = None

    @property
    def init_states(self) -> np.ndarray:
        """Return the suite's fixed evaluation init states of this task (50 for LIBERO)."""
        if self._init_states is None:
            self._init_states = self.suite.get_task_init_states(self.task.index)
        return self._init_states

    def reset_fixed(self, init_index: int) -> dict:
        """Reset to fixed evaluation init state ``init_index``; return the raw observation."""
        states = self.init_states
        if not 0 <= init_index < len(states):
            raise ValueError(f"init index {init_index} out of range: {len(states)} init states")
        self.env.seed(0)
        self.set_rendering(True)
        self.env.reset()
        self.last_obs = self.env.set_init_state(states[init_index])
        self.steps = 0
        return self.last_obs

    def reset_fresh(self, seed: int) -> dict:
        """Reset to a fresh random placement drawn from the BDDL regions with ``seed``."""
        np.random.seed(seed % 2**32)
        self.env.seed(seed % 2**32)
        self.set_rendering(True)
        self.last_obs = self.env.reset()
        self.steps = 0
        return self.last_obs

    def set_rendering(self, on: bool) -> None:
        """Enable or disable the cameras for the next steps (no-op without cameras).

        Rendering is most of a step's cost (about 8x the physics); a policy that replans every
        few steps needs images only on those steps. The physics, state and episode are the
        same either way. Enabling restarts robosuite's sampling timer, so the cameras are
        sampled at the step's first substep; with the cameras always on, robosuite's own
        schedule samples them at a slightly different substep: the two images of a step
        differ by about 1/255 in mean absolute value (measured at 64 px), a fraction of
        the change between consecutive steps.
        """
        if self.resolution <= 0 or self._rendering == on:
            return
        for name in CAMERA_OBSERVABLES:
            observable = self.env.env._observables[name]
            observable.set_enabled(on)
            # set_enabled resets the timer but not the "sampled in this period" flag; clear
            # it, or the first step after enabling returns the reset value (a black image).
            observable._sampled = False
        self._rendering = on

    def step(self, action, render: bool = True) -> tuple[dict, bool]:
        """Apply one 7-dim action; return (raw observation, done = task success).

        With ``render=False`` the observation has no camera images (see ``set_rendering``).
        """
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (7,) or not np.all(np.isfinite(action)):
            raise ValueError(f"action must be 7 finite values, got shape {action.shape}")
        self.set_rendering(render)
        obs, _reward, done, _info = self.env.step(action)
        self.steps += 1
        self.last_obs = obs
        return obs, bool(done)

    def success(self) -> bool:
        """Return whether the task's goal predicates hold now."""
        return bool(self.env.check_success())

    def close(self):
        """Free the environment (renderer included)."""
        try:
            self.env.close()
        except Exception:  # noqa: BLE001 - EGL teardown errors are harmless at exit
            pass
