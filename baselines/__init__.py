"""Uniform and FP32 reference baselines."""
