"""GR00T N1.5 checkpoints (both layouts) and host-side inputs, synthetic (GROOT.md §3, §1.2).

No released weights can be downloaded here, so the state dicts follow §3's names and shapes,
written out independently of the model below (`spec_shapes`), and the model must match them.
"""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from quantvla_ros.models.groot import checkpoint as ck
from quantvla_ros.models.groot import processing as pr
from quantvla_ros.models.groot.config import GROOT_REGISTRY
from quantvla_ros.models.groot.normalization import (
    LIBERO_MEAN_STD,
    GrootNormalizer,
    StatisticsError,
)

TINY, FULL = GROOT_REGISTRY["groot-n15-tiny"], GROOT_REGISTRY["groot-n15"]


def spec_shapes(cfg):
    """§3's tensor names and shapes for ``cfg`` (NVIDIA layout, unprefixed)."""
    v, q, h = cfg.vision, cfg.llm, cfg.action_head
    s = {}
    vm = "backbone.eagle_model.vision_model.vision_model."
    s[vm + "embeddings.patch_embedding.weight"] = (v.width, 3, v.patch_size, v.patch_size)
    s[vm + "embeddings.patch_embedding.bias"] = (v.width,)
    s[vm + "embeddings.position_embedding.weight"] = (v.num_tokens, v.width)
    for i in range(v.depth):
        p = f"{vm}encoder.layers.{i}."
        for n in ("layer_norm1", "layer_norm2"):
            s[p + n + ".weight"] = s[p + n + ".bias"] = (v.width,)
        for n in ("q", "k", "v", "out"):
            s[f"{p}self_attn.{n}_proj.weight"] = (v.width, v.width)
            s[f"{p}self_attn.{n}_proj.bias"] = (v.width,)
        s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"] = (v.mlp_dim, v.width), (v.mlp_dim,)
        s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"] = (v.width, v.mlp_dim), (v.width,)
    s[vm + "post_layernorm.weight"] = s[vm + "post_layernorm.bias"] = (v.width,)
    s["backbone.eagle_model.mlp1.0.weight"] = (q.width, v.width)
    s["backbone.eagle_model.mlp1.0.bias"] = (q.width,)
    lm = "backbone.eagle_model.language_model.model."
    s[lm + "embed_tokens.weight"] = (q.vocab_size, q.width)
    kv = q.num_kv_heads * q.head_dim
    for i in range(q.depth):
        p = f"{lm}layers.{i}."
        s[p + "input_layernorm.weight"] = s[p + "post_attention_layernorm.weight"] = (q.width,)
        s[p + "self_attn.q_proj.weight"] = (q.num_heads * q.head_dim, q.width)
        s[p + "self_attn.k_proj.weight"] = s[p + "self_attn.v_proj.weight"] = (kv, q.width)
        s[p + "self_attn.o_proj.weight"] = (q.width, q.num_heads * q.head_dim)
        s[p + "self_attn.q_norm.weight"] = s[p + "self_attn.k_norm.weight"] = (q.head_dim,)
        s[p + "mlp.gate_proj.weight"] = s[p + "mlp.up_proj.weight"] = (q.mlp_dim, q.width)
        s[p + "mlp.down_proj.weight"] = (q.width, q.mlp_dim)
    s[lm + "norm.weight"] = (q.width,)
    a, b, d, c = "action_head.", h.backbone_dim, h.input_embedding_dim, h.max_num_embodiments
    s[a + "vlln.weight"] = s[a + "vlln.bias"] = (b,)
    for j in range(h.vlsa_depth):
        p = f"{a}vl_self_attention.transformer_blocks.{j}."
        for n in ("norm1", "norm3"):
            s[p + n + ".weight"] = s[p + n + ".bias"] = (b,)
        for n in ("to_q", "to_k", "to_v", "to_out.0"):
            s[f"{p}attn1.{n}.weight"], s[f"{p}attn1.{n}.bias"] = (b, b), (b,)
        s[p + "ff.net.0.proj.weight"] = (h.vlsa_mlp_dim, b)
        s[p + "ff.net.0.proj.bias"] = (h.vlsa_mlp_dim,)
        s[p + "ff.net.2.weight"], s[p + "ff.net.2.bias"] = (b, h.vlsa_mlp_dim), (b,)
    for name, i, o in (("state_encoder.layer1", h.max_state_dim, h.hidden_size),
                       ("state_encoder.layer2", h.hidden_size, d),
                       ("action_encoder.W1", h.action_dim, d), ("action_encoder.W2", 2 * d, d),
                       ("action_encoder.W3", d, d),
                       ("action_decoder.layer1", h.hidden_size, h.hidden_size),
                       ("action_decoder.layer2", h.hidden_size, h.action_dim)):
        s[f"{a}{name}.W"], s[f"{a}{name}.b"] = (c, i, o), (c, o)
    s[a + "future_tokens.weight"] = (h.num_future_tokens, d)
    s[a + "position_embedding.weight"] = (h.max_seq_len, d)
    t = a + "model.timestep_encoder.timestep_embedder."
    s[t + "linear_1.weight"], s[t + "linear_1.bias"] = (d, h.timestep_channels), (d,)
    s[t + "linear_2.weight"], s[t + "linear_2.bias"] = (d, d), (d,)
    for i in range(h.dit_depth):
        p = f"{a}model.transformer_blocks.{i}."
        s[p + "norm1.linear.weight"], s[p + "norm1.linear.bias"] = (2 * d, d), (2 * d,)
        kin = b if i % 2 == 0 else d  # even blocks cross-attend to the VL tokens
        for n, fan_in in (("to_q", d), ("to_k", kin), ("to_v", kin), ("to_out.0", d)):
            s[f"{p}attn1.{n}.weight"], s[f"{p}attn1.{n}.bias"] = (d, fan_in), (d,)
        s[p + "ff.net.0.proj.weight"] = (h.dit_mlp_dim, d)
        s[p + "ff.net.0.proj.bias"] = (h.dit_mlp_dim,)
        s[p + "ff.net.2.weight"], s[p + "ff.net.2.bias"] = (d, h.dit_mlp_dim), (d,)
    s[a + "model.proj_out_1.weight"], s[a + "model.proj_out_1.bias"] = (2 * d, d), (2 * d,)
    s[a + "model.proj_out_2.weight"] = (h.hidden_size, d)
    s[a + "model.proj_out_2.bias"] = (h.hidden_size,)
    return s


def synthetic_state(cfg, seed=0):
    """Random tensors in §3's layout; mlp1 and the LLM in bf16, the rest float32 (mixed file)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=gen).to(
        torch.bfloat16 if ".mlp1." in k or "language_model" in k else torch.float32)
        for k, shape in spec_shapes(cfg).items()}


def assert_same(a, b):
    assert list(a) == list(b) or set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


def test_model_state_dict_is_the_spec_layout():
    model = ck.build_meta(TINY)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == spec_shapes(TINY)
    full = {k: tuple(v.shape) for k, v in ck.build_meta(FULL).state_dict().items()}
    assert full == spec_shapes(FULL)


def test_nvidia_layout_two_shards_round_trip_bit_exact(tmp_path):
    state = synthetic_state(TINY)
    half = sum(t.numel() * t.element_size() for t in state.values()) * 3 // 4
    ck.save_state(state, TINY, tmp_path / "a", max_shard_bytes=half)
    index = json.loads((tmp_path / "a" / ck.INDEX).read_text())
    assert sorted(set(index["weight_map"].values())) == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert set(index["weight_map"]) == set(state)
    model, cfg = ck.load_checkpoint(tmp_path / "a")
    assert cfg == TINY
    assert_same(model.state_dict(), state)  # per-tensor dtypes kept from the header
    ck.save_checkpoint(model, tmp_path / "b", max_shard_bytes=half)
    again, _ = ck.load_checkpoint(tmp_path / "b")
    assert_same(again.state_dict(), state)
    cast, _ = ck.load_checkpoint(tmp_path / "a", dtype=torch.float16)
    assert {t.dtype for t in cast.state_dict().values()} == {torch.float16}


def _write_lerobot(folder, state, cfg):
    folder.mkdir()
    save_file({ck.LEROBOT_PREFIX + k: v for k, v in state.items()},
              str(folder / ck.WEIGHTS))
    (folder / ck.CONFIG).write_text(json.dumps({"type": "groot", ck.OUR_CONFIG: cfg.to_dict()}))


def test_lerobot_prefix_and_lm_head_only(tmp_path):
    state = synthetic_state(TINY)
    lerobot = dict(state)
    lerobot[ck.LM_HEAD] = lerobot.pop(ck.EMBED)  # safetensors' tied-tensor dedup kept lm_head
    _write_lerobot(tmp_path / "lr", lerobot, TINY)
    found = ck.read_index(tmp_path / "lr")
    assert set(found) == set(state) and found[ck.EMBED].key == ck.LEROBOT_PREFIX + ck.LM_HEAD
    model, _ = ck.load_checkpoint(tmp_path / "lr")
    assert_same(model.state_dict(), state)


def test_never_executed_tensors_are_skipped(tmp_path):
    state = synthetic_state(TINY)
    extra = dict(state)
    extra[ck.LM_HEAD] = torch.zeros(TINY.llm.vocab_size, TINY.llm.width)  # beside embed_tokens
    layer = f"backbone.eagle_model.language_model.model.layers.{TINY.llm.depth}."
    extra[layer + "mlp.down_proj.weight"] = torch.zeros(3)  # past select_layer: never run
    extra["backbone.eagle_model.vision_model.vision_model.head.probe"] = torch.zeros(1, 1, 32)
    extra["backbone.eagle_model.language_model.model.rotary_emb.inv_freq"] = torch.zeros(8)
    _write_lerobot(tmp_path / "x", extra, TINY)
    model, _ = ck.load_checkpoint(tmp_path / "x")
    assert_same(model.state_dict(), state)  # embed_tokens wins over the zero lm_head


def test_every_problem_is_listed(tmp_path):
    state = synthetic_state(TINY)
    gone = "action_head.future_tokens.weight"
    bad = "action_head.model.transformer_blocks.0.attn1.to_k.weight"
    del state[gone]
    state[bad] = torch.zeros(32, 32)  # a self-attention shape in a cross block
    state["action_head.model.pos_embed.pe"] = torch.zeros(1, 8, 32)  # "sinusoidal" default
    ck.save_state(state, TINY, tmp_path)
    with pytest.raises(ck.CheckpointError) as err:
        ck.load_checkpoint(tmp_path)
    msg = str(err.value)
    assert "1 missing" in msg and gone in msg
    assert "1 unexpected" in msg and "action_head.model.pos_embed.pe" in msg
    want = [TINY.action_head.input_embedding_dim, TINY.action_head.backbone_dim]
    assert "1 wrong shape" in msg and f"{bad}: file [32, 32] vs model {want}" in msg


def test_index_naming_an_absent_shard(tmp_path):
    ck.save_state(synthetic_state(TINY), TINY, tmp_path, max_shard_bytes=1 << 14)
    shards = sorted(set(json.loads((tmp_path / ck.INDEX).read_text())["weight_map"].values()))
    assert len(shards) > 2
    (tmp_path / shards[1]).unlink()
    with pytest.raises(ck.CheckpointError, match=shards[1]):
        ck.read_index(tmp_path)
    ck.save_state(synthetic_state(TINY), TINY, tmp_path / "b")
    index = json.loads((tmp_path / "b" / ck.INDEX).read_text())
    index["weight_map"]["action_head.extra.weight"] = "model-00001-of-00001.safetensors"
    (tmp_path / "b" / ck.INDEX).write_text(json.dumps(index))
    with pytest.raises(ck.CheckpointError, match="action_head.extra.weight: listed in"):
        ck.read_index(tmp_path / "b")


def test_nvidia_config_json_fields(tmp_path):
    raw = ck.config_to_nvidia(FULL)
    del raw[ck.OUR_CONFIG]
    assert ck.config_from_nvidia(raw, "groot-n15") == FULL
    raw["action_head_cfg"].update(action_horizon=8, num_inference_timesteps=8, action_dim=7,
                                  max_state_dim=32)
    raw["backbone_cfg"]["select_layer"] = 10
    cfg = ck.config_from_nvidia(raw, "ft")
    h = cfg.action_head
    assert (h.action_horizon, h.num_steps, h.action_dim, h.max_state_dim) == (8, 8, 7, 32)
    assert cfg.llm.depth == 10 and h.dit_mlp_dim == 6144 and h.vlsa_mlp_dim == 8192
    raw["backbone_cfg"]["project_to_dim"] = 1536
    raw["action_head_cfg"]["diffusion_model_cfg"]["positional_embeddings"] = "sinusoidal"
    with pytest.raises(ck.CheckpointError) as err:
        ck.config_from_nvidia(raw, "x")
    assert "project_to_dim" in str(err.value)
    del raw["backbone_cfg"]["project_to_dim"]
    with pytest.raises(ck.CheckpointError, match="positional_embeddings"):
        ck.config_from_nvidia(raw, "x")


def test_lerobot_config_from_shapes():
    assert ck.config_from_lerobot("groot-n15", spec_shapes(FULL)) == FULL
    shapes = spec_shapes(FULL)
    shapes["action_head.action_encoder.W1.W"] = (32, 7, 1536)
    shapes["action_head.state_encoder.layer1.W"] = (32, 8, 1024)
    h = ck.config_from_lerobot("x", shapes).action_head
    assert (h.action_dim, h.max_state_dim) == (7, 8)


def _odd_size():
    """BYTE_CFG with every dimension changed from the tiny one (none are the released)."""
    h = BYTE_CFG.action_head
    return BYTE_CFG.with_(
        name="odd", vision=replace(BYTE_CFG.vision, image_size=42, width=48, depth=3,
                                   mlp_dim=96, num_heads=3),
        llm=replace(BYTE_CFG.llm, width=192, depth=3, mlp_dim=384, num_heads=6,
                    num_kv_heads=3, head_dim=32),
        action_head=replace(h, backbone_dim=192, vlsa_depth=1, vlsa_heads=3, vlsa_head_dim=64,
                            vlsa_mlp_dim=256, dit_depth=2, dit_heads=4, dit_head_dim=24,
                            dit_mlp_dim=128, input_embedding_dim=96, hidden_size=40,
                            max_state_dim=9, action_dim=5, num_future_tokens=2,
                            max_num_embodiments=3, max_seq_len=20))


def test_lerobot_folder_of_any_size_loads_from_its_shapes(tmp_path):
    """No dimension in config.json: widths, depths and the LLM heads come off the tensors,
    the other head counts from config.json, the special ids from the tokenizer folder."""
    cfg = _odd_size()
    state = synthetic_state(cfg)
    lerobot = dict(state)
    lerobot[ck.LM_HEAD] = lerobot.pop(ck.EMBED)
    folder = tmp_path / "odd"
    folder.mkdir()
    save_file({ck.LEROBOT_PREFIX + k: v for k, v in lerobot.items()}, str(folder / ck.WEIGHTS))
    heads = {"type": "groot", "vision_num_heads": 3, "vl_self_attention_num_heads": 3,
             "dit_num_heads": 4}
    (folder / ck.CONFIG).write_text(json.dumps(heads))
    write_qwen_folder(folder / pr.TOKENIZER_DIR)
    got, _ = ck.read_config(folder)
    assert got == cfg.with_(embodiment="new_embodiment")  # the deployment default
    model, _ = ck.load_checkpoint(folder)
    assert_same(model.state_dict(), state)
    del heads["dit_num_heads"]  # 96 wide, not the released 1536: the count must be stated
    (folder / ck.CONFIG).write_text(json.dumps(heads))
    with pytest.raises(ck.CheckpointError, match="dit_num_heads"):
        ck.read_config(folder)


def test_lerobot_small_vocabulary_needs_the_tokenizer_ids(tmp_path):
    state = synthetic_state(BYTE_CFG)
    _write_lerobot(tmp_path / "lr", state, BYTE_CFG)
    raw = {"type": "groot", "vision_num_heads": 2, "vl_self_attention_num_heads": 2,
           "dit_num_heads": 2}
    (tmp_path / "lr" / ck.CONFIG).write_text(json.dumps(raw))
    with pytest.raises(ck.CheckpointError, match="tokenizer folder"):
        ck.read_config(tmp_path / "lr")
    write_qwen_folder(tmp_path / "lr" / "tokenizer")
    assert ck.read_config(tmp_path / "lr")[0] == BYTE_CFG.with_(name="lr",
                                                               embodiment="new_embodiment")


METADATA = {"new_embodiment": {"statistics": {
    "state": {"x": {"min": [-1.0], "max": [3.0], "mean": [1.0], "std": [2.0], "q01": [-1.0],
                    "q99": [3.0]},
              "gripper": {"min": [0.0, 0.5], "max": [0.04, 0.5], "mean": [0.02, 0.5],
                          "std": [0.01, 0.0], "q01": [0.0, 0.5], "q99": [0.04, 0.5]}},
    "action": {"x": {"min": [-2.0], "max": [2.0], "mean": [0.0], "std": [1.0], "q01": [-2.0],
                     "q99": [2.0]},
               "gripper": {"min": [1.0], "max": [1.0], "mean": [1.0], "std": [0.0],
                           "q01": [1.0], "q99": [1.0]}}}, "embodiment_tag": "new_embodiment"}}


def test_metadata_statistics_min_max_round_trip(tmp_path):
    ck.save_state(synthetic_state(TINY), TINY, tmp_path, metadata=METADATA)
    norm = ck.read_normalizer(tmp_path)
    assert [k.key for k in norm.state] == ["state.x", "state.gripper"]
    assert (norm.state_dim, norm.action_dim) == (3, 2)
    np.testing.assert_allclose(norm.normalize_state([1.0, 0.03, 0.5]), [0.0, 0.5, 0.0])
    np.testing.assert_allclose(norm.normalize_state({"x": [3.0], "gripper": [0.0, 9.0]}),
                               [1.0, -1.0, 0.0])  # max == min -> 0 whatever the value
    pred = np.array([[0.5, 0.25, 0.7, -0.3]])  # padded to 4; gripper has max == min
    out = norm.unnormalize_actions(pred)
    np.testing.assert_allclose(out, [[1.0, 1.0]])  # the degenerate dim returns min
    raw = np.array([[-1.5, 1.0]])
    np.testing.assert_allclose(
        norm.unnormalize_actions(np.concatenate(
            [k.normalize(raw[:, i:i + 1]) for i, k in enumerate(norm.action)], -1)), raw)
    assert list(norm.split_actions(pred)) == ["action.x", "action.gripper"]
    with pytest.raises(StatisticsError, match="other_robot"):
        ck.read_normalizer(tmp_path, "other_robot")


def test_other_modes_and_their_degenerate_dims():
    norm = GrootNormalizer.from_metadata(METADATA, "new_embodiment", "q99")
    np.testing.assert_allclose(norm.normalize_state([5.0, 0.08, 0.7]), [1.0, 1.0, 0.7])
    ms = GrootNormalizer.from_metadata(METADATA, "new_embodiment", "min_max",
                                       modes={"state.x": "mean_std", "state.gripper": "mean_std"})
    np.testing.assert_allclose(ms.normalize_state([3.0, 0.03, 0.7]), [1.0, 1.0, 0.7])
    np.testing.assert_allclose(ms.unnormalize_actions(np.array([0.0, -1.0])), [0.0, 1.0])
    with pytest.raises(StatisticsError, match="state.roll"):
        GrootNormalizer.from_metadata(METADATA, "new_embodiment", modes=LIBERO_MEAN_STD)


def test_lerobot_statistics():
    norm = GrootNormalizer.from_lerobot({
        "observation.state.min": np.zeros(2), "observation.state.max": np.array([2.0, 0.0]),
        "action.min": -np.ones(1), "action.max": np.ones(1)})
    np.testing.assert_allclose(norm.normalize_state([1.5, 4.0]), [0.5, 0.0])
    np.testing.assert_allclose(norm.unnormalize_actions(np.array([0.5, 9.0])), [0.5])


# ---- processing ----------------------------------------------------------------------------
def _bytes_to_unicode():
    bs = [*range(33, 127), *range(161, 173), *range(174, 256)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


SPECIAL = {pr.PAD: 256, pr.IM_START: 257, pr.IM_END: 258, pr.IMG_CONTEXT: 259,
           pr.IMG_START: 260, pr.IMG_END: 261}
BYTE_CFG = TINY.with_(llm=replace(TINY.llm, vocab_size=262), image_token_id=259,
                      pad_token_id=256)


def write_qwen_folder(folder):
    """Write a byte-level Qwen2 BPE folder (no merges) with the Eagle special tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    b2u = _bytes_to_unicode()
    (folder / "vocab.json").write_text(json.dumps({b2u[b]: b for b in range(256)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "add_bos_token": False,
        "pad_token": pr.PAD, "eos_token": pr.IM_END,
        "added_tokens_decoder": {str(i): {"content": t, "special": True, "lstrip": False,
                                          "rstrip": False, "normalized": False,
                                          "single_word": False}
                                 for t, i in SPECIAL.items()}}))
    return folder


@pytest.fixture
def qwen_folder(tmp_path):
    """A byte-level Qwen2 BPE folder (no merges) with the Eagle special tokens."""
    return write_qwen_folder(tmp_path)


def _image_blocks(ids, img, start, end):
    """Lengths of the runs between each <img> ... </img>, and whether all are image ids."""
    runs, i = [], 0
    while start in ids[i:]:
        a = ids.index(start, i)
        b = ids.index(end, a)
        runs.append((b - a - 1, all(t == img for t in ids[a + 1:b])))
        i = b + 1
    return runs


@pytest.mark.parametrize("quirk", [True, False])
def test_prompt_layout_with_the_qwen_tokenizer(qwen_folder, quirk):
    tok = pr.load_tokenizer(qwen_folder, BYTE_CFG)
    text = pr.instruction_text("put the bowl on the plate", numpy_repr=quirk)
    assert text == ("['put the bowl on the plate']" if quirk else "put the bowl on the plate")
    assert pr.instruction_text(None, numpy_repr=quirk) == "Perform the default behavior."
    ids = tok.encode(pr.build_prompt(text, 2, 256))
    assert _image_blocks(ids, 259, 260, 261) == [(256, True), (256, True)]
    assert ids.count(259) == 512
    tail = bytes(i for i in ids[ids.index(261, ids.index(261) + 1) + 1:] if i < 256)
    assert tail == (text + "\nassistant\n").encode()
    assert ids[:1] == [257] and ids[-13:-10] == [258, 10, 257] and ids.count(257) == 3
    head = bytes(i for i in ids[:ids.index(260)] if i < 256)
    assert head == b"system\nYou are a helpful assistant.\nuser\n<image 1>"


def test_stand_in_tokenizer_is_explicit_and_fits_tiny():
    with pytest.raises(pr.ProcessingError, match="stand_in"):
        pr.load_tokenizer(None, TINY)
    tok = pr.load_tokenizer(None, TINY, stand_in=True)
    ids = tok.encode(pr.build_prompt("['go']", 2, TINY.vision.num_tokens))
    img = TINY.image_token_id
    assert _image_blocks(ids, img, img + 1, img + 2) == [(4, True), (4, True)]
    assert max(ids) < TINY.llm.vocab_size and TINY.pad_token_id not in ids


def test_missing_tokenizer_folder_is_named(tmp_path):
    folder = tmp_path / "eagle2_hg_model"
    with pytest.raises(pr.ProcessingError, match=str(folder)):
        pr.load_tokenizer(folder, FULL)
    folder.mkdir()
    (folder / "vocab.json").write_text("{}")  # merges.txt missing
    with pytest.raises(pr.ProcessingError, match="no Qwen tokenizer"):
        pr.load_tokenizer(folder, FULL)


def test_qwen_tokenizer_must_agree_with_the_config(qwen_folder):
    with pytest.raises(pr.ProcessingError, match="151669"):
        pr.load_tokenizer(qwen_folder, FULL)  # its <IMG_CONTEXT> is 259


def test_image_transform_numbers():
    img = np.full((256, 256, 3), 255, np.uint8)
    img[6:249, 6:249] = 0  # exactly the 243 px center crop: (256 - 243) / 2 = 6.5 -> 6
    img[6:249, 6:249, 1] = 128
    px = pr.image_tensor(img)
    assert px.shape == (3, 224, 224) and px.dtype == torch.float32
    assert torch.all(px[0] == -1.0) and torch.all(px[2] == -1.0)  # no border bleeds in
    # 128 / 255 * 255 after the resize is 128 +- float error: the uint8 cast truncates, so
    # some pixels land on 127 (rounding would give 128 everywhere)
    green = {round(v * 0.5 * 255 + 127.5) for v in px[1].unique().tolist()}
    assert green <= {127, 128}
    assert pr.image_tensor(np.full((20, 30, 3), 255, np.uint8), 28).eq(1.0).all()
    shifted = img.copy()
    shifted[5] = 0  # row 5 is outside the crop: changing it changes nothing
    assert torch.equal(pr.image_tensor(shifted), px)
    shifted[249, 100] = 0  # row 248 is inside; row 249 is outside
    assert torch.equal(pr.image_tensor(shifted), px)
    shifted[248, 100] = 255
    assert not torch.equal(pr.image_tensor(shifted), px)


def test_uint8_cast_truncates():
    img = np.zeros((20, 20, 3), np.uint8)
    img[:, 1::2] = 255  # columns 0, 255, 0, ...; the crop keeps 19 x 19 from (0, 0)
    out = pr.video_transform(img, 38)  # x2 upsampling: weights 0.25 / 0.75 exactly
    assert out.shape == (3, 38, 38) and out.dtype == np.uint8
    assert set(np.unique(out[:, :, 1:-1]).tolist()) == {63, 191}  # 63.75 / 191.25, not rounded


def test_embodiment_names():
    assert pr.embodiment_id("new_embodiment", FULL) == 31
    assert pr.embodiment_id("gr1", FULL) == 24 and pr.embodiment_id(17, FULL) == 17
    assert pr.embodiment_id("so100", FULL, lerobot=True) == 2
    with pytest.raises(pr.ProcessingError, match="so100"):
        pr.embodiment_id("so100", FULL)
    with pytest.raises(pr.ProcessingError, match="slot 31, the model has 2"):
        pr.embodiment_id("new_embodiment", TINY)


def test_processor_builds_the_model_inputs():
    norm = GrootNormalizer.from_metadata(METADATA, "new_embodiment")
    proc = pr.GrootProcessor(TINY, pr.load_tokenizer(None, TINY, stand_in=True), norm, 1)
    views = [np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 255, np.uint8)]
    batch = proc(views, [1.0, 0.03, 0.5], "go")
    assert batch["eagle_pixel_values"].shape == (2, 3, 28, 28)
    assert batch["state"].shape == (1, 1, TINY.action_head.max_state_dim)
    torch.testing.assert_close(batch["state"][0, 0], torch.tensor([0, .5, 0, 0, 0, 0, 0, 0]))
    assert batch["state_mask"][0, 0].tolist() == [True] * 3 + [False] * 5
    assert batch["embodiment_id"].tolist() == [1]
    assert batch["eagle_attention_mask"].all()
    ids, mask = pr.pad_left([[5, 6, 7], [8]], 0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    out = proc.actions(torch.zeros(1, TINY.action_horizon, TINY.action_dim))
    np.testing.assert_allclose(out, np.tile([0.0, 1.0], (1, TINY.action_horizon, 1)))
    model, _ = _tiny_model()
    pred = model.sample_actions(batch["eagle_pixel_values"], batch["eagle_input_ids"],
                                batch["eagle_attention_mask"], batch["state"],
                                batch["embodiment_id"],
                                torch.zeros(1, TINY.action_horizon, TINY.action_dim))
    assert pred.shape == (1, TINY.action_horizon, TINY.action_dim) and pred.isfinite().all()


def _tiny_model():
    from quantvla_ros.models.build import random_model

    return random_model(TINY, seed=0), TINY
