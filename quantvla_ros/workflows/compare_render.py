"""The methods comparison as a markdown table and an error-vs-bytes plot (compare_methods.py)."""

from __future__ import annotations

from pathlib import Path


def _num(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def budget_label(row: dict) -> str:
    """``0.35`` for a budgeted method, ``W4A8`` / ``W8A8`` for quantvla at its own bytes."""
    return row["bits"].upper() if row["budget"] is None else f"{row['budget']:g}"


def paired_label(row: dict) -> str:
    """Frames better of all, mean per-frame difference and its bootstrap 95% interval."""
    p = row.get("paired_vs_w4a8")
    if not p:
        return "-"
    lo, hi = p["ci95"]
    return (f"{p['better']} of {p['frames']}, {p['mean_difference']:+.4f} "
            f"[{lo:+.4f}, {hi:+.4f}]")


def table_rows(results: dict) -> list[list[str]]:
    """Return the table's cells, one list per results row, in results order."""
    out = []
    for r in results["rows"]:
        joints = " ".join(f"{v:.4f}" for v in r["robot_rms_per_joint"])
        wall = r["quantize_wall_s"]
        out.append([r["method"], budget_label(r),
                    f"{r['stored_bytes']:,} ({100 * r['fraction_of_bf16']:.1f}%)",
                    _num(r["rel_l2_vs_displacement"], ".4f"), _num(r["sqnr_db"], ".1f"),
                    joints, "-" if wall is None else f"{wall:.0f} s", paired_label(r)])
    return out


HEADER = ["method", "budget", "stored bytes (% of bf16)", "rel. L2 vs displacement",
          "SQNR (dB)", "per-joint RMS (action units)", "quantize wall time",
          "per frame vs quantvla W4A8: better, mean diff [95%]"]


def to_markdown(results: dict) -> str:
    """Return the comparison table with what it was measured on."""
    req = results["request"]
    first = next(iter(results["rows"]), None)
    frames = first["held_out_indices"] if first else None
    lines = [
        "# Methods at equal bytes", "",
        f"- policy: `{req['source']}`; calibration `{req['calib']}`"
        + (f", first {req['max_samples']} frames" if req["max_samples"] else ""),
        f"- layout: {results['layout_linears']} linears, {results['bf16_bytes']:,} bf16 bytes; "
        f"uniform W4A8 {results['uniform_bytes']['w4a8']:,}, W8A8 "
        f"{results['uniform_bytes']['w8a8']:,}",
        "- scored on held-out frames " + (f"[{frames[0]}, {frames[1]})" if frames else "-")
        + " with the report's noise; errors vs the float teacher",
        f"- date {results['date']}" + (f"; `{results['command']}`" if results["command"]
                                       else ""),
        "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(results)]
    for f in results["failed"]:
        lines.append(f"\nfailed: {f['name']}: {f['error']}")
    if results.get("not_made"):
        lines.append(f"\nnot made yet: {', '.join(results['not_made'])}")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Error vs stored bytes (% of bf16), one line per method; quantvla as its two points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    methods = dict.fromkeys(r["method"] for r in results["rows"])
    for method in methods:
        rows = sorted((r for r in results["rows"] if r["method"] == method),
                      key=lambda r: r["stored_bytes"])
        xs = [100 * r["fraction_of_bf16"] for r in rows]
        ys = [float("nan") if r["rel_l2_vs_displacement"] is None
              else r["rel_l2_vs_displacement"] for r in rows]
        # quantvla is two separate layouts (W4A8, W8A8), not a curve: points only
        ax.plot(xs, ys, "o-" if method != "quantvla" else "s", label=method)
        if method == "quantvla":
            for x, y, r in zip(xs, ys, rows, strict=True):
                ax.annotate(r["bits"].upper(), (x, y), textcoords="offset points",
                            xytext=(4, 4), fontsize=8)
    ax.set_xlabel("stored bytes, % of the layout's bf16 bytes")
    ax.set_ylabel("rel. L2 error vs the teacher's displacement")
    ax.set_yscale("log")
    ax.grid(True, which="both", lw=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(results: dict, out_dir) -> list[str]:
    """Write table.md and error_vs_bytes.png beside results.json; return their names."""
    out = Path(out_dir)
    (out / "table.md").write_text(to_markdown(results))
    plot(results, out / "error_vs_bytes.png")
    return ["results.json", "table.md", "error_vs_bytes.png"]
