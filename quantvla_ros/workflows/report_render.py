"""Render a fidelity report as markdown, JSON and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path


def _mean(values) -> float | None:
    if values is None:
        return None
    values = values if isinstance(values, list) else [values]
    return sum(values) / len(values)


def _fmt(x, digits=3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _joints(values, digits=4) -> str:
    """Mean and largest of a per-joint list."""
    if not values:
        return "-"
    return f"{sum(values) / len(values):.{digits}g} / {max(values):.{digits}g}"


def _error_row(label: str, e: dict) -> str:
    return (f"| {label} | {_fmt(e['rel_l2_vs_displacement'], 4)} | {_fmt(e['sqnr_db'], 2)} | "
            f"{_joints(e['robot_rms_per_joint'])} | {_joints(e['robot_max_abs_per_joint'])} | "
            f"{_fmt(e['rel_l2_vs_actions_incl_noise'], 4)} |")


def to_markdown(r: dict) -> str:
    """Render the report as markdown: the action error and per-layer ratio tables."""
    cal = r["calibration"]
    e, u = r["action_error"], r["action_error_without_balance"]
    lines = [
        f"# QuantVLA fidelity report: {r['bits']} ({r['preset']})", "",
        f"- artifact: `{r['artifact']}`",
        f"- teacher: {r['source'].get('model') or r['source'].get('path')}",
        "- quantized: " + "; ".join(f"{p['part']} {p['scheme']} ({p['modules']})"
                                    for p in r.get("parts", ())),
        f"- held-out samples: {cal['held_out_samples']} from `{cal['spec']}` "
        f"({cal.get('held_out', 'held out')})"
        + (" — **SYNTHETIC observations, not robot data**" if cal["synthetic"] else ""),
    ]
    if r.get("balance_config"):
        lines.append("- balance: " + ", ".join(f"{k} {v}" for k, v in r["balance_config"]
                                                 .items() if k not in ("atm", "ohb", "towers")))
    if r.get("method", "quantvla") != "quantvla":
        lines.append(f"- method: {r['method']}, budget {100 * r['budget']:.2f}% of the "
                     f"layout's bf16 bytes ({r['budget_bytes']} bytes), stored {r['bytes']} "
                     f"bytes ({100 * r['fraction']:.2f}%)")
    for p in r.get("parts", ()):
        if p["part"] in ("per-layer", "kept bf16"):  # linears off the default scheme
            lines.append(f"- {p['scheme']}: " + ", ".join(f"`{n}`" for n in p["names"]))
    for p in r.get("row_blocks", ()):
        lines.append(f"- `{p['names'][0]}`: {p['scheme']} (permutation {p['permutation']})")
    if cal.get("note"):
        lines.append(f"- note: {cal['note']}")
    lines += [
        "", "## Action chunk error vs the float teacher (same noise)", "",
        "Relative L2 and SQNR are against the teacher's displacement (its actions minus the "
        "shared start noise, model space); robot units are the error unnormalized through "
        "the policy's normalizer (per joint: mean / worst joint). The last column divides "
        "by the actions themselves, noise included, which flatters.", "",
        "| student | rel. L2 vs displacement | SQNR (dB) | RMS error, robot units | "
        "max abs error, robot units | rel. L2 vs actions incl. noise |",
        "|---|---|---|---|---|---|",
        _error_row("quantized + ATM/OHB", e),
        _error_row("quantized, no ATM/OHB", u),
        "", "Per held-out sample (quantized + ATM/OHB):", "",
        "| sample | rel. L2 vs displacement | SQNR (dB) | RMS error, robot units |",
        "|---|---|---|---|",
    ]
    first = cal.get("held_out_indices", [0])[0]
    for i, s in enumerate(e["per_sample"]):
        lines.append(f"| {first + i} | {_fmt(s['rel_l2_vs_displacement'], 4)} | "
                     f"{_fmt(s['sqnr_db'], 2)} | {s['robot_rms']:.4g} |")
    lines += [
        "", "## Per layer: teacher / student ratios (1.0 = matched)", "",
        "| layer | alpha (mean) | beta | logit std before | after | o_proj RMS before | after |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["layers"]:
        lines.append(
            f"| {row['layer']} | {_fmt(_mean(row['alpha']))} | {_fmt(row['beta'])} | "
            f"{_fmt(_mean(row['logit_std_ratio_before']))} | "
            f"{_fmt(_mean(row['logit_std_ratio_after']))} | "
            f"{_fmt(row['oproj_rms_ratio_before'])} | {_fmt(row['oproj_rms_ratio_after'])} |")
    lines += ["", "Logit-std ratios are averaged over heads here; report.json has every head.",
              "", "![ratios](ratios.png)", "", "![action error](action_error.png)", ""]
    return "\n".join(lines)


def plot(r: dict, out: Path) -> list[str]:
    """Write ratios.png and action_error.png into ``out``; return their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["layer"] for row in r["layers"]]
    x = range(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, key, title in ((axes[0], "logit_std", "attention logit std (mean over heads)"),
                           (axes[1], "oproj_rms", "o_proj output RMS")):
        for when, style in (("before", "o--"), ("after", "s-")):
            ys = [_mean(row[f"{key}_ratio_{when}"]) for row in r["layers"]]
            ax.plot(x, [float("nan") if y is None else y for y in ys], style, label=when)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xticks(list(x), names, rotation=90, fontsize=7)
        ax.set_title(f"teacher / student: {title}", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "ratios.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, label in (("action_error", "with ATM/OHB"),
                       ("action_error_without_balance", "without")):
        ys = r[key]["per_step_rel_l2_vs_displacement"]
        ax.plot([float("nan") if y is None else y for y in ys], label=label)
    ax.set_xlabel("action step in chunk")
    ax.set_ylabel("rel. L2 error vs the teacher's displacement")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "action_error.png", dpi=100)
    plt.close(fig)
    return ["ratios.png", "action_error.png"]


def write_report(r: dict, out_dir) -> list[str]:
    """Write report.json, report.md and the plots into ``out_dir``; return the names."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(r, indent=2))
    (out / "report.md").write_text(to_markdown(r))
    return ["report.md", "report.json", *plot(r, out)]
