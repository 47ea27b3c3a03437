"""pi0 / pi0.5 model: shapes, masks, KV cache, determinism, config registry."""

import copy
import hashlib

import pytest
import torch

from quantvla_ros.models.build import build_meta, random_model
from quantvla_ros.models.pi.config import get_config
from quantvla_ros.models.pi.gemma import AttentionObserver, joint_forward
from quantvla_ros.models.pi.layers import AttentionInput, MLPBlock
from quantvla_ros.models.pi.model import joint_mask

# State-dict keys recorded before the layers got swappable blocks (issue 8): lerobot
# checkpoints and saved artifacts map onto exactly these keys, in this order.
STATE_DICT_KEYS = {
    "pi05-tiny": (91, "e0b02d9b8c31c0d06ffcb1eaa7f023f54fe3e37e7ed56ea222cca543c39ce97e"),
    "pi0-tiny": (88, "4c8050d8cc5eca67613d8b072d6a591fdd2c1323694bd6361b621e27e463be15"),
}


def gemma_layer_keys(adaptive: bool) -> list[str]:
    norm = ["dense.weight", "dense.bias"] if adaptive else ["weight"]
    return ([f"input_layernorm.{n}" for n in norm]
            + [f"self_attn.{x}_proj.weight" for x in ("q", "k", "v", "o")]
            + [f"post_attention_layernorm.{n}" for n in norm]
            + [f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")])


def make_inputs(cfg, batch=2, seed=0, n_lang=20):
    g = torch.Generator().manual_seed(seed)
    n = len(cfg.cameras)
    images = torch.rand(batch, n, 3, 224, 224, generator=g) * 2 - 1
    image_masks = torch.ones(batch, n, dtype=torch.bool)
    image_masks[-1, -1] = False  # one missing camera in the last sample
    tokens = torch.randint(3, cfg.vocab_size, (batch, cfg.max_token_len), generator=g)
    token_masks = torch.zeros(batch, cfg.max_token_len, dtype=torch.bool)
    token_masks[:, :n_lang] = True
    token_masks[-1, n_lang - 5:] = False  # different prompt lengths in the batch
    noise = torch.randn(batch, cfg.action_horizon, cfg.action_dim, generator=g)
    state = torch.randn(batch, cfg.state_dim, generator=g)
    return images, image_masks, tokens, token_masks, noise, state


@pytest.fixture(scope="module", params=["pi05-tiny", "pi0-tiny"])
def model(request):
    return random_model(get_config(request.param), seed=0)


def test_sample_actions_shape_and_finite(model):
    cfg = model.cfg
    images, im, tok, tm, noise, state = make_inputs(cfg)
    actions = model.sample_actions(images, im, tok, tm, noise, state)
    assert actions.shape == (2, cfg.action_horizon, cfg.action_dim) == (2, 50, 32)
    assert torch.isfinite(actions).all()


def test_prefix_shapes(model):
    cfg = model.cfg
    images, im, tok, tm, *_ = make_inputs(cfg)
    embs, valid = model.embed_prefix(images, im, tok, tm)
    assert embs.shape == (2, cfg.prefix_len, cfg.backbone.width)
    t = cfg.vision.num_tokens
    # the masked camera's tokens and the padded language tokens are invalid
    assert not valid[1, (len(cfg.cameras) - 1) * t:len(cfg.cameras) * t].any()
    assert valid[0, : len(cfg.cameras) * t].all()
    assert valid.sum(1).tolist() == [len(cfg.cameras) * t + 20, (len(cfg.cameras) - 1) * t + 15]


def test_joint_mask_prefix_never_sees_suffix():
    prefix_valid = torch.tensor([[True, True, False, True]])
    mask, valid = joint_mask(prefix_valid, [1, 0, 0])
    p = 4
    assert not mask[:, :p, p:].any(), "a prefix token sees a suffix token"
    # suffix rows see exactly the valid prefix, and the whole (bidirectional) suffix
    assert torch.equal(mask[0, p:, :p], prefix_valid.expand(3, p))
    assert mask[0, p:, p:].all()
    # pi0's state token (its own block) does not see the action tokens after it
    mask0, _ = joint_mask(prefix_valid, [1, 1, 0, 0])
    assert mask0[0, p, p] and not mask0[0, p, p + 1:].any() and mask0[0, p + 1:, p:].all()


def test_prefix_outputs_ignore_suffix(model):
    """Behaviour, not just the mask: changing the actions leaves the prefix stream unchanged.

    The prefix stream leaves the backbone only as keys and values (the backbone's last layer
    has no queries or MLP, and no final norm), so every layer's prefix K/V must be identical.
    """
    cfg = model.cfg
    images, im, tok, tm, noise, state = make_inputs(cfg)
    embs, valid = model.embed_prefix(images, im, tok, tm)
    p = embs.shape[1]
    t = torch.full((2,), 0.5)
    caches = []
    for x in (noise, noise * 3 + 1):
        s_embs, cond, ar = model.embed_suffix(x, t, state)
        mask, full_valid = joint_mask(valid, ar)
        pos = full_valid.long().cumsum(1) - 1
        (prefix_out, suffix_out), cache = joint_forward(
            model.towers, [embs, s_embs], [None, cond], pos, mask, store=True)
        assert prefix_out is None and suffix_out.shape[1] == s_embs.shape[1]
        caches.append(cache)
    assert len(caches[0].keys) == cfg.backbone.depth
    for layer in range(cfg.backbone.depth):
        for a, b in ((caches[0].keys, caches[1].keys), (caches[0].values, caches[1].values)):
            # padding rows attend to nothing valid; no query ever reads their K/V
            prefix_a = a[layer][:, :, :p].transpose(1, 2)[valid]
            prefix_b = b[layer][:, :, :p].transpose(1, 2)[valid]
            assert torch.equal(prefix_a, prefix_b), layer
            assert not torch.equal(a[layer][:, :, p:], b[layer][:, :, p:]), layer


def test_backbone_last_layer_is_key_value_only(model):
    """Never-executed modules are not built: last backbone layer has only norm + k/v."""
    last = model.backbone.layers[-1]
    assert last.kv_only and not hasattr(model.backbone, "norm")
    assert sorted(n for n, _ in last.named_parameters()) == [
        "input_layernorm.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"]
    assert not any(layer.kv_only for layer in model.backbone.layers[:-1])
    assert not any(layer.kv_only for layer in model.expert.layers)
    assert model.never_executed_modules() == (
        "backbone.layers.1.self_attn.q_proj", "backbone.layers.1.self_attn.o_proj",
        "backbone.layers.1.post_attention_layernorm", "backbone.layers.1.mlp",
        "backbone.norm")


def test_suffix_sees_prefix(model):
    cfg = model.cfg
    images, im, tok, tm, noise, state = make_inputs(cfg)
    a = model.sample_actions(images, im, tok, tm, noise, state)
    b = model.sample_actions(-images, im, tok, tm, noise, state)
    assert (a - b).abs().max() > 1e-4, "actions do not depend on the images"


def test_kv_cache_matches_uncached_path(model):
    cfg = model.cfg
    images, im, tok, tm, noise, state = make_inputs(cfg)
    embs, valid = model.embed_prefix(images, im, tok, tm)
    cache = model.prefill(embs, valid)
    for tv in (1.0, 0.55, 0.1):
        t = torch.full((2,), tv)
        cached = model.denoise_step(cache, valid, noise, t, state)
        uncached = model.denoise_uncached(embs, valid, noise, t, state)
        torch.testing.assert_close(cached, uncached, atol=1e-5, rtol=1e-5)


def test_flow_times():
    m = random_model(get_config("pi05-tiny"))
    times = m.flow_times(10)
    assert len(times) == 10 and times[0] == 1.0
    assert times[-1] == pytest.approx(0.1, abs=1e-12)


def test_random_model_is_seeded():
    cfg = get_config("pi05-tiny")
    a, b, c = random_model(cfg, seed=1), random_model(cfg, seed=1), random_model(cfg, seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["backbone.layers.0.mlp.up_proj.weight"],
                           sc["backbone.layers.0.mlp.up_proj.weight"])


def test_module_names_select_parts():
    names = [n for n, m in random_model(get_config("pi05-tiny")).named_modules()
             if isinstance(m, torch.nn.Linear)]
    assert {n.split(".")[0] for n in names} >= {"vision", "projector", "backbone", "expert"}
    assert "backbone.layers.0.self_attn.q_proj" in names
    assert "expert.layers.1.mlp.down_proj" in names
    assert "expert.layers.0.input_layernorm.dense" in names  # pi0.5 adaptive norm


def test_unknown_model_suggests_names():
    with pytest.raises(KeyError) as err:
        get_config("pi05-tinyy")
    assert "pi05-tiny" in str(err.value) and "Did you mean" in str(err.value)


def test_full_size_dimensions():
    cfg = get_config("pi05")
    assert (cfg.backbone.width, cfg.backbone.mlp_dim, cfg.backbone.depth) == (2048, 16384, 18)
    assert (cfg.expert.width, cfg.expert.mlp_dim) == (1024, 4096)
    assert (cfg.vision.width, cfg.vision.depth, cfg.vision.num_tokens) == (1152, 27, 256)
    assert cfg.prefix_len == 968 and cfg.action_horizon == 50 and cfg.num_steps == 10


@pytest.mark.parametrize("name", sorted(STATE_DICT_KEYS))
def test_state_dict_keys_unchanged(name):
    cfg = get_config(name)
    model = build_meta(cfg)
    keys = list(model.state_dict())
    assert [n for n, _ in model.named_parameters()] == keys  # the blocks add no second path
    # The backbone's last layer lost exactly its never-executed modules (issue 9): put their
    # keys back where a full model has them and the recorded list must come out unchanged.
    last = f"backbone.layers.{cfg.backbone.depth - 1}."
    live = [k[len(last):] for k in keys if k.startswith(last)]
    assert live == ["input_layernorm.weight", "self_attn.k_proj.weight",
                    "self_attn.v_proj.weight"]
    first = keys.index(last + live[0])
    full = (keys[:first] + [last + k for k in gemma_layer_keys(False)] + ["backbone.norm.weight"]
            + keys[first + len(live):])
    count, digest = STATE_DICT_KEYS[name]
    assert len(full) == count and len(keys) == count - 7
    assert hashlib.sha256("\n".join(full).encode()).hexdigest() == digest
    for tower, adaptive in (("backbone", False), ("expert", cfg.variant == "pi05")):
        for i in range(getattr(cfg, tower).depth):
            prefix = f"{tower}.layers.{i}."
            if prefix == last:
                continue
            assert [k[len(prefix):] for k in keys if k.startswith(prefix)] == \
                gemma_layer_keys(adaptive)


def test_quantized_state_dict_keeps_module_paths():
    """Quantization swaps linears in place: every key still belongs to a float-model module."""
    from quantvla_ros.quant.apply import QuantConfig, quantize_
    from quantvla_ros.quant.layouts import get_layout
    from quantvla_ros.quant.scheme import parse_bits

    model = random_model(get_config("pi05-tiny"), seed=0)
    owners = {k.rpartition(".")[0] for k in model.state_dict()}
    names = quantize_(model, QuantConfig(parse_bits("w4a8"), get_layout("quantvla")))
    assert "backbone.layers.0.mlp.gate_proj" in names
    assert {k.rpartition(".")[0] for k in model.state_dict()} == owners


def test_layer_blocks_view_the_layers_modules(model):
    layer = model.expert.layers[0]
    attn_in, mlp_block = layer.attention_input, layer.mlp_block
    assert isinstance(attn_in, AttentionInput) and isinstance(mlp_block, MLPBlock)
    assert attn_in.norm is layer.input_layernorm and attn_in.attn is layer.self_attn
    assert mlp_block.norm is layer.post_attention_layernorm and mlp_block.mlp is layer.mlp
    assert not list(attn_in.parameters()) and not list(mlp_block.parameters())
    assert not attn_in.state_dict() and not mlp_block.state_dict()
    copied = copy.deepcopy(layer)  # a copy's blocks view the copy's modules
    assert copied.attention_input.norm is copied.input_layernorm
    assert copied.attention_input.attn is copied.self_attn
    assert copied.mlp_block.mlp is copied.mlp


class RecordingObserver:
    """Implements AttentionObserver structurally; records what joint_forward reports."""

    def __init__(self):
        self.step = "unset"
        self.calls = []

    def attention(self, layer, tower, q, k, mask_rows):
        self.calls.append(("attention", self.step, layer, tower, q.shape, k.shape,
                           mask_rows.shape, mask_rows.dtype))

    def o_proj(self, layer, tower, out, valid_rows):
        self.calls.append(("o_proj", self.step, layer, tower, out.shape, valid_rows.shape,
                           valid_rows.dtype))

    def tokens(self, tower, valid_rows):
        self.calls.append(("tokens", self.step, tower, valid_rows.shape, valid_rows.dtype))


def test_observer_protocol(model):
    from quantvla_ros.quant.pi_stats import StatsCollector

    assert model.observer is None
    assert AttentionObserver in StatsCollector.__mro__  # declared, not only structural
    assert isinstance(StatsCollector(), AttentionObserver)
    obs = RecordingObserver()
    assert isinstance(obs, AttentionObserver)
    assert not isinstance(object(), AttentionObserver)
    cfg = model.cfg
    images, im, tok, tm, noise, state = make_inputs(cfg)
    ref = model.sample_actions(images, im, tok, tm, noise, state, num_steps=2)
    model.observer = obs
    try:
        out = model.sample_actions(images, im, tok, tm, noise, state, num_steps=2)
    finally:
        model.observer = None
    torch.testing.assert_close(out, ref, rtol=0, atol=0)  # observing changes nothing
    b, p, bk, ex = 2, cfg.prefix_len, cfg.backbone, cfg.expert
    s = cfg.action_horizon + (cfg.variant == "pi0")  # pi0 adds a state token
    expected = [("tokens", None, 0, (b, p), torch.bool)]
    for li in range(bk.depth - 1):  # prefill: the backbone, its last layer only makes k/v
        expected += [
            ("attention", None, li, 0, (b, bk.num_heads, p, bk.head_dim),
             (b, bk.num_kv_heads, p, bk.head_dim), (b, p, p), torch.bool),
            ("o_proj", None, li, 0, (b, p, bk.width), (b, p), torch.bool),
        ]
    for step in range(2):  # each denoising step: the expert, over cached prefix + suffix keys
        expected.append(("tokens", step, 1, (b, s), torch.bool))
        for li in range(ex.depth):
            expected += [
                ("attention", step, li, 1, (b, ex.num_heads, s, ex.head_dim),
                 (b, ex.num_kv_heads, p + s, ex.head_dim), (b, s, p + s), torch.bool),
                ("o_proj", step, li, 1, (b, s, ex.width), (b, s), torch.bool),
            ]
    assert obs.calls == expected
