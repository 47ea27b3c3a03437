"""DA-PTQ end to end on pi05-tiny: the budget is spent, the method never reads actions."""

import torch

from quantvla_ros.quant.apply import QuantConfig
from quantvla_ros.quant.artifact import load_artifact
from quantvla_ros.quant.balance import BalanceConfig
from quantvla_ros.quant.budget import stored_layout_bytes
from quantvla_ros.quant.daptq import METHOD
from quantvla_ros.quant.daptq_compensation import interface_names
from quantvla_ros.quant.layouts import get_layout
from quantvla_ros.quant.qlinear import QuantLinear
from quantvla_ros.quant.scheme import parse_bits
from quantvla_ros.runtime.policy import Policy
from quantvla_ros.workflows.methods import method_context
from quantvla_ros.workflows.quantize import (
    QuantizeRequest,
    open_buffer_for,
    prepare_batches,
    quantize_policy,
)

OFF = BalanceConfig(atm=False, ohb=False)
FAST = {"score_frames": "2"}


def test_artifact_spends_the_budget_to_one_percent(tmp_path):
    req = QuantizeRequest(source="pi05-tiny", calib="synthetic:6", balance=OFF,
                          method="daptq", budget=0.35, method_options=FAST)
    manifest = quantize_policy(req, tmp_path / "a", log=lambda *_: None)
    alloc = manifest.quantization.allocation
    model, *_ = load_artifact(tmp_path / "a")
    layout = (*manifest.quantized_modules, *alloc["float"])
    stored = stored_layout_bytes(model, layout)
    budget = alloc["budget_bytes"]
    assert manifest.quantization.method == "daptq"
    assert alloc["budget_bytes"] == int(0.35 * alloc["bf16_bytes"])
    # exact stored bytes (CSRC's biases included) within the budget and within 1% of it
    assert 0.99 * budget <= stored <= budget
    assert stored == alloc["bytes_with_csrc_bias"]
    # the manifest's bytes are what is stored, CSRC's biases included (they were left out)
    assert alloc["bytes"] == stored and alloc["refine_bytes"] == alloc["csrc_bias_bytes"] > 0
    # CSRC folded into the interface: its d is each k / v projection's bias
    k = model.get_submodule(interface_names(model)[0])
    assert isinstance(k, QuantLinear) and k.bias is not None
    assert alloc["refine"]["csrc"]["interface"][0]["error_after"] <= \
        alloc["refine"]["csrc"]["interface"][0]["error_before"]


class Poisoned(dict):
    """A batch whose recorded actions raise on access; the keys read are remembered."""

    read: set = set()

    def __getitem__(self, key):
        Poisoned.read.add(key)
        if "action" in key:
            raise AssertionError(f"DA-PTQ read recorded actions ({key!r})")
        return super().__getitem__(key)


def test_label_free_method_never_reads_recorded_actions():
    teacher = Policy.from_config("pi05-tiny", seed=0)
    batches = prepare_batches(teacher, list(open_buffer_for(teacher, "synthetic:3")), 3)
    poisoned = []
    for b in batches:
        p = Poisoned(b)
        dict.__setitem__(p, "actions", torch.zeros_like(b["noise"]))  # what a demo holds
        poisoned.append(p)
    Poisoned.read = set()
    student = Policy.from_config("pi05-tiny", seed=0).model
    qcfg = QuantConfig(parse_bits("w4a8"), get_layout("quantvla"))
    # no budget: quantvla's bytes, where CSRC's biases have no room (csrc_bias=auto: g only)
    ctx = method_context(teacher, student, qcfg, None, poisoned,
                         {**FAST, "states": "paper"}, log=lambda *_: None)
    plan = METHOD.plan(ctx)
    assert plan.record["csrc_bias"] is False and not plan.keep_float
    assert plan.record["bytes_with_csrc_bias"] == ctx.budget_bytes
    from quantvla_ros.quant.apply_plan import apply_plan

    apply_plan(student, qcfg, plan)
    refined = METHOD.refine(ctx, student, plan)
    assert refined["csrc"]["interface"] and refined["csrc"]["bias"] is False
    assert all(student.get_submodule(n).bias is None for n in interface_names(student))
    assert "actions" not in Poisoned.read
    assert Poisoned.read <= {"images", "image_masks", "tokens", "token_masks", "state", "noise"}
    assert {"images", "noise"} <= Poisoned.read  # it did read the observations
