"""GR00T N1.5 in plain PyTorch (models/groot) against transformers and independent math.

SigLIP and Qwen3 are compared with transformers' own modules at 1e-5 (float32). The action
head has no reference library here (diffusers is not installed), so its DiT, VL
self-attention and sampler are compared with a from-scratch float64 re-derivation of
shared/GROOT.md §1.4-1.8 written below, at 1e-9.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from quantvla_ros.models.build import build_meta, random_model
from quantvla_ros.models.groot.action_head import action_time_sinusoid, flow_times
from quantvla_ros.models.groot.dit import timestep_sinusoid
from quantvla_ros.models.groot.eagle import splice_image_tokens
from quantvla_ros.models.registry import get_config

transformers = pytest.importorskip("transformers", reason="transformers is not installed")

TINY = get_config("groot-n15-tiny")
HEAD = TINY.action_head
F32_TOL = dict(atol=1e-5, rtol=1e-5)
F64_TOL = dict(atol=1e-9, rtol=1e-9)
VM = "backbone.eagle_model.vision_model."
LM = "backbone.eagle_model.language_model."


@pytest.fixture(scope="module")
def model():
    return random_model(TINY, seed=0)


def hf_siglip(cfg, seed=0):
    hf_cfg = transformers.SiglipVisionConfig(
        hidden_size=cfg.width, intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads, image_size=cfg.image_size,
        patch_size=cfg.patch_size, layer_norm_eps=cfg.eps, hidden_act="gelu_pytorch_tanh",
    )
    torch.manual_seed(seed)
    return transformers.SiglipVisionModel(hf_cfg).eval()


def hf_qwen3(cfg, layers, seed=0):
    hf_cfg = transformers.Qwen3Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.width, intermediate_size=cfg.mlp_dim,
        num_hidden_layers=layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.eps,
        rope_theta=cfg.rope_theta, tie_word_embeddings=True, attention_bias=False,
    )
    torch.manual_seed(seed)
    return transformers.Qwen3ForCausalLM(hf_cfg).eval()


def load_siglip(model, hf):
    """The key map: HF (v5 drops `vision_model.`) -> ours; the pooling `head.*` is skipped."""
    state = {}
    for k, v in hf.state_dict().items():
        k = k.removeprefix("vision_model.")
        if not k.startswith("head."):
            state[VM + "vision_model." + k] = v
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and not [k for k in missing if k.startswith(VM)]


def load_qwen3(model, hf, keep):
    """`model.*` -> `language_model.model.*`; lm_head and layers >= keep are not built."""
    state = {LM + k: v for k, v in hf.state_dict().items() if k.startswith("model.")}
    dropped = {k for k in state if any(f".layers.{i}." in k for i in range(keep, 99))}
    missing, unexpected = model.load_state_dict(
        {k: v for k, v in state.items() if k not in dropped}, strict=False)
    assert not unexpected and not [k for k in missing if k.startswith(LM)]
    assert "lm_head.weight" in hf.state_dict()  # exists there, deliberately not here
    return dropped


# ---------------------------------------------------------------- backbone vs transformers


def test_siglip_matches_transformers(model):
    hf = hf_siglip(TINY.vision)
    load_siglip(model, hf)
    pixels = torch.rand(3, 3, 28, 28) * 2 - 1
    with torch.no_grad():
        ref = hf(pixel_values=pixels).last_hidden_state  # includes post_layernorm
        out = model.backbone.eagle_model.vision_model(pixels)
    assert out.shape == (3, TINY.vision.num_tokens, TINY.vision.width) == (3, 4, 32)
    torch.testing.assert_close(out, ref, **F32_TOL)


def test_qwen3_truncated_with_final_norm_matches_transformers(model):
    """Keep select_layer layers, then the final norm: what NVIDIA's layer pop leaves."""
    keep = TINY.llm.depth
    hf = hf_qwen3(TINY.llm, layers=4)  # a "full" 4-layer LLM, cut to 2 like EagleBackbone
    dropped = load_qwen3(model, hf, keep)
    assert dropped and all(".layers.2." in k or ".layers.3." in k for k in dropped)
    while len(hf.model.layers) > keep:
        hf.model.layers.pop(-1)
    torch.manual_seed(1)
    embeds = torch.randn(2, 7, TINY.llm.width)
    mask = torch.ones(2, 7, dtype=torch.long)
    with torch.no_grad():
        ref = hf.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        out = model.backbone.eagle_model.language_model(embeds, mask)
        # the same numbers as an LLM built with num_hidden_layers = select_layer
        short = hf_qwen3(TINY.llm, layers=keep)
        short.load_state_dict(hf.state_dict())
        ref_short = short.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(out, ref, **F32_TOL)
    torch.testing.assert_close(out, ref_short, **F32_TOL)
    # the final RMSNorm is applied: the output rows have rms = weight (1 after random init)
    rms = out.pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-3, rtol=0)


def test_qwen3_left_padding_matches_transformers_on_real_tokens(model):
    """Padded keys are masked; positions stay arange(L) (not shifted for left padding)."""
    hf = hf_qwen3(TINY.llm, layers=TINY.llm.depth)
    load_qwen3(model, hf, TINY.llm.depth)
    torch.manual_seed(2)
    embeds = torch.randn(2, 6, TINY.llm.width)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    pos = torch.arange(6).expand(2, 6)
    with torch.no_grad():
        ref = hf.model(inputs_embeds=embeds, attention_mask=mask,
                       position_ids=pos).last_hidden_state
        out = model.backbone.eagle_model.language_model(embeds, mask)
    real = mask.bool()
    torch.testing.assert_close(out[real], ref[real], **F32_TOL)
    assert torch.isfinite(out).all()  # fully masked pad rows stay finite (the head reads them)


def test_splice_replaces_exactly_the_image_token_rows_in_order():
    torch.manual_seed(3)
    ids = torch.tensor([[5, 150, 150, 7], [150, 9, 150, 150]])
    embeds = torch.randn(2, 4, 3)
    images = torch.randn(5, 1, 3)  # five image-token rows, image-major
    out = splice_image_tokens(embeds, ids, 150, images)
    sel = ids == 150
    torch.testing.assert_close(out[~sel], embeds[~sel], atol=0, rtol=0)
    torch.testing.assert_close(out[sel], images.reshape(5, 3), atol=0, rtol=0)
    with pytest.raises(ValueError, match="image-token positions"):
        splice_image_tokens(embeds, ids, 150, images[:4])


def test_eagle_backbone_matches_siglip_linear_splice_qwen3(model):
    """Reference: SiglipVisionModel -> Linear -> replace image rows -> Qwen3Model (normed)."""
    hf_v, hf_l = hf_siglip(TINY.vision, seed=4), hf_qwen3(TINY.llm, TINY.llm.depth, seed=5)
    load_siglip(model, hf_v)
    load_qwen3(model, hf_l, TINY.llm.depth)
    mlp1 = model.backbone.eagle_model.mlp1[0]
    n_tok = TINY.vision.num_tokens
    ids = torch.tensor([[1, 2] + [150] * n_tok + [3] + [150] * n_tok + [4, 5],
                        [6, 7] + [150] * n_tok + [8] + [150] * n_tok + [9, 10]])
    mask = torch.ones_like(ids)
    torch.manual_seed(6)
    pixels = torch.rand(4, 3, 28, 28) * 2 - 1  # 2 views x 2 samples, batch-major
    with torch.no_grad():
        vit = F.linear(hf_v(pixel_values=pixels).last_hidden_state, mlp1.weight, mlp1.bias)
        emb = hf_l.model.embed_tokens(ids).clone()
        emb[ids == 150] = vit.reshape(-1, TINY.llm.width)
        ref = hf_l.model(inputs_embeds=emb, attention_mask=mask).last_hidden_state
        out = model.backbone(pixels, ids, mask)
    assert out.shape == (2, ids.shape[1], TINY.llm.width)
    torch.testing.assert_close(out, ref, **F32_TOL)


# ------------------------------------------------- action head vs an independent derivation


def lin(sd, name, x):
    return x @ sd[name + ".weight"].T + sd[name + ".bias"]


def layer_norm(x, eps):
    mu = x.mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + eps)


def ref_attention(sd, p, x, ctx, heads):
    q, k, v = lin(sd, p + ".to_q", x), lin(sd, p + ".to_k", ctx), lin(sd, p + ".to_v", ctx)
    b, s, inner = q.shape
    d = inner // heads

    def split(t):
        return t.reshape(b, t.shape[1], heads, d).permute(0, 2, 1, 3)

    w = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(d), dim=-1)
    out = (w @ split(v)).permute(0, 2, 1, 3).reshape(b, s, inner)
    return lin(sd, p + ".to_out.0", out)


def ref_ff(sd, p, x):
    return lin(sd, p + ".ff.net.2", F.gelu(lin(sd, p + ".ff.net.0.proj", x), approximate="tanh"))


def ref_vl(sd, features):
    x = layer_norm(features, 1e-5) * sd["action_head.vlln.weight"] + sd["action_head.vlln.bias"]
    for j in range(HEAD.vlsa_depth):
        p = f"action_head.vl_self_attention.transformer_blocks.{j}"
        n = layer_norm(x, 1e-5) * sd[p + ".norm1.weight"] + sd[p + ".norm1.bias"]
        x = x + ref_attention(sd, p + ".attn1", n, n, HEAD.vlsa_heads)
        n = layer_norm(x, 1e-5) * sd[p + ".norm3.weight"] + sd[p + ".norm3.bias"]
        x = x + ref_ff(sd, p, n)
    return x


def ref_dit(sd, h, vl, t):
    """GROOT.md §1.6: cos-first /127 sinusoid; AdaLN (scale, shift) on norm1; out (shift, scale).
    """
    half = HEAD.timestep_channels // 2
    # float32 in diffusers' op order (as ours): the one place this reference is not float64
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32) / (half - 1))
    arg = (t.float()[:, None] * freqs).double()
    silu_temb = F.silu(lin(sd, "action_head.model.timestep_encoder.timestep_embedder.linear_2",
                           F.silu(lin(sd, "action_head.model.timestep_encoder.timestep_embedder"
                                      ".linear_1", torch.cat([arg.cos(), arg.sin()], -1)))))
    d = HEAD.input_embedding_dim
    for i in range(HEAD.dit_depth):
        p = f"action_head.model.transformer_blocks.{i}"
        mod = lin(sd, p + ".norm1.linear", silu_temb)
        scale, shift = mod[:, None, :d], mod[:, None, d:]
        n = layer_norm(h, 1e-5) * (1 + scale) + shift
        h = h + ref_attention(sd, p + ".attn1", n, vl if i % 2 == 0 else n, HEAD.dit_heads)
        h = h + ref_ff(sd, p, layer_norm(h, 1e-5))
    mod = lin(sd, "action_head.model.proj_out_1", silu_temb)
    shift, scale = mod[:, None, :d], mod[:, None, d:]
    return lin(sd, "action_head.model.proj_out_2", layer_norm(h, 1e-6) * (1 + scale) + shift)


def csl(sd, p, x, emb):
    return torch.stack([x[i] @ sd[p + ".W"][e] + sd[p + ".b"][e] for i, e in enumerate(emb)])


def ref_sample(sd, features, state, emb, noise, steps):
    """§1.5-1.8: [state, future, action + pos] -> DiT -> decoder; last H rows; Euler 1/N."""
    vl = ref_vl(sd, features)
    b, horizon, _ = noise.shape
    s_tok = csl(sd, "action_head.state_encoder.layer2",
                F.relu(csl(sd, "action_head.state_encoder.layer1", state, emb)), emb)
    x = noise
    for k in range(steps):
        t = int(k / steps * 1000)
        half = HEAD.input_embedding_dim // 2
        freqs = torch.exp(-torch.arange(half, dtype=torch.float32) * (math.log(10_000.0) / half))
        arg = t * freqs  # float32, as NVIDIA's SinusoidalPositionalEncoding computes it
        tau = torch.cat([torch.sin(arg), torch.cos(arg)]).double()[None, None]
        a = csl(sd, "action_head.action_encoder.W1", x, emb)
        a = F.silu(csl(sd, "action_head.action_encoder.W2",
                       torch.cat([a, tau.expand(b, horizon, -1)], -1), emb))
        a = csl(sd, "action_head.action_encoder.W3", a, emb)
        a = a + sd["action_head.position_embedding.weight"][:horizon]
        future = sd["action_head.future_tokens.weight"].expand(b, -1, -1)
        seq = torch.cat([s_tok, future, a], dim=1)
        out = ref_dit(sd, seq, vl, torch.full((b,), t))
        pred = csl(sd, "action_head.action_decoder.layer2",
                   F.relu(csl(sd, "action_head.action_decoder.layer1", out, emb)), emb)
        x = x + pred[:, -horizon:] / steps
    return x


@pytest.fixture(scope="module")
def model64():
    m = random_model(TINY, seed=7).double()
    with torch.no_grad():  # non-trivial norm affines and biases, so a swapped role shows
        gen = torch.Generator().manual_seed(8)
        for name, p in m.named_parameters():
            if name.startswith("action_head.") and (name.endswith("bias") or "norm" in name
                                                    or name.endswith(".b")):
                p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return m


def head_inputs(b=2, seed=9):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        features=torch.randn(b, 5, HEAD.backbone_dim, generator=gen, dtype=torch.float64),
        state=torch.randn(b, 1, HEAD.max_state_dim, generator=gen, dtype=torch.float64),
        emb=torch.tensor([1, 0][:b]),
        noise=torch.randn(b, HEAD.action_horizon, HEAD.action_dim, generator=gen,
                          dtype=torch.float64),
    )


def test_vl_self_attention_matches_independent_math(model64):
    x = head_inputs()["features"]
    with torch.no_grad():
        out = model64.action_head.encode_vl(x)
    torch.testing.assert_close(out, ref_vl(model64.state_dict(), x), **F64_TOL)


def test_dit_alternates_cross_and_self_attention(model64):
    blocks = model64.action_head.model.transformer_blocks
    assert [b.attn1.is_cross for b in blocks] == [True, False, True, False]
    vl, sa = HEAD.backbone_dim, HEAD.input_embedding_dim
    assert vl != sa  # else the check below could not tell cross from self attention
    assert [b.attn1.to_k.in_features for b in blocks] == [vl, sa, vl, sa]
    gen = torch.Generator().manual_seed(10)
    h = torch.randn(2, HEAD.sequence_len, HEAD.input_embedding_dim, generator=gen,
                    dtype=torch.float64)
    vl = torch.randn(2, 5, HEAD.backbone_dim, generator=gen, dtype=torch.float64)
    t = torch.tensor([250, 750])
    with torch.no_grad():
        out = model64.action_head.model(h, vl, t)
    assert out.shape == (2, HEAD.sequence_len, HEAD.hidden_size)
    torch.testing.assert_close(out, ref_dit(model64.state_dict(), h, vl, t), **F64_TOL)


def test_dit_time_enters_only_through_norm1_and_the_output_modulation():
    m = random_model(TINY, seed=11).double()
    dit = m.action_head.model
    gen = torch.Generator().manual_seed(12)
    h = torch.randn(1, HEAD.sequence_len, HEAD.input_embedding_dim, generator=gen,
                    dtype=torch.float64)
    vl = torch.randn(1, 5, HEAD.backbone_dim, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        assert not torch.allclose(dit(h, vl, torch.tensor([0])), dit(h, vl, torch.tensor([500])))
        for block in dit.transformer_blocks:
            block.norm1.linear.weight.zero_()
        dit.proj_out_1.weight.zero_()
        same = [dit(h, vl, torch.tensor([t])) for t in (0, 500, 999)]
    torch.testing.assert_close(same[1], same[0], atol=0, rtol=0)
    torch.testing.assert_close(same[2], same[0], atol=0, rtol=0)
    # the third norm is plain: no affine parameters, hence no time modulation either
    assert all(not list(b.norm3.parameters()) for b in dit.transformer_blocks)


def test_sequence_layout_state_future_actions(model64):
    head, x = model64.action_head, head_inputs()
    state_tokens = head.state_encoder(x["state"], x["emb"])
    t = torch.tensor([250, 250])
    with torch.no_grad():
        seq = head.sequence(state_tokens, x["noise"], t, x["emb"])
        act = head.action_encoder(x["noise"], t, x["emb"])
    nf, hz = HEAD.num_future_tokens, HEAD.action_horizon
    assert seq.shape == (2, 1 + nf + hz, HEAD.input_embedding_dim)
    torch.testing.assert_close(seq[:, :1], state_tokens, atol=0, rtol=0)
    torch.testing.assert_close(seq[:, 1:1 + nf], head.future_tokens.weight.expand(2, -1, -1),
                               atol=0, rtol=0)
    torch.testing.assert_close(seq[:, 1 + nf:], act + head.position_embedding.weight[:hz],
                               atol=0, rtol=0)


def test_encoders_pick_the_embodiment_slice(model64):
    head, x = model64.action_head, head_inputs()
    sd = model64.state_dict()
    with torch.no_grad():
        for emb in (torch.tensor([1, 0]), torch.tensor([0, 0]), torch.tensor([1, 1])):
            s = head.state_encoder(x["state"], emb)
            ref = csl(sd, "action_head.state_encoder.layer2",
                      F.relu(csl(sd, "action_head.state_encoder.layer1", x["state"], emb)), emb)
            torch.testing.assert_close(s, ref, **F64_TOL)
            y = head.action_encoder.W1(x["noise"], emb)
            torch.testing.assert_close(y, csl(sd, "action_head.action_encoder.W1", x["noise"],
                                              emb), **F64_TOL)
        a = head.state_encoder(x["state"], torch.tensor([0, 0]))
        b = head.state_encoder(x["state"], torch.tensor([1, 1]))
    assert not torch.allclose(a, b)  # the slices differ, so the id matters


def test_sample_actions_matches_independent_math(model64):
    x = head_inputs()
    with torch.no_grad():
        out = model64.action_head.sample_actions(x["features"], x["state"], x["emb"],
                                                 x["noise"])
    ref = ref_sample(model64.state_dict(), x["features"], x["state"], x["emb"], x["noise"], 4)
    assert out.shape == (2, HEAD.action_horizon, HEAD.action_dim)
    torch.testing.assert_close(out, ref, **F64_TOL)


def test_flow_times_and_euler_update(model):
    assert flow_times(4, 1000) == [0, 250, 500, 750]
    assert flow_times(8, 1000) == [0, 125, 250, 375, 500, 625, 750, 875]
    assert flow_times(3, 1000) == [0, 333, 666]  # Python int truncation
    head = model.action_head
    seen = []

    def constant_velocity(vl, state_tokens, actions, t, emb, vl_mask=None):
        seen.append(t.tolist())
        return torch.full_like(actions, t[0].item() / 1000)

    head.velocity = constant_velocity
    try:
        noise = torch.randn(2, HEAD.action_horizon, HEAD.action_dim)
        out = head.sample_actions(torch.randn(2, 5, HEAD.backbone_dim),
                                  torch.randn(2, 1, HEAD.max_state_dim), torch.tensor([0, 1]),
                                  noise)
    finally:
        del head.velocity
    assert seen == [[0, 0], [250, 250], [500, 500], [750, 750]]
    torch.testing.assert_close(out, noise + 0.25 * (0 + 0.25 + 0.5 + 0.75), **F32_TOL)


def test_sinusoid_conventions():
    t = torch.tensor([[3.0]])
    tau = action_time_sinusoid(t, 1536)[0, 0]  # sin first, frequencies /(D/2) = /768
    assert tau.shape == (1536,)
    torch.testing.assert_close(tau[0], torch.tensor(math.sin(3.0)))
    torch.testing.assert_close(tau[768], torch.tensor(math.cos(3.0)))
    f767 = math.exp(-767 * math.log(10_000.0) / 768)
    torch.testing.assert_close(tau[767], torch.tensor(math.sin(3.0 * f767)))
    torch.testing.assert_close(tau[1535], torch.tensor(math.cos(3.0 * f767)))
    temb = timestep_sinusoid(torch.tensor([3]), 256)[0]  # cos first, frequencies /(half - 1)
    torch.testing.assert_close(temb[0], torch.tensor(math.cos(3.0)))
    torch.testing.assert_close(temb[128], torch.tensor(math.sin(3.0)))
    torch.testing.assert_close(temb[127], torch.tensor(math.cos(3.0 * 1e-4)))  # 10000^-127/127
    torch.testing.assert_close(temb[255], torch.tensor(math.sin(3.0 * 1e-4)))


# ------------------------------------------------------------------ whole model and sizes


def prompt(b, n_views):
    n = n_views * TINY.vision.num_tokens
    return torch.tensor([[1, 2] + [150] * n + [3 + i, 4] for i in range(b)])


def test_sample_actions_is_deterministic_given_noise(model):
    ids = prompt(2, 2)
    mask = torch.ones_like(ids)
    gen = torch.Generator().manual_seed(13)
    pixels = torch.rand(4, 3, 28, 28, generator=gen) * 2 - 1
    state = torch.randn(2, 1, HEAD.max_state_dim, generator=gen)
    emb = torch.tensor([0, 1])
    noise = torch.randn(2, HEAD.action_horizon, HEAD.action_dim, generator=gen)
    a = model.sample_actions(pixels, ids, mask, state, emb, noise)
    b = model.sample_actions(pixels, ids, mask, state, emb, noise.clone())
    assert a.shape == (2, HEAD.action_horizon, HEAD.action_dim) == (2, 16, 8)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    other = model.sample_actions(pixels, ids, mask, state, emb, noise + 1)
    assert not torch.allclose(a, other)
    with torch.no_grad():
        features = model.backbone(pixels, ids, mask)
        head = model.action_head.sample_actions(features, state, emb, noise)
    torch.testing.assert_close(a, head, atol=0, rtol=0)


def test_random_model_is_seeded_with_identity_norms():
    a, b = random_model(TINY, seed=3), random_model(TINY, seed=3)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, atol=0, rtol=0, msg=name)
    sd = a.state_dict()
    assert torch.equal(sd[LM + "model.norm.weight"], torch.ones(TINY.llm.width))
    assert torch.equal(sd["action_head.vlln.weight"], torch.ones(HEAD.backbone_dim))
    assert sd["action_head.model.transformer_blocks.0.norm1.linear.weight"].std() > 0.01


def test_full_size_builds_on_meta_with_the_released_count():
    cfg = get_config("groot-n15")
    m = build_meta(cfg)
    total = sum(p.numel() for p in m.parameters())
    assert abs(total - 2.398e9) < 0.5e6  # GROOT.md §2: 2.398 B (its 3 decimals)

    def part(prefix):
        return sum(p.numel() for n, p in m.named_parameters() if n.startswith(prefix)) / 1e6

    parts = {  # GROOT.md §2 table, millions, one decimal
        VM: 412.4, "backbone.eagle_model.mlp1": 2.4, LM: 914.7,
        "action_head.vl": 201.4, "action_head.model.": 550.4,
        "action_head.state_encoder": 52.5, "action_head.action_encoder": 228.2,
        "action_head.action_decoder": 34.6,
    }
    for prefix, millions in parts.items():
        assert abs(part(prefix) - millions) < 0.05, prefix
    assert abs(part(LM + "model.embed_tokens") - 310.6) < 0.05


def test_full_size_keys_and_shapes_are_nvidias():
    sd = build_meta(get_config("groot-n15")).state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    expected = {
        VM + "vision_model.embeddings.patch_embedding.weight": (1152, 3, 14, 14),
        VM + "vision_model.embeddings.position_embedding.weight": (256, 1152),
        VM + "vision_model.encoder.layers.26.mlp.fc1.weight": (4304, 1152),
        VM + "vision_model.post_layernorm.bias": (1152,),
        "backbone.eagle_model.mlp1.0.weight": (2048, 1152),
        LM + "model.embed_tokens.weight": (151_680, 2048),
        LM + "model.layers.11.self_attn.k_proj.weight": (1024, 2048),
        LM + "model.layers.11.self_attn.q_norm.weight": (128,),
        LM + "model.layers.11.mlp.down_proj.weight": (2048, 6144),
        LM + "model.norm.weight": (2048,),
        "action_head.vlln.weight": (2048,),
        "action_head.vl_self_attention.transformer_blocks.3.ff.net.0.proj.weight": (8192, 2048),
        "action_head.state_encoder.layer1.W": (32, 64, 1024),
        "action_head.action_encoder.W2.W": (32, 3072, 1536),
        "action_head.action_decoder.layer2.b": (32, 32),
        "action_head.future_tokens.weight": (32, 1536),
        "action_head.position_embedding.weight": (1024, 1536),
        "action_head.model.timestep_encoder.timestep_embedder.linear_1.weight": (1536, 256),
        "action_head.model.transformer_blocks.14.attn1.to_k.weight": (1536, 2048),
        "action_head.model.transformer_blocks.15.attn1.to_v.weight": (1536, 1536),
        "action_head.model.transformer_blocks.15.norm1.linear.weight": (3072, 1536),
        "action_head.model.transformer_blocks.15.ff.net.2.weight": (1536, 6144),
        "action_head.model.proj_out_1.weight": (3072, 1536),
        "action_head.model.proj_out_2.weight": (1024, 1536),
    }
    for key, shape in expected.items():
        assert shapes.get(key) == shape, key
    assert not [k for k in sd if "lm_head" in k or ".head." in k or "pos_embed" in k
                or "eagle_linear" in k or ".norm3." in k and "model.transformer" in k]
    assert not [k for k in sd if "layers.12." in k and k.startswith(LM)]
    counts = {p: len({k.split(p)[1].split(".")[0] for k in sd if p in k}) for p in (
        "encoder.layers.", "language_model.model.layers.",
        "vl_self_attention.transformer_blocks.", "model.transformer_blocks.")}
    assert counts == {"encoder.layers.": 27, "language_model.model.layers.": 12,
                      "vl_self_attention.transformer_blocks.": 4,
                      "model.transformer_blocks.": 16}
    assert list(sd) == [n for n, _ in build_meta(get_config("groot-n15")).named_parameters()]
