"""Last step of scripts/bench_gpu.sh: markdown tables from whatever the earlier steps wrote.

``python -m quantvla_ros.workflows.gpu_report OUT_DIR`` reads env.txt, smoke.jsonl,
kernels.jsonl and e2e.jsonl (any may be missing or cut short by a timeout; lines that are
not JSON objects are skipped) and prints the summary.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from quantvla_ros.kernels.bench import format_markdown

E2E_PRECISIONS = ("bf16", "w8a8", "w4a8", "w4a4")


def read_jsonl(path: Path) -> list[dict]:
    """Return the JSON-object lines of ``path`` ([] if it does not exist)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _fmt(v, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec) if isinstance(v, float) else str(v)


def _table(head: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows)]


def env_section(rows: list[dict]) -> list[str]:
    """Versions, the GPU and the SDPA backends per attention call."""
    env = next((r for r in rows if r.get("step") == "env"), None)
    if env is None:
        return ["## Environment", "", "missing (the env step failed)"]
    lines = ["## Environment", "",
             " ".join(f"{k}={env.get(k)}" for k in ("gpu", "torch", "triton", "cuda",
                                                     "python", "TRITON_INTERPRET")), ""]
    probes = {k[5:]: v for k, v in env.items() if k.startswith("sdpa_")}
    names = sorted({n for p in probes.values() for n in p})
    lines += _table(["attention", *names], [[call, *(p.get(n, "-")[:90] for n in names)]
                                            for call, p in probes.items()])
    return lines


def smoke_section(rows: list[dict]) -> list[str]:
    """One line per smoke check."""
    return ["## Smoke", "", *_table(
        ["step", "what", "check", "rel err"],
        [[r.get("step"), r.get("kernel") or f"{r.get('bits')} {r.get('model', '')} "
          f"({' vs '.join(map(str, r.get('last_kernels', [])))})",
          r.get("check"), _fmt(r.get("rel_err"), ".2e")] for r in rows])]


def kernel_section(rows: list[dict]) -> list[str]:
    """Check verdicts (failures listed) and the timing table."""
    checks = [r for r in rows if r.get("check") is not None]
    bad = [r for r in checks if r["check"] != "ok"]
    lines = ["## Kernels", "", f"{len(checks) - len(bad)} of {len(checks)} checks ok", ""]
    lines += [f"- {r['kernel']} {r['M']}x{r['K']}x{r['N']}: {r['check']}" for r in bad]
    timed = [r for r in rows if r.get("ms") is not None or "ERROR" in str(r.get("check"))]
    return lines + ["", format_markdown(timed) if timed else "no timings"]


def e2e_section(rows: list[dict], log: str = "") -> list[str]:
    """Chunk latency and peak memory per precision, then each profile's top kernels.

    ``log`` is run.log: a precision without a row was killed there ("TIMEOUT") or skipped.
    """
    by = {r.get("precision"): r for r in rows}
    table = []
    for p in E2E_PRECISIONS:
        r = by.get(p)
        if r is None:
            why = "timeout" if f"== e2e {p}: TIMEOUT" in log else \
                "skipped (out of time)" if f"== e2e {p}: skipped" in log else "missing"
            table.append([p, why, ""])
            continue
        if "error" in r:
            table.append([p, "failed", r["error"][:80]])
            continue
        lat = r["latency_ms"]
        table.append([p, lat["median"], lat["p90"], r["prefix_ms"], r["denoise_ms"],
                      _fmt(r.get("peak_gpu_mem_mb"), ".0f"),
                      _fmt(r["weight_bytes"] / 2**20, ".0f"), r.get("actions_finite")])
    lines = ["## End to end (pi05)", "", *_table(
        ["precision", "median ms", "p90 ms", "prefix ms", "denoise ms", "peak GPU MiB",
         "weights MiB", "finite"], table)]
    for p, r in by.items():
        prof = r.get("profile")
        if prof:
            lines += ["", f"### Profile of one {p} chunk: {prof['launches']} kernels, "
                          f"{prof['copies']} copies, {prof['total_us'] / 1000:.2f} ms of "
                          "kernel time", ""]
            lines += _table(["kernel", "count", "us"],
                            [[t["name"][:90], t["count"], t["us"]] for t in prof["top"]])
    return lines


def report(folder: Path) -> str:
    """Render the whole summary as markdown."""
    env = read_jsonl(folder / "env.txt")
    lines = [*env_section(env), "", *smoke_section(read_jsonl(folder / "smoke.jsonl")), "",
             *kernel_section(read_jsonl(folder / "kernels.jsonl")), "",
             *e2e_section(read_jsonl(folder / "e2e.jsonl"), _text(folder / "run.log"))]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(report(Path(sys.argv[1])), end="")
