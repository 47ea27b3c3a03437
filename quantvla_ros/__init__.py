"""QuantVLA for ROS 2: quantized pi0 / pi0.5 VLA policies, their tooling and ROS nodes."""
