"""``mpqbench bench sdq-ablation``: SDQ's ablation sweep, accuracy mean +- std over seeds per variant.

The sweep (one factor at a time from the default, plus KD and EBR both off, so KD x EBR is a full 2 x 2):

========================  ====================================================================
``sdq``                   stochastic switching, KD on, EBR on (the defaults)
``sdq:mode=interpolate``  linear interpolation between the adjacent bitwidths (FracBits-style)
``sdq:kd=0``              no distillation in stage 2
``sdq:ebr=0``             no entropy-aware bin regularisation in stage 2
``sdq:kd=0:ebr=0``        stage 2 is the plain LSQ fine-tune (cross-entropy only)
========================  ====================================================================

Every variant runs at the same budget on the same FP32 checkpoint (``fp32_seed=0`` unless ``--set`` says
otherwise), so seeds vary only the Bernoulli draws, the data order and the fine-tune. The cells go through the
normal sweep driver into ``--out`` (default ``$MPQBENCH_CACHE/bench/sdq-ablation``): a rerun reuses finished
cells, and ``mpqbench leaderboard --results DIR`` reads the same records. The paper's only evidence for
stochastic over interpolation is a loss-landscape figure; this table is measured evidence either way.
"""

from __future__ import annotations

import argparse
import statistics

VARIANTS = ("sdq", "sdq:mode=interpolate", "sdq:kd=0", "sdq:ebr=0", "sdq:kd=0:ebr=0")


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):6.2f} ± {std:4.2f}"


def main(args: list[str], registry) -> int:
    """SDQ ablation (stochastic vs interpolate, KD on/off, EBR on/off), 3 seeds each, accuracy mean ± std."""
    from mpqbench.pipeline.config import SweepConfig
    from mpqbench.pipeline.driver import sweep
    from mpqbench.pipeline.store import RunStore
    from mpqbench.system.paths import cache_dir

    parser = argparse.ArgumentParser(prog="mpqbench bench sdq-ablation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="quick")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--budget", default="size_mb=w3")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--params", default="", help="extra sdq parameters for every variant, e.g. a=4:dbp_lr=0.05")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated sdq components")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="recipe overrides (default fp32_seed=0)")
    parser.add_argument("--out", default=None, help="results folder (default $MPQBENCH_CACHE/bench/sdq-ablation)")
    parser.add_argument("--jobs", type=int, default=1)
    opts = parser.parse_args(args)
    variants = [v.strip() + (":" + opts.params if opts.params else "") for v in opts.variants.split(",") if v.strip()]
    cfg = SweepConfig()
    cfg.set("methods", variants)
    cfg.set("models", opts.model)
    cfg.set("datasets", opts.dataset)
    cfg.set("budgets", opts.budget)
    cfg.set("seeds", opts.seeds)
    cfg.set("recipe", opts.recipe)
    cfg.set("out", opts.out or str(cache_dir() / "bench" / "sdq-ablation"))
    cfg.jobs = opts.jobs
    cfg.recipe_overrides["fp32_seed"] = 0
    for item in opts.set:
        key, _, value = item.partition("=")
        cfg.recipe_overrides[key.strip()] = value.strip()
    outcomes = sweep(cfg, registry, cache_dir(), show_progress=False)
    ids = {o.id: o for o in outcomes}
    records = [r for r in RunStore(cfg.out).records() if r.id in ids]
    labels = list(dict.fromkeys(o.label for o in outcomes))
    print(f"SDQ ablation: {opts.model} / {opts.dataset}, recipe {opts.recipe} "
          f"({', '.join(f'{k}={v}' for k, v in cfg.recipe_overrides.items())}), budget {opts.budget}, "
          f"seeds {opts.seeds}; records in {cfg.out}")
    header = f"{'variant':34s} {'n':>2s} {'top1 %':>14s} {'int top1 %':>14s} {'avg w bits':>10s} {'search s':>9s}"
    print(header)
    print("-" * len(header))
    for label in labels:
        done = [r for r in records if r.label == label and r.done]
        top1 = [r.metrics["top1"] for r in done]
        int_top1 = [r.metrics["int_top1"] for r in done if "int_top1" in r.metrics]
        bits = [r.metrics["avg_w_bits"] for r in done]
        search = [r.phases.get("train:search", {}).get("seconds", 0.0) for r in done]
        met = all(r.budget_met for r in done)
        print(f"{label:34s} {len(done):2d} {_mean_std(top1):>14s} {_mean_std(int_top1):>14s} "
              f"{statistics.mean(bits) if bits else 0:10.2f} {statistics.mean(search) if search else 0:9.1f}"
              + ("" if met else "  (budget missed)"))
    failed = [o for o in outcomes if o.status in ("failed", "kept-failed")]
    for o in failed:
        print(f"failed: {o.label} ({o.id}): {(o.error or '').splitlines()[0] if o.error else ''}")
    print("mean ± sample std over seeds; avg w bits: parameter-weighted, first/last included")
    return 1 if failed else 0
