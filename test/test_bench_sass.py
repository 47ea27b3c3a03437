"""`quantvla bench sass`: main-loop detection on hand-written SASS, then real kernels.

The real-kernel test compiles with the ptxas / cuobjdump bundled in the Triton wheel, in a
subprocess without TRITON_INTERPRET (this process may have interpreted kernels).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantvla_ros.kernels.sass_count import count_sass, find_main_loop, parse_sass

triton = pytest.importorskip("triton")
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
ROOT = Path(__file__).resolve().parents[1]


def _line(addr: int, text: str) -> str:
    # The cuobjdump layout: address comment, instruction, encoding comment.
    return f"        /*{addr:04x}*/   {text} ;   /* 0x0000000000000000 */\n" \
           f"                                  /* 0x0000000000000000 */\n"


# An outer loop (0x20..0xa0) holding an MMA loop (0x40..0x70), a loop without MMA
# (0xc0..0xd0) and the trailing self-branch ptxas emits after EXIT.
SASS = "".join(_line(a, t) for a, t in [
    (0x00, "MOV R1, c[0x0][0x28]"),
    (0x10, "S2R R0, SR_CTAID.X"),
    (0x20, "IMAD R2, R0, 0x4, RZ"),
    (0x30, "LDG.E R4, desc[UR4][R2.64]"),
    (0x40, "PRMT R5, R4, 0x8880, RZ"),
    (0x50, "IMMA.16816.S8.S8 R8, R12, R16, R8"),
    (0x60, "ISETP.GE.AND P0, PT, R5, 0x7, PT"),
    (0x70, "@!P0 BRA 0x40"),
    (0x80, "IADD3 R0, R0, 0x1, RZ"),
    (0x90, "ISETP.NE.AND P1, PT, R0, R3, PT"),
    (0xa0, "@P1 BRA 0x20"),
    (0xb0, "MOV R6, RZ"),
    (0xc0, "IADD3 R6, R6, 0x1, RZ"),
    (0xd0, "@P2 BRA 0xc0"),
    (0xd8, "MEMBAR.ALL.GPU"),
    (0xdc, "MEMBAR.SC.SYS"),
    (0xde, "MEMBAR.ALL.CTA"),
    (0xe0, "EXIT"),
    (0xf0, "BRA 0xf0"),
])
RES = " Function k:\n  REG:96 STACK:8 SHARED:0 LOCAL:0 CONSTANT[0]:600 TEXTURE:0\n"


def test_innermost_mma_loop_is_the_main_loop():
    instrs = parse_sass(SASS)
    assert len(instrs) == 19 and instrs[5].opcode == "IMMA" and instrs[7].opcode == "BRA"
    loop = find_main_loop(instrs)
    assert [i.addr for i in loop] == [0x40, 0x50, 0x60, 0x70]
    assert find_main_loop([i for i in instrs if i.opcode != "IMMA"]) is None


def test_count_sass_per_weight_and_resources():
    row = count_sass(SASS, RES, num_warps=4, weights_per_kstep=256)
    assert row["loop_instructions"] == 4 and row["mma"] == 1
    assert row["instructions_per_weight"] == 4 * 32 * 4 / 256
    assert dict(row["top_opcodes"]) == {"PRMT": 1, "IMMA": 1, "ISETP": 1, "BRA": 1}
    assert (row["registers"], row["stack_bytes"], row["spill_instructions"]) == (96, 8, 0)
    # GPU and system scope count as fences; a CTA-scope MEMBAR does not.
    assert row["fences"] == 2
    # Per MAC: one pass per 64-token tile, 16 passes at M = 968 (1024 tokens of work).
    mac = count_sass(SASS, RES, num_warps=4, weights_per_kstep=256, token_tile=64)
    assert mac["slots_per_mac"]["968"] == pytest.approx(4 * 32 * 4 * 16 / (256 * 968), abs=1e-4)
    assert mac["slots_per_mac"]["16"] == pytest.approx(4 * 32 * 4 / (256 * 16), abs=1e-4)
    assert row["slots_per_mac"] is None  # no token tile given
    assert not count_sass(_line(0, "EXIT"), "", 4, 256)["loop_found"]


NO_TOOLS = pytest.mark.skipif(not (BIN / "ptxas").exists() or not (BIN / "cuobjdump").exists(),
                              reason=f"no ptxas / cuobjdump bundled with triton in {BIN}")


def _bench_sass(*args: str) -> list[dict]:
    """Rows of `quantvla bench sass --json ARGS`, in a process without the interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "quantvla_ros.cli.main", "bench", "sass", *args, "--json"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@NO_TOOLS
def test_split_k_fixup_has_at_most_two_gpu_fences():
    # The counter's acq_rel add and its reset; an acq_rel per-element exchange compiled to
    # one fence per element (66 per thread at 128x64, 34 in W8A8 64x64).
    rows = _bench_sass("--arch", "90,87", "--kernels", "w8a8,w4a8", "--variants", "splitk")
    assert len(rows) >= 12 and all("splitk" in r["variant"] for r in rows), rows
    for r in rows:
        assert "error" not in r and 1 <= r["fences"] <= 2, (r["variant"], r["arch"], r)


@NO_TOOLS
def test_bench_sass_counts_real_kernels_for_hopper_and_orin():
    # W8A8 64x64 (expert M) and the W4A8 swap-AB tile of 128 weight rows, group 128.
    rows = _bench_sass("--arch", "90,87", "--kernels", "w8a8,w4a8", "--variants",
                       "64x64x128 w4 s4 pc,128x64x128 w4 s4 g128")
    by = {(r["kernel"], r["arch"]): r for r in rows}
    assert set(by) == {(k, a) for k in ("w8a8", "w4a8") for a in (90, 87)}, rows
    for (kernel, arch), r in by.items():
        bn = 64 if kernel == "w8a8" else 128  # weight rows per tile
        assert r["loop_found"] and r["weights_per_kstep"] == bn * 128
        assert r["instructions_per_weight"] == pytest.approx(
            r["loop_instructions"] * 32 * 4 / (bn * 128), abs=1e-3)
        # Hopper 64-row tiles use warp-group MMA, Orin mma.sync.
        assert r["mma_opcodes"] == (["IGMMA"] if arch == 90 else ["IMMA"]), r
        assert 0 < r["registers"] <= 255
    for arch in (90, 87):
        w8, w4 = by[("w8a8", arch)], by[("w4a8", arch)]
        # W8A8's loop is loads, address arithmetic and MMAs: about 1.7-2 per weight.
        assert 0.5 < w8["instructions_per_weight"] < 4, w8
        # The K-half layout's register unpack keeps W4A8 near W8A8 (the old row-major
        # join / reshape unpack cost 8-12 per weight, PRMT-heavy).
        assert w4["instructions_per_weight"] <= 3.0, w4
        assert dict(w4["top_opcodes"]).get("PRMT", 0) < 16, w4
