"""Closed-loop LIBERO evaluation of one or more policies, paired episode by episode.

Every policy runs the same episodes: the same fixed init states and, per episode, the same
seed for its denoising noise, so differences between policies are the policies' own. The
protocol is openpi's LIBERO example (shared/LIBERO.md): settle steps of the no-op action, a
step limit per suite, both views rotated by 180 degrees (the simulator side does it), and a
new action chunk every ``actions_per_chunk`` executed actions.

The cameras render only on the steps whose observation the policy reads (the one before each
replan), unless ``render_every_step``: rendering is most of a step's cost, and the physics,
hence the episode, is identical either way (``sim.libero_env.LiberoTask.set_rendering``).

Episodes run on ``workers`` threads, each with its own simulator process (torch releases the
GIL, the simulator lives in another process). An episode whose simulator fails is retried once
on a fresh simulator; if that fails too it is reported with its error and counted neither as a
success nor as a failure. Results are appended to ``episodes.jsonl`` as they finish; a rerun
with the same output folder skips the episodes already there.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from quantvla_ros.data.observation import Observation
from quantvla_ros.sim.client import LiberoClient
from quantvla_ros.sim.libero_env import MAX_STEPS

EPISODES_FILE = "episodes.jsonl"
# The simulator's two views, in the order they fill the policy's camera slots by default.
SIM_VIEWS = ("agentview", "wrist")


@dataclass(frozen=True)
class Protocol:
    """How an episode is run."""

    suite: str = "libero_object"
    settle_steps: int = 10
    actions_per_chunk: int = 5
    max_steps: int | None = None  # None: the suite's limit (MAX_STEPS)
    resolution: int = 224
    render_every_step: bool = False

    @property
    def step_limit(self) -> int:
        """Return the episode's step limit."""
        if self.max_steps is not None:
            return self.max_steps
        if self.suite not in MAX_STEPS:
            raise ValueError(f"unknown suite {self.suite!r}; known: {sorted(MAX_STEPS)}")
        return MAX_STEPS[self.suite]


@dataclass(frozen=True)
class Episode:
    """One paired episode: task, fixed init state, noise seed."""

    task: int
    init: int
    seed: int


@dataclass
class EpisodeResult:
    """The outcome of one policy on one episode; ``success`` is None when it crashed."""

    policy: str
    task: int
    init: int
    seed: int
    success: bool | None
    steps: int = 0
    chunks: int = 0
    wall_s: float = 0.0
    policy_ms: float = 0.0
    attempts: int = 1
    error: str | None = None
    instruction: str = ""
    frames: list = field(default_factory=list, repr=False)  # agentview frames, for videos
    ros: dict | None = None  # through ROS: the bridge's latency, skipped points, stale inputs

    def record(self) -> dict:
        """Return the JSON line of this result (frames left out)."""
        out = asdict(self)
        out.pop("frames")
        return out


def episodes_for(tasks: Sequence[int], inits: Sequence[int], seed: int) -> list[Episode]:
    """Return the paired episodes, init-major so a partial run covers every task."""
    return [Episode(t, i, seed + 1000 * t + i) for i in inits for t in tasks]


def to_observation(obs: dict, cameras: dict[str, str]) -> Observation:
    """Map a simulator observation onto the policy's camera slots (``cameras``: view->slot)."""
    images = {slot: obs[view] for view, slot in cameras.items()}
    return Observation(images=images, state=np.asarray(obs["state"], np.float32),
                       instruction=str(obs["instruction"]))


def run_episode(policy, sim: LiberoClient, label: str, episode: Episode, protocol: Protocol,
                cameras: dict[str, str], keep_frames: bool = False) -> EpisodeResult:
    """Run one episode of ``policy`` in ``sim``; simulator errors propagate."""
    start = time.perf_counter()
    obs = sim.reset(protocol.suite, episode.task, init=episode.init,
                    resolution=protocol.resolution, settle=protocol.settle_steps)
    result = EpisodeResult(label, episode.task, episode.init, episode.seed, False,
                           instruction=str(obs["instruction"]))
    gen = torch.Generator().manual_seed(episode.seed)
    shape = (1, policy.cfg.action_horizon, policy.cfg.action_dim)
    limit = protocol.step_limit
    while result.steps < limit and not obs["done"]:
        if keep_frames:
            result.frames.append(obs["agentview"])
        t0 = time.perf_counter()
        chunk = policy.infer(to_observation(obs, cameras), noise=torch.randn(shape, generator=gen))
        result.policy_ms += (time.perf_counter() - t0) * 1000.0
        result.chunks += 1
        todo = min(protocol.actions_per_chunk, len(chunk.actions), limit - result.steps)
        for j in range(todo):
            action = np.clip(chunk.actions[j], -1.0, 1.0)
            obs = sim.step(action, render=protocol.render_every_step or j == todo - 1)
            result.steps += 1
            if obs["done"]:
                break
    result.success = bool(obs["done"])
    result.wall_s = time.perf_counter() - start
    return result


class SimulatorPool:
    """One simulator process per worker thread, replaced after a failure."""

    def __init__(self, factory: Callable[[], LiberoClient]):
        """Create simulators with ``factory`` on first use in each thread."""
        self._factory, self._local, self._all = factory, threading.local(), []
        self._lock = threading.Lock()

    def get(self) -> LiberoClient:
        """Return this thread's simulator, starting it if needed."""
        sim = getattr(self._local, "sim", None)
        if sim is None:
            sim = self._local.sim = self._factory()
            with self._lock:
                self._all.append(sim)
        return sim

    def discard(self) -> None:
        """Kill this thread's simulator; the next ``get`` starts a fresh one."""
        sim = getattr(self._local, "sim", None)
        self._local.sim = None
        if sim is not None:
            sim.kill()

    def close(self) -> None:
        """Close every simulator."""
        for sim in self._all:
            try:
                sim.close()
            except Exception:  # noqa: BLE001 - a dead simulator cannot be closed cleanly
                sim.kill()


def run_with_retry(pool: SimulatorPool, run: Callable[[LiberoClient], EpisodeResult],
                   failed: Callable[[str, int], EpisodeResult]) -> EpisodeResult:
    """Run ``run`` on this thread's simulator; after a failure retry once on a fresh one."""
    errors = []
    for attempt in (1, 2):
        try:
            result = run(pool.get())
            result.attempts = attempt
            return result
        except Exception as exc:  # noqa: BLE001 - any crash is reported, never counted
            errors.append(f"attempt {attempt}: {type(exc).__name__}: {exc}")
            pool.discard()
    return failed(" | ".join(errors), 2)


def load_done(out: Path | None) -> dict[tuple, dict]:
    """Return the finished results in ``out/episodes.jsonl`` by (policy, task, init, seed)."""
    done = {}
    path = None if out is None else out / EPISODES_FILE
    if path is not None and path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                if r.get("success") is not None:
                    done[(r["policy"], r["task"], r["init"], r["seed"])] = r
    return done


def evaluate(policies: dict[str, object], episodes: Sequence[Episode], protocol: Protocol,
             cameras: dict[str, str], sim_factory: Callable[[], LiberoClient],
             workers: int = 1, out: Path | None = None, video_episodes: int = 0,
             on_result: Callable[[EpisodeResult], None] | None = None) -> list[EpisodeResult]:
    """Run every policy on every episode; return the results (finished earlier ones included).

    ``video_episodes``: keep the frames of each policy's first this-many episodes.
    """
    results, jobs = pending_jobs(policies, episodes, out, video_episodes)
    pool = SimulatorPool(sim_factory)

    def job(label: str, ep: Episode, keep: bool) -> EpisodeResult:
        def failed(error: str, attempts: int) -> EpisodeResult:
            return EpisodeResult(label, ep.task, ep.init, ep.seed, None, attempts=attempts,
                                 error=error)
        return run_with_retry(
            pool, lambda sim: run_episode(policies[label], sim, label, ep, protocol, cameras,
                                          keep), failed)

    try:
        return run_jobs(jobs, job, workers, out, results, on_result)
    finally:
        pool.close()


def pending_jobs(labels, episodes: Sequence[Episode], out: Path | None,
                 video_episodes: int = 0) -> tuple[list[EpisodeResult], list[tuple]]:
    """Return (the results ``out`` already holds for these labels and episodes, the jobs left).

    A job is (label, episode, keep frames); episode-major, so a partial run pairs every label.
    """
    done = load_done(out)
    wanted = set(episodes)
    results = [EpisodeResult(**r) for r in done.values()
               if r["policy"] in labels and Episode(r["task"], r["init"], r["seed"]) in wanted]
    jobs = [(label, ep, k < video_episodes) for k, ep in enumerate(episodes)
            for label in labels if (label, ep.task, ep.init, ep.seed) not in done]
    return results, jobs


def run_jobs(jobs: list[tuple], job: Callable[..., EpisodeResult], workers: int,
             out: Path | None, results: list[EpisodeResult],
             on_result: Callable[[EpisodeResult], None] | None = None) -> list[EpisodeResult]:
    """Run ``job(*j)`` for every job on ``workers`` threads; return ``results`` with theirs.

    Each result is appended to ``out``'s episodes.jsonl as it finishes (what makes runs
    resumable) and passed to ``on_result``.
    """
    lock = threading.Lock()
    log = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        log = (out / EPISODES_FILE).open("a")
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as executor:
            for future in as_completed([executor.submit(job, *j) for j in jobs]):
                result = future.result()
                with lock:
                    results.append(result)
                    if log is not None:
                        log.write(json.dumps(result.record()) + "\n")
                        log.flush()
                if on_result is not None:
                    on_result(result)
    finally:
        if log is not None:
            log.close()
    return results
