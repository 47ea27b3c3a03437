"""A tiny SmolVLA checkpoint folder laid out as lerobot 0.6.1 writes it (a test helper).

lerobot 0.6.1's ``SmolVLAPolicy.save_pretrained`` writes ``config.json`` (every
SmolVLAConfig field) and ``model.safetensors`` (the whole SmolVLM2 it built, cut to
``num_vlm_layers`` text layers: untied lm_head, final norm and the last layer's q / o / MLP
included); its processor pipelines write ``policy_preprocessor.json`` /
``policy_postprocessor.json`` and one statistics file per normalizer step. The JSON below is
what those calls wrote for this config (checked by ``fixtures/make_lerobot_smolvla_reference.py``).

The dimensions are small and not SmolVLM2-500M's: SigLIP 128 wide with 2 heads on 64 px /
8 px patches, a text model 256 wide with 8 heads of 32 (2 KV heads) cut to 4 layers, the
expert at half its width. config.json therefore also states ``text_num_heads`` and
``vision_num_heads`` (this package's extension; the reference script drops them). The
tokenizer is a character-level stand-in for SmolVLM2's. Everything random comes from
``np.random.RandomState`` so the reference script (another Python and torch) rebuilds the
same folder.
"""

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

VISION = {"width": 128, "depth": 2, "mlp_dim": 256, "heads": 2, "patch": 8, "image": 64}
TEXT = {"width": 256, "depth": 4, "mlp_dim": 512, "heads": 8, "kv_heads": 2, "head_dim": 32}
EXPERT = {"width": 128, "mlp_dim": 512}  # expert_width_multiplier 0.5, get_intermediate_size
SCALE, VOCAB, STATE_DIM, ACTION_DIM, MODEL_DIM, CHUNK, STEPS = 4, 128, 6, 6, 32, 10, 3
CAMERAS = ("camera1", "camera2")
VLM = "model.vlm_with_expert.vlm."
STATS = {
    "observation.state": {"mean": np.linspace(-0.5, 0.8, STATE_DIM),
                          "std": np.linspace(0.3, 1.6, STATE_DIM)},
    "action": {"mean": np.linspace(0.2, -0.4, ACTION_DIM),
               "std": np.linspace(0.5, 2.0, ACTION_DIM)},
}


def _linear(s: dict, name: str, out: int, inp: int, bias: bool) -> None:
    s[name + ".weight"] = (out, inp)
    if bias:
        s[name + ".bias"] = (out,)


def tensor_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor lerobot 0.6.1 saves for these dimensions, by its name."""
    v, t, e, p = VISION, TEXT, EXPERT, VISION["patch"]
    s: dict[str, tuple[int, ...]] = {}
    vm = VLM + "model.vision_model."
    s[vm + "embeddings.patch_embedding.weight"] = (v["width"], 3, p, p)
    s[vm + "embeddings.patch_embedding.bias"] = (v["width"],)
    s[vm + "embeddings.position_embedding.weight"] = ((v["image"] // p) ** 2, v["width"])
    for i in range(v["depth"]):
        layer = f"{vm}encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            _linear(s, layer + "self_attn." + name, v["width"], v["width"], True)
        _linear(s, layer + "mlp.fc1", v["mlp_dim"], v["width"], True)
        _linear(s, layer + "mlp.fc2", v["width"], v["mlp_dim"], True)
        for norm in ("layer_norm1", "layer_norm2"):
            s[layer + norm + ".weight"], s[layer + norm + ".bias"] = (v["width"],), (v["width"],)
    s[vm + "post_layernorm.weight"], s[vm + "post_layernorm.bias"] = (v["width"],), (v["width"],)
    s[VLM + "model.connector.modality_projection.proj.weight"] = (
        t["width"], v["width"] * SCALE**2)
    s[VLM + "model.text_model.embed_tokens.weight"] = (VOCAB, t["width"])
    s[VLM + "model.text_model.norm.weight"] = (t["width"],)
    s[VLM + "lm_head.weight"] = (VOCAB, t["width"])
    q, kv = t["heads"] * t["head_dim"], t["kv_heads"] * t["head_dim"]
    for tower, width, mlp in ((VLM + "model.text_model.", t["width"], t["mlp_dim"]),
                              ("model.vlm_with_expert.lm_expert.", e["width"], e["mlp_dim"])):
        expert = "lm_expert" in tower
        for i in range(t["depth"]):
            layer = f"{tower}layers.{i}."
            kv_in = kv if expert and i % 2 else width  # odd expert layers read backbone keys
            _linear(s, layer + "self_attn.q_proj", q, width, False)
            _linear(s, layer + "self_attn.k_proj", kv, kv_in, False)
            _linear(s, layer + "self_attn.v_proj", kv, kv_in, False)
            _linear(s, layer + "self_attn.o_proj", width, q, False)
            _linear(s, layer + "mlp.gate_proj", mlp, width, False)
            _linear(s, layer + "mlp.up_proj", mlp, width, False)
            _linear(s, layer + "mlp.down_proj", width, mlp, False)
            for norm in ("input_layernorm", "post_attention_layernorm"):
                s[layer + norm + ".weight"] = (width,)
        if expert:
            s[tower + "norm.weight"] = (width,)
    _linear(s, "model.state_proj", t["width"], MODEL_DIM, True)
    _linear(s, "model.action_in_proj", e["width"], MODEL_DIM, True)
    _linear(s, "model.action_out_proj", MODEL_DIM, e["width"], True)
    _linear(s, "model.action_time_mlp_in", e["width"], 2 * e["width"], True)
    _linear(s, "model.action_time_mlp_out", e["width"], e["width"], True)
    return s


def random_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    """Float32 weights: matrices ~ N(0, 1/fan_in), norm scales ~ 1, the rest small."""
    rng = np.random.RandomState(seed)
    out = {}
    for name, shape in sorted(tensor_shapes().items()):
        x = rng.standard_normal(shape)
        if len(shape) > 1:
            x /= np.sqrt(np.prod(shape[1:]))
        elif "norm" in name and name.endswith("weight"):
            x = 1.0 + 0.1 * x
        else:
            x *= 0.1
        out[name] = x.astype(np.float32)
    return out


def config_json() -> dict:
    """config.json as lerobot 0.6.1 writes it for this SmolVLAConfig, plus our head counts."""
    image = {"type": "VISUAL", "shape": [3, VISION["image"], VISION["image"]]}
    inputs = {f"observation.images.{c}": image for c in CAMERAS}
    inputs["observation.state"] = {"type": "STATE", "shape": [STATE_DIM]}
    return {
        "type": "smolvla", "n_obs_steps": 1, "input_features": inputs,
        "output_features": {"action": {"type": "ACTION", "shape": [ACTION_DIM]}},
        "device": "cpu", "use_amp": False, "use_peft": False, "push_to_hub": True,
        "repo_id": None, "private": None, "tags": None, "license": None,
        "pretrained_path": None, "pretrained_revision": None, "chunk_size": CHUNK,
        "n_action_steps": CHUNK,
        "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": "MEAN_STD",
                                  "ACTION": "MEAN_STD"},
        "max_state_dim": MODEL_DIM, "max_action_dim": MODEL_DIM,
        "resize_imgs_with_padding": [VISION["image"], VISION["image"]], "empty_cameras": 0,
        "adapt_to_pi_aloha": False, "use_delta_joint_actions_aloha": False,
        "tokenizer_max_length": 48, "num_steps": STEPS, "use_cache": True,
        "freeze_vision_encoder": True, "train_expert_only": True, "train_state_proj": True,
        "optimizer_lr": 0.0001, "optimizer_betas": [0.9, 0.95], "optimizer_eps": 1e-08,
        "optimizer_weight_decay": 1e-10, "optimizer_grad_clip_norm": 10,
        "scheduler_warmup_steps": 1000, "scheduler_decay_steps": 30000,
        "scheduler_decay_lr": 2.5e-06,
        "vlm_model_name": "HuggingFaceTB/SmolVLM2-500M-Video-Instruct",
        "load_vlm_weights": False, "add_image_special_tokens": False,
        "attention_mode": "cross_attn", "prefix_length": -1, "pad_language_to": "longest",
        "num_expert_layers": -1, "num_vlm_layers": TEXT["depth"],
        "self_attn_every_n_layers": 2, "expert_width_multiplier": 0.5, "min_period": 0.004,
        "max_period": 4.0, "rtc_config": None, "compile_model": False,
        "compile_mode": "max-autotune",
        "text_num_heads": TEXT["heads"], "vision_num_heads": VISION["heads"],
    }


def _normalizer(name: str, features: dict, state_file: str) -> dict:
    return {"registry_name": name,
            "config": {"eps": 1e-08, "features": features,
                       "norm_map": {"VISUAL": "IDENTITY", "STATE": "MEAN_STD",
                                    "ACTION": "MEAN_STD"}},
            "state_file": state_file}


def pipelines() -> tuple[dict, dict]:
    """policy_preprocessor.json and policy_postprocessor.json (lerobot 0.6.1's smolvla)."""
    cfg = config_json()
    device = {"registry_name": "device_processor", "config": {"device": "cpu",
                                                              "float_dtype": None}}
    pre = {"name": "policy_preprocessor", "steps": [
        {"registry_name": "rename_observations_processor", "config": {"rename_map": {}}},
        {"registry_name": "to_batch_processor", "config": {}},
        {"registry_name": "smolvla_new_line_processor", "config": {}},
        {"registry_name": "tokenizer_processor",
         "config": {"max_length": 48, "task_key": "task", "padding_side": "right",
                    "padding": "longest", "truncation": True,
                    "tokenizer_name": "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"}},
        device,
        _normalizer("normalizer_processor", {**cfg["input_features"], **cfg["output_features"]},
                    "policy_preprocessor_step_5_normalizer_processor.safetensors"),
    ]}
    post = {"name": "policy_postprocessor", "steps": [
        _normalizer("unnormalizer_processor", cfg["output_features"],
                    "policy_postprocessor_step_0_unnormalizer_processor.safetensors"),
        device,
    ]}
    return pre, post


def statistics() -> dict[str, np.ndarray]:
    """Every statistic saved per feature (only mean / std matter for SmolVLA)."""
    out = {}
    for key, s in STATS.items():
        extra = {"min": s["mean"] - 2 * s["std"], "max": s["mean"] + 2 * s["std"]}
        for stat, value in {**s, **extra}.items():
            out[f"{key}.{stat}"] = np.asarray(value, np.float32)
    return out


def write_tokenizer(folder: Path) -> None:
    """A character-level tokenizer (pad 0, eos 1, bos 2, unk 3; bos prepended)."""
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


def write_folder(folder: Path, seed: int = 0, tokenizer: bool = True) -> Path:
    """Write the checkpoint folder (and a tokenizer/ folder) and return its path."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config_json(), indent=4))
    save_file(random_tensors(seed), str(folder / "model.safetensors"))
    stats = statistics()
    for pipeline in pipelines():
        (folder / f"{pipeline['name']}.json").write_text(json.dumps(pipeline, indent=2))
        for step in pipeline["steps"]:
            if "state_file" in step:
                save_file(stats, str(folder / step["state_file"]))
    if tokenizer:
        write_tokenizer(folder / "tokenizer")
    return folder


def observations() -> list[dict]:
    """Reference observations: non-square views (resize and left / top padding), one camera."""
    rng = np.random.RandomState(11)
    mean, std = STATS["observation.state"]["mean"], STATS["observation.state"]["std"]
    state = (mean + std * rng.standard_normal(STATE_DIM)).astype(np.float32)
    wide = rng.randint(0, 256, (48, 64, 3)).astype(np.uint8)  # padded on top
    tall = rng.randint(0, 256, (80, 60, 3)).astype(np.uint8)  # resized, padded on the left
    square = rng.randint(0, 256, (64, 64, 3)).astype(np.uint8)
    return [
        {"images": {CAMERAS[0]: square, CAMERAS[1]: wide}, "state": state,
         "instruction": "pick up the red block"},
        {"images": {CAMERAS[0]: tall, CAMERAS[1]: square}, "state": state[::-1].copy(),
         "instruction": "put the bowl on the plate\n"},
        {"images": {CAMERAS[0]: wide}, "state": state, "instruction": "open the drawer"},
    ]


def noise(index: int) -> np.ndarray:
    """Start noise [1, chunk, 32] for observation ``index``."""
    return np.random.RandomState(200 + index).standard_normal(
        (1, CHUNK, MODEL_DIM)).astype(np.float32)
