"""Our SigLIP tower against transformers' SiglipVisionModel with the same weights."""

import pytest
import torch

from quantvla_ros.models.siglip import SiglipVision, VisionConfig

transformers = pytest.importorskip("transformers", reason="transformers is not installed")


def test_matches_transformers_siglip():
    cfg = VisionConfig(width=64, depth=2, mlp_dim=96, num_heads=4)
    hf_cfg = transformers.SiglipVisionConfig(
        hidden_size=cfg.width, intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads, image_size=cfg.image_size,
        patch_size=cfg.patch_size, layer_norm_eps=cfg.eps, hidden_act="gelu_pytorch_tanh",
        vision_use_head=False,
    )
    torch.manual_seed(0)
    hf = transformers.SiglipVisionModel(hf_cfg).eval()
    ours = SiglipVision(cfg).eval()
    # transformers 5 drops the "vision_model." prefix that lerobot checkpoints carry
    state = {k if k.startswith("vision_model.") else "vision_model." + k: v
             for k, v in hf.state_dict().items()}
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert not missing, missing
    assert all("position_ids" in k for k in unexpected), unexpected
    pixels = torch.rand(2, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        ref = hf(pixel_values=pixels).last_hidden_state
        out = ours(pixels)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
