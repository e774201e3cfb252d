"""Models: declared quantization layouts and the built-in networks."""
