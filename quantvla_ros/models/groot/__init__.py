"""GR00T N1.5 (Eagle 2.5 VL backbone + flow-matching DiT action head), NVIDIA module names."""
