"""Summaries of paired LIBERO results: Wilson intervals, paired differences, McNemar, charts.

Crashed episodes (``success`` None) are listed and left out of every rate; a paired
comparison uses only the episodes both policies finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from quantvla_ros.workflows.eval_stats import (
    mcnemar_exact,
    paired_difference_interval,
    wilson_interval,
)


def _rate(outcomes: list[bool]) -> dict:
    n, k = len(outcomes), int(sum(outcomes))
    low, high = wilson_interval(k, n) if n else (0.0, 1.0)
    return {"successes": k, "episodes": n, "rate": k / n if n else None,
            "wilson95": [low, high]}


def summarize(results, policies: Sequence[str]) -> dict:
    """Return per-policy totals and per-task rates, crashes, and paired tests vs the first."""
    by_key = {(r.policy, r.task, r.init, r.seed): r for r in results}
    tasks = sorted({r.task for r in results})
    instructions = {r.task: r.instruction for r in results if r.instruction}
    out = {"policies": {}, "paired": {}, "tasks": {t: instructions.get(t, "") for t in tasks}}
    for label in policies:
        mine = [r for r in results if r.policy == label]
        ok = [r for r in mine if r.success is not None]
        out["policies"][label] = {
            "total": _rate([r.success for r in ok]),
            "per_task": {t: _rate([r.success for r in ok if r.task == t]) for t in tasks},
            "crashed": [{"task": r.task, "init": r.init, "error": r.error}
                        for r in mine if r.success is None],
            "mean_steps": (sum(r.steps for r in ok) / len(ok)) if ok else None,
            "policy_ms_per_chunk": (sum(r.policy_ms for r in ok) / max(1, sum(r.chunks
                                    for r in ok))) if ok else None,
        }
    base = policies[0]
    for label in policies[1:]:
        pairs = [(by_key[k], by_key[(label, *k[1:])]) for k in by_key
                 if k[0] == base and (label, *k[1:]) in by_key]
        pairs = [(a, b) for a, b in pairs if a.success is not None and b.success is not None]
        test = mcnemar_exact([a.success for a, _ in pairs], [b.success for _, b in pairs])
        both = sum(a.success and b.success for a, b in pairs)
        interval = (paired_difference_interval(both, test.b_only, test.a_only,
                                               test.n - both - test.a_only - test.b_only)
                    if test.n else (-1.0, 1.0))
        out["paired"][label] = {"vs": base, "episodes": test.n, "only_base": test.a_only,
                                "only_this": test.b_only, "difference": -test.difference,
                                "difference95": list(interval), "mcnemar_p": test.p_value}
    return out


def _pct(rate: dict) -> str:
    if rate["rate"] is None:
        return "-"
    lo, hi = rate["wilson95"]
    return f"{100 * rate['rate']:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]"


def _pts(fraction: float) -> str:
    return f"{100 * fraction + 0.0:+.0f}"


def markdown_table(summary: dict) -> str:
    """Return the summary as markdown: one row per policy, totals and per-task rates."""
    tasks = list(summary["tasks"])
    head = ("| policy | success (95% Wilson) | n | crashed | vs first (95%; McNemar p) | "
            + " | ".join(f"task {t}" for t in tasks) + " |")
    rows = [head, "|" + "---|" * (5 + len(tasks))]
    for label, s in summary["policies"].items():
        paired = summary["paired"].get(label)
        vs = (f"{_pts(paired['difference'])} pts [{_pts(paired['difference95'][0])}, "
              f"{_pts(paired['difference95'][1])}] (+{paired['only_this']} / "
              f"-{paired['only_base']}, p={paired['mcnemar_p']:.3g})" if paired else "-")
        per = " | ".join(f"{r['successes']}/{r['episodes']}" for r in s["per_task"].values())
        rows.append(f"| {label} | {_pct(s['total'])} | {s['total']['episodes']} | "
                    f"{len(s['crashed'])} | {vs} | {per} |")
    return "\n".join(rows) + "\n"


def bar_chart(summary: dict, path: Path) -> Path:
    """Write a PNG bar chart of total success per policy with Wilson intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(summary["policies"])
    totals = [summary["policies"][p]["total"] for p in labels]
    rates = [100 * (t["rate"] or 0.0) for t in totals]
    low = [r - 100 * t["wilson95"][0] for r, t in zip(rates, totals, strict=True)]
    high = [100 * t["wilson95"][1] - r for r, t in zip(rates, totals, strict=True)]
    fig, ax = plt.subplots(figsize=(1.4 + 1.2 * len(labels), 3.6))
    ax.bar(range(len(labels)), rates, yerr=[low, high], capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_ylabel("success (%), 95% Wilson")
    ax.set_ylim(0, 100)
    n = totals[0]["episodes"] if totals else 0
    ax.set_title(f"LIBERO closed loop, paired episodes (n={n})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_gif(frames, path: Path, fps: int = 4) -> Path:
    """Write uint8 HxWx3 frames as an animated GIF (Pillow)."""
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], loop=0,
                   duration=int(1000 / fps))
    return path
