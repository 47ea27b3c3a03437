"""Summary of the finished rows of reports/libero/through_ros/float (the run was stopped)."""
import json
import sys
from pathlib import Path

from quantvla_ros.workflows.libero_eval import EpisodeResult
from quantvla_ros.workflows.libero_ros_summary import ros_summary, ros_table
from quantvla_ros.workflows.libero_summary import markdown_table, summarize

out = Path(sys.argv[1])
tasks = {int(t) for t in sys.argv[2].split(",")}
rows = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines() if line]
results = [EpisodeResult(**r) for r in rows if r["task"] in tasks]
labels = ["pi05-libero-object", "pi05-libero-object@ros-lockstep",
          "pi05-libero-object@ros-realtime"]
summary = summarize(results, labels)
summary["ros"] = ros_summary(results, labels)
summary["note"] = f"partial: tasks {sorted(tasks)}, init 0; the run was stopped"
(out / "summary.json").write_text(json.dumps(summary, indent=2))
table = markdown_table(summary) + ros_table(summary["ros"])
(out / "table.md").write_text(table)
print(table)
