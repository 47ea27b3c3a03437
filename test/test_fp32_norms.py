"""RMSNorm / adaRMS parameters stay float32 in every precision (as lerobot keeps them)."""

import torch

from quantvla_ros.models.build import fp32_tensor_names, random_model
from quantvla_ros.models.pi.config import get_config
from quantvla_ros.models.pi.layers import AdaRMSNorm, RMSNorm
from quantvla_ros.quant.smoothing import fold_into_norm
from quantvla_ros.runtime.policy import Policy


def _norms(model):
    return [m for m in model.modules() if isinstance(m, RMSNorm | AdaRMSNorm)]


def test_bf16_model_keeps_norms_in_fp32():
    model = random_model(get_config("pi05-tiny"), dtype=torch.bfloat16)
    names = fp32_tensor_names(model)
    assert "expert.layers.0.input_layernorm.dense.weight" in names
    assert "backbone.layers.0.post_attention_layernorm.weight" in names
    for name, t in model.state_dict().items():
        want = torch.float32 if name in names else torch.bfloat16
        assert t.dtype == want, name
    # backbone: 2 input norms + 1 post-attention (its last layer is k/v only, no final norm);
    # expert: 2 layers x 2 + final
    assert len(_norms(model)) == 3 + 5


def test_smoothing_folded_into_a_bf16_model_keeps_the_norm_gain():
    """fold(s) then x * s must give the unfolded output to bf16 output rounding (< 1%).

    With the weight stored in bf16, (1 + w) / s - 1 sits near -1 where bf16 steps by 2^-8,
    so once s > 10 the effective gain is off by percents (some channels exactly zero).
    """
    torch.manual_seed(0)
    model = random_model(get_config("pi05-tiny"), dtype=torch.bfloat16)
    norm = model.backbone.layers[0].input_layernorm
    with torch.no_grad():
        norm.weight.copy_(torch.randn_like(norm.weight) * 0.1)
    x = torch.randn(4, 16, norm.weight.numel()).to(torch.bfloat16)
    ref, _ = norm(x)
    s = torch.empty(norm.weight.numel()).uniform_(10.0, 40.0)
    fold_into_norm(norm, s)
    y, _ = norm(x)
    rel = ((y.float() * s - ref.float()).abs() / ref.float().abs().clamp(min=1e-3))
    assert rel.median() < 0.004 and rel.quantile(0.99) < 0.01, (rel.median(), rel.max())


def test_artifact_norms_load_as_stored_in_bf16(tmp_path):
    from quantvla_ros.workflows.quantize import QuantizeRequest, quantize_policy

    quantize_policy(QuantizeRequest(source="pi05-micro", calib="synthetic:4", bits="w8a8",
                                    smooth_alpha=None), tmp_path / "a", log=lambda *_: None)
    fp32 = Policy.load(str(tmp_path / "a"), fuse=False).model
    bf16 = Policy.load(str(tmp_path / "a"), precision="bf16", fuse=False).model
    for a, b in zip(_norms(fp32), _norms(bf16), strict=True):
        for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
            assert pb.dtype == torch.float32 and torch.equal(pa, pb), name
