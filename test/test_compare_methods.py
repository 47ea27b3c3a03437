"""scripts/compare_methods.py on pi05-tiny: table == results.json, resume, plot, bad input.

Fast on two shared cores: ATM / OHB are off, one frame calibrates (synthetic:5, four held
out), a fill-to-budget plan stands in for QVLA (whose cost measurement takes minutes on
pi05-tiny), and only quantvla W4A8 gets the whole `quantvla report` (the others get its
action errors, same frames and noise, without the ratio tables). Artifacts and bytes are
real.
"""

import dataclasses
import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from quantvla_ros.quant.artifact import load_artifact
from quantvla_ros.quant.balance import BalanceConfig
from quantvla_ros.quant.budget import plan_bytes
from quantvla_ros.quant.manifest import ArtifactManifest, method_summary
from quantvla_ros.quant.plan import Plan
from quantvla_ros.quant.scheme import parse_bits
from quantvla_ros.runtime.policy import Policy
from quantvla_ros.workflows import methods
from quantvla_ros.workflows.action_metrics import model_space_error
from quantvla_ros.workflows.compare_methods import (
    CompareRequest,
    ResumeMismatch,
    paired,
    parse_budgets,
    parse_method_options,
    parse_methods,
    run_comparison,
)
from quantvla_ros.workflows.compare_render import table_rows, write_outputs
from quantvla_ros.workflows.quantize import open_buffer_for, prepare_batches, quantize_policy
from quantvla_ros.workflows.report import REPORT_NOISE_SEED, build_report, held_out, load_teacher

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_methods.py"

OFF = BalanceConfig(atm=False, ohb=False)
REQ = CompareRequest(source="pi05-tiny", calib="synthetic:5", budgets=(0.45,),
                     methods=("quantvla", "qvla"), max_samples=1)


class FillPlan:
    """Stand-in method: linears to W8A8 in name order while the plan fits the budget."""

    def plan(self, ctx):
        plan, w8 = Plan(), parse_bits("w8a8")
        for name in sorted(ctx.schemes):
            trial = Plan(layers={**plan.layers, name: w8})
            if plan_bytes(ctx.model, ctx.schemes, trial) <= ctx.budget_bytes:
                plan = trial
        plan.record = {"solver": "fill"}
        return plan

    def refine(self, ctx, student, plan):
        return {}


class Counting:
    """quantize_policy with ATM / OHB off, counting its calls by point folder."""

    def __init__(self):
        self.calls = []

    def __call__(self, req, out_dir, log=print):
        self.calls.append(out_dir.name)
        return quantize_policy(dataclasses.replace(req, balance=OFF), out_dir, log=log)


def light_report(artifact, calib):
    """The report's action errors (its frames, its noise), without its ratio tables."""
    if artifact.name == "quantvla-w4a8":
        return build_report(artifact, calib)
    student = Policy.from_artifact(artifact, fuse=False)
    teacher = load_teacher(student.manifest, options=student.options)
    buffer = open_buffer_for(teacher, calib)
    held, _ = held_out(student.manifest.calibration, buffer)
    batches = prepare_batches(teacher, [buffer[i] for i in held], 8, REPORT_NOISE_SEED)
    noise = torch.cat([b["noise"] for b in batches]).float()
    err = model_space_error(teacher.family.sample(teacher.model, batches),
                            student.family.sample(student.model, batches), noise,
                            teacher.normalizer)
    return {"action_error": err, "action_error_without_balance": err,
            "calibration": {"held_out_indices": [held[0], held[-1] + 1]},
            **method_summary(student.manifest)}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    patch = pytest.MonkeyPatch()
    patch.setattr(methods, "method_named", lambda n: None if n == "quantvla" else FillPlan())
    out = tmp_path_factory.mktemp("cmp")
    quantize = Counting()
    results = run_comparison(REQ, out, quantize=quantize, report=light_report,
                             log=lambda *_: None)
    write_outputs(results, out)
    yield out, results, quantize, patch
    patch.undo()


def test_rows_bytes_and_errors_are_the_artifacts(made):
    out, results, quantize, _ = made
    rows = {r["name"]: r for r in results["rows"]}
    assert list(rows) == ["quantvla-w4a8", "quantvla-w8a8", "qvla-0.45"]
    assert quantize.calls == list(rows)
    assert results["failed"] == []
    bf16 = results["bf16_bytes"]
    assert rows["quantvla-w4a8"]["stored_bytes"] == results["uniform_bytes"]["w4a8"]
    assert rows["quantvla-w8a8"]["stored_bytes"] == results["uniform_bytes"]["w8a8"]
    for name in ("qvla-0.45",):
        row = rows[name]
        alloc = ArtifactManifest.read(out / name).quantization.allocation
        # stored bytes counted on the loaded artifact equal the allocation's exact bytes
        assert row["stored_bytes"] == alloc["bytes"] == row["allocated_bytes"]
        assert row["budget_bytes"] == int(row["budget"] * bf16) == alloc["budget_bytes"]
        assert results["uniform_bytes"]["w4a8"] < row["stored_bytes"] <= row["budget_bytes"]
        assert row["fraction_of_bf16"] == pytest.approx(row["stored_bytes"] / bf16)
    assert rows["qvla-0.45"]["stored_bytes"] < results["uniform_bytes"]["w8a8"]
    # the same four held-out frames everywhere; more bytes, less error at the extremes
    for row in rows.values():
        assert row["held_out_indices"] == [1, 5] and len(row["per_frame_rel_l2"]) == 4
    assert rows["quantvla-w8a8"]["rel_l2_vs_displacement"] < \
        rows["quantvla-w4a8"]["rel_l2_vs_displacement"]
    # the pooled error is the displacement-weighted mean square of the per-frame errors
    for row in rows.values():
        lo, hi = min(row["per_frame_rel_l2"]), max(row["per_frame_rel_l2"])
        assert lo <= row["rel_l2_vs_displacement"] <= hi


def test_paired_comparison_is_the_per_frame_difference(made):
    _, results, _, _ = made
    rows = {r["name"]: r for r in results["rows"]}
    ref = np.array(rows["quantvla-w4a8"]["per_frame_rel_l2"])
    assert "paired_vs_w4a8" not in rows["quantvla-w4a8"]
    for name in ("quantvla-w8a8", "qvla-0.45"):
        p = rows[name]["paired_vs_w4a8"]
        d = np.array(rows[name]["per_frame_rel_l2"]) - ref
        assert p["mean_difference"] == pytest.approx(d.mean())
        assert p["better"] == int((d < 0).sum()) and p["frames"] == 4
        assert d.min() <= p["ci95"][0] <= p["mean_difference"] <= p["ci95"][1] <= d.max()


def test_paired_bootstrap_numbers():
    p = paired([0.3, 0.2, 0.4], [0.1, 0.1, 0.1])  # differences 0.2, 0.1, 0.3
    assert p["mean_difference"] == pytest.approx(0.2) and p["better"] == 0
    assert p["worse"] == 3 and 0.1 <= p["ci95"][0] < 0.2 < p["ci95"][1] <= 0.3 + 1e-12
    same = paired([0.2, 0.3], [0.3, 0.4])  # every frame 0.1 better: a point interval
    assert same["ci95"] == pytest.approx([-0.1, -0.1]) and same["better"] == 2


def test_table_rows_match_results_json(made):
    out, results, _, _ = made
    saved = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in saved["rows"]] == [r["name"] for r in results["rows"]]
    lines = [line for line in (out / "table.md").read_text().splitlines()
             if line.startswith("| ") and not line.startswith("| method")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert cells == table_rows(saved)
    for row, c in zip(saved["rows"], cells, strict=True):
        assert c[0] == row["method"]
        assert c[1] == (row["bits"].upper() if row["budget"] is None else f"{row['budget']:g}")
        stored, pct = re.fullmatch(r"([\d,]+) \(([\d.]+)%\)", c[2]).groups()
        assert int(stored.replace(",", "")) == row["stored_bytes"]
        assert float(pct) == pytest.approx(100 * row["fraction_of_bf16"], abs=0.05)
        assert float(c[3]) == pytest.approx(row["rel_l2_vs_displacement"], abs=5e-5)
        assert float(c[4]) == pytest.approx(row["sqnr_db"], abs=0.05)
        joints = [float(v) for v in c[5].split()]
        assert joints == pytest.approx(row["robot_rms_per_joint"], abs=5e-5)
        assert c[6] == f"{row['quantize_wall_s']:.0f} s"


def test_plot_is_written(made):
    out, _, _, _ = made
    png = (out / "error_vs_bytes.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_resume_skips_finished_artifacts(made, tmp_path):
    out, results, _, _ = made
    shutil.copytree(out, tmp_path / "cmp")

    def mtimes():
        return {p.parent.name: p.stat().st_mtime_ns
                for p in (tmp_path / "cmp").glob("*/model.safetensors")}

    before = mtimes()
    assert len(before) == 3
    quantize = Counting()
    again = run_comparison(REQ, tmp_path / "cmp", quantize=quantize, report=light_report,
                           log=lambda *_: None)
    assert quantize.calls == []
    assert mtimes() == before
    assert all(r["reused"] for r in again["rows"])
    for a, b in zip(results["rows"], again["rows"], strict=True):
        assert a["quantize_wall_s"] == b["quantize_wall_s"]  # the recorded time, kept
        assert a["rel_l2_vs_displacement"] == b["rel_l2_vs_displacement"]
    # one more budget: nothing is made with make=False, then only that point is made
    more = dataclasses.replace(REQ, budgets=(0.3, 0.45))
    summary = run_comparison(more, tmp_path / "cmp", quantize=quantize, report=light_report,
                             log=lambda *_: None, make=False)
    assert quantize.calls == [] and summary["not_made"] == ["qvla-0.3"]
    assert len(summary["rows"]) == 3 and mtimes() == before
    third = run_comparison(more, tmp_path / "cmp", quantize=quantize, report=light_report,
                           log=lambda *_: None)
    assert quantize.calls == ["qvla-0.3"] and len(third["rows"]) == 4
    rows = {r["name"]: r for r in third["rows"]}
    assert rows["qvla-0.3"]["stored_bytes"] < rows["qvla-0.45"]["stored_bytes"]
    assert not rows["qvla-0.3"]["reused"] and rows["qvla-0.45"]["reused"]


def test_a_folder_of_another_request_is_refused(made, tmp_path):
    out, _, _, _ = made
    shutil.copytree(out / "qvla-0.45", tmp_path / "cmp" / "qvla-0.5")
    quantize = Counting()
    with pytest.raises(ResumeMismatch, match="another request"):
        run_comparison(dataclasses.replace(REQ, methods=("qvla",), budgets=(0.5,)),
                       tmp_path / "cmp", quantize=quantize, log=lambda *_: None)
    assert quantize.calls == []


@pytest.mark.parametrize(("change", "message"), [
    ({"methods": ("quantvla", "gptq")}, "unknown method"),
    ({"budgets": (0.0,)}, r"in \(0, 1\]"),
    ({"budgets": (1.5,)}, r"in \(0, 1\]"),
    ({"budgets": (0.2, 0.35)}, "below uniform W4A8"),
    ({"budgets": ()}, "need at least one budget"),
    ({"method_options": {"daptq": {"cost": "pooled"}}}, "not compared"),
])
def test_bad_input_is_refused_before_any_work(tmp_path, change, message):
    quantize = Counting()
    with pytest.raises(ValueError, match=message):
        run_comparison(dataclasses.replace(REQ, **change), tmp_path / "c", quantize=quantize,
                       log=lambda *_: None)
    assert quantize.calls == [] and not (tmp_path / "c").exists()


def test_parsers():
    assert parse_budgets("0.45, 30%,0.35") == (0.3, 0.35, 0.45)
    assert parse_methods("qvla,quantvla,qvla") == ("qvla", "quantvla")
    assert parse_method_options(["qvla:solver=greedy", "daptq:cost=pooled"]) == {
        "qvla": {"solver": "greedy"}, "daptq": {"cost": "pooled"}}
    for bad in (["solver=greedy"], ["quantvla:x=1"], ["qvla:solver"]):
        with pytest.raises(ValueError, match="METHOD:KEY=VALUE"):
            parse_method_options(bad)
    with pytest.raises(ValueError, match="unknown method"):
        parse_methods("qvla,awq")


def script_main(argv):
    spec = importlib.util.spec_from_file_location("compare_methods_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def test_script_reports_bad_input(tmp_path, capsys):
    assert script_main(["--model", "pi05-tiny", "--calib", "synthetic:5", "--budgets", "0.2",
                        "--out", str(tmp_path / "c")]) == 2
    assert "below uniform W4A8" in capsys.readouterr().err
    assert script_main(["--model", "pi05-tiny", "--calib", "synthetic:5", "--budgets", "2",
                        "--out", str(tmp_path / "c")]) == 2
    assert "(0, 1]" in capsys.readouterr().err


def test_loaded_bytes_of_uniform_artifacts(made):
    """The W8A8 artifact stores every layout linear as W8A8 (nothing float, no mix)."""
    out, results, _, _ = made
    model, *_ = load_artifact(out / "quantvla-w8a8")
    m = ArtifactManifest.read(out / "quantvla-w8a8")
    assert m.bits == "w8a8" and len(m.quantized_modules) == results["layout_linears"]
    assert all(model.get_submodule(n).scheme.bits == "w8a8" for n in m.quantized_modules)
