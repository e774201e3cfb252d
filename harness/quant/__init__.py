"""Quantization building blocks shared by every method: quantizers, quantized layers, QuantModel."""
