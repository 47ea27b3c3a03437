"""`quantvla eval libero`: closed-loop task success of policies, paired on the same episodes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from quantvla_ros.cli.output import print_json
from quantvla_ros.cli.progress import EpisodeProgress
from quantvla_ros.runtime.policy import Policy
from quantvla_ros.sim.client import LiberoClient, libero_available
from quantvla_ros.workflows.libero_eval import (
    SIM_VIEWS,
    Protocol,
    episodes_for,
    evaluate,
    load_done,
)
from quantvla_ros.workflows.libero_ros_eval import evaluate_through_ros, ros_label
from quantvla_ros.workflows.libero_ros_protocol import PACES
from quantvla_ros.workflows.libero_ros_summary import ros_summary, ros_table
from quantvla_ros.workflows.libero_summary import (
    bar_chart,
    markdown_table,
    summarize,
    write_gif,
)

PRECISIONS = ("fp32", "bf16", "fp16")


def register(sub) -> None:
    """Add the `eval` command and its `libero` subcommand."""
    p = sub.add_parser("eval", help="closed-loop evaluation in a simulator")
    which = p.add_subparsers(dest="benchmark", required=True)
    q = which.add_parser("libero", help="LIBERO task success, policies paired per episode "
                                        "(needs `make libero`)")
    q.add_argument("--policy", action="append", required=True, metavar="SRC[@PRECISION]",
                   help="a checkpoint, an artifact or a named model; repeat to compare. "
                        "@bf16 / @fp16 runs it in that precision (default fp32)")
    q.add_argument("--suite", default="libero_object")
    q.add_argument("--tasks", default="all", help="comma-separated task indices, or all")
    q.add_argument("--inits", default="0-49", help="fixed init states: 0-49, 0,3,7, ...")
    q.add_argument("--workers", type=int, default=1, help="episodes in parallel")
    q.add_argument("--threads", type=int, default=1,
                   help="torch threads per worker (default 1: with more, a core taken by "
                        "another process stalls every op; see docs/libero.md)")
    q.add_argument("--seed", type=int, default=0, help="base of the per-episode noise seeds")
    q.add_argument("--actions-per-chunk", type=int, default=5, help="replan after this many")
    q.add_argument("--max-steps", type=int, help="step limit (default: the suite's)")
    q.add_argument("--noise-scale", type=float,
                   help="serve every policy with this start-noise scale (0: each chunk starts "
                        "from the noise's mean, deterministic; 1: sampling; default: what "
                        "each policy declares)")
    q.add_argument("--render-every-step", action="store_true",
                   help="render the cameras on every step, not only where the policy looks")
    q.add_argument("--cameras", default="",
                   help="view=slot pairs, e.g. agentview=base_0_rgb,wrist=left_wrist_0_rgb "
                        "(default: the policy's first camera slots in that order)")
    q.add_argument("--video", metavar="DIR", help="write GIFs of each policy's first episodes")
    q.add_argument("--video-episodes", type=int, default=2)
    q.add_argument("--out", metavar="DIR", help="episodes.jsonl (resumable), summary.json, "
                                                "table.md, success.png")
    q.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    q.add_argument("--through-ros", action="store_true",
                   help="run each episode through ROS 2: libero_bridge (the simulated robot) "
                        "and quantvla_node as processes on their own ROS domain")
    q.add_argument("--pace", default="lockstep",
                   help="through ROS: lockstep, realtime, or both comma-separated")
    q.add_argument("--compare-direct", action="store_true",
                   help="through ROS: also run the policies directly, first in the table")
    q.add_argument("--trajectory-points", type=int, default=0,
                   help="through ROS: points per trajectory (default: the policies' action "
                        "horizon; the node still replans every --actions-per-chunk steps, "
                        "the extra points keep a real-time robot moving meanwhile)")
    q.add_argument("--stall-timeout", type=float, default=60.0,
                   help="through ROS: seconds without a trajectory that end an episode as "
                        "stalled (retried once, never counted)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(handler=run)


def parse_indices(text: str, count: int | None = None) -> list[int]:
    """Parse '0-4,7' (or 'all' with ``count``) into sorted unique indices."""
    if text == "all":
        if count is None:
            raise ValueError("'all' needs a known count")
        return list(range(count))
    out = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"bad index range {part!r}: expected N or N-M")
        out.update(range(int(lo), int(hi or lo) + 1))
    if not out:
        raise ValueError(f"no indices in {text!r}")
    return sorted(out)


def parse_policy(spec: str) -> tuple[str, str]:
    """Split 'SRC@precision' into (SRC, precision)."""
    src, at, precision = spec.rpartition("@")
    if at and precision in PRECISIONS:
        return src, precision
    return spec, "fp32"


def load_policies(specs: list[str], device: str) -> dict[str, Policy]:
    """Load each policy once, labelled by its folder or model name (+ precision)."""
    policies: dict[str, Policy] = {}
    for spec in specs:
        src, precision = parse_policy(spec)
        label = Path(src).name or src
        label = label if precision == "fp32" else f"{label}@{precision}"
        while label in policies:
            label += "'"
        policies[label] = Policy.load(src, device=device, precision=precision)
    return policies


def camera_map(text: str, slots: tuple[str, ...]) -> dict[str, str]:
    """Return view -> camera slot: parsed from ``text``, else views in order onto ``slots``."""
    if not text:
        return dict(zip(SIM_VIEWS, slots, strict=False))
    pairs = dict(p.split("=", 1) for p in text.split(",") if "=" in p)
    unknown = sorted(set(pairs) - set(SIM_VIEWS)) + sorted(set(pairs.values()) - set(slots))
    if unknown or not pairs:
        raise ValueError(f"--cameras {text!r}: views are {list(SIM_VIEWS)}, "
                         f"the policy's slots {list(slots)}")
    return pairs


def through_ros_plan(args, policies: dict, protocol: Protocol) -> dict:
    """Return the ROS runs' paces, their labels (direct first if compared) and sources."""
    paces = [p.strip() for p in args.pace.split(",") if p.strip()]
    if not paces or any(p not in PACES for p in paces):
        raise ValueError(f"--pace {args.pace!r}: give {' or '.join(PACES)} (comma-separated)")
    if protocol.render_every_step:
        raise ValueError("--through-ros runs LIBERO's camera schedule: --render-every-step "
                         "is not supported there")
    horizon = min(p.cfg.action_horizon for p in policies.values())
    points = args.trajectory_points or horizon
    if not protocol.actions_per_chunk <= points <= horizon:
        raise ValueError(f"--trajectory-points {points}: between --actions-per-chunk "
                         f"({protocol.actions_per_chunk}) and the action horizon ({horizon})")
    sources = {}
    for label, spec in zip(policies, args.policy, strict=True):
        src, precision = parse_policy(spec)
        sources[label] = (str(Path(src).resolve()) if Path(src).exists() else src, precision)
    labels = [ros_label(label, pace) for label in policies for pace in paces]
    return {"paces": paces, "sources": sources, "points": points,
            "labels": ([*policies] if args.compare_direct else []) + labels}


def run(args) -> int:
    """Evaluate; print the table (or JSON) and write the files under --out / --video."""
    ok, why = libero_available()
    if not ok:
        raise FileNotFoundError(f"LIBERO is not available: {why}")
    import torch

    # Each worker's chunks run in this process beside its simulator process. torch's
    # intra-op threads wait for each other at every op, so when another process holds a
    # core, a second thread turns each op into a scheduler time slice (a 67 ms chunk at one
    # thread took 151 ms median, 2.3 s worst, at two on a busy 2-core machine): one thread
    # per worker unless asked; parallelism comes from --workers.
    if args.threads < 1:
        raise ValueError(f"--threads {args.threads}: need at least 1")
    torch.set_num_threads(args.threads)
    policies = load_policies(args.policy, args.device)
    if args.noise_scale is not None:
        for policy in policies.values():
            policy.set_noise_scale(args.noise_scale)
    first = next(iter(policies.values()))
    cameras = camera_map(args.cameras, first.cfg.cameras)
    protocol = Protocol(suite=args.suite, actions_per_chunk=args.actions_per_chunk,
                        max_steps=args.max_steps, render_every_step=args.render_every_step,
                        resolution=max(p.cfg.vision.image_size for p in policies.values()))
    with LiberoClient() as sim:
        tasks_info = sim.tasks(args.suite)
    tasks = parse_indices(args.tasks, len(tasks_info))
    inits = parse_indices(args.inits)
    bad = [t for t in tasks if t >= len(tasks_info)]
    if bad:
        raise ValueError(f"tasks {bad} out of range: {args.suite} has {len(tasks_info)} tasks")
    episodes = episodes_for(tasks, inits, args.seed)
    out = Path(args.out) if args.out else None
    done = load_done(out)
    ros = through_ros_plan(args, policies, protocol) if args.through_ros else None
    labels = ros["labels"] if ros else list(policies)
    bar = EpisodeProgress(sum((label, ep.task, ep.init, ep.seed) not in done
                              for ep in episodes for label in labels))
    keep = args.video_episodes if args.video else 0
    results = []
    if ros is None or args.compare_direct:
        results += evaluate(policies, episodes, protocol, cameras, LiberoClient, args.workers,
                            out, keep, on_result=bar)
    if ros is not None:
        results += evaluate_through_ros(
            ros["sources"], episodes, protocol, cameras, ros["paces"], args.workers, out, keep,
            on_result=bar, threads=args.threads, stall_timeout_s=args.stall_timeout,
            noise_scale=args.noise_scale, trajectory_points=ros["points"])
    summary = summarize(results, labels)
    summary["protocol"] = {**vars(protocol), "step_limit": protocol.step_limit,
                           "episodes": len(episodes), "seed": args.seed}
    summary["sources"] = {label: p.source for label, p in policies.items()}
    summary["noise_scales"] = {label: p.noise_scale for label, p in policies.items()}
    table = markdown_table(summary)
    if ros is not None:
        summary["ros"] = ros_summary(results, labels)
        summary["protocol"]["through_ros"] = {"paces": ros["paces"], "noise": "sequence",
                                              "trajectory_points": ros["points"]}
        table += ros_table(summary["ros"])
    if out is not None:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        (out / "table.md").write_text(table)
        bar_chart(summary, out / "success.png")
    if args.video:
        folder = Path(args.video)
        folder.mkdir(parents=True, exist_ok=True)
        for r in results:
            if r.frames:
                tag = "ok" if r.success else "fail"
                write_gif(r.frames, folder / f"{r.policy}_task{r.task}_init{r.init}_{tag}.gif")
    if args.json:
        print_json(summary)
    else:
        print(table)
        crashed = sum(len(s["crashed"]) for s in summary["policies"].values())
        if crashed:
            print(f"{crashed} episode(s) crashed twice and are not counted; see summary.json",
                  file=sys.stderr)
    return 0

