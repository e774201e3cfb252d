"""Costs and budgets: the one cost model (size, BitOPs, average bits) every method and table uses, budget
kinds and their resolution, and the exact integer program that spends a budget layer by layer."""
