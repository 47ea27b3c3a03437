"""A scripted pick-and-place expert for libero_object using privileged simulator state.

Simulator side only (``.venv-libero``). The goal of a libero_object task is one predicate,
``in(object, basket_contain_region)``. The expert reads the object's collision geometry from
MuJoCo, picks a top-down grasp whose finger axis crosses the object's narrow side (grasp yaw
candidates scored by the clearance of the open fingers from the other objects), and runs the
phases approach, descend, close, lift, carry, lower, release with a proportional controller
on the end-effector pose. A grasp that fails (the object does not rise) is retried from the
approach with the object's new pose, so noisy actions still end in success.
"""

import numpy as np

from quantvla_ros.sim.libero_geometry import collision_points, footprint, span_along

POS_SCALE, ROT_SCALE = 0.05, 0.5       # metres / radians per action unit (OSC_POSE deltas)
GAIN = 1.5                             # action = GAIN * error in action units, clipped
MAX_SPAN = 0.066                       # widest span the open fingers take (m)
FINGER_HALF = 0.045                    # open finger pad centre distance from the grip axis (m)
GRIP_SITE = "gripper0_grip_site"
# finger opening (qpos[0] - qpos[1], m) of a gripper closed on an object: fully open is about
# 0.079, closed on nothing about 0 (closed on a 3 cm object measured 0.029)
GRIPPED_WIDTH = (0.004, 0.072)


def _rotz(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rotvec(rot: np.ndarray) -> np.ndarray:
    """Return the axis-angle vector of a rotation matrix."""
    cos = np.clip((np.trace(rot) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    if angle < 1e-8:
        return np.zeros(3)
    axis = np.array([rot[2, 1] - rot[1, 2], rot[0, 2] - rot[2, 0], rot[1, 0] - rot[0, 1]])
    if np.sin(angle) < 1e-6:  # angle near pi: axis from the diagonal
        axis = np.sqrt(np.clip((np.diag(rot) + 1.0) / 2.0, 0.0, None))
        axis *= np.sign(axis + 1e-12)
        return axis / np.linalg.norm(axis) * angle
    return axis / (2.0 * np.sin(angle)) * angle


def _snap(rot: np.ndarray) -> np.ndarray:
    """Round a rotation matrix to the nearest signed permutation (the canonical pose)."""
    out = np.zeros((3, 3))
    for col in range(3):
        row = int(np.argmax(np.abs(rot[:, col])))
        out[row, col] = np.sign(rot[row, col])
    return out


class LiberoObjectExpert:
    """Closed-loop scripted expert for one libero_object episode (privileged state).

    Call :meth:`reset` after every environment reset, then :meth:`act` once per step with the
    raw observation; it returns the 7-dim action. ``phase`` names the current phase.
    """

    def __init__(self, task):
        """Act in ``task`` (a ``libero_env.LiberoTask``)."""
        self.task = task
        self.phase = "start"

    @property
    def _sim(self):
        return self.task.env.env.sim

    def reset(self):
        """Read the goal and the canonical hand orientation; start a new plan."""
        env = self.task.env.env
        goal = env.parsed_problem["goal_state"]
        if len(goal) != 1 or goal[0][0].lower() != "in":
            raise ValueError(f"not a pick-and-place goal: {goal}")
        _, self.obj_name, self.region = goal[0]
        self.obj_body = env.objects_dict[self.obj_name].root_body
        self.container = self.region.rsplit("_contain_region", 1)[0]
        self.others = [n for n in env.objects_dict if n != self.obj_name]
        sim = self._sim
        self.site = sim.model.site_name2id(GRIP_SITE)
        self.rot0 = _snap(np.asarray(sim.data.site_xmat[self.site]).reshape(3, 3))
        self.finger_local = self.rot0.T @ np.array([0.0, 1.0, 0.0])
        self.phase, self.timer, self.attempts = "approach", 0, 0
        self._plan_grasp()

    # -- planning ---------------------------------------------------------------------------
    def _plan_grasp(self):
        sim = self._sim
        pts = collision_points(sim, self.obj_body)
        fp = footprint(pts)
        self.obj_z0 = fp.z_min
        obstacles = np.concatenate([collision_points(sim, self.task.env.env.objects_dict[n]
                                                     .root_body) for n in self.others])
        h = fp.height
        self.grasp_z = max(fp.z_min + min(0.015, h / 2), fp.z_max - 0.03)
        self.hang = self.grasp_z - fp.z_min  # object bottom below the grip site when held
        best = None
        base = np.arctan2(fp.minor[1], fp.minor[0])
        for offset in np.deg2rad([0, 15, -15, 30, -30, 90, 45, -45]):
            axis_angle = base + offset
            axis = np.array([np.cos(axis_angle), np.sin(axis_angle)])
            span = span_along(pts, fp.centre, axis)
            if span > MAX_SPAN and offset != 0:
                continue
            clear = self._clearance(obstacles, fp.centre, axis)
            score = min(clear, 0.02) - 0.01 * max(span - MAX_SPAN, 0) - 0.002 * abs(offset)
            if best is None or score > best[0]:
                best = (score, axis)
        axis = best[1]
        # Fingers point along R(yaw) @ finger_local; yaw so they lie along ``axis`` (mod pi).
        f0 = (self.rot0 @ self.finger_local)[:2]
        yaw = np.arctan2(axis[1], axis[0]) - np.arctan2(f0[1], f0[0])
        yaw = (yaw + np.pi / 2) % np.pi - np.pi / 2
        self.rot_des = _rotz(yaw) @ self.rot0
        self.grasp_xy = fp.centre

    def _clearance(self, obstacles, centre, axis) -> float:
        """Return the xy distance from the open fingers to the nearest low obstacle point."""
        low = obstacles[obstacles[:, 2] < self.grasp_z + 0.08]
        if not len(low):
            return 1.0
        best = 1.0
        for side in (-1.0, 1.0):
            finger = centre + side * FINGER_HALF * axis
            d = np.linalg.norm(low[:, :2] - finger, axis=1) - 0.015
            best = min(best, float(d.min()))
        return best

    def _place_target(self) -> np.ndarray:
        sim = self._sim
        site = sim.model.site_name2id(self.region)
        xy = np.asarray(sim.data.site_xpos[site])[:2]
        rim = collision_points(sim, self.task.env.env.objects_dict[self.container].root_body)
        top = float(rim[:, 2].max()) if len(rim) else float(sim.data.site_xpos[site][2])
        return np.array([xy[0], xy[1], top + self.hang + 0.02])

    # -- control ----------------------------------------------------------------------------
    def _move(self, target: np.ndarray, grip: float) -> tuple[np.ndarray, float]:
        sim = self._sim
        pos = np.asarray(sim.data.site_xpos[self.site])
        rot = np.asarray(sim.data.site_xmat[self.site]).reshape(3, 3)
        err = target - pos
        action = np.zeros(7)
        action[:3] = np.clip(GAIN * err / POS_SCALE, -1.0, 1.0)
        action[3:6] = np.clip(GAIN * _rotvec(self.rot_des @ rot.T) / ROT_SCALE, -1.0, 1.0)
        action[6] = grip
        return action, float(np.linalg.norm(err))

    def _object_z(self) -> float:
        return float(collision_points(self._sim, self.obj_body)[:, 2].min())

    def act(self, obs: dict | None = None) -> np.ndarray:
        """Return the next 7-dim action (float32 in [-1, 1])."""
        self.timer += 1
        gz, high = self.grasp_z, max(0.30, self.grasp_z + 0.15)
        above = np.array([*self.grasp_xy, gz + 0.10])
        if self.phase == "approach":
            action, err = self._move(above, -1.0)
            if (err < 0.015 and self._rot_ok()) or self.timer > 60:
                self._next("descend")
        elif self.phase == "descend":
            action, err = self._move(np.array([*self.grasp_xy, gz]), -1.0)
            if err < 0.008 or self.timer > 40:
                self._next("close")
        elif self.phase == "close":
            action, _ = self._move(np.array([*self.grasp_xy, gz]), 1.0)
            if self.timer > 12:
                self._next("lift")
        elif self.phase == "lift":
            pos = np.asarray(self._sim.data.site_xpos[self.site])
            action, err = self._move(np.array([pos[0], pos[1], high]), 1.0)
            if self.timer > 8 and self._object_z() < self.obj_z0 + 0.01 + 0.3 * (
                    pos[2] - gz - 0.02):
                self._retry()
            elif err < 0.03 or self.timer > 40:
                self._next("carry")
        elif self.phase == "carry":
            target = self._place_target()
            action, err = self._move(np.array([target[0], target[1], high]), 1.0)
            if self._object_z() < self.obj_z0 + 0.03:
                self._retry()
            elif err < 0.02 or self.timer > 60:
                self._next("lower")
        elif self.phase == "lower":
            action, err = self._move(self._place_target(), 1.0)
            if err < 0.015 or self.timer > 30:
                self._next("release")
        else:  # release, then back off upwards
            pos = np.asarray(self._sim.data.site_xpos[self.site])
            up = self.timer > 8
            action, _ = self._move(np.array([pos[0], pos[1], pos[2] + (0.05 if up else 0.0)]),
                                   -1.0)
        return action.astype(np.float32)

    # -- memoryless labels (DAgger) -----------------------------------------------------------
    def label(self, obs: dict) -> np.ndarray:
        """Return the expert's action for the current state alone (float32 in [-1, 1]).

        :meth:`act` is a phase machine with timers: on states a policy visits, its phase
        says where the *expert* would be, and a timed-out phase labels "close" at the wrong
        place. Here the phase is read off the state on every call: is the object between
        the fingers and gripped, are the fingers still closing, is the hand over the grasp
        point (the grasp is re-planned from the object's current pose while it is on the
        table). Nothing is remembered between calls, so any visited state gets a label.
        Call :meth:`reset` after each environment reset first.
        """
        sim = self._sim
        pos = np.asarray(sim.data.site_xpos[self.site])
        q, qvel = np.asarray(obs["robot0_gripper_qpos"]), np.asarray(obs["robot0_gripper_qvel"])
        width, closing = float(q[0] - q[1]), float(qvel[0]) < -0.01
        pts = collision_points(sim, self.obj_body)
        between = (np.linalg.norm(pts[:, :2].mean(0) - pos[:2]) < 0.025
                   and pts[:, 2].min() - 0.01 < pos[2] < pts[:, 2].max() + 0.01)
        high = max(0.30, self.grasp_z + 0.15)
        if self.task.success():  # placed: back off upwards, open
            return self._move(pos + np.array([0.0, 0.0, 0.05]), -1.0)[0].astype(np.float32)
        if between and GRIPPED_WIDTH[0] < width < GRIPPED_WIDTH[1] and not closing:
            target = self._place_target()
            off = float(np.linalg.norm(pos[:2] - target[:2]))
            if off > 0.02 and pos[2] < high - 0.03:
                action, _ = self._move(np.array([pos[0], pos[1], high]), 1.0)  # lift
            elif off > 0.02:
                action, _ = self._move(np.array([target[0], target[1], high]), 1.0)  # carry
            elif np.linalg.norm(pos - target) > 0.015:
                action, _ = self._move(target, 1.0)  # lower
            else:
                action, _ = self._move(pos, -1.0)  # release
            return action.astype(np.float32)
        if between and closing:  # the fingers are still closing on the object: keep closing
            return self._move(np.array([*self.grasp_xy, self.grasp_z]), 1.0)[0].astype(
                np.float32)
        if pts[:, 2].min() < self.obj_z0 + 0.03:  # on the table: aim at where it is now
            self._plan_grasp()
        gz = self.grasp_z
        off = float(np.linalg.norm(pos[:2] - self.grasp_xy))
        tolerance = 0.02 if pos[2] < gz + 0.08 else 0.01  # descending: keep going
        if off < tolerance and self._rot_ok() and width > GRIPPED_WIDTH[1]:
            if pos[2] > gz + 0.008:
                action, _ = self._move(np.array([*self.grasp_xy, gz]), -1.0)  # descend
            else:
                action, _ = self._move(np.array([*self.grasp_xy, gz]), 1.0)  # close
        else:
            action, _ = self._move(np.array([*self.grasp_xy, gz + 0.10]), -1.0)  # approach
        return action.astype(np.float32)

    def _rot_ok(self) -> bool:
        rot = np.asarray(self._sim.data.site_xmat[self.site]).reshape(3, 3)
        return float(np.linalg.norm(_rotvec(self.rot_des @ rot.T))) < 0.08

    def _next(self, phase: str):
        self.phase, self.timer = phase, 0

    def _retry(self):
        self.attempts += 1
        self._plan_grasp()
        self._next("approach")
