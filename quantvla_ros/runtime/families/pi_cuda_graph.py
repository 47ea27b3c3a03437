"""CUDA-graph replay of one action chunk: the prefix graph, then the denoising-loop graph.

Shapes are static for a given config (batch 1, every camera slot, fixed token length), so
each chunk is two graph replays with no host work or synchronisation in between. The prefix
graph's KV cache stays in that graph's memory pool and is read in place by the denoise graph.
"""

from __future__ import annotations

import torch

INPUT_KEYS = ("images", "image_masks", "tokens", "token_masks", "state")


class GraphedChunk:
    """Captures `embed_prefix + prefill` and `denoise_loop` of `model` for fixed shapes."""

    def __init__(self, model, inputs: dict, noise: torch.Tensor, num_steps: int,
                 warmup: int = 2):
        """Copy the inputs into static buffers, warm up on a side stream, capture both graphs."""
        if noise.device.type != "cuda":
            raise ValueError("CUDA graphs need the model and inputs on a CUDA device")
        self.model, self.num_steps = model, num_steps
        self.static = {k: inputs[k].clone() for k in INPUT_KEYS}
        self.static["noise"] = noise.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmup):  # kernels compiled, caches (masks, times) filled
                self._prefix()
                self._denoise()
        torch.cuda.current_stream().wait_stream(side)
        self.prefix_graph, self.denoise_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        # Capture on the warm-up stream: split-K workspaces are per stream (kernels/workspace),
        # so the graphs bake in the addresses the warm-up already allocated.
        with torch.no_grad():
            with torch.cuda.graph(self.prefix_graph, stream=side):
                self._prefix()
            with torch.cuda.graph(self.denoise_graph, stream=side):
                self._denoise()

    def _prefix(self) -> None:
        s, m = self.static, self.model
        embs, valid = m.embed_prefix(s["images"], s["image_masks"], s["tokens"],
                                     s["token_masks"])
        self.valid, self.cache = valid, m.prefill(embs, valid, room=m.suffix_len)

    def _denoise(self) -> None:
        s = self.static
        self.actions = self.model.denoise_loop(self.cache, self.valid, s["noise"], s["state"],
                                               self.num_steps)

    def matches(self, inputs: dict, noise: torch.Tensor) -> bool:
        """Return whether inputs and noise have the shapes the graphs were captured for."""
        return all(inputs[k].shape == self.static[k].shape for k in INPUT_KEYS) and \
            noise.shape == self.static["noise"].shape

    def run(self, inputs: dict, noise: torch.Tensor, timed: bool = False):
        """Actions [B, H, A] (a fresh tensor); with `timed`, also (prefix_ms, denoise_ms)."""
        for k in INPUT_KEYS:
            self.static[k].copy_(inputs[k], non_blocking=True)
        self.static["noise"].copy_(noise, non_blocking=True)
        if not timed:
            self.prefix_graph.replay()
            self.denoise_graph.replay()
            return self.actions.clone(), None
        events = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
        events[0].record()
        self.prefix_graph.replay()
        events[1].record()
        self.denoise_graph.replay()
        events[2].record()
        out = self.actions.clone()
        events[2].synchronize()
        return out, (events[0].elapsed_time(events[1]), events[1].elapsed_time(events[2]))
