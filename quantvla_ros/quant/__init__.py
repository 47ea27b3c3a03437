"""QuantVLA method: quantizers, layouts, calibration buffer and calibration, artifacts."""
