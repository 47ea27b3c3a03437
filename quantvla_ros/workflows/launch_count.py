"""`quantvla bench launches`: GPU kernel launches per prefix and per denoising step.

The denoise loop is launch-bound (about 1,100 kernels per step before the fusions), so the
count is the number to watch. It is taken without a GPU: the model is built on the meta
device at full widths (no memory, no compute) with 1-2 layers per tower, run once as the
Policy serves it, and every aten op that would launch a kernel is counted by a
`TorchDispatchMode`; our own kernels (kernels/dispatch.py and the float kernels) report their
launches through `dispatch.add_launch_listener`. Per-layer counts are differences between
depths, extrapolated to the real depth. What a count assumes (one launch per cuBLAS GEMM
and per SDPA call) is stated in the result.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from quantvla_ros.kernels import dispatch
from quantvla_ros.models.build import build_meta, cast_floating
from quantvla_ros.models.config import get_config
from quantvla_ros.quant.apply import _set_module
from quantvla_ros.quant.fused import fuse_projections
from quantvla_ros.quant.layouts import get_layout, select
from quantvla_ros.quant.qlinear import QuantLinear
from quantvla_ros.quant.scheme import parse_bits
from quantvla_ros.runtime.fast_path import prepare_for_inference

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


def meta_model(name: str, precision: str, vision_depth: int, depth: int,
               layout: str = "quantvla"):
    """Build `name` on the meta device at full widths and the given depths, as served.

    bf16 stays float; integer precisions swap the layout's linears for empty QuantLinears
    (as an artifact loads) and fuse projections (as `Policy.from_artifact` does); both then
    get the Policy's inference preparation (runtime/fast_path.py).
    """
    cfg = get_config(name)
    cfg = cfg.with_(vision=replace(cfg.vision, depth=vision_depth),
                    backbone=replace(cfg.backbone, depth=depth),
                    expert=replace(cfg.expert, depth=depth))
    model = cast_floating(build_meta(cfg), torch.bfloat16).eval()
    if precision != "bf16":
        scheme = parse_bits(precision)
        for qname in select(model, get_layout(layout)):
            linear = model.get_submodule(qname)
            _set_module(model, qname, QuantLinear(
                linear.in_features, linear.out_features, scheme,
                bias=linear.bias is not None, device="meta", dtype=torch.bfloat16))
        fuse_projections(model)
    prepare_for_inference(model)
    return model


def _inputs(cfg):
    n, s = len(cfg.cameras), cfg.vision.image_size
    meta = {"device": "meta"}
    return {
        "images": torch.empty(1, n, 3, s, s, dtype=torch.bfloat16, **meta),
        "image_masks": torch.empty(1, n, dtype=torch.bool, **meta),
        "tokens": torch.empty(1, cfg.max_token_len, dtype=torch.long, **meta),
        "token_masks": torch.empty(1, cfg.max_token_len, dtype=torch.bool, **meta),
        "state": torch.empty(1, cfg.state_dim, **meta),
        "noise": torch.empty(1, cfg.action_horizon, cfg.action_dim, **meta),
    }


@torch.no_grad()
def _measure(model) -> dict:
    """Count one prefix and denoise loops of 1 and 2 steps (totals, op histograms, H2D).

    Everything runs once first, as the warm-ups before graph capture do, so per-device
    caches (masks, flow times, the step conditioning, Hadamard matrices) are filled.
    """
    x = _inputs(model.cfg)

    def prefix():
        embs, valid = model.embed_prefix(x["images"], x["image_masks"], x["tokens"],
                                         x["token_masks"])
        return model.prefill(embs, valid, room=model.suffix_len), valid

    def loop(steps):
        model.denoise_loop(cache, valid, x["noise"], x["state"], steps)

    cache, valid = prefix()
    loop(1)
    loop(2)
    runs = {}
    for part, fn in (("prefix", prefix), ("loop1", lambda: loop(1)), ("loop2", lambda: loop(2))):
        with counting() as c:
            fn()
        runs[part] = c
    step_ops = Counter(runs["loop2"].ops)
    step_ops.subtract(runs["loop1"].ops)
    step = runs["loop2"].total - runs["loop1"].total
    return {"prefix": runs["prefix"].total, "step": step, "setup": runs["loop1"].total - step,
            "prefix_ops": Counter(runs["prefix"].ops), "step_ops": +step_ops,
            "h2d": sum(c.h2d for c in runs.values())}


def count_launches(name: str = "pi05", precisions=PRECISIONS, layout: str = "quantvla",
                   verbose: bool = False) -> dict:
    """Return launches per prefix and per denoising step, fixed + per layer, per precision.

    Per layer is the difference between 3 and 2 layers per tower (depth 1 would be the
    backbone's key/value-only last layer alone), per vision layer between 2 and 1; the
    totals extrapolate to the config's depths. `chunk_setup` is what a chunk adds once
    (the suffix's mask and RoPE angles), `chunk_total` prefix + setup + every step.
    """
    cfg = get_config(name)
    depth, vdepth, steps = cfg.backbone.depth, cfg.vision.depth, cfg.num_steps
    result = {"model": name, "layout": layout, "depth": depth, "vision_depth": vdepth,
              "num_steps": steps, "assumes": "one launch per cuBLAS GEMM and per SDPA call "
              "(fused attention backend); counted on the meta device", "precisions": {}}
    for precision in precisions:
        base = _measure(meta_model(name, precision, 1, 2, layout))
        deeper = _measure(meta_model(name, precision, 1, 3, layout))
        wider_v = _measure(meta_model(name, precision, 2, 2, layout))
        per_vision = wider_v["prefix"] - base["prefix"]
        per_layer = {k: deeper[k] - base[k] for k in ("prefix", "step", "setup")}
        fixed = {k: base[k] - 2 * per_layer[k] for k in per_layer}
        fixed["prefix"] -= per_vision
        total = {k: fixed[k] + depth * per_layer[k] for k in per_layer}
        total["prefix"] += vdepth * per_vision
        row = {
            "prefix": {"fixed": fixed["prefix"], "per_layer": per_layer["prefix"],
                       "per_vision_layer": per_vision, "total": total["prefix"]},
            "denoise_step": {"fixed": fixed["step"], "per_layer": per_layer["step"],
                             "total": total["step"]},
            "chunk_setup": {"fixed": fixed["setup"], "per_layer": per_layer["setup"],
                            "total": total["setup"]},
            "chunk_total": total["prefix"] + total["setup"] + steps * total["step"],
            "h2d_copies_after_warmup": base["h2d"] + deeper["h2d"],
        }
        if verbose:
            per = Counter(deeper["step_ops"])
            per.subtract(base["step_ops"])
            row["step_ops_per_layer"] = dict(sorted((+per).items()))
            fix = Counter(base["step_ops"])
            for k, v in (+per).items():
                fix[k] -= 2 * v
            row["step_ops_fixed"] = dict(sorted((+fix).items()))
            per_p = Counter(deeper["prefix_ops"])
            per_p.subtract(base["prefix_ops"])
            row["prefix_ops_per_layer"] = dict(sorted((+per_p).items()))
        result["precisions"][precision] = row
    return result
