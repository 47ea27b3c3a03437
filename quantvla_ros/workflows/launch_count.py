"""`quantvla bench launches`: GPU kernel launches per prefix and per denoising step.

The denoise loop is launch-bound (about 1,100 kernels per step before the fusions), so the
count is the number to watch. It is taken without a GPU: the model is built on the meta
device at full widths (no memory, no compute) with a few layers per stack, run once as the
Policy serves it, and every aten op that would launch a kernel is counted by a
`TorchDispatchMode`; our own kernels (kernels/dispatch.py and the float kernels) report their
launches through `dispatch.add_launch_listener`. Per-layer counts are differences between
depths, extrapolated to the real depths; the family says what its stacks are and how one
prefix and one chunk run (`PolicyFamily.launch_probe`), so every family is counted. What a
count assumes (one launch per cuBLAS GEMM and per SDPA call) is stated in the result.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from quantvla_ros.kernels import dispatch
from quantvla_ros.models.build import build_meta, cast_floating
from quantvla_ros.models.registry import get_config
from quantvla_ros.quant.apply import _set_module
from quantvla_ros.quant.layouts import get_layout, schemes
from quantvla_ros.quant.qlinear import QuantLinear
from quantvla_ros.quant.scheme import parse_bits
from quantvla_ros.runtime.families import family_for

PRECISIONS = ("bf16", "w8a8", "w4a8", "w4a4")
# Aten ops that only make a view, read metadata or allocate: no kernel on a GPU.
NO_KERNEL = frozenset({
    "view", "_unsafe_view", "reshape", "_reshape_alias", "view_as", "transpose", "t",
    "expand", "expand_as", "permute", "unsqueeze", "squeeze", "slice", "select", "split",
    "split_with_sizes", "chunk", "unbind", "narrow", "as_strided", "alias", "detach",
    "diagonal", "unfold", "movedim", "empty", "empty_like", "empty_strided", "new_empty",
    "new_empty_strided", "lift_fresh", "resolve_conj", "resolve_neg", "sym_size",
    "sym_stride", "sym_numel", "sym_storage_offset", "is_same_size", "_to_dense",
    "_has_compatible_shallow_copy_type", "set_", "unflatten", "flatten", "real",
})


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, list | tuple):
        for t in tree:
            yield from _tensors(t)
    elif isinstance(tree, dict):
        for t in tree.values():
            yield from _tensors(t)


class LaunchCounter(TorchDispatchMode):
    """Count aten ops that launch a kernel on `device`, our kernels' launches, H2D copies.

    An op launches when one of its outputs lies on `device` and it is not a view or an
    allocation (`NO_KERNEL`). A copy from the CPU onto `device` is also counted as `h2d`: a
    pageable host-to-device copy syncs the stream and is illegal inside graph capture.
    """

    def __init__(self, device: str = "meta"):
        """Count on `device` (meta for a dry run)."""
        super().__init__()
        self.device = torch.device(device).type
        self.ops: Counter = Counter()
        self.h2d = 0
        self.quiet = 0

    def on_launch(self, name: str) -> None:
        """Count one launch of our kernel `name` (a kernels/dispatch launch listener)."""
        if not self.quiet:
            self.ops[f"kernel:{name}"] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        """Run the op; count it if it would launch a kernel on the device."""
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if self.quiet or name in NO_KERNEL:
            return out
        outs = [t for t in _tensors(out) if t.device.type == self.device]
        if name in ("copy_", "_to_copy") and outs:
            src = args[1] if name == "copy_" else args[0]
            if isinstance(src, torch.Tensor) and src.device.type == "cpu":
                self.h2d += 1
        if outs:
            self.ops[f"aten:{name}"] += 1
        return out

    @property
    def total(self) -> int:
        """Launches counted so far."""
        return sum(self.ops.values())


class _FusedAttention(TorchFunctionMode):
    """Count `F.scaled_dot_product_attention` as one launch (a fused GPU backend).

    On the meta device SDPA decomposes into its math reference, which a GPU runs only when
    no fused kernel applies; the model calls it so that one does (no GQA flag, an aligned
    mask: see models/layers.attend).
    """

    def __init__(self, counter: LaunchCounter):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        self.counter.ops["kernel:sdpa"] += 0 if self.counter.quiet else 1
        self.counter.quiet += 1
        try:
            return func(*args, **kwargs)
        finally:
            self.counter.quiet -= 1


@contextmanager
def counting(device: str = "meta"):
    """Yield a `LaunchCounter` active for the block (aten ops, our kernels, SDPA)."""
    counter = LaunchCounter(device)
    dispatch.add_launch_listener(counter.on_launch)
    try:
        with _FusedAttention(counter), counter:
            yield counter
    finally:
        dispatch.remove_launch_listener(counter.on_launch)


def meta_model(cfg, family, precision: str, layout: str = "quantvla"):
    """Build `cfg` on the meta device in bf16, as the Policy serves it.

    bf16 stays float; integer precisions swap the layout's linears for empty QuantLinears
    (as an artifact loads) and fuse projections (as `Policy.from_artifact` does); both then
    get the family's inference preparation.
    """
    model = cast_floating(build_meta(cfg), torch.bfloat16).eval()
    if precision != "bf16":
        # each linear gets its layout part's scheme (group size), as quantization gives it
        chosen = schemes(model, get_layout(layout, family=family.name), parse_bits(precision))
        for qname, scheme in chosen.items():
            linear = model.get_submodule(qname)
            _set_module(model, qname, QuantLinear(
                linear.in_features, linear.out_features, scheme,
                bias=linear.bias is not None, device="meta", dtype=torch.bfloat16))
        family.fuse_projections(model)
    family.prepare_for_inference(model)
    return model


@torch.no_grad()
def _measure(prefix, loop) -> dict:
    """Count one prefix and chunks of 1 and 2 steps (totals, op histograms, H2D).

    Everything runs once first, as the warm-ups before graph capture do, so per-device
    caches (masks, flow times, the step conditioning, Hadamard matrices) are filled.
    """
    state = prefix()
    loop(state, 1)
    loop(state, 2)
    runs = {}
    for part, fn in (("prefix", prefix), ("loop1", lambda: loop(state, 1)),
                     ("loop2", lambda: loop(state, 2))):
        with counting() as c:
            fn()
        runs[part] = c
    step_ops = Counter(runs["loop2"].ops)
    step_ops.subtract(runs["loop1"].ops)
    step = runs["loop2"].total - runs["loop1"].total
    return {"prefix": runs["prefix"].total, "step": step, "setup": runs["loop1"].total - step,
            "prefix_ops": Counter(runs["prefix"].ops), "step_ops": +step_ops,
            "h2d": sum(c.h2d for c in runs.values())}


def _diff(a: Counter, b: Counter) -> dict:
    d = Counter(a)
    d.subtract(b)
    return dict(sorted((+d).items()))


def count_launches(name: str = "pi05", precisions=PRECISIONS, layout: str = "quantvla",
                   verbose: bool = False) -> dict:
    """Return launches per prefix and per denoising step, fixed + per layer, per precision.

    The family names its repeated stacks (`LaunchProbe.stacks`); each is counted at its
    fewest layers and at one more, the difference is its per-layer count, and the totals
    extrapolate to the config's depths. `chunk_setup` is what a chunk adds once (pi: the
    suffix's mask and RoPE angles; GR00T: the VL self-attention and the state encoder),
    `chunk_total` prefix + setup + every step.
    """
    cfg = get_config(name)
    family = family_for(cfg)
    probe = family.launch_probe(cfg)
    fewest = {k: lo for k, (_, lo) in probe.stacks.items()}
    depths = {k: n for k, (n, _) in probe.stacks.items()}
    steps = cfg.num_steps
    result = {"model": name, "layout": layout, "depths": depths, "num_steps": steps,
              "assumes": "one launch per cuBLAS GEMM and per SDPA call "
              "(fused attention backend); counted on the meta device", "precisions": {}}

    def measure(counts, precision):
        model = meta_model(probe.with_depths(cfg, counts), family, precision, layout)
        return _measure(*probe.runs(model))

    for precision in precisions:
        base = measure(fewest, precision)
        deeper = {k: measure({**fewest, k: fewest[k] + 1}, precision) for k in fewest}
        row = {}
        for part, key in (("prefix", "prefix"), ("denoise_step", "step"),
                          ("chunk_setup", "setup")):
            per = {k: deeper[k][key] - base[key] for k in fewest}
            fixed = base[key] - sum(fewest[k] * per[k] for k in fewest)
            row[part] = {"fixed": fixed, "per_layer": per,
                         "total": fixed + sum(depths[k] * per[k] for k in fewest)}
        row["chunk_total"] = (row["prefix"]["total"] + row["chunk_setup"]["total"]
                              + steps * row["denoise_step"]["total"])
        row["h2d_copies_after_warmup"] = base["h2d"] + sum(d["h2d"] for d in deeper.values())
        if verbose:
            row["step_ops_per_layer"] = {k: _diff(deeper[k]["step_ops"], base["step_ops"])
                                         for k in fewest}
            row["prefix_ops_per_layer"] = {k: _diff(deeper[k]["prefix_ops"],
                                                    base["prefix_ops"]) for k in fewest}
            fix = Counter(base["step_ops"])
            for k in fewest:
                for op, n in row["step_ops_per_layer"][k].items():
                    fix[op] -= fewest[k] * n
            row["step_ops_fixed"] = dict(sorted((+fix).items()))
        result["precisions"][precision] = row
    return result
