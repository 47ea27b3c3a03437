"""A tiny pi0.5 checkpoint folder laid out as lerobot 0.6.1 writes it (a test helper).

lerobot 0.6.1's ``PI05Policy.save_pretrained`` writes ``config.json`` (every PI05Config field)
and ``model.safetensors``; its processor pipelines' ``save_pretrained`` write
``policy_preprocessor.json`` / ``policy_postprocessor.json`` and one statistics file per
stateful step, named ``{pipeline}_step_{index}_{registry_name}.safetensors``, holding every
statistic of every feature. The JSON files below are what those calls wrote for this config
(checked against lerobot 0.6.1 by ``fixtures/make_lerobot_pi05_reference.py``).

The dimensions are small and not lerobot's named sizes: SigLIP 48 wide with 3 heads, Gemma
towers 64 / 32 wide with 4 heads of 16, vocabulary 128. So config.json also states
``vision_num_heads`` and ``gemma_num_heads`` (this package's extension; lerobot's own loader
rejects unknown keys, so the reference script drops them). The tokenizer is a character-level
stand-in for PaliGemma's (same special ids: pad 0, eos 1, bos 2; bos prepended).

Everything random comes from ``np.random.RandomState``, whose streams numpy keeps fixed, so
the reference script (another Python, torch and numpy) rebuilds the same folder.
"""

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

VISION = {"width": 48, "depth": 2, "mlp_dim": 96, "heads": 3, "patch": 14, "image": 56}
TEXT = {"width": 64, "depth": 2, "mlp_dim": 128}
EXPERT = {"width": 32, "depth": 2, "mlp_dim": 64}
HEADS, HEAD_DIM, KV_HEADS = 4, 16, 1
VOCAB, STATE_DIM, ACTION_DIM, MODEL_DIM, CHUNK, STEPS = 128, 8, 7, 32, 10, 3
CAMERAS = ("base_0_rgb", "left_wrist_0_rgb")
STATE_STEP = "pi05_prepare_state_tokenizer_processor_step"
PWE = "model.paligemma_with_expert."
STATS = {
    "observation.state": {"q01": np.linspace(-2.0, -0.5, STATE_DIM),
                          "q99": np.linspace(0.5, 3.0, STATE_DIM)},
    "action": {"q01": np.linspace(-1.5, -0.2, ACTION_DIM),
               "q99": np.linspace(0.4, 2.5, ACTION_DIM)},
}


def tensor_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor lerobot 0.6.1 saves for these dimensions, by its name."""
    v, t, e, p = VISION, TEXT, EXPERT, VISION["patch"]
    vt = PWE + "paligemma.model.vision_tower.vision_model."
    s = {
        vt + "embeddings.patch_embedding.weight": (v["width"], 3, p, p),
        vt + "embeddings.patch_embedding.bias": (v["width"],),
        vt + "embeddings.position_embedding.weight": ((v["image"] // p) ** 2, v["width"]),
        vt + "post_layernorm.weight": (v["width"],), vt + "post_layernorm.bias": (v["width"],),
        PWE + "paligemma.model.multi_modal_projector.linear.weight": (t["width"], v["width"]),
        PWE + "paligemma.model.multi_modal_projector.linear.bias": (t["width"],),
        PWE + "paligemma.model.language_model.embed_tokens.weight": (VOCAB, t["width"]),
        PWE + "paligemma.model.language_model.norm.weight": (t["width"],),
        PWE + "paligemma.lm_head.weight": (VOCAB, t["width"]),
        PWE + "gemma_expert.lm_head.weight": (VOCAB, e["width"]),
        PWE + "gemma_expert.model.norm.dense.weight": (3 * e["width"], e["width"]),
        PWE + "gemma_expert.model.norm.dense.bias": (3 * e["width"],),
        "model.action_in_proj.weight": (e["width"], MODEL_DIM),
        "model.action_in_proj.bias": (e["width"],),
        "model.action_out_proj.weight": (MODEL_DIM, e["width"]),
        "model.action_out_proj.bias": (MODEL_DIM,),
        "model.time_mlp_in.weight": (e["width"], e["width"]),
        "model.time_mlp_in.bias": (e["width"],),
        "model.time_mlp_out.weight": (e["width"], e["width"]),
        "model.time_mlp_out.bias": (e["width"],),
    }
    w, m = v["width"], v["mlp_dim"]
    for i in range(v["depth"]):
        layer = f"{vt}encoder.layers.{i}."
        for name, shape in (("self_attn.q_proj", (w, w)), ("self_attn.k_proj", (w, w)),
                            ("self_attn.v_proj", (w, w)), ("self_attn.out_proj", (w, w)),
                            ("mlp.fc1", (m, w)), ("mlp.fc2", (w, m))):
            s[layer + name + ".weight"], s[layer + name + ".bias"] = shape, (shape[0],)
        for norm in ("layer_norm1", "layer_norm2"):
            s[layer + norm + ".weight"], s[layer + norm + ".bias"] = (w,), (w,)
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    for tower, dims, adaptive in (("paligemma.model.language_model.", TEXT, False),
                                  ("gemma_expert.model.", EXPERT, True)):
        w, m = dims["width"], dims["mlp_dim"]
        for i in range(dims["depth"]):
            layer = f"{PWE}{tower}layers.{i}."
            for name, shape in (("self_attn.q_proj", (q, w)), ("self_attn.k_proj", (kv, w)),
                                ("self_attn.v_proj", (kv, w)), ("self_attn.o_proj", (w, q)),
                                ("mlp.gate_proj", (m, w)), ("mlp.up_proj", (m, w)),
                                ("mlp.down_proj", (w, m))):
                s[layer + name + ".weight"] = shape
            for norm in ("input_layernorm", "post_attention_layernorm"):
                if adaptive:
                    s[f"{layer}{norm}.dense.weight"] = (3 * w, w)
                    s[f"{layer}{norm}.dense.bias"] = (3 * w,)
                else:
                    s[f"{layer}{norm}.weight"] = (w,)
    return s


def random_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    """Float32 weights: matrices ~ N(0, 1/fan_in), LayerNorm scales ~ 1, the rest small."""
    rng = np.random.RandomState(seed)
    out = {}
    for name, shape in sorted(tensor_shapes().items()):
        x = rng.standard_normal(shape)
        if len(shape) > 1:
            x /= np.sqrt(np.prod(shape[1:]))
        elif "layer_norm" in name and name.endswith("weight"):
            x = 1.0 + 0.1 * x
        else:
            x *= 0.1
        out[name] = x.astype(np.float32)
    # PaliGemma ties its lm_head to the embedding (lerobot's loader copies one onto the other)
    out[PWE + "paligemma.lm_head.weight"] = out[
        PWE + "paligemma.model.language_model.embed_tokens.weight"].copy()
    return out


def config_json() -> dict:
    """config.json as lerobot 0.6.1 writes it for this PI05Config, plus our head counts."""
    feature = {"type": "VISUAL", "shape": [3, VISION["image"], VISION["image"]]}
    inputs = {f"observation.images.{c}": feature for c in CAMERAS}
    inputs["observation.state"] = {"type": "STATE", "shape": [STATE_DIM]}
    return {
        "type": "pi05", "n_obs_steps": 1, "input_features": inputs,
        "output_features": {"action": {"type": "ACTION", "shape": [ACTION_DIM]}},
        "device": "cpu", "use_amp": False, "use_peft": False, "push_to_hub": True,
        "repo_id": None, "private": None, "tags": None, "license": None,
        "pretrained_path": None, "pretrained_revision": None,
        "paligemma_variant": "gemma_2b", "action_expert_variant": "gemma_300m",
        "dtype": "float32", "chunk_size": CHUNK, "n_action_steps": CHUNK,
        "max_state_dim": MODEL_DIM, "max_action_dim": MODEL_DIM, "num_inference_steps": STEPS,
        "time_sampling_beta_alpha": 1.5, "time_sampling_beta_beta": 1.0,
        "time_sampling_scale": 0.999, "time_sampling_offset": 0.001,
        "min_period": 0.004, "max_period": 4.0, "use_relative_actions": False,
        "relative_exclude_joints": ["gripper"], "action_feature_names": None,
        "rtc_config": None, "image_resolution": [VISION["image"], VISION["image"]],
        "empty_cameras": 0, "tokenizer_max_length": 200,
        "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": "QUANTILES",
                                  "ACTION": "QUANTILES"},
        "gradient_checkpointing": False, "compile_model": False,
        "compile_mode": "max-autotune", "freeze_vision_encoder": False,
        "train_expert_only": False, "optimizer_lr": 2.5e-05, "optimizer_betas": [0.9, 0.95],
        "optimizer_eps": 1e-08, "optimizer_weight_decay": 0.01,
        "optimizer_grad_clip_norm": 1.0, "scheduler_warmup_steps": 1000,
        "scheduler_decay_steps": 30000, "scheduler_decay_lr": 2.5e-06,
        "vision_num_heads": VISION["heads"], "gemma_num_heads": HEADS,
    }


def _normalizer(name: str, features: dict) -> dict:
    norm_map = {"VISUAL": "IDENTITY", "STATE": "QUANTILES", "ACTION": "QUANTILES"}
    return {"registry_name": name,
            "config": {"eps": 1e-08, "features": features, "norm_map": norm_map}}


def pipelines(state_step_config: dict) -> tuple[dict, dict]:
    """policy_preprocessor.json and policy_postprocessor.json (lerobot 0.6.1's pi05 steps)."""
    cfg = config_json()
    features = {**cfg["input_features"], **cfg["output_features"]}
    norm = _normalizer("normalizer_processor", features)
    norm["state_file"] = "policy_preprocessor_step_3_normalizer_processor.safetensors"
    pre = {"name": "policy_preprocessor", "steps": [
        {"registry_name": "rename_observations_processor", "config": {"rename_map": {}}},
        {"registry_name": "to_batch_processor", "config": {}},
        {"registry_name": "relative_actions_processor",
         "config": {"enabled": False, "exclude_joints": ["gripper"], "action_names": None}},
        norm,
        {"registry_name": STATE_STEP, "config": state_step_config},
        {"registry_name": "tokenizer_processor",
         "config": {"max_length": 200, "task_key": "task", "padding_side": "right",
                    "padding": "max_length", "truncation": True,
                    "tokenizer_name": "google/paligemma-3b-pt-224"}},
        {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}},
    ]}
    unnorm = _normalizer("unnormalizer_processor", cfg["output_features"])
    unnorm["state_file"] = "policy_postprocessor_step_0_unnormalizer_processor.safetensors"
    post = {"name": "policy_postprocessor", "steps": [
        unnorm,
        {"registry_name": "absolute_actions_processor", "config": {"enabled": False}},
        {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}},
    ]}
    return pre, post


def statistics() -> dict[str, np.ndarray]:
    """Every statistic lerobot saves per feature (only q01 / q99 matter for pi0.5)."""
    out = {}
    for key, s in STATS.items():
        lo, hi = s["q01"], s["q99"]
        extra = {"min": lo - 0.5, "max": hi + 0.5, "mean": (lo + hi) / 2, "std": (hi - lo) / 4}
        for stat, value in {**s, **extra}.items():
            out[f"{key}.{stat}"] = np.asarray(value, np.float32)
    return out


def write_tokenizer(folder: Path) -> None:
    """A character-level tokenizer with PaliGemma's special ids (pad 0, eos 1, bos 2)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + [chr(c) for c in range(32, 127)] + ["\n"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A",
                                                       special_tokens=[("<bos>", 2)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                            pad_token="<pad>", unk_token="<unk>").save_pretrained(str(folder))


def write_folder(folder: Path, seed: int = 0, state_step_config: dict | None = None,
                 tokenizer: bool = True) -> Path:
    """Write the checkpoint folder (and a tokenizer/ folder) and return its path."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config_json(), indent=4))
    save_file(random_tensors(seed), str(folder / "model.safetensors"))
    pre, post = pipelines({} if state_step_config is None else state_step_config)
    stats = statistics()
    for pipeline in (pre, post):
        (folder / f"{pipeline['name']}.json").write_text(json.dumps(pipeline, indent=2))
        for step in pipeline["steps"]:
            if "state_file" in step:
                save_file(stats, str(folder / step["state_file"]))
    if tokenizer:
        write_tokenizer(folder / "tokenizer")
    return folder


def observations() -> list[dict]:
    """Observations for the reference run: in-range state, out-of-range state, one camera."""
    rng = np.random.RandomState(7)
    size = (VISION["image"], VISION["image"], 3)
    lo, hi = STATS["observation.state"]["q01"], STATS["observation.state"]["q99"]
    inside = lo + (hi - lo) * rng.uniform(0.05, 0.95, STATE_DIM)
    outside = inside.copy()
    outside[[0, 3]] = lo[[0, 3]] - 1.0
    outside[[1, 6]] = hi[[1, 6]] + 2.0
    images = {c: rng.randint(0, 256, size).astype(np.uint8) for c in CAMERAS}
    return [
        {"images": images, "state": inside.astype(np.float32),
         "instruction": "pick up the red block"},
        {"images": images, "state": outside.astype(np.float32),
         "instruction": "  put_the bowl\non the plate "},
        {"images": {CAMERAS[0]: images[CAMERAS[0]]}, "state": inside.astype(np.float32),
         "instruction": "open the drawer"},
    ]


def noise(index: int) -> np.ndarray:
    """Start noise [1, chunk, 32] for observation ``index``."""
    return np.random.RandomState(100 + index).standard_normal(
        (1, CHUNK, MODEL_DIM)).astype(np.float32)
