"""Weight formats as objects (quant/formats.py): storage, packing, exact bytes, dispatch."""

import pytest
import torch
from torch import nn

from quantvla_ros.kernels import reference
from quantvla_ros.kernels.int4_layout import pack_khalf, quantize_progressive
from quantvla_ros.quant.apply import empty_quantized
from quantvla_ros.quant.footprint import stored_bytes
from quantvla_ros.quant.formats import FORMATS, format_named, format_of
from quantvla_ros.quant.qlinear import QuantLinear
from quantvla_ros.quant.quantizers import quantize_weight
from quantvla_ros.quant.scheme import QuantScheme, parse_bits

CASES = [("w8a8", None), ("w8a8", 128), ("w4a8", None), ("w4a8", 128), ("w4a4", None),
         ("w4a4", 128)]


def _scheme(bits, group):
    return parse_bits(bits, group_size=group or 0, hadamard=False)


def test_registry_names_every_supported_scheme():
    assert set(FORMATS) == {"w8a8", "w4a8", "w4a4"}
    for name, f in FORMATS.items():
        assert f.name == name and f"w{f.w_bits}a{f.a_bits}" == name
        assert format_of(parse_bits(name)) is f
    with pytest.raises(ValueError, match="known: w8a8"):
        format_named("w2a8")


@pytest.mark.parametrize("bits,group", CASES)
def test_pack_matches_the_pre_format_code_bit_for_bit(bits, group):
    """The storage the format writes is what qlinear wrote before the refactor."""
    torch.manual_seed(0)
    w = torch.randn(40, 256)
    p = format_named(bits).pack(w, group)
    if bits == "w4a8":
        q, s, gs = quantize_progressive(w, group)
        expect = (pack_khalf(q), s, gs)
    else:
        q, s = quantize_weight(w, int(bits[1]), group)
        expect = (reference.pack_int4(q) if bits == "w4a4" else q, s, None)
    assert torch.equal(p.weight_q, expect[0]) and torch.equal(p.weight_scale, expect[1])
    assert (p.group_scale is None) == (expect[2] is None)
    if expect[2] is not None:
        assert torch.equal(p.group_scale, expect[2])


@pytest.mark.parametrize("bits,group", CASES)
def test_unpack_and_fake_quantize_agree(bits, group):
    torch.manual_seed(1)
    w = torch.randn(24, 256)
    f = format_named(bits)
    p = f.pack(w, group)
    deq = f.dequantize(f.int_weight(p.weight_q, 256), p.weight_scale, p.group_scale, group)
    assert torch.equal(deq, f.fake_quantize(w, group))


@pytest.mark.parametrize("bits,group", CASES)
def test_stored_bytes_are_the_quantlinear_buffers(bits, group):
    m = nn.Linear(384, 72, bias=False)
    scheme = _scheme(bits, group)
    q = empty_quantized(m, scheme, dtype=torch.bfloat16)
    assert format_of(scheme).stored_bytes(72, 384, group) == stored_bytes(q)


@pytest.mark.parametrize("bits,group", CASES)
def test_quantlinear_runs_through_its_format(bits, group):
    torch.manual_seed(2)
    lin = nn.Linear(256, 32)
    ql = QuantLinear.from_float(lin, _scheme(bits, group))
    x = torch.randn(5, 256)
    f = ql.format
    y = f.linear(x, ql.weight_q, ql.weight_scale, ql.weight_group_scale, bias=ql.bias,
                 out_dtype=x.dtype, group_size=group, smooth=None)
    assert torch.equal(ql(x), y)
    assert torch.equal(ql.dequantized_weight(), f.fake_quantize(lin.weight.detach(), group))


def test_act_clip_is_off_by_default_and_not_written():
    assert "act_clip" not in QuantScheme().to_dict()
    assert QuantScheme(act_clip=99.9).to_dict()["act_clip"] == 99.9
    assert "act_clip" not in dict(QuantLinear(256, 8, QuantScheme()).state_dict())
