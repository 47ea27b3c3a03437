"""Quantization never holds a second float model: the student shares the teacher's tensors.

During `quantize_policy` every step of the per-linear loop counts the float parameter and
buffer bytes held by teacher and student together (distinct storages). A deep-copied student
holds the float model twice before the first layer is packed; the shared student holds the
teacher's bytes, plus only the norms smoothing folds into.
"""

import pytest
import torch

from quantvla_ros.quant import apply
from quantvla_ros.quant.balance import BalanceConfig
from quantvla_ros.quant.qembedding import QuantEmbedding
from quantvla_ros.quant.qlinear import QuantLinear
from quantvla_ros.workflows import quantize as quantize_mod
from quantvla_ros.workflows.quantize import QuantizeRequest, quantize_policy


def float_bytes(*models) -> int:
    """Bytes of the distinct storages of the float layers' parameters and buffers.

    Packed modules' scales (float32 too) are quantized storage, not a float layer.
    """
    seen = {}
    for model in models:
        for m in model.modules():
            if isinstance(m, QuantLinear | QuantEmbedding):
                continue
            for t in (*m.parameters(recurse=False), *m.buffers(recurse=False)):
                if t.is_floating_point():
                    s = t.untyped_storage()
                    seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def _run(tmp_path, monkeypatch, **kw):
    """Quantize pi05-tiny; return (teacher float bytes, per-step totals, student)."""
    held = {}

    def spy(model):
        held["teacher"], held["teacher_bytes"] = model, float_bytes(model)
        held["student"] = apply.student_of(model)
        return held["student"]

    steps = []

    def progress(items):
        for item in items:
            yield item
            if isinstance(item, str):  # the per-linear loop (balance stages are lists)
                steps.append(float_bytes(held["teacher"], held["student"]))

    monkeypatch.setattr(quantize_mod, "student_of", spy)
    req = QuantizeRequest(source="pi05-tiny", calib="synthetic:4", **kw)
    quantize_policy(req, tmp_path / "a", progress=progress, log=lambda *_: None)
    return held["teacher_bytes"], steps, held["student"]


@pytest.mark.parametrize("bits", ["w4a8", "w8a8"])
def test_student_holds_no_second_float_copy(tmp_path, monkeypatch, bits):
    """Teacher + student float bytes equal the teacher's at every packing step."""
    teacher_bytes, steps, student = _run(tmp_path, monkeypatch, bits=bits,
                                         balance=BalanceConfig(atm=False, ohb=False))
    assert len(steps) > 10
    assert max(steps) == teacher_bytes
    assert sum(isinstance(m, QuantLinear) for m in student.modules()) == len(steps)


def test_smoothing_copies_only_the_norms(tmp_path, monkeypatch):
    """With smoothing the student owns the folded norms, never a packed linear's weight."""
    teacher_bytes, steps, student = _run(
        tmp_path, monkeypatch, bits="w8a8", preset=None, include=("expert.layers.*.mlp.*",),
        smooth_alpha=0.5, balance=BalanceConfig(atm=False, ohb=False))
    norms = sum(p.numel() * p.element_size() for n, p in student.named_parameters()
                if "layernorm" in n and n.startswith("expert."))
    assert len(steps) == 6  # gate, up, down of the 2 expert layers
    assert teacher_bytes < max(steps) <= teacher_bytes + norms


def test_atm_ohb_leave_the_teacher_unchanged(tmp_path, monkeypatch):
    """Folding ATM / OHB into float query / output rows writes the student's own tensors."""
    held = {}
    original = apply.student_of

    def spy(model):
        held["before"] = {k: v.clone() for k, v in model.state_dict().items()}
        held["teacher"] = model
        return original(model)

    monkeypatch.setattr(quantize_mod, "student_of", spy)
    req = QuantizeRequest(source="pi05-tiny", calib="synthetic:4",
                          balance=BalanceConfig(clamp=(0.5, 2.0), band=0.0))
    manifest = quantize_policy(req, tmp_path / "a", log=lambda *_: None)
    assert any(abs(b - 1) > 1e-6 for b in manifest.balance.beta.values())
    after = held["teacher"].state_dict()
    assert all(torch.equal(held["before"][k], after[k]) for k in after)
