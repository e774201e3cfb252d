"""The ``mpqbench`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from pathlib import Path

from mpqbench import __version__
from mpqbench.config import SweepConfig
from mpqbench.errors import UserError
from mpqbench.paths import cache_dir

log = logging.getLogger("mpqbench")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers: {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mpqbench", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mpqbench {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress of each phase")
    parser.add_argument("--disable", type=_csv, default=[], metavar="PLUGINS",
                        help="entry-point plugins not to load (also $MPQBENCH_DISABLE)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a grid of methods x models x data sets x budgets x seeds")
    run.add_argument("--config", help="TOML file with the same keys as these flags (flags win)")
    run.add_argument("--methods", type=_csv, help="e.g. fp32,uniform:w=4,ompq:beta=1 (name:key=value...)")
    run.add_argument("--targets", type=_csv, help="hardware targets, e.g. arm-qemu")
    run.add_argument("--models", type=_csv)
    run.add_argument("--datasets", type=_csv)
    run.add_argument("--budgets", help="e.g. size_mb=w4,w3 or avg_bits=3.5 or bitops_g=0.5")
    run.add_argument("--seeds", type=_seeds)
    run.add_argument("--recipe", help="full (default), quick or tiny")
    run.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                     help="override a recipe field, e.g. --set qat_epochs=3")
    run.add_argument("--first-last", help="8 (default: first/last layers at W8A8) or search")
    run.add_argument("--out", help="results folder (default results)")
    run.add_argument("--jobs", type=int, help="cells to run in parallel processes")
    run.add_argument("--data-root", help="folder with the data set's files (CIFAR-10, Fashion-MNIST)")
    run.add_argument("--deploy-images", type=int, help="test images each target runs (default 256)")
    run.add_argument("--device", help="auto (default: the GPU if there is one), cpu or cuda")
    run.add_argument("--no-progress", action="store_true")

    board = sub.add_parser("leaderboard", help="tables from the run records")
    board.add_argument("--out", default="results", help="results folder holding runs/")
    board.add_argument("--format", choices=["md", "csv", "json"], default="md")
    board.add_argument("--write", metavar="DIR", help="write leaderboard.{md,csv,json,png} into DIR")

    sub.add_parser("plugins", help="list the loaded plugins and what they provide")

    policy = sub.add_parser("policy", help="per-layer bits of runs, side by side")
    policy.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="run ids or unique prefixes")
    policy.add_argument("--out", default="results")

    verify = sub.add_parser("verify", help="check targets against the reference executor on a stored run")
    verify.add_argument("run_id")
    verify.add_argument("--targets", type=_csv, required=True)
    verify.add_argument("--out", default="results")
    verify.add_argument("--images", type=int, default=256)
    verify.add_argument("--data-root")

    bench = sub.add_parser("bench", help="benchmarks that print figures (speed, search cost)")
    bench.add_argument("name", help="see 'mpqbench bench list'")
    bench.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _config(args) -> SweepConfig:
    cfg = SweepConfig.from_toml(args.config) if args.config else SweepConfig()
    for f in fields(SweepConfig):
        value = getattr(args, f.name, None)
        if value is not None and f.name not in ("recipe_overrides", "params"):
            setattr(cfg, f.name, [value] if f.name == "budgets" else value)
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq:
            raise UserError(f"--set takes FIELD=VALUE, not {item!r}")
        cfg.recipe_overrides[key.strip()] = value.strip()
    if cfg.jobs < 1:
        raise UserError("--jobs must be at least 1")
    return cfg


def cmd_run(args, registry) -> int:
    from mpqbench import leaderboard
    from mpqbench.store import RunStore
    from mpqbench.sweep import sweep

    cfg = _config(args)
    summaries = sweep(cfg, registry, cache_dir(), set(args.disable), show_progress=not args.no_progress)
    store = RunStore(cfg.out)
    ids = {s["id"] for s in summaries}
    print(leaderboard.markdown(leaderboard.table(r for r in store.records() if r["id"] in ids)))
    failed = [s for s in summaries if s["status"] == "failed"]
    for s in failed:
        print(f"failed: {s['label']} ({s['id']}): {s['error']}", file=sys.stderr)
    print(f"{len(summaries) - len(failed)} runs finished ({sum(s['status'] == 'cached' for s in summaries)} "
          f"reused), {len(failed)} failed; records in {Path(cfg.out) / 'runs'}", file=sys.stderr)
    return 1 if failed else 0


def cmd_leaderboard(args, registry) -> int:
    from mpqbench import leaderboard
    from mpqbench.store import RunStore

    df = leaderboard.table(RunStore(args.out).records())
    if args.write:
        for path in leaderboard.write(df, Path(args.write)):
            print(f"wrote {path}", file=sys.stderr)
    elif args.format == "md":
        print(leaderboard.markdown(df))
    elif args.format == "csv":
        print(df.to_csv(index=False), end="")
    else:
        print(df.to_json(orient="records", indent=1))
    return 0


def cmd_plugins(args, registry) -> int:
    from tabulate import tabulate

    from mpqbench.params import describe

    rows = [(p.name, p.distribution, p.version, p.module, "; ".join(p.provides) or "-", p.error or "")
            for p in registry.plugins]
    print(tabulate(rows, headers=["plugin", "distribution", "version", "module", "provides", "error"]))
    rows = [(kind, name, obj.description, describe(getattr(obj, "params", {})))
            for kind, table in (("method", registry.methods), ("target", registry.targets),
                                ("model", registry.models), ("dataset", registry.datasets))
            for name, obj in sorted(table.items())]
    print()
    print(tabulate(rows, headers=["kind", "name", "description", "parameters (defaults)"],
                   maxcolwidths=[None, None, 60, 50]))
    return 0


def _record(out: str, run_id: str) -> dict:
    from mpqbench.store import RunStore

    record = RunStore(out).find(run_id)
    if record is None:
        raise UserError(f"no single run matches {run_id!r} in {out}/runs")
    return record


def cmd_policy(args, registry) -> int:
    """One row per layer (weights, MACs), one ``W/A`` column per run; each run is described above."""
    from tabulate import tabulate

    records = [_record(args.out, run_id) for run_id in args.run_ids]
    for record in records:
        if "policy" not in record:
            raise UserError(f"run {record['id']} has no policy ({record['status']}: {record.get('error')})")
    layers = records[0].get("layers", {})
    headers = ["layer", "params", "MACs"]
    for i, record in enumerate(records, 1):
        spec = record["spec"]
        print(f"[{i}] {record['label']}  {spec['model']}/{spec['dataset']}  budget {spec['budget']}  "
              f"seed {spec['seed']}  run {record['id']}")
        headers.append(f"[{i}] W/A")
    rows = [(name, *layers.get(name, ("", "")), *(_bits(r["policy"].get(name)) for r in records))
            for name in records[0]["policy"]]
    print(tabulate(rows, headers=headers, colalign=("left",) + ("right",) * (len(headers) - 1)))
    return 0


def _bits(pair) -> str:
    return f"{pair[0]}/{pair[1]}" if pair else "-"


def cmd_verify(args, registry) -> int:
    from mpqbench.config import Component
    from mpqbench.runner import deploy_missing
    from mpqbench.store import RunStore

    record = _record(args.out, args.run_id)
    if "int_top1" not in record.get("metrics", {}):
        raise UserError(f"run {record['id']} has no integer model to verify")
    store = RunStore(args.out)
    if not store.artifact(record["id"], "integer_model.npz").exists():
        raise UserError(f"run {record['id']}: its integer model is not in {args.out}/artifacts (re-run it)")
    targets = [Component.parse(t, registry.target) for t in args.targets]
    for t in targets:
        record.get("targets", {}).pop(t.name, None)
    deploy_missing(record, registry, store, targets, cache_dir(), args.data_root, args.images)
    ok = True
    for t in targets:
        section = record["targets"][t.name]
        if section["status"] != "done":
            print(f"{t.name}: {section['status']}: {section.get('reason') or section.get('error')}")
            ok = False
            continue
        check = section["check"]
        ok &= check["bit_exact"]
        print(f"{t.name}: bit_exact={check['bit_exact']} max_abs_diff={check['max_abs_diff']} "
              f"mismatches={check['mismatches']} first_divergent_layer={check['first_divergent_layer']} "
              f"images={check['images']}")
    return 0 if ok else 1


def cmd_bench(args, registry) -> int:
    from mpqbench.bench import run_benchmark

    return run_benchmark(args.name, args.args, registry)


COMMANDS = {"run": cmd_run, "leaderboard": cmd_leaderboard, "plugins": cmd_plugins, "policy": cmd_policy,
            "verify": cmd_verify, "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        from mpqbench.registry import load_registry

        registry = load_registry(set(args.disable))
        return COMMANDS[args.command](args, registry)
    except UserError as exc:
        print(f"mpqbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mpqbench: interrupted; finished runs are kept, run the same command again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
