"""The machine side: wall time and peak memory of a phase, cache paths and atomic writes, the recorded
environment."""
