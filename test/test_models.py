"""pi0 / pi0.5 model: shapes, masks, KV cache, determinism, config registry."""

import pytest
import torch

from quantvla_ros.models.build import random_model
from quantvla_ros.models.config import get_config
from quantvla_ros.models.gemma import joint_forward
from quantvla_ros.models.pi0 import joint_mask


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
    """Behaviour, not just the mask: changing the actions leaves the prefix stream unchanged."""
    cfg = model.cfg
    images, im, tok, tm, noise, state = make_inputs(cfg)
    embs, valid = model.embed_prefix(images, im, tok, tm)
    t = torch.full((2,), 0.5)
    outs = []
    for x in (noise, noise * 3 + 1):
        s_embs, cond, ar = model.embed_suffix(x, t, state)
        mask, full_valid = joint_mask(valid, ar)
        pos = full_valid.long().cumsum(1) - 1
        (prefix_out, _), _ = joint_forward(model.towers, [embs, s_embs], [None, cond], pos, mask)
        outs.append(prefix_out[valid])
    assert torch.equal(outs[0], outs[1])


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
