"""SmolVLA (lerobot 0.6.1's smolvla policy): SmolVLM2 backbone cut to its first layers + expert."""
