"""Count the SASS instructions of each GEMM kernel's main loop, per weight, without a GPU.

Each variant is compiled to a cubin (Triton's bundled ptxas) and disassembled with the
bundled cuobjdump. The main loop is the smallest back-edge range (a branch to a lower
address) that contains a matrix-multiply instruction. A W4A8 kernel is issue-bound when
its unpack costs many instructions per weight, so ``instructions_per_weight`` =
loop instructions * 32 * num_warps / weights per loop iteration (thread-instructions per
weight per pass) is the number to drive down. Counts are static: both sides of a branch
inside the loop are counted. ``fences`` counts GPU- or system-scope MEMBARs in the whole
kernel: each drains the thread's memory operations, so the split-K fixup must keep few.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from quantvla_ros.kernels.variants import KernelVariant, compile_variant

# One SASS line of `cuobjdump -sass`: /*addr*/  [@pred] OPCODE operands ;
_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_TARGET = re.compile(r"0x([0-9a-f]+)\s*$")
# A memory fence at GPU or system scope (MEMBAR.ALL.GPU, MEMBAR.SC.SYS, ...): each one waits
# for the thread's outstanding memory operations, so a chain of them serializes round trips.
_FENCE = re.compile(r"^MEMBAR\.(?:[A-Z]+\.)*(?:GPU|SYS)\b")
_RES = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")
# Tensor-core opcodes: Ampere/Orin mma.sync (IMMA, HMMA), Hopper wgmma (*GMMA).
MMA_OPCODES = frozenset({"IMMA", "HMMA", "DMMA", "BMMA", "IGMMA", "HGMMA", "QGMMA", "BGMMA"})
TOP_OPCODES = 8
# Token counts of the per-MAC column: decode, the action expert, pi0.5's prefix.
MAC_TOKENS = (16, 64, 968)


@dataclass(frozen=True)
class Instr:
    """One disassembled instruction: byte address, base opcode, operands, full opcode."""

    addr: int
    opcode: str
    operands: str
    full: str = ""


def parse_sass(text: str) -> list[Instr]:
    """Parse ``cuobjdump -sass`` text (one function) into instructions in address order."""
    out = []
    for m in _INSTR.finditer(text):
        out.append(Instr(int(m.group(1), 16), m.group(2).split(".")[0], m.group(3).strip(),
                         m.group(2)))
    return out


def find_main_loop(instrs: list[Instr]) -> list[Instr] | None:
    """Instructions of the innermost loop that contains an MMA, or None if there is none.

    A loop is [target, branch] for every BRA whose target is not above it; several back
    edges to one target extend to the last one.
    """
    ends: dict[int, int] = {}
    for ins in instrs:
        if ins.opcode != "BRA":
            continue
        t = _TARGET.search(ins.operands)
        if t and int(t.group(1), 16) <= ins.addr:
            start = int(t.group(1), 16)
            ends[start] = max(ends.get(start, 0), ins.addr)
    best = None
    for start, end in ends.items():
        body = [i for i in instrs if start <= i.addr <= end]
        if any(i.opcode in MMA_OPCODES for i in body) and (best is None or len(body) < len(best)):
            best = body
    return best


def tool_path(name: str) -> Path:
    """Path of a CUDA tool bundled in the Triton wheel (ptxas, cuobjdump, nvdisasm)."""
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name


def disassemble(cubin: bytes) -> tuple[str, str]:
    """(``cuobjdump -sass`` text, ``cuobjdump -res-usage`` text) of one cubin."""
    tool = str(tool_path("cuobjdump"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        run = [subprocess.run([tool, flag, str(path)], check=True, capture_output=True,
                              text=True).stdout for flag in ("-sass", "-res-usage")]
    return run[0], run[1]


def slots_per_mac(loop_instructions: int, num_warps: int, weights_per_kstep: int,
                  token_tile: int, m: int) -> float:
    """Main-loop issue slots per useful MAC at M tokens (token tiles rounded up).

    Each pass over the weights (one per token tile) costs the loop again, so unlike the
    per-weight count this falls as the token tile grows. An H100 SM issues 128
    thread-instructions and does ~4096 dense int8 MACs per clock, so above ~0.031 the loop,
    not the tensor cores, is the limit (datasheet arithmetic, not measured).
    """
    passes = -(-m // token_tile)
    return loop_instructions * 32 * num_warps * passes / (weights_per_kstep * m)


def count_sass(sass: str, res_usage: str, num_warps: int, weights_per_kstep: int,
               token_tile: int = 0) -> dict:
    """Main-loop statistics of one disassembled kernel (None fields if no MMA loop)."""
    instrs = parse_sass(sass)
    loop = find_main_loop(instrs) or []
    ops = Counter(i.opcode for i in loop)
    res = _RES.search(res_usage)
    n = len(loop)
    per_mac = {str(m): round(slots_per_mac(n, num_warps, weights_per_kstep, token_tile, m), 4)
               for m in MAC_TOKENS} if n and weights_per_kstep and token_tile else None
    return {
        "loop_found": bool(loop),
        "loop_instructions": n or None,
        "weights_per_kstep": weights_per_kstep,
        "instructions_per_weight": round(n * 32 * num_warps / weights_per_kstep, 3)
        if n and weights_per_kstep else None,
        "token_tile": token_tile or None,
        "slots_per_mac": per_mac,
        "mma": sum(c for op, c in ops.items() if op in MMA_OPCODES),
        "mma_opcodes": sorted({op for op in ops if op in MMA_OPCODES}),
        "top_opcodes": ops.most_common(TOP_OPCODES),
        "kernel_instructions": len(instrs),
        "registers": int(res.group(1)) if res else None,
        "stack_bytes": int(res.group(2)) if res else None,
        # GPU / system-scope fences anywhere in the kernel (the split-K fixup's cost).
        "fences": sum(bool(_FENCE.match(i.full)) for i in instrs),
        # Local-memory loads / stores anywhere in the kernel: register spills.
        "spill_instructions": sum(i.opcode in ("LDL", "STL") for i in instrs),
    }


def count_variant(v: KernelVariant, arch: int) -> dict:
    """Compile ``v`` for ``sm_<arch>`` and return its report row."""
    kernel = compile_variant(v, arch)
    sass, res = disassemble(kernel.asm["cubin"])
    return {"kernel": v.kernel, "variant": v.name, "arch": arch, "num_warps": v.num_warps,
            **count_sass(sass, res, v.num_warps, v.weights_per_kstep,
                         v.constexprs.get("BM", 0))}


def format_table(rows: list[dict]) -> str:
    """Markdown table of report rows (errors shown in the opcode column)."""
    head = ("kernel", "variant", "sm", "loop instr", "weights/step", "instr/weight",
            *(f"slots/MAC M={m}" for m in MAC_TOKENS), "MMA", "regs", "spills", "fences",
            "top opcodes")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ops = r.get("error") or " ".join(f"{op}:{c}" for op, c in r.get("top_opcodes", []))
        mac = r.get("slots_per_mac") or {}
        cells = (r["kernel"], r["variant"], r["arch"], r.get("loop_instructions"),
                 r.get("weights_per_kstep"), r.get("instructions_per_weight"),
                 *(mac.get(str(m)) for m in MAC_TOKENS), r.get("mma"),
                 r.get("registers"), r.get("spill_instructions"), r.get("fences"), ops)
        lines.append("| " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines)
