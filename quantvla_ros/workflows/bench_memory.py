"""Peak memory of quantize, load and load + one inference, each phase in a fresh process.

A fresh (spawned) process per phase makes its peak resident set (the kernel's VmHWM) that
phase's alone, interpreter and torch included, as a robot process would see it; on CUDA the
peak of `torch.cuda.max_memory_allocated` is reported too. Beside each peak: the bytes the
phase holds by construction and the need the up-front check (memory_fit.py) would compare.
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path

import torch

from quantvla_ros.models.mapped import stored_nbytes
from quantvla_ros.quant.artifact import WEIGHTS, load_bytes
from quantvla_ros.quant.balance import BalanceConfig
from quantvla_ros.quant.scheme import parse_bits
from quantvla_ros.runtime.policy import Policy, resolve_dtype
from quantvla_ros.runtime.source import PolicySource
from quantvla_ros.workflows.memory_fit import load_need, quantize_need
from quantvla_ros.workflows.quantize import QuantizeRequest, open_buffer_for, quantize_policy

PHASES = ("quantize", "load", "infer")


def peak_rss() -> int:
    """Return this process's peak resident set size in bytes (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("/proc/self/status has no VmHWM")


def _phase(phase: str, kw: dict) -> dict:
    """Run one phase in this (fresh) process; return its peaks and wall time."""
    cuda = kw["device"].startswith("cuda")
    t0 = time.perf_counter()
    if phase == "quantize":
        on = kw["balance"]
        req = QuantizeRequest(source=kw["source"], calib=kw["calib"], bits=kw["bits"],
                              preset=kw["preset"], precision=kw["precision"],
                              device=kw["device"], balance=BalanceConfig(atm=on, ohb=on))
        quantize_policy(req, kw["artifact"], log=lambda *_: None)
    else:
        policy = Policy.load(kw["artifact"], device=kw["device"], precision=kw["precision"])
        if phase == "infer":
            policy.infer(open_buffer_for(policy, "synthetic:1")[0])
    return {"phase": phase, "peak_rss": peak_rss(), "seconds": time.perf_counter() - t0,
            "peak_cuda": torch.cuda.max_memory_allocated() if cuda else None}


def run_phase(phase: str, **kw) -> dict:
    """Run one phase in a spawned process; a process killed midway is reported, not hung."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        try:
            return pool.submit(_phase, phase, kw).result()
        except BrokenProcessPool as exc:
            return {"phase": phase, "error": f"the process died ({exc}); killed for memory?"}


def bench_memory(source: str, artifact, bits: str = "w4a8", preset: str | None = "quantvla",
                 precision: str = "bf16", device: str = "cpu", calib: str = "synthetic:3",
                 phases=PHASES, balance: bool = False) -> dict:
    """Measure ``phases`` of ``source`` at ``bits`` / ``preset`` / ``precision``.

    quantize writes ``artifact`` (skipped when absent from ``phases``: the artifact must
    exist); load and infer read it. Returns the rows and what each phase holds by design.
    """
    unknown = set(phases) - set(PHASES)
    if unknown:
        raise ValueError(f"unknown phases {sorted(unknown)}; expected some of {PHASES}")
    kw = {"source": source, "artifact": str(artifact), "bits": bits, "preset": preset,
          "precision": precision, "device": device, "calib": calib, "balance": balance}
    rows = []
    if "quantize" in phases:
        need = quantize_need(PolicySource.resolve(source), precision, parse_bits(bits), preset)
        rows.append({**run_phase("quantize", **kw), "need": need})
    for phase in ("load", "infer"):
        if phase in phases:
            need = load_need(PolicySource.resolve(str(artifact)), precision,
                             infer=phase == "infer")
            rows.append({**run_phase(phase, **kw), "need": need})
    out = {"source": source, "artifact": str(artifact), "bits": bits, "preset": preset,
           "precision": precision, "device": device, "rows": rows}
    if (Path(artifact) / WEIGHTS).is_file():
        out["artifact_bytes"] = stored_nbytes([Path(artifact) / WEIGHTS])
        out["loaded_bytes"] = load_bytes(artifact, resolve_dtype(precision))
    return out
