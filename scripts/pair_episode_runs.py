"""Pair LIBERO episodes recorded by separate `quantvla eval libero` commands into one summary.

A direct run and a through-ROS run of the same episodes are often two commands (two
folders, or an earlier run reused): this reads their episodes.jsonl files, keeps the
episodes (task, init) that every chosen policy finished, and writes summary.json and
table.md to --out with the evaluation's own functions (paired McNemar against the first
policy; for each ``X@ros-PACE`` label, latency, overhead, agreement and McNemar against
``X`` when present).

    .venv/bin/python scripts/pair_episode_runs.py --out DIR A/episodes.jsonl B/episodes.jsonl \
        [--policies pi05-libero-object,w4a8,pi05-libero-object@ros-lockstep,...]
"""

import argparse
import json
import sys
from pathlib import Path

from quantvla_ros.workflows.libero_eval import EpisodeResult
from quantvla_ros.workflows.libero_ros_summary import ros_summary, ros_table
from quantvla_ros.workflows.libero_summary import markdown_table, summarize


def read_runs(paths: list[Path]) -> list[EpisodeResult]:
    """Every episode of every file; a later file's row replaces an earlier one's."""
    rows = {}
    for path in paths:
        if not path.is_file():
            raise SystemExit(f"error: {path} does not exist")
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                r = EpisodeResult(**json.loads(line))
            except (ValueError, TypeError) as exc:
                raise SystemExit(f"error: {path}:{n} is not an episode result ({exc})") from exc
            rows[(r.policy, r.task, r.init)] = r
    return list(rows.values())


def pair(results: list[EpisodeResult], policies: list[str] | None) -> tuple[dict, str]:
    """Return (summary, markdown table) over the episodes every policy finished."""
    found = sorted({r.policy for r in results}, key=lambda label: ("@" in label, label))
    labels = policies or found
    missing = [label for label in labels if label not in found]
    if missing:
        raise SystemExit(f"error: no episodes of {missing}; the files hold {found}")
    done = [{(r.task, r.init) for r in results if r.policy == label and r.success is not None}
            for label in labels]
    common = set.intersection(*done)
    results = [r for r in results if r.policy in labels and (r.task, r.init) in common]
    summary = summarize(results, labels)
    summary["ros"] = ros_summary(results, [label for label in labels if "@ros-" in label])
    summary["episodes_paired"] = sorted(common)
    return summary, markdown_table(summary) + ros_table(summary["ros"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="episodes.jsonl files")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--policies", help="comma-separated labels, the first is the baseline "
                    "(default: every label found, direct runs first)")
    args = ap.parse_args(argv)
    policies = [p for p in args.policies.split(",") if p] if args.policies else None
    summary, table = pair(read_runs(args.runs), policies)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    (args.out / "table.md").write_text(table)
    print(table)
    print(f"{len(summary['episodes_paired'])} episodes paired -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
