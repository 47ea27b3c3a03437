"""The denoise loop's launch cuts keep its chunk: precomputed time conditioning, in-place KV
cache, one suffix context per chunk, and the runtime's fused float blocks (runtime/fast_path).

Every comparison is against the uncached reference path (`denoise_uncached`: prefix and
suffix through every layer, time conditioning recomputed from t), integrated with the same
Euler steps, in float32 on pi0.5-tiny and pi0-tiny.
"""

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from quantvla_ros.models.build import random_model
from quantvla_ros.models.pi.config import get_config
from quantvla_ros.models.pi.layers import AdaRMSNorm
from quantvla_ros.runtime.families.pi_fast_path import (
    FusedAttentionInput,
    FusedMLPBlock,
    FusedNorm,
    prepare_for_inference,
)

TOL = dict(atol=1e-5, rtol=1e-5)


def make_inputs(cfg, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, s = len(cfg.cameras), cfg.vision.image_size
    images = torch.rand(batch, n, 3, s, s, generator=g) * 2 - 1
    image_masks = torch.ones(batch, n, dtype=torch.bool)
    image_masks[1, -1] = False
    tokens = torch.randint(0, 200, (batch, cfg.max_token_len), generator=g)
    token_masks = torch.zeros(batch, cfg.max_token_len, dtype=torch.bool)
    token_masks[0, :9], token_masks[1, :5] = True, True
    noise = torch.randn(batch, cfg.action_horizon, cfg.action_dim, generator=g)
    state = torch.randn(batch, cfg.state_dim, generator=g)
    return images, image_masks, tokens, token_masks, noise, state


@torch.no_grad()
def uncached_chunk(model, images, im, tok, tm, noise, state, num_steps):
    """Yesterday's loop on the reference path: every step recomputes everything."""
    embs, valid = model.embed_prefix(images, im, tok, tm)
    dt, x = -1.0 / num_steps, noise.float()
    for t in model.flow_times(num_steps):
        v = model.denoise_uncached(embs, valid, x, torch.full((x.shape[0],), t), state)
        x = x + dt * v.float()
    return x


@pytest.fixture(scope="module", params=["pi05-tiny", "pi0-tiny"])
def model(request):
    return random_model(get_config(request.param), seed=3)


def test_chunk_equals_the_uncached_reference(model):
    inputs = make_inputs(model.cfg)
    want = uncached_chunk(model, *inputs, num_steps=4)
    got = model.sample_actions(*inputs, num_steps=4)
    torch.testing.assert_close(got, want, **TOL)
    again = model.sample_actions(*inputs, num_steps=4)  # served from the step cache
    torch.testing.assert_close(again, want, **TOL)


class KeyStorage:
    """Observer: records whether each step's attention reads the cache's own storage."""

    step = None

    def __init__(self, cache):
        self.ptrs = {k.data_ptr() for k in cache.keys}
        self.in_place = []

    def tokens(self, tower, valid_rows):
        pass

    def attention(self, layer, tower, q, k, mask_rows):
        self.in_place.append(k.data_ptr() in self.ptrs)

    def o_proj(self, layer, tower, out, valid_rows):
        pass


class ReadPointers(TorchDispatchMode):
    """Record the storage of every tensor an aten op reads."""

    def __init__(self):
        super().__init__()
        self.ptrs = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for a in [*args, *(kwargs or {}).values()]:
            if isinstance(a, torch.Tensor):
                self.ptrs.add(a.data_ptr())
        return func(*args, **(kwargs or {}))


@torch.no_grad()
def test_denoise_steps_write_the_cache_in_place_and_skip_the_time_mlps(model):
    """No concatenated key copy, and no adaRMS dense / time-MLP weight read inside the loop."""
    images, im, tok, tm, noise, state = make_inputs(model.cfg)
    embs, valid = model.embed_prefix(images, im, tok, tm)
    cache = model.prefill(embs, valid, room=model.suffix_len)
    p = embs.shape[1]
    assert cache.length == p and cache.keys[0].shape[2] == p + model.suffix_len
    model.denoise_loop(cache, valid, noise, state, 3)  # fills the step cache
    time_weights = [n.dense.weight for n in model.modules() if isinstance(n, AdaRMSNorm)]
    time_weights += [getattr(model, n).weight for n in ("time_mlp_in", "time_mlp_out")
                     if hasattr(model, n)]
    assert len(time_weights) == (2 * model.cfg.expert.depth + 3) * (model.cfg.variant == "pi05")
    obs, reads = KeyStorage(cache), ReadPointers()
    model.observer = obs
    try:
        with reads:
            model.denoise_loop(cache, valid, noise, state, 3)
    finally:
        model.observer = None
    assert len(obs.in_place) == 3 * model.cfg.expert.depth and all(obs.in_place)
    assert not reads.ptrs & {w.data_ptr() for w in time_weights}


@torch.no_grad()
def test_step_cache_follows_weight_changes(model):
    """Editing a weight in place (training, loading) rebuilds the precomputed conditioning."""
    m = copy.deepcopy(model)
    inputs = make_inputs(m.cfg)
    m.sample_actions(*inputs, num_steps=2)
    target = m.time_mlp_in.weight if m.cfg.variant == "pi05" else m.action_in_proj.weight
    target.mul_(1.5)
    norm = next((x for x in m.expert.modules() if isinstance(x, AdaRMSNorm)), None)
    if norm is not None:
        norm.dense.bias.add_(0.3)
    torch.testing.assert_close(m.sample_actions(*inputs, num_steps=2),
                               uncached_chunk(m, *inputs, num_steps=2), **TOL)


@torch.no_grad()
def test_fused_float_blocks_keep_the_chunk(model):
    """prepare_for_inference (concatenated q/k/v and gate/up, add + norm, RoPE + KV write)."""
    m = copy.deepcopy(model)
    counts = prepare_for_inference(m)
    depth = m.cfg.backbone.depth
    assert counts == {"attention_input": 2 * depth, "mlp_block": 2 * depth - 1,
                      "final_norm": 1}
    assert all(isinstance(la.attention_input, FusedAttentionInput)
               for la in [*m.backbone.layers, *m.expert.layers])
    assert all(isinstance(la.mlp_block, FusedMLPBlock) for la in m.expert.layers)
    assert isinstance(m.expert.norm, FusedNorm)
    assert m.expert.layers[0].attention_input.weight.shape[0] == \
        (m.cfg.expert.num_heads + 2 * m.cfg.expert.num_kv_heads) * m.cfg.expert.head_dim
    inputs = make_inputs(m.cfg)
    torch.testing.assert_close(m.sample_actions(*inputs, num_steps=3),
                               model.sample_actions(*inputs, num_steps=3), **TOL)
    assert prepare_for_inference(m) == dict.fromkeys(counts, 0)  # nothing left to fuse


def test_training_step_still_differentiates(model):
    """denoise_step with a plain prefix cache (training) keeps gradients to every tower."""
    m = copy.deepcopy(model).train()
    images, im, tok, tm, noise, state = make_inputs(m.cfg)
    embs, valid = m.embed_prefix(images, im, tok, tm)
    cache = m.prefill(embs, valid)
    assert cache.length is None
    v = m.denoise_step(cache, valid, noise, torch.full((2,), 0.4), state)
    v.square().mean().backward()
    assert m.backbone.layers[0].self_attn.k_proj.weight.grad.abs().sum() > 0
    mlp = m.time_mlp_in if m.cfg.variant == "pi05" else m.action_time_mlp_in
    assert mlp.weight.grad.abs().sum() > 0
