"""OMPQ's claim that its objective ranks policies: Spearman rho between the ORM objective of random feasible
policies and their accuracy, on one FP32 checkpoint and one budget.

The random control records the bits it drew, the ORM runs record the ORM matrix of their feature batch; the
objective of a draw, sum_i c_i b_i with c normalised to a largest of 1, is computed here with OMPQ's own
``importance`` at several beta (0 is the size-greedy limit, c = 1). Each ORM run's batch gives one row, so the
spread between rows is what the batch changes. Run from the repository root:

    python results/suite-qat-hard-orm-random/spearman.py results/suite-qat-hard-orm-random
"""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from mpqbench.plugins.ompq.orm import importance

BETAS = (0.0, 0.1, 1.0, 10.0, 100.0)

records = [json.loads(p.read_text()) for p in sorted(Path(sys.argv[1], "runs").glob("*.json"))]
done = [r for r in records if r["status"] == "done"]
draws = [r for r in done if r["extra"]["ompq"]["allocation"] == "random"]
orms = sorted((r for r in done if r["extra"]["ompq"]["allocation"] == "orm"), key=lambda r: r["spec"]["seed"])
top1 = np.array([r["metrics"]["top1"] for r in draws])
rows = []
for orm_run in orms:
    record = orm_run["extra"]["ompq"]
    units = record["units"]
    bits = np.array([[d["extra"]["ompq"]["bits"][u] for u in units] for d in draws])
    row = {"ORM batch (seed)": orm_run["spec"]["seed"], "ORM policy top-1": orm_run["metrics"]["top1"]}
    for beta in BETAS:
        log_c = importance(np.array(record["orm"]), beta)[2]
        objective = bits @ np.exp(log_c - log_c.max())
        rho, p = spearmanr(objective, top1)
        row[f"beta {beta:g}: rho (p)"] = f"{rho:+.2f} ({p:.2g})"
    rows.append(row)
print(f"{len(draws)} random policies, top-1 {top1.mean():.2f} +- {top1.std(ddof=1):.2f} "
      f"(min {top1.min():.2f}, max {top1.max():.2f}); mean weight bits "
      f"{np.mean([d['budget']['measured'] for d in draws]):.3f}")
print(pd.DataFrame(rows).to_markdown(index=False))
