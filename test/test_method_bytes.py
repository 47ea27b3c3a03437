"""The manifest's `allocation.bytes` counts every byte a method's artifact stores (issue 21).

DA-PTQ's refine step folds CSRC's d into the backbone k / v projections as biases; they are
stored bytes, so they count in the plan's budget and in the recorded bytes, also on a float
k / v outside the layout.
"""

import torch
from torch import nn

from quantvla_ros.models.build import random_model
from quantvla_ros.models.pi.config import get_config
from quantvla_ros.quant.apply import QuantConfig, quantize_, student_of
from quantvla_ros.quant.budget import method_bytes, stored_layout_bytes
from quantvla_ros.quant.daptq_compensation import ChannelMap, fold_
from quantvla_ros.quant.layouts import get_layout
from quantvla_ros.quant.qlinear import QuantLinear
from quantvla_ros.quant.scheme import parse_bits

K = "backbone.layers.0.self_attn.k_proj"
V = "backbone.layers.0.self_attn.v_proj"


def _quantized_pair(layout: str):
    teacher = random_model(get_config("pi05-tiny"), seed=2)
    student = student_of(teacher)
    names = quantize_(student, QuantConfig(parse_bits("w4a8"), get_layout(layout)))
    return teacher, student, names


def _cmap(n: int) -> ChannelMap:
    return ChannelMap(torch.full((n,), 1.1), torch.linspace(-0.5, 0.5, n))


def test_method_bytes_count_a_bias_folded_into_a_layout_linear():
    teacher, student, names = _quantized_pair("backbone_expert")
    before = method_bytes(student, teacher, names)
    assert before == stored_layout_bytes(student, names)
    k = student.get_submodule(K)
    assert isinstance(k, QuantLinear) and k.bias is None
    fold_(student, K, _cmap(k.out_features))
    assert method_bytes(student, teacher, names) == before + 2 * k.out_features


def test_method_bytes_count_a_bias_folded_into_a_float_linear_outside_the_layout():
    teacher, student, names = _quantized_pair("expert_mlp")
    assert K not in names and V not in names
    before = method_bytes(student, teacher, names)
    v = student.get_submodule(V)
    assert type(v) is nn.Linear and v.bias is None
    fold_(student, V, _cmap(v.out_features))
    assert method_bytes(student, teacher, names) == before + 2 * v.out_features
    assert stored_layout_bytes(student, names) == before  # the layout alone misses them


def test_folding_into_a_shared_float_linear_leaves_the_teacher_float():
    """student_of shares the teacher's tensors: a fold must not write them in place."""
    teacher, student, _ = _quantized_pair("expert_mlp")
    want = teacher.get_submodule(V).weight.detach().clone()
    fold_(student, V, _cmap(want.shape[0]))
    assert torch.equal(teacher.get_submodule(V).weight, want)
    assert teacher.get_submodule(V).bias is None
    torch.testing.assert_close(student.get_submodule(V).weight, want * 1.1)
