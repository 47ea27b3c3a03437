"""Split-K workspaces: fixed per (device, stream), outgrown buffers never freed; GPU stress.

On CPU the registry is checked by construction (stream handles are plain integers there)
and split GEMMs run under the interpreter. On a GPU (tests marked ``gpu``) split GEMMs are
captured in CUDA graphs and replayed 200 times, bit-exact every time, with a larger split
GEMM run between capture and replay, and two streams run split GEMMs at once.
"""

import functools
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from quantvla_ros.kernels import dispatch, workspace  # noqa: E402
from quantvla_ros.kernels import reference as ref  # noqa: E402
from quantvla_ros.kernels.configs import GemmConfig, gemm_config, w4a8_config  # noqa: E402
from quantvla_ros.kernels.int4_layout import pack_khalf  # noqa: E402
from quantvla_ros.kernels.scaled_gemm import scaled_gemm  # noqa: E402
from quantvla_ros.kernels.w4a8_gemm import w4a8_gemm  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
if DEV == "cpu" and not dispatch.triton_interpreted():
    pytest.skip("Triton kernels were imported without TRITON_INTERPRET=1 and there is no GPU",
                allow_module_level=True)

w8a8_gemm = functools.partial(scaled_gemm, a_int4=False, w_int4=False)
EXACT = 2**24  # int32 sums below this convert to float32 exactly


def _ptr(ws):
    return ws[0].data_ptr(), ws[1].data_ptr()


def _live_ptrs():
    return {_ptr(ws) for ws in workspace.live_workspaces()}


def test_workspace_is_sized_once_for_every_table_split():
    cells, counters = workspace.default_size("cpu")  # 132 SMs off a GPU
    assert (cells, counters) == (66 * 128 * 128, 1024)  # 4.3 MB of int32 partials
    first = workspace.split_workspace("cpu", 1000, 4, stream=101)
    assert first[0].numel() == cells and first[1].numel() == counters
    assert not first[0].any() and not first[1].any()
    # The largest split any table config launches: the same buffers, not a reallocation.
    again = workspace.split_workspace("cpu", cells, 66, stream=101)
    assert _ptr(again) == _ptr(first)


def test_a_captured_pointer_stays_valid_when_a_larger_gemm_runs_later():
    captured = _ptr(workspace.split_workspace("cpu", 4096, 8, stream=102))
    # A hand-given config beyond the table's bound needs more: a new buffer, the old one
    # kept alive (a graph captured before may still replay with its address).
    cells = workspace.default_size("cpu")[0] + 1
    grown = workspace.split_workspace("cpu", cells, 2000, stream=102)
    assert grown[0].numel() >= cells and grown[1].numel() >= 2000
    assert _ptr(grown) != captured and captured in _live_ptrs()
    assert _ptr(workspace.split_workspace("cpu", 4096, 8, stream=102)) == _ptr(grown)


def test_two_streams_get_distinct_workspaces():
    one = workspace.split_workspace("cpu", 4096, 8, stream=201)
    two = workspace.split_workspace("cpu", 4096, 8, stream=202)
    assert one[0].data_ptr() != two[0].data_ptr() and one[1].data_ptr() != two[1].data_ptr()
    for t1, t2 in zip(one, two, strict=True):  # disjoint memory, not views of one buffer
        lo1, lo2 = t1.data_ptr(), t2.data_ptr()
        assert lo1 + 4 * t1.numel() <= lo2 or lo2 + 4 * t2.numel() <= lo1
    assert _ptr(workspace.split_workspace("cpu", 4096, 8, stream=201)) == _ptr(one)


def test_a_stream_that_first_splits_while_capturing_takes_a_zeroed_spare(monkeypatch):
    workspace.split_workspace("cpu", 4096, 8, stream=301)  # the warm-up, outside capture
    spares = list(workspace._SPARES["cpu"])
    assert len(spares) == workspace.SPARES and not any(t.any() for ws in spares for t in ws)
    live = _live_ptrs()
    monkeypatch.setattr(workspace, "_capturing", lambda dev: True)
    taken = workspace.split_workspace("cpu", 4096, 8, stream=302)
    assert _ptr(taken) in {_ptr(ws) for ws in spares} and _live_ptrs() == live  # no alloc
    assert _ptr(workspace.split_workspace("cpu", 4096, 8, stream=302)) == _ptr(taken)
    with pytest.raises(RuntimeError, match="before capturing"):
        workspace.split_workspace("cpu", workspace.default_size("cpu")[0] + 1, 8, stream=302)
    monkeypatch.undo()
    workspace.split_workspace("cpu", 4096, 8, stream=303)  # outside capture: spares refilled
    assert len(workspace._SPARES["cpu"]) == workspace.SPARES


def _w4a8_operands(m, k, n, seed):
    g = torch.Generator().manual_seed(seed)
    s2_max = max(1, (EXACT - 1) // (127 * 7 * k))  # unit-scale sums stay exact in float32
    a = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
    q = torch.randint(-7, 8, (n, k), generator=g, dtype=torch.int8)
    s2 = torch.randint(1, s2_max + 1, (n, k // 128), generator=g, dtype=torch.int8)
    return a.to(DEV), pack_khalf(q).to(DEV), s2.to(DEV)


def _w4a8_unit(a, w, s2, config=None):
    m, n = a.shape[0], w.shape[0]
    return w4a8_gemm(a, torch.ones(m, 1, device=DEV), w, torch.ones(n, device=DEV), s2,
                     config=config)


@pytest.mark.skipif(DEV != "cpu", reason="the CPU stream key; the GPU tests below cover CUDA")
def test_split_gemms_keep_one_workspace_and_leave_it_zeroed():
    small, large = GemmConfig(16, 32, 128, split_k=3), GemmConfig(64, 64, 128, split_k=2)
    a, w, s2 = _w4a8_operands(20, 640, 40, seed=1)
    assert torch.equal(_w4a8_unit(a, w, s2, small), ref.accumulate_w4a8(a, w, s2, 128).float())
    ws = workspace.split_workspace("cpu", 1, 1)
    captured = _ptr(ws)
    # 20 tiles of 64 x 64: more cells than the old per-device buffer's 65,536 (it regrew).
    b, v, t2 = _w4a8_operands(300, 256, 256, seed=2)
    assert torch.equal(_w4a8_unit(b, v, t2, large), ref.accumulate_w4a8(b, v, t2, 128).float())
    assert _ptr(workspace.split_workspace("cpu", 1, 1)) == captured
    assert not ws[0].any() and not ws[1].any()  # every last split re-zeroed its tile


# --- GPU: graphs, replays and streams ------------------------------------------------------

REPLAYS = 200
# Table-chosen splits: expert down (split 8, BM 64), decode (BM 16), W8A8 expert (64 x 64).
STRESS = [("w4a8", 50, 4096, 1024), ("w4a8", 16, 2048, 2048), ("w8a8", 64, 1024, 4096)]


def _problem(op, m, k, n, seed):
    """(run(a) -> float32 unit-scale sums, two activation sets, their exact sums)."""
    if op == "w4a8":
        a, w, s2 = _w4a8_operands(m, k, n, seed)
        b = _w4a8_operands(m, k, n, seed + 1)[0]
        assert w4a8_config(m, n, k, gate_up=False, interpret=False, device=DEV).split_k > 1
        return (lambda x: _w4a8_unit(x, w, s2)), (a, b), [
            ref.accumulate_w4a8(x, w, s2, 128).float() for x in (a, b)]
    g = torch.Generator().manual_seed(seed)
    amax = (EXACT - 1) // (127 * k)
    a, b = (torch.randint(-amax, amax + 1, (m, k), generator=g, dtype=torch.int8).to(DEV)
            for _ in range(2))
    w = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8).to(DEV)
    assert gemm_config(m, n, k, k, interpret=False, device=DEV).split_k > 1
    ones = torch.ones(m, 1, device=DEV), torch.ones(n, device=DEV)
    return (lambda x: w8a8_gemm(x, ones[0], w, ones[1])), (a, b), [
        ref.int_matmul(x, w).float() for x in (a, b)]


def _grow_workspace():
    """A split GEMM whose workspace exceeds the table bound (a hand-given config)."""
    m, k, n = 1024, 1024, 4096
    a, w, s2 = _w4a8_operands(m, k, n, seed=99)
    cfg = GemmConfig(64, 128, 128, split_k=2)
    assert (m // 64) * (n // 128) * 64 * 128 > workspace.default_size(DEV)[0]
    assert torch.equal(_w4a8_unit(a, w, s2, cfg), ref.accumulate_w4a8(a, w, s2, 128).float())


@pytest.mark.gpu
@pytest.mark.parametrize(("op", "m", "k", "n"), STRESS)
def test_split_k_graph_replays_are_bit_exact(op, m, k, n):
    run, (a, b), (want_a, want_b) = _problem(op, m, k, n, seed=m + k)
    x = a.clone()
    run(x)  # warm-up: compiles and allocates this stream's workspace before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = run(x)
    _grow_workspace()  # after capture: the graph's workspace must stay allocated and zeroed
    bad = []
    for i in range(REPLAYS):
        x.copy_(a if i % 2 == 0 else b)  # alternate inputs: stale sums cannot pass
        graph.replay()
        torch.cuda.synchronize()
        if not torch.equal(y, want_a if i % 2 == 0 else want_b):
            bad.append(i)
    assert not bad, f"{len(bad)} of {REPLAYS} replays differ (first {bad[:5]})"


@pytest.mark.gpu
def test_two_streams_run_split_gemms_at_once_without_mixing():
    runs = [_problem(op, m, k, n, seed=7 + i) for i, (op, m, k, n) in enumerate(STRESS[:2])]
    streams = [torch.cuda.Stream() for _ in runs]
    torch.cuda.synchronize()
    outs = [[] for _ in runs]
    for _ in range(50):
        for (run, (a, _), _), s, o in zip(runs, streams, outs, strict=True):
            with torch.cuda.stream(s):
                o.append(run(a))
    torch.cuda.synchronize()
    for (_, _, (want, _)), o in zip(runs, outs, strict=True):
        assert all(torch.equal(y, want) for y in o)
    ptrs = {_ptr(workspace.split_workspace(DEV, 1, 1, stream=s.cuda_stream)) for s in streams}
    assert len(ptrs) == 2
