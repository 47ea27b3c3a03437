"""Offline workflows over the runtime and the method: quantize a policy, report on it."""
