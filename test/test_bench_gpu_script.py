"""scripts/bench_gpu.sh: checked statically, then run with a stub python that hangs once.

The device machine returns at most 8 files and a command gets 10 minutes, so the script must
write few files, put every Python step under `timeout` and stop within its budget.
"""

import os
import re
import shlex
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_gpu.sh"
MAX_FILES = 8


def _code_lines() -> list[str]:
    """Script lines without comments, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", SCRIPT.read_text())
    lines = (ln.strip() for ln in text.splitlines())
    return [ln for ln in lines if ln and not ln.startswith("#")]


def test_script_parses_and_writes_at_most_eight_files():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    names = set(re.findall(r'"\$out/([\w.-]+)"', SCRIPT.read_text()))
    # step NAME CAP FILE CMD...
    names |= {shlex.split(ln)[3] for ln in _code_lines() if ln.startswith("step ")}
    assert "run.log" in names and "e2e.jsonl" in names and len(names) <= MAX_FILES, names


def test_every_python_step_runs_under_timeout():
    lines = _code_lines()
    body = "\n".join(lines[lines.index("step() {"):])
    assert 'timeout -k 5 "$cap" "$@"' in body
    runs = [ln for ln in lines if re.search(r"\$py\b|\bpython3?\b|\bpytest\b", ln)
            and not ln.startswith(("py=", "#"))]
    assert len(runs) >= 7
    assert all(ln.startswith("step ") for ln in runs), [ln for ln in runs
                                                       if not ln.startswith("step ")]
    assert not re.search(r"TRITON_INTERPRET=", SCRIPT.read_text())
    assert any(ln.startswith("export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}") for ln in lines)


STUB = """#!/usr/bin/env bash
echo "$* | TRITON_INTERPRET=${TRITON_INTERPRET-unset} | PYTHONPATH=$PYTHONPATH" >> "$STUB_LOG"
case "$*" in
  *"gpu_smoke gemm"*|"-m pytest "*split_workspace.py) exec sleep 300 ;;
  *gpu_report*) echo "# summary" ;;
  *) echo '{"step": "stub"}' ;;
esac
"""
BUDGET_S, PCT = 28, 10  # caps and reserves at a tenth: the stress step's 60 s is 6 s


def test_the_headline_e2e_runs_first_in_held_back_time_and_hangs_cost_only_themselves(
        tmp_path):
    stub = tmp_path / "python-stub"
    stub.write_text(STUB)
    stub.chmod(0o755)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "nvidia-smi").symlink_to("/bin/true")
    out, log = tmp_path / "out", tmp_path / "calls.log"
    env = dict(os.environ, PYTHON=str(stub), STUB_LOG=str(log), BENCH_BUDGET_S=str(BUDGET_S),
               BENCH_PCT=str(PCT), TRITON_INTERPRET="1", PYTHONPATH="/carried/wheels",
               PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT), str(out)], env=env, capture_output=True,
                          text=True, timeout=120)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    assert elapsed < BUDGET_S + 6, elapsed  # the budget, plus timeout's kill grace
    calls = log.read_text().splitlines()
    order = ["gpu_smoke env", "gpu_smoke gemm", "--precision bf16", "--precision w4a8",
             "split_workspace.py |", "--ignore=test/test_split_workspace.py",
             "--ops bf16,w4a8,w4a8_gate_up", "--ops bf16,int_mm", "--precision w8a8",
             "gpu_report"]
    assert len(calls) == len(order) and all(o in c for o, c in zip(order, calls, strict=True))
    assert all("TRITON_INTERPRET=unset" in c for c in calls)
    assert all(f"PYTHONPATH={ROOT}:/carried/wheels" in c for c in calls)
    # The hanging smoke (its own cap 9 s) was cut to 28 - 21 - start s, leaving the held-back
    # time (2 x 10 s, 1 s for the tables): each headline e2e step gets its cap, less at most
    # the second a killed step overruns by. `start` is whole seconds already spent (0 or 1 on
    # a loaded machine), so the cap is computed from it rather than assumed.
    smoke = re.search(r"== smoke \(at most (\d+)s, start (\d+)s", proc.stdout)
    assert smoke and int(smoke.group(1)) == 28 - 21 - int(smoke.group(2)), proc.stdout
    assert "== smoke: TIMEOUT" in proc.stdout and "== split-k-stress: TIMEOUT" in proc.stdout
    for p in ("bf16", "w4a8"):
        cap = int(re.search(rf"== e2e {p} \(at most (\d+)s", proc.stdout).group(1))
        assert cap >= 9 and f"== e2e {p}: rc=0" in proc.stdout, proc.stdout
    assert "gpu_report" in calls[-1] and (out / "summary.md").read_text() == "# summary\n"
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= MAX_FILES and "run.log" in files, files
    assert "== done in" in (out / "run.log").read_text()
    print(proc.stdout)  # the rehearsal's per-step times, shown with -s
