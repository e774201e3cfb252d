"""Data sets: fixed, seeded splits held in memory as uint8 images, their shape, and fast batching."""
