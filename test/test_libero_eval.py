"""`quantvla eval libero` without the simulator: pairing, protocol, crashes, resume, summary.

A fake simulator stands in for the LIBERO server (same methods as ``LiberoClient``); the
policies are real ``Policy`` objects of the micro config. The simulator-backed episode is in
test_libero_sim.py (skipped without ``make libero``).
"""

import json

import numpy as np
import pytest
import torch

from quantvla_ros.cli.eval_cmd import camera_map, parse_indices, parse_policy
from quantvla_ros.runtime.policy import Policy
from quantvla_ros.sim.client import SimServerError
from quantvla_ros.workflows.eval_stats import paired_difference_interval
from quantvla_ros.workflows.libero_eval import (
    EPISODES_FILE,
    Episode,
    Protocol,
    episodes_for,
    evaluate,
)
from quantvla_ros.workflows.libero_summary import bar_chart, markdown_table, summarize

CAMERAS = {"agentview": "base_0_rgb", "wrist": "left_wrist_0_rgb"}


class FakeSim:
    """Deterministic stand-in: succeeds when the summed actions cross a task-dependent line."""

    instances = []

    def __init__(self, fail_on=frozenset(), always_fail_on=frozenset(), goal=2.0):
        self.goal = goal
        # shared sets: a crash listed in fail_on happens once across all simulators
        self.fail_on, self.always_fail_on = fail_on, always_fail_on
        self.calls, self.killed = [], False
        FakeSim.instances.append(self)

    def _obs(self, render=True):
        obs = {"state": self.state.copy(), "done": self.done, "success": self.done,
               "instruction": f"task {self.task}", "t": self.t}
        if render:
            rng = np.random.default_rng(self.t + 100 * self.task)
            obs["agentview"] = rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)
            obs["wrist"] = obs["agentview"][::-1].copy()
        return obs

    def reset(self, suite, task, *, init=None, seed=None, resolution=128, settle=0):
        key = (task, init)
        self.calls.append(("reset", task, init, resolution, settle))
        if key in self.always_fail_on or key in self.fail_on:
            self.fail_on.discard(key)
            raise SimServerError(f"simulated crash on {key}")
        self.task, self.t, self.done, self.total = task, 0, False, 0.0
        self.state = np.full(8, 0.1 * init, np.float32)
        return self._obs()

    def step(self, action, render=True):
        self.calls.append(("step", render))
        self.t += 1
        self.total += float(np.sum(action))
        self.done = self.total > self.goal + self.task
        return self._obs(render)

    def kill(self):
        self.killed = True

    def close(self):
        pass


class Recorder:
    """Wraps a Policy and records the noise of every chunk it is asked for."""

    def __init__(self, policy):
        self.policy, self.cfg, self.noises = policy, policy.cfg, []

    def infer(self, obs, noise=None):
        self.noises.append(noise.clone())
        return self.policy.infer(obs, noise=noise)


@pytest.fixture(scope="module")
def policies(micro_checkpoint):
    return {"a": Recorder(Policy.load(str(micro_checkpoint))),
            "b": Recorder(Policy.load(str(micro_checkpoint), precision="bf16"))}


def test_protocol_pairing_and_rendering(policies):
    protocol = Protocol(suite="libero_object", max_steps=12, actions_per_chunk=5,
                        resolution=56)
    sims = []

    def factory():
        sims.append(FakeSim(goal=1e9))  # never solved: every episode runs 12 steps
        return sims[-1]

    episodes = episodes_for([0, 1], [3], seed=7)
    assert episodes == [Episode(0, 3, 10), Episode(1, 3, 1010)]
    results = evaluate(policies, episodes, protocol, CAMERAS, factory, workers=1)
    assert len(results) == 4 and all(r.success is not None for r in results)
    calls = sims[0].calls
    resets = [c for c in calls if c[0] == "reset"]
    assert resets[0] == ("reset", 0, 3, 56, 10)  # fixed init 3, settle 10, policy resolution
    # 12 steps in chunks of 5, 5, 2: images only on the step before each replan
    assert [c[0] for c in calls[1:14]] == ["step"] * 12 + ["reset"]
    assert [c[1] for c in calls[1:13]] == [False] * 4 + [True] + [False] * 4 + [True] + [
        False, True]
    assert all(r.steps == 12 and r.chunks == 3 and r.success is False for r in results)
    # pairing: both policies drew the same noise for the same episode
    a, b = policies["a"].noises, policies["b"].noises
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], a[-1])  # and it differs between chunks / episodes


def test_crash_is_retried_then_reported_not_counted(policies, tmp_path):
    protocol = Protocol(max_steps=6, resolution=56)
    flaky = {(0, 0)}  # crashes once: the retry on a fresh simulator succeeds
    broken = {(1, 0)}  # crashes every time

    def factory():
        return FakeSim(fail_on=flaky, always_fail_on=broken)

    episodes = episodes_for([0, 1], [0], seed=0)
    one = {"a": policies["a"]}
    results = evaluate(one, episodes, protocol, CAMERAS, factory, workers=2, out=tmp_path)
    by_task = {r.task: r for r in results}
    assert by_task[0].success is not None and by_task[0].attempts == 2
    assert by_task[1].success is None and by_task[1].attempts == 2
    assert "simulated crash" in by_task[1].error
    summary = summarize(results, ["a"])
    assert summary["policies"]["a"]["total"]["episodes"] == 1  # the crash is not counted
    assert summary["policies"]["a"]["crashed"][0]["task"] == 1
    lines = [json.loads(x) for x in (tmp_path / EPISODES_FILE).read_text().splitlines()]
    assert len(lines) == 2
    # a rerun skips the finished episode and retries only the crashed one
    flaky.add((0, 0))  # would crash again if it were rerun: it is not
    again = evaluate(one, episodes, protocol, CAMERAS, factory, workers=1, out=tmp_path)
    assert (0, 0) in flaky
    assert len(again) == 2
    assert len((tmp_path / EPISODES_FILE).read_text().splitlines()) == 3


def test_summary_table_and_chart(tmp_path):
    from quantvla_ros.workflows.libero_eval import EpisodeResult

    results = []
    for init in range(10):
        results.append(EpisodeResult("fp", 0, init, init, init < 8))
        results.append(EpisodeResult("q", 0, init, init, init < 5 or init == 9))
    s = summarize(results, ["fp", "q"])
    assert s["policies"]["fp"]["total"]["successes"] == 8
    lo, hi = s["policies"]["fp"]["total"]["wilson95"]
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    paired = s["paired"]["q"]
    # discordant: fp only on inits 5, 6, 7; q only on 9 -> exact p = 2 * P(X <= 1 | 4) = 0.625
    assert (paired["only_base"], paired["only_this"]) == (3, 1)
    assert paired["mcnemar_p"] == pytest.approx(0.625)
    assert paired["difference"] == pytest.approx(-0.2)
    # both solved inits 0-4, neither init 8: Newcombe's paired interval of q - fp
    assert paired["difference95"] == pytest.approx(
        list(paired_difference_interval(5, 1, 3, 1)), abs=1e-12)
    assert paired["difference95"][0] < -0.2 < paired["difference95"][1] < 0.2
    table = markdown_table(s)
    assert "| fp | 80% [49, 94] | 10 |" in table and "p=0.625" in table
    lo, hi = (round(100 * x) for x in paired["difference95"])
    assert f"-20 pts [{lo:+d}, {hi:+d}] (+1 / -3" in table
    assert bar_chart(s, tmp_path / "c.png").stat().st_size > 1000


def test_argument_parsing():
    assert parse_indices("0-2,5") == [0, 1, 2, 5]
    assert parse_indices("all", 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="bad index range"):
        parse_indices("a-b")
    assert parse_policy("ckpt@bf16") == ("ckpt", "bf16")
    assert parse_policy("runs/a@b/ckpt") == ("runs/a@b/ckpt", "fp32")
    assert camera_map("", ("base_0_rgb", "left_wrist_0_rgb")) == CAMERAS
    with pytest.raises(ValueError, match="views are"):
        camera_map("front=base_0_rgb", ("base_0_rgb",))


def test_progress_lines_give_rate_eta_and_tallies():
    import io

    from quantvla_ros.cli.progress import EpisodeProgress
    from quantvla_ros.workflows.libero_eval import EpisodeResult

    now = [0.0]
    out = io.StringIO()
    bar = EpisodeProgress(6, stream=out, clock=lambda: now[0])
    for k, success in enumerate((True, False, None)):
        now[0] = 30.0 * (k + 1)  # one episode every 30 s: 2 episodes/min
        bar(EpisodeResult("fp32", 3, k, 0, success))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[1/6] 2.0 episodes/min, ETA 2 min | fp32 task 3 init 0 ok")
    assert lines[2] == ("[3/6] 2.0 episodes/min, ETA 2 min | fp32 task 3 init 2 crashed | "
                        "fp32 1/2")
