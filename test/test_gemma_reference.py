"""Our Gemma tower against transformers' GemmaModel (what lerobot's pi0 / pi0.5 build on)."""

import pytest
import torch

from quantvla_ros.models.pi.config import GemmaConfig
from quantvla_ros.models.pi.gemma import GemmaTower, joint_forward
from quantvla_ros.models.rope import MASK_VALUE

transformers = pytest.importorskip("transformers", reason="transformers is not installed")


@pytest.fixture(scope="module")
def towers():
    cfg = GemmaConfig(width=256, depth=2, mlp_dim=512, head_dim=32)  # 8 q heads, 1 KV head
    torch.manual_seed(0)
    ours = GemmaTower(cfg, adaptive=False, vocab_size=64).eval()
    with torch.no_grad():
        for name, p in ours.named_parameters():  # norms away from identity too
            p.normal_(0.0, 0.3 if "norm" in name else 0.05)
    hf_cfg = transformers.GemmaConfig(
        vocab_size=64, hidden_size=cfg.width, intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.eps,
        hidden_act="gelu_pytorch_tanh", attn_implementation="eager")
    hf = transformers.GemmaModel(hf_cfg).eval()
    missing, unexpected = hf.load_state_dict(ours.state_dict(), strict=False)
    assert not missing and not unexpected
    return ours, hf


@pytest.mark.parametrize("pattern", ["prefix_lm_padded", "causal"])
def test_matches_transformers_gemma(towers, pattern):
    ours, hf = towers
    b, s = 2, 12
    x = torch.randn(b, s, 256, generator=torch.Generator().manual_seed(1))
    valid = torch.ones(b, s, dtype=torch.bool)
    if pattern == "causal":
        mask = torch.tril(torch.ones(s, s, dtype=torch.bool))[None].expand(b, s, s)
    else:  # bidirectional over the valid tokens, the second sample right-padded
        valid[1, 9:] = False
        mask = valid[:, None, :] & valid[:, :, None]
    positions = valid.long().cumsum(1) - 1
    with torch.no_grad():
        (out,), _ = joint_forward([ours], [x], [None], positions, mask)
        bias = torch.zeros(b, 1, s, s).masked_fill(~mask[:, None], MASK_VALUE)
        ref = hf(inputs_embeds=x, attention_mask=bias if pattern != "causal" else None,
                 position_ids=positions).last_hidden_state
    torch.testing.assert_close(out[valid], ref[valid], atol=1e-5, rtol=1e-5)


def test_language_embedding_scale_matches(towers):
    ours, hf = towers
    ids = torch.tensor([[3, 7, 11]])
    ref = hf.embed_tokens(ids)
    ours_emb = ours.embed_tokens(ids)
    scaled = ours_emb * torch.tensor(256**0.5, dtype=ours_emb.dtype)  # as embed_prefix does
    torch.testing.assert_close(scaled, ref)
