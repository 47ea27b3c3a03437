"""LIBERO as a ROS 2 robot: names, topics and clock arithmetic of the bridge and the eval.

The simulator the bridge drives is re-exported here (no rclpy, no torch).

The bridge (``quantvla_ros.ros.libero_bridge``) publishes the simulator's cameras upright (the
server already applies LIBERO's 180-degree rotation), the 8-value state as a JointState with
``STATE_NAMES``, and executes JointTrajectory points named ``ACTION_NAMES`` (OSC_POSE deltas
and the gripper, in [-1, 1]).

Clock. The bridge is the /clock source; ``quantvla_node`` runs on it (use_sim_time) and ticks
every ``period`` = actions_per_chunk / control_rate_hz of simulated time, on a grid fixed by
the clock it had at activation. The bridge holds the clock at ``activation_clock_ns`` (a grid
point) until the node is active, so later grid points are known: the ticks. A camera frame is
published ``frame_lead_steps`` control steps before each tick: 0 in lock-step (the frame, then
a moment later the tick itself, while the physics waits for the trajectory), 1 in real time
(a camera frame is never taken at the very instant the node's timer fires).
"""

from __future__ import annotations

from dataclasses import dataclass

from quantvla_ros.sim.client import LiberoClient, libero_available  # noqa: F401 - re-exported
from quantvla_ros.sim.libero_env import MAX_STEPS, SETTLE_ACTION

STATE_NAMES = ("eef_x", "eef_y", "eef_z", "eef_axis_angle_x", "eef_axis_angle_y",
               "eef_axis_angle_z", "finger_left", "finger_right")
ACTION_NAMES = ("eef_dx", "eef_dy", "eef_dz", "eef_drx", "eef_dry", "eef_drz", "gripper")
GRIPPER_INDEX = ACTION_NAMES.index("gripper")
INITIAL_GRIPPER = float(SETTLE_ACTION[GRIPPER_INDEX])  # open, as after the settle steps
ACTION_LIMIT = 1.0

VIEWS = ("agentview", "wrist")
CAMERA_TOPICS = {"agentview": "/libero/agentview/image_raw",
                 "wrist": "/libero/wrist/image_raw"}
JOINT_STATE_TOPIC = "/joint_states"
INSTRUCTION_TOPIC = "/instruction"
TRAJECTORY_TOPIC = "/quantvla/joint_trajectory"
PACES = ("lockstep", "realtime")
FRAME_LEAD_STEPS = {"lockstep": 0, "realtime": 1}


def step_limit(suite: str, max_steps: int = 0) -> int:
    """Return ``max_steps`` if set, else the suite's step limit."""
    if max_steps > 0:
        return max_steps
    if suite not in MAX_STEPS:
        raise ValueError(f"unknown suite {suite!r}; known: {sorted(MAX_STEPS)}")
    return MAX_STEPS[suite]


@dataclass(frozen=True)
class Clock:
    """Simulated-time arithmetic in integer nanoseconds."""

    control_rate_hz: float
    actions_per_chunk: int
    pace: str = "lockstep"

    @property
    def step_ns(self) -> int:
        """One control step."""
        return int(round(1e9 / self.control_rate_hz))

    @property
    def period_ns(self) -> int:
        """The node's tick period, computed as rclpy does for its timer."""
        return int(float(self.actions_per_chunk / self.control_rate_hz) * 1e9)

    @property
    def frame_lead_ns(self) -> int:
        """How long before a tick its camera frame is taken."""
        return FRAME_LEAD_STEPS[self.pace] * self.step_ns

    @property
    def activation_clock_ns(self) -> int:
        """The clock the bridge shows until the node is active (a point of the tick grid)."""
        return 4 * self.period_ns

    def first_tick_after(self, t_ns: int, margin_periods: int = 4) -> int:
        """Return the first tick at least ``margin_periods`` periods after ``t_ns``."""
        base, period = self.activation_clock_ns, self.period_ns
        k = -(-(t_ns + margin_periods * period - base) // period)
        return base + max(k, 1) * period

    def check(self) -> None:
        """Refuse settings whose frames would drift against the node's ticks."""
        if self.pace not in PACES:
            raise ValueError(f"pace must be one of {PACES}, got {self.pace!r}")
        if self.actions_per_chunk < 1:
            raise ValueError(f"actions_per_chunk must be >= 1, got {self.actions_per_chunk}")
        if self.period_ns != self.actions_per_chunk * self.step_ns:
            raise ValueError(f"control_rate_hz {self.control_rate_hz:g} does not divide time "
                             "into whole nanoseconds per step and per chunk")
        if self.frame_lead_ns >= self.period_ns:
            raise ValueError("real-time pace needs actions_per_chunk >= 2")
