"""The methods side by side at equal bytes (issue 21, item 5): quantize, report, compare.

For one float policy and one calibration buffer: `quantvla` at W4A8 and at W8A8 (each at its
own bytes), and `qvla` / `daptq` at each budget (a fraction of the layout linears' bf16
bytes), every artifact quantized into ``DIR/<point>`` and scored by `quantvla report` on
the same held-out frames with the same noise. Results: ``results.json``; the table and the
plot are written by workflows/compare_render.py.

Resumable: a point whose artifact manifest exists is reused, not quantized again (its
request, recorded in ``DIR/<point>.quantize.json``, must match), and a report is reused while
the artifact's weights hash and the calibration spec are unchanged. QVLA's measured costs are
cached in ``DIR/qvla_costs.pt`` (its ``costs=`` option), so a budget sweep measures them
once; DA-PTQ has no such cache and measures per budget.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from quantvla_ros.quant.apply import QuantConfig, student_of
from quantvla_ros.quant.artifact import load_artifact
from quantvla_ros.quant.budget import layout_bf16_bytes, plan_bytes, stored_layout_bytes
from quantvla_ros.quant.layouts import get_layout
from quantvla_ros.quant.manifest import ArtifactManifest
from quantvla_ros.quant.plan import Plan
from quantvla_ros.quant.scheme import parse_bits
from quantvla_ros.runtime.policy import Policy
from quantvla_ros.runtime.source import PolicySource
from quantvla_ros.workflows.methods import METHODS, parse_budget
from quantvla_ros.workflows.quantize import QuantizeRequest, quantize_policy
from quantvla_ros.workflows.report import build_report

BUDGETED = tuple(m for m in METHODS if m != "quantvla")  # methods given a --budget
UNIFORM = ("w4a8", "w8a8")  # the quantvla points, each at its own bytes
REFERENCE = "quantvla-w4a8"  # the point every other is paired with, frame by frame
BOOTSTRAP = 2000
QVLA_COSTS = "qvla_costs.pt"


class ResumeMismatch(ValueError):
    """``DIR/<point>`` holds an artifact another request made."""


@dataclass(frozen=True)
class Point:
    """One artifact of the comparison: a method at a budget (quantvla: at its bits)."""

    method: str
    bits: str = "w4a8"
    budget: float | None = None

    @property
    def name(self) -> str:
        """Folder name: ``quantvla-w4a8``, ``qvla-0.35``."""
        return f"{self.method}-{self.bits if self.budget is None else f'{self.budget:g}'}"


@dataclass
class CompareRequest:
    """A comparison: policy, calibration, budgets, methods and their options."""

    source: str  # a named config or a checkpoint folder
    calib: str
    budgets: tuple[float, ...] = ()
    methods: tuple[str, ...] = METHODS
    method_options: dict[str, dict[str, str]] = field(default_factory=dict)
    max_samples: int | None = None
    seed: int = 0
    preset: str = "quantvla"


def parse_budgets(text: str) -> tuple[float, ...]:
    """``0.30,0.35,45%`` -> (0.3, 0.35, 0.45), sorted, each in (0, 1]; ValueError otherwise."""
    items = [s for s in (t.strip() for t in str(text).split(",")) if s]
    if not items:
        raise ValueError(f"--budgets: expected fractions like 0.30,0.35, got {text!r}")
    return tuple(sorted({parse_budget(s) for s in items}))


def parse_methods(text: str) -> tuple[str, ...]:
    """``quantvla,qvla`` -> ("quantvla", "qvla"); an unknown name is a ValueError."""
    names = tuple(dict.fromkeys(s.strip() for s in str(text).split(",") if s.strip()))
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise ValueError(f"--methods: unknown method(s) {', '.join(unknown) or '(none)'}; "
                         f"known: {', '.join(METHODS)}")
    return names


def parse_method_options(items) -> dict[str, dict[str, str]]:
    """``["qvla:solver=greedy", "daptq:cost=pooled"]`` -> {method: {key: value}}."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        method, colon, rest = item.partition(":")
        key, eq, value = rest.partition("=")
        if not colon or not eq or not key or method not in BUDGETED:
            raise ValueError(f"--method-option: expected METHOD:KEY=VALUE with METHOD one of "
                             f"{', '.join(BUDGETED)}, got {item!r}")
        out.setdefault(method, {})[key] = value
    return out


def points_of(req: CompareRequest) -> list[Point]:
    """Return the points to make, quantvla's first (the reference), in a fixed order."""
    unknown = [m for m in req.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    for b in req.budgets:
        parse_budget(b)
    stray = sorted(set(req.method_options) - set(req.methods))
    if stray:
        raise ValueError(f"method options for {', '.join(stray)}, which is not compared")
    budgeted = [m for m in req.methods if m in BUDGETED]
    if budgeted and not req.budgets:
        raise ValueError(f"{', '.join(budgeted)} need at least one budget (--budgets)")
    points = [Point("quantvla", bits) for bits in UNIFORM if "quantvla" in req.methods]
    return points + [Point(m, budget=b) for m in budgeted for b in req.budgets]


def layout_sizes(req: CompareRequest) -> dict:
    """Return the layout's linears, their bf16 bytes and uniform W4A8 / W8A8 stored bytes."""
    teacher = Policy.load(PolicySource.resolve(req.source, seed=req.seed))
    layout = get_layout(req.preset, family=teacher.family.name)
    model = student_of(teacher.model)
    names = sorted(QuantConfig(parse_bits("w4a8"), layout).schemes(model))
    sizes = {"layout": names, "bf16_bytes": layout_bf16_bytes(model, names)}
    for bits in UNIFORM:
        schemes = QuantConfig(parse_bits(bits), layout).schemes(model)
        sizes[f"{bits}_bytes"] = plan_bytes(model, schemes, Plan())
    return sizes


def check_budgets(budgets, sizes: dict) -> None:
    """Refuse a budget below uniform W4A8's bytes (qvla / daptq have nothing smaller)."""
    floor = sizes["w4a8_bytes"]
    low = [b for b in budgets if int(b * sizes["bf16_bytes"]) < floor]
    if low:
        raise ValueError(
            f"budget(s) {', '.join(f'{b:g}' for b in low)} below uniform W4A8's bytes "
            f"({floor} of {sizes['bf16_bytes']} bf16 bytes, "
            f"{floor / sizes['bf16_bytes']:.4f}): qvla and daptq have no option below W4A8")


def point_request(req: CompareRequest, point: Point, out: Path) -> QuantizeRequest:
    """Return the `quantvla quantize` request of one point (QVLA's costs cached in `out`)."""
    options = dict(req.method_options.get(point.method, {}))
    if point.method == "qvla":
        options.setdefault("costs", str(out / QVLA_COSTS))
    return QuantizeRequest(source=req.source, calib=req.calib, bits=point.bits,
                           preset=req.preset, seed=req.seed, max_samples=req.max_samples,
                           method=point.method, budget=point.budget, method_options=options)


def _request_record(req: CompareRequest, point: Point, out: Path) -> dict:
    """Return what makes a point's artifact: its request, method options as given.

    The default cost cache's path is left out, so a moved --out folder still resumes.
    """
    q = point_request(req, point, out)
    return {**{k: getattr(q, k) for k in ("source", "calib", "bits", "preset", "seed",
                                          "max_samples", "method", "budget")},
            "method_options": dict(req.method_options.get(point.method, {}))}


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def ensure_artifact(req: CompareRequest, point: Point, out: Path, quantize=quantize_policy,
                    log=print) -> dict:
    """Quantize `point` into ``out/<name>`` unless its manifest exists; return its record.

    The record (``out/<name>.quantize.json``) holds the request and the quantize wall time.
    An existing artifact made by another request is an error, not silently reused.
    """
    folder, side = out / point.name, out / f"{point.name}.quantize.json"
    record = _request_record(req, point, out)
    if (folder / "manifest.yaml").is_file():
        saved = _read_json(side)
        q = ArtifactManifest.read(folder).quantization
        same = (q.method == point.method and q.bits == point.bits and q.budget == point.budget
                and (saved is None or saved["request"] == record))
        if not same:
            raise ResumeMismatch(f"{folder} holds an artifact of another request; give "
                                 "another --out or remove it")
        log(f"{point.name}: artifact exists, reused")
        return {**(saved or {"request": record, "quantize_wall_s": None}), "reused": True}
    log(f"{point.name}: quantizing")
    start = time.perf_counter()
    quantize(point_request(req, point, out), folder, log=log)
    saved = {"request": record, "quantize_wall_s": round(time.perf_counter() - start, 1),
             "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(
                 timespec="seconds")}
    _write_json(side, saved)
    return {**saved, "reused": False}


def ensure_report(req: CompareRequest, point: Point, out: Path, report=build_report,
                  log=print) -> dict:
    """`quantvla report` of the point's artifact, reused while weights and calib match."""
    folder, side = out / point.name, out / f"{point.name}.report.json"
    weights = ArtifactManifest.read(folder).files
    saved = _read_json(side)
    if saved and saved.get("weights") == weights and saved.get("calib") == req.calib:
        return saved["report"]
    log(f"{point.name}: reporting on the held-out frames")
    r = report(folder, req.calib)
    _write_json(side, {"weights": weights, "calib": req.calib, "report": r})
    return r


def per_frame(report: dict) -> list[float]:
    """Each held-out frame's relative L2 vs the teacher's displacement."""
    return [s["rel_l2_vs_displacement"] for s in report["action_error"]["per_sample"]]


def paired(errors, reference, samples: int = BOOTSTRAP, seed: int = 0) -> dict:
    """Per-frame difference errors - reference: mean, paired bootstrap 95%, frames better."""
    d = np.asarray(errors, np.float64) - np.asarray(reference, np.float64)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (samples, len(d)))].mean(1)
    return {"frames": len(d), "better": int((d < 0).sum()), "worse": int((d > 0).sum()),
            "mean_difference": float(d.mean()),
            "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]}


def row_of(point: Point, made: dict, r: dict, stored: int, sizes: dict) -> dict:
    """One results row: bytes, the report's pooled errors, per-frame errors, wall time."""
    e = r["action_error"]
    return {"name": point.name, "method": point.method, "bits": point.bits,
            "budget": point.budget, "budget_bytes": None if point.budget is None
            else int(point.budget * sizes["bf16_bytes"]),
            "stored_bytes": stored, "fraction_of_bf16": stored / sizes["bf16_bytes"],
            "allocated_bytes": r.get("bytes"),
            "rel_l2_vs_displacement": e["rel_l2_vs_displacement"], "sqnr_db": e["sqnr_db"],
            "robot_rms": e["robot_rms"], "robot_rms_per_joint": e["robot_rms_per_joint"],
            "rel_l2_without_balance": r["action_error_without_balance"]
            ["rel_l2_vs_displacement"],
            "quantize_wall_s": made.get("quantize_wall_s"), "reused": made["reused"],
            "held_out_indices": r["calibration"]["held_out_indices"],
            "per_frame_rel_l2": per_frame(r)}


def add_paired(rows: list[dict]) -> None:
    """Pair every row with the quantvla W4A8 row on the same held-out frames."""
    ref = next((r for r in rows if r["name"] == REFERENCE), None)
    for row in rows:
        if ref is None or row is ref:
            continue
        if row["held_out_indices"] != ref["held_out_indices"] \
                or None in row["per_frame_rel_l2"] + ref["per_frame_rel_l2"]:
            row["paired_vs_w4a8"] = None
            continue
        row["paired_vs_w4a8"] = paired(row["per_frame_rel_l2"], ref["per_frame_rel_l2"])


def run_comparison(req: CompareRequest, out_dir, quantize=quantize_policy,
                   report=build_report, log=print, command: str | None = None,
                   make: bool = True) -> dict:
    """Make, score and compare every point; write and return ``results.json``'s content.

    Bad input (unknown method, budget outside (0, 1] or below uniform W4A8) raises
    ValueError before anything is quantized. A point that fails is recorded under
    ``failed`` and the others go on. ``make=False`` quantizes nothing: points without an
    artifact are listed under ``not_made`` (a summary while other runs fill the folder).
    """
    points = points_of(req)
    sizes = layout_sizes(req)
    check_budgets([p.budget for p in points if p.budget is not None], sizes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, failed, missing = [], [], []
    for point in points:
        if not make and not (out / point.name / "manifest.yaml").is_file():
            missing.append(point.name)
            continue
        try:
            made = ensure_artifact(req, point, out, quantize, log)
            r = ensure_report(req, point, out, report, log)
            model, *_ = load_artifact(out / point.name, verify=False)
            stored = stored_layout_bytes(model, sizes["layout"])
        except ResumeMismatch:
            raise
        except (RuntimeError, ValueError, OSError) as exc:
            log(f"{point.name}: FAILED: {exc}")
            failed.append({"name": point.name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        rows.append(row_of(point, made, r, stored, sizes))
    add_paired(rows)
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command, "request": asdict(req),
        "bf16_bytes": sizes["bf16_bytes"], "layout_linears": len(sizes["layout"]),
        "uniform_bytes": {b: sizes[f"{b}_bytes"] for b in UNIFORM},
        "reference": REFERENCE, "bootstrap": {"samples": BOOTSTRAP, "seed": 0},
        "rows": rows, "failed": failed, "not_made": missing}
    _write_json(out / "results.json", results)
    return results
