"""Compile every Triton kernel for real NVIDIA targets on a machine without a GPU.

The interpreter accepts code a GPU compiler rejects (small 8-bit dots, unsupported
libdevice calls, shared-memory overflow); compiling to cubin with the ptxas bundled in the
triton wheel catches those here. Runs in a subprocess because this test process may have
TRITON_INTERPRET=1 set, which replaces kernels by interpreted ones at import.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


ARCHS = (90, 87)  # H100 / H200, Jetson AGX Orin


@pytest.mark.skipif(not PTXAS.exists(), reason=f"no ptxas bundled with triton at {PTXAS}")
def test_kernels_compile_for_gpu():
    from quantvla_ros.kernels.aot_check import MAX_SHARED

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # One process per target, run side by side: compilation dominates the test's time.
    procs = {
        arch: subprocess.Popen(
            [sys.executable, "-m", "quantvla_ros.kernels.aot_check", "--arch", str(arch)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            cwd=Path(__file__).resolve().parents[1],
        )
        for arch in ARCHS
    }
    for arch, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"sm_{arch}: {err[-3000:]}{out[-2000:]}"
        rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert {r["op"] for r in rows} == {"w8a8", "w4a8", "w4a4", "gate_up", "act_quant"}
        for row in rows:
            assert row["shared_bytes"] <= MAX_SHARED[arch], (arch, row)
            if row["op"] != "act_quant":
                assert row["pipelined"], f"sm_{arch} main loop not pipelined: {row}"
            if arch == 90 and row["op"] != "act_quant":
                assert row["wgmma"], f"no Hopper warp-group MMA: {row}"
