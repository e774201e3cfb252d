"""Quantization building blocks shared by every method: fake quantizers, quantized layers, the traced
dataflow graph, the layout a model declares (units that share bits), BitPolicy, and QuantModel."""
