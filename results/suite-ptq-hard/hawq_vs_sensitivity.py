"""HAWQ-V3's claim that its trace-weighted perturbation ranks layer sensitivity: Spearman rho, over units, between
HAWQ-V3's score Omega_i(b) = Tr(H_i)/n_i * ||Q_b(W_i) - W_i||^2 and the measured damage of quantizing unit i
alone to b bits (the sensitivity baseline's score: the increase of the validation loss, 512 images), both from
the records of runs on the same FP32 checkpoint (same seed) and the same min-max per-channel quantizer.

Units whose weights differ between the two methods (HAWQ-V3 ties a residual downsample to the block's first
conv, the default layout to its second) are left out. Run from the repository root:

    python results/suite-ptq-hard/hawq_vs_sensitivity.py results/suite-ptq-hard avg_bits=2.5
"""

import json
import sys
from pathlib import Path

import pandas as pd
from scipy.stats import spearmanr

folder, budget = sys.argv[1], sys.argv[2]
records = [json.loads(p.read_text()) for p in Path(folder, "runs").glob("*.json")]
runs = {(r["spec"]["method"], r["spec"]["seed"]): r for r in records
        if r["status"] == "done" and r["budget"] and r["budget"]["text"] == budget}
rows = []
for (method, seed), hawq in sorted(runs.items()):
    if method != "hawq-v3" or ("sensitivity", seed) not in runs:
        continue
    found, damage = hawq["extra"]["hawq-v3"], runs["sensitivity", seed]["extra"]["sensitivity"]["scores"]
    omega = {u: {b: found["trace_per_param"][u] * d for b, d in row.items()} for u, row in found["delta"].items()}
    tied = {u for group in found["groups"] for u in group}
    tied |= {u.replace("conv1", "conv2") for u in tied}
    units = [u for u in omega if u in damage and u not in tied]
    row = {"seed": seed, "units": len(units)}
    for bits in sorted(next(iter(omega.values()))):
        rho, p = spearmanr([omega[u][bits] for u in units], [damage[u][bits] for u in units])
        row[f"{bits} bits: rho (p)"] = f"{rho:+.2f} ({p:.2g})"
    rows.append(row)
print(pd.DataFrame(rows).to_markdown(index=False))
