"""First steps of scripts/bench_gpu.sh: the environment, then one GEMM and one graphed chunk.

``python -m quantvla_ros.workflows.pi_gpu_smoke env|gemm|chunk`` prints JSON lines:

- ``env``: torch / triton / CUDA versions, the GPU, and which SDPA backends accept the
  model's attention calls (float mask + GQA, and the heads-folded form the model uses with
  one KV head), with the one torch picks;
- ``gemm``: the W8A8 and W4A8 kernels checked against the exact reference at an expert shape;
- ``chunk``: a tiny random W8A8 / W4A8 policy, one CUDA-graphed chunk with the Triton kernels
  vs the same chunk with ``QUANTVLA_KERNELS=reference`` (eager) on the same noise.

Every part also runs on CPU (the tests use it there; the chunk compares interpreted Triton).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import warnings

import torch

SDPA_BACKENDS = ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH")
CHUNK_RTOL = 5e-2  # bf16 activations over every denoising step, Triton vs reference order


def attention_shapes(cfg) -> dict[str, tuple]:
    """(q, k / v, mask) shapes of the model's prefix self-attention and of a denoise step."""
    b = cfg.backbone
    p, s = cfg.prefix_len, cfg.action_horizon
    return {
        "prefix": ((1, b.num_heads, p, b.head_dim), (1, b.num_kv_heads, p, b.head_dim),
                   (1, 1, p, p)),
        "denoise": ((1, b.num_heads, s, b.head_dim), (1, b.num_kv_heads, p + s, b.head_dim),
                    (1, 1, s, p + s)),
    }


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160] if text else ''}"


def attention_inputs(shapes, device, dtype, folded: bool):
    """Random (q, k, v, bias) for one call; ``folded``: heads folded into query rows.

    The folded form is what the model runs with one KV head (``models.layers.attend``):
    q [B, 1, S * H, D] against k / v [B, 1, T, D] and ``fold_bias``'s padded-stride mask.
    """
    from quantvla_ros.models.pi.layers import fold_bias

    q_shape, kv_shape, mask_shape = shapes
    q = torch.randn(q_shape, device=device, dtype=dtype)
    k, v = (torch.randn(kv_shape, device=device, dtype=dtype) for _ in range(2))
    bias = torch.zeros(mask_shape, device=device, dtype=dtype)
    if folded:
        b, h, s, d = q.shape
        q = q.transpose(1, 2).reshape(b, 1, s * h, d)
        bias = fold_bias(bias, h)
    return q, k, v, bias


def probe_sdpa(q, k, v, bias) -> dict:
    """Which SDPA backends accept these inputs (GQA when k has fewer heads than q).

    ``chosen`` is the backend torch's own dispatcher picks with no restriction.
    """
    import torch.nn.functional as F  # noqa: N812
    from torch.nn.attention import SDPBackend, sdpa_kernel

    gqa = k.shape[1] != q.shape[1]
    out = {}
    for name in SDPA_BACKENDS:
        # A refusing backend says why in a UserWarning; the error itself is generic.
        with warnings.catch_warnings(record=True) as why:
            warnings.simplefilter("always")
            try:
                with sdpa_kernel([getattr(SDPBackend, name)]):
                    F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=gqa)
                out[name] = "ok"
            except Exception as exc:  # the backend refuses these inputs
                reasons = [str(w.message).splitlines()[0][:160] for w in why]
                out[name] = "no: " + (reasons[0] if reasons else _first_line(exc))
    try:
        choice = torch._fused_sdp_choice(q, k, v, attn_mask=bias, enable_gqa=gqa)
        out["chosen"] = SDPBackend(choice).name
    except Exception as exc:  # private API: report rather than fail the environment step
        out["chosen"] = "unknown: " + _first_line(exc)
    return out


def environment(model: str = "pi05") -> dict:
    """Versions, the device, and the SDPA probe for ``model``'s attention shapes."""
    from quantvla_ros.models.pi.config import get_config

    cuda = torch.cuda.is_available()
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    info = {"step": "env", "python": platform.python_version(), "torch": torch.__version__,
            "triton": triton_version, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name() if cuda else None,
            "capability": list(torch.cuda.get_device_capability()) if cuda else None,
            "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET")}
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    cfg = get_config(model)
    for name, shapes in attention_shapes(cfg).items():
        for folded in (False, True) if cfg.backbone.num_kv_heads == 1 else (False,):
            inputs = attention_inputs(shapes, device, dtype, folded)
            info[f"sdpa_{name}{'_folded' if folded else '_gqa'}"] = probe_sdpa(*inputs)
    return info


def gemm_smoke(shape=None) -> list[dict]:
    """W8A8 and W4A8 at one shape vs the exact reference (checks only, no timing)."""
    from quantvla_ros.kernels.bench import OPS, iter_kernel_bench

    ops = [op for op in OPS if op.name in ("w8a8", "w4a8")]
    shape = shape or ((50, 1024, 4096) if torch.cuda.is_available() else (16, 256, 48))
    return [dict(row, step="gemm")
            for row in iter_kernel_bench([shape], check=True, ops=ops, timed=False)]


def chunk_smoke(bits: str, model: str = "pi05-tiny", seed: int = 0,
                fast_backend: str | None = None) -> dict:
    """One chunk with the fast kernels (graphed on CUDA) vs the eager reference, same noise.

    ``fast_backend`` sets QUANTVLA_KERNELS for the fast run (default: leave it to "auto",
    which is Triton on CUDA); the reference run always sets it to "reference".
    """
    from quantvla_ros.kernels import last_kernel
    from quantvla_ros.workflows.bench_e2e import bench_observation, quantized_random_policy

    device = "cuda" if torch.cuda.is_available() else "cpu"
    policy = quantized_random_policy(model, bits, device, seed)
    obs, noise = bench_observation(policy, seed), policy.draw_noise()
    graphed = policy.use_cuda_graphs
    saved = os.environ.get("QUANTVLA_KERNELS")
    try:
        if fast_backend:
            os.environ["QUANTVLA_KERNELS"] = fast_backend
        fast = policy.infer(obs, noise).actions
        ran = [last_kernel()]
        os.environ["QUANTVLA_KERNELS"] = "reference"
        policy.use_cuda_graphs = False
        ref = policy.infer(obs, noise).actions
        ran.append(last_kernel())
    finally:
        policy.use_cuda_graphs = graphed
        if saved is None:
            os.environ.pop("QUANTVLA_KERNELS", None)
        else:
            os.environ["QUANTVLA_KERNELS"] = saved
    fast, ref = torch.as_tensor(fast).float(), torch.as_tensor(ref).float()
    err = (fast - ref).abs().max().item()
    rel = err / max(ref.abs().max().item(), 1e-12)
    finite = bool(torch.isfinite(fast).all())
    return {"step": "chunk", "model": model, "bits": bits, "device": device,
            "graphed": graphed, "fast_backend": fast_backend or "auto", "last_kernels": ran,
            "max_abs_err": err, "rel_err": rel, "finite": finite,
            "check": "ok" if finite and rel <= CHUNK_RTOL else f"FAIL (rel err {rel:.2e})"}


def main(argv: list[str] | None = None) -> int:
    """Run one step; print its JSON lines; return 1 if a check failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("steps", nargs="+", choices=["env", "gemm", "chunk"],
                        help="run in this order, e.g. `gemm chunk`")
    parser.add_argument("--model", help="env: pi05 (default); chunk: pi05-tiny (default)")
    parser.add_argument("--bits", default="w8a8,w4a8", help="chunk: comma-separated")
    args = parser.parse_args(argv)
    ok = True
    for step in args.steps:
        for row in _step_rows(step, args):
            print(json.dumps(row), flush=True)
            ok &= row.get("check") in (None, "ok")
    return 0 if ok else 1


def _step_rows(step: str, args):
    """Yield the rows of one step; a chunk that raises becomes an ERROR row."""
    if step == "env":
        yield environment(args.model or "pi05")
    elif step == "gemm":
        yield from gemm_smoke()
    else:
        for bits in args.bits.split(","):
            try:
                yield chunk_smoke(bits, args.model or "pi05-tiny")
            except Exception as exc:  # the next precision still runs
                yield {"step": "chunk", "bits": bits, "check": "ERROR " + _first_line(exc)}


if __name__ == "__main__":
    sys.exit(main())
