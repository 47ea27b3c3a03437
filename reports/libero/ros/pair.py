"""Pair the direct and the through-ROS episodes of reports/libero/ros/{direct,lockstep,...}.

The two arms ran as two commands side by side (one worker each) so that both advanced in
the time there was; this reads their episodes.jsonl files and writes summary.json and
table.md here with the CLI's own functions, over the episodes both arms finished.

    .venv/bin/python reports/libero/ros/pair.py direct lockstep [realtime_10pt ...]
"""
import json
import sys
from pathlib import Path

from quantvla_ros.workflows.libero_eval import EpisodeResult
from quantvla_ros.workflows.libero_ros_summary import ros_summary, ros_table
from quantvla_ros.workflows.libero_summary import markdown_table, summarize

here = Path(__file__).resolve().parent
results = []
for folder in sys.argv[1:]:
    path = here / folder / "episodes.jsonl"
    if path.is_file():
        results += [EpisodeResult(**json.loads(line))
                    for line in path.read_text().splitlines() if line]
by_label: dict[str, set] = {}
for r in results:
    by_label.setdefault(r.policy, set()).add((r.task, r.init))
common = set.intersection(*by_label.values()) if by_label else set()
results = [r for r in results if (r.task, r.init) in common]
labels = sorted(by_label, key=lambda label: ("@" in label, label))
summary = summarize(results, labels)
summary["ros"] = ros_summary(results, labels)
summary["episodes_paired"] = sorted(common)
table = markdown_table(summary) + ros_table(summary["ros"])
(here / "summary.json").write_text(json.dumps(summary, indent=2))
(here / "table.md").write_text(table)
print(table)
