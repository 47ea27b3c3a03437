"""Progress: a bar over an iterable, and a line per finished episode with rate and ETA."""

from __future__ import annotations

import sys
import time


def progress_bar(items, desc: str = "layers"):
    """Wrap ``items`` in a tqdm bar labelled ``desc``; return them as is without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(list(items), desc=desc, leave=False)


class EpisodeProgress:
    """One line per finished episode: count, episodes per minute, ETA, outcome, tallies.

    Plain lines (no carriage returns), so a log file of a long background run reads well.
    """

    def __init__(self, total: int, stream=None, clock=time.monotonic):
        """Count ``total`` episodes from now; write to ``stream`` (stderr by default)."""
        self.total, self.done, self.stream, self.clock = total, 0, stream, clock
        self.start = clock()
        self.wins: dict[str, list[int]] = {}

    def __call__(self, result) -> None:
        """Record one finished episode (an ``EpisodeResult``) and print its line."""
        self.done += 1
        tally = self.wins.setdefault(result.policy, [0, 0])
        if result.success is not None:
            tally[0] += bool(result.success)
            tally[1] += 1
        minutes = max(self.clock() - self.start, 1e-9) / 60.0
        rate = self.done / minutes
        eta = (self.total - self.done) / rate
        outcome = {True: "ok", False: "fail", None: "crashed"}[result.success]
        tallies = ", ".join(f"{p} {w}/{n}" for p, (w, n) in self.wins.items())
        print(f"[{self.done}/{self.total}] {rate:.1f} episodes/min, ETA {eta:.0f} min | "
              f"{result.policy} task {result.task} init {result.init} {outcome} | {tallies}",
              file=self.stream or sys.stderr, flush=True)
