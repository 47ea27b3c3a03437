"""The LIBERO bridge's trajectory execution, without ROS or a simulator.

Point timing, the skip of points whose time has passed, the stop (gripper held) when no
trajectory is current, the refusal of malformed trajectories, and the clock arithmetic that
keeps camera frames on the node's ticks.
"""

from types import SimpleNamespace as NS

import numpy as np
import pytest

from quantvla_ros.ros.trajectory_follower import Follower, TrajectoryRefused, parse_trajectory
from quantvla_ros.workflows import libero_ros_protocol as proto

NAMES = list(proto.ACTION_NAMES)
STEP = 50_000_000  # 20 Hz


def traj(stamp_ns, rows, names=NAMES, times=None):
    """A JointTrajectory-shaped object: point i at (i + 1) steps unless ``times``."""
    times = times or [(i + 1) * STEP for i in range(len(rows))]
    points = [NS(positions=list(r), time_from_start=NS(sec=t // 10**9, nanosec=t % 10**9))
              for r, t in zip(rows, times, strict=True)]
    return NS(joint_names=list(names), points=points,
              header=NS(stamp=NS(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)))


def rows(n, base=0.1):
    return [[base * (i + 1)] * 6 + [1.0] for i in range(n)]


def follower():
    return Follower(len(NAMES), hold=(proto.GRIPPER_INDEX,), initial=(-1.0,), limit=1.0)


def test_points_execute_at_their_time_from_start():
    t0 = 2_000_000_000
    f = follower()
    f.accept(parse_trajectory(traj(t0, rows(5)), NAMES, receipt_ns=t0))
    got = [f.command(t0 + k * STEP) for k in range(5)]
    assert [i for _, i in got] == [0, 1, 2, 3, 4]
    for k, (cmd, _) in enumerate(got):
        np.testing.assert_allclose(cmd[:6], 0.1 * (k + 1), rtol=0, atol=1e-12)
    assert f.executed == 5 and f.skipped == 0 and f.stopped == 0


def test_a_step_just_before_a_point_time_takes_that_point():
    t0 = 2_000_000_000
    f = follower()
    f.accept(parse_trajectory(traj(t0, rows(5)), NAMES, receipt_ns=t0))
    _, i = f.command(t0 + 2 * STEP - 1)  # point 1 ends at t0 + 2 steps: still ahead
    assert i == 1
    _, i = f.command(t0 + 2 * STEP)  # now point 1's time has passed: point 2
    assert i == 2


def test_points_whose_time_has_passed_are_skipped():
    t0 = 2_000_000_000
    f = follower()
    f.accept(parse_trajectory(traj(t0, rows(5)), NAMES, receipt_ns=t0 + 3 * STEP))
    _, i = f.command(t0 + 3 * STEP)  # arrived 3 steps late: points 0-2 are gone
    assert i == 3 and f.skipped == 3
    _, i = f.command(t0 + 4 * STEP)
    assert i == 4 and f.skipped == 3 and f.executed == 2


def test_no_current_trajectory_stops_and_holds_the_gripper():
    f = follower()
    cmd, i = f.command(0)  # nothing received yet: open gripper held, no motion
    assert i is None
    np.testing.assert_array_equal(cmd, [0, 0, 0, 0, 0, 0, -1.0])
    t0 = 2_000_000_000
    f.accept(parse_trajectory(traj(t0, rows(2)), NAMES, receipt_ns=t0))
    f.command(t0), f.command(t0 + STEP)
    cmd, i = f.command(t0 + 2 * STEP)  # both points done: stop, gripper stays closed
    assert i is None
    np.testing.assert_array_equal(cmd, [0, 0, 0, 0, 0, 0, 1.0])
    assert f.stopped == 2


def test_the_newest_trajectory_replaces_the_current_one():
    t0 = 2_000_000_000
    f = follower()
    f.accept(parse_trajectory(traj(t0, rows(5)), NAMES, receipt_ns=t0))
    f.command(t0)
    f.accept(parse_trajectory(traj(t0 + STEP, rows(5, base=0.01)), NAMES, t0 + STEP))
    cmd, i = f.command(t0 + STEP)
    assert i == 0
    np.testing.assert_allclose(cmd[:6], 0.01, rtol=0, atol=1e-12)


def test_commands_are_clipped_and_reordered_by_name():
    t0 = 1_000_000_000
    names = NAMES[::-1]
    row = [0.5, 3.0, -7.0, 0.1, 0.2, 0.3, 0.4]  # in reversed name order: gripper first
    f = follower()
    f.accept(parse_trajectory(traj(t0, [row], names=names), NAMES, receipt_ns=t0))
    cmd, _ = f.command(t0)
    np.testing.assert_allclose(cmd, [0.4, 0.3, 0.2, 0.1, -1.0, 1.0, 0.5], rtol=0, atol=0)


@pytest.mark.parametrize("bad, why", [
    (lambda: traj(10**9, rows(2), names=NAMES[:-1] + ["wrist"]), "not the robot's"),
    (lambda: traj(10**9, rows(2), names=NAMES[:-1] + [NAMES[0]]), "repeat"),
    (lambda: traj(10**9, [rows(1)[0], [0.1] * 6 + [float("nan")]]), "not finite"),
    (lambda: traj(10**9, [rows(1)[0], [float("inf")] * 7]), "not finite"),
    (lambda: traj(10**9, [[0.1] * 6]), "positions"),
    (lambda: traj(10**9, []), "no points"),
    (lambda: traj(10**9, rows(2), times=[STEP, STEP]), "does not increase"),
])
def test_malformed_trajectories_are_refused_and_never_executed(bad, why):
    f = follower()
    with pytest.raises(TrajectoryRefused, match=why):
        f.accept(parse_trajectory(bad(), NAMES, receipt_ns=10**9))
    cmd, i = f.command(10**9)
    assert i is None and f.executed == 0
    np.testing.assert_array_equal(cmd, [0, 0, 0, 0, 0, 0, -1.0])


def test_a_zero_stamp_starts_at_receipt():
    plan = parse_trajectory(traj(0, rows(2)), NAMES, receipt_ns=7 * STEP)
    assert plan.stamp_ns == 7 * STEP and plan.ends_ns == (8 * STEP, 9 * STEP)


@pytest.mark.parametrize("pace, lead", [("lockstep", 0), ("realtime", STEP)])
def test_frames_sit_on_the_node_ticks(pace, lead):
    clock = proto.Clock(20.0, 5, pace)
    clock.check()
    assert clock.step_ns == STEP and clock.period_ns == 5 * STEP
    assert clock.frame_lead_ns == lead
    for now in (0, clock.activation_clock_ns, 3_123_456_789):
        tick = clock.first_tick_after(now)
        assert tick >= now + 4 * clock.period_ns
        assert (tick - clock.activation_clock_ns) % clock.period_ns == 0


def test_clock_refuses_rates_that_drift():
    with pytest.raises(ValueError, match="whole nanoseconds"):
        proto.Clock(30.0, 5).check()
    with pytest.raises(ValueError, match="pace"):
        proto.Clock(20.0, 5, "fast").check()


def test_a_ten_point_trajectory_replaced_every_five_steps_runs_its_first_five():
    """Lock-step with the whole horizon published: each new trajectory arrives at its frame
    and replaces the last before point 6 is due, so points 6-10 never run; late, they do."""
    f = Follower(7, hold=(6,), initial=(-1.0,))
    executed = []
    for k in range(3):
        f.accept(parse_trajectory(traj(5 * k * STEP, rows(10, base=0.01 * (k + 1))), NAMES, 0))
        executed += [f.command((5 * k + s) * STEP)[1] for s in range(5)]
    assert executed == list(range(5)) * 3 and f.skipped == 0 and f.stopped == 0
    # The next trajectory is 3 steps late: points 5-7 of the last one keep the arm moving.
    assert [f.command((15 + s) * STEP)[1] for s in range(3)] == [5, 6, 7]
    assert f.stopped == 0


def test_ros_summary_separates_episodes_that_started_the_processes():
    from quantvla_ros.workflows.libero_eval import EpisodeResult
    from quantvla_ros.workflows.libero_ros_summary import ros_summary, ros_table

    def res(label, init, wall, steps=100, started=None):
        ros = None if started is None else {"session_started": started, "executed_points": 9}
        return EpisodeResult(label, 0, init, init, True, steps=steps, wall_s=wall, ros=ros)

    results = [res("d", i, 10.0) for i in range(3)] + [
        res("d@ros-lockstep", 0, 40.0, started=True), res("d@ros-lockstep", 1, 12.0,
                                                          started=False),
        res("d@ros-lockstep", 2, 13.0, steps=90, started=False)]
    entry = ros_summary(results, ["d@ros-lockstep"])["d@ros-lockstep"]
    assert entry["sessions_started"] == 1 and entry["overhead_s_reused_node"] == 2.5
    assert entry["overhead_s_per_episode"] == pytest.approx(35 / 3)
    assert entry["same_outcome_and_steps"] == 2 and entry["paired_with_direct"] == 3
    assert entry["direct"] == "d" and entry["vs_direct"]["difference"] == 0
    assert entry["retried"] == 0 and "| d@ros-lockstep | 3 (0) |" in ros_table(
        {"d@ros-lockstep": entry})
    assert "| 11.7 | 2.5 | 2/3 | +0.0 pts" in ros_table({"d@ros-lockstep": entry})


def test_each_ros_run_is_paired_with_its_own_policy_run_directly():
    from quantvla_ros.workflows.libero_eval import EpisodeResult
    from quantvla_ros.workflows.libero_ros_summary import ros_summary

    def res(label, init, success, steps):
        ros = {"session_started": False} if "@ros" in label else None
        return EpisodeResult(label, 0, init, init, success, steps=steps, wall_s=1.0, ros=ros)

    # float fails init 0 directly; q (first in a table, say) succeeds everywhere.
    results = ([res("float", i, i > 0, 100) for i in range(4)]
               + [res("q", i, True, 90) for i in range(4)]
               + [res("q@ros-lockstep", i, True, 90) for i in range(4)]
               + [res("float@ros-lockstep", i, i > 0, 100) for i in range(4)])
    ros = ros_summary(results, ["q@ros-lockstep", "float@ros-lockstep"])
    for label, direct in (("q@ros-lockstep", "q"), ("float@ros-lockstep", "float")):
        assert ros[label]["direct"] == direct
        assert ros[label]["same_outcome_and_steps"] == 4  # not 0-1 against the other policy
        assert ros[label]["vs_direct"]["difference"] == 0
