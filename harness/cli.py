"""The ``mpqbench`` command line.

User mistakes end in one line on stderr (``mpqbench: error: ...``) and exit status 2, never a traceback;
a sweep with failed cells exits 1 after finishing every other cell; Ctrl-C exits 130, keeping every
finished record. Commands that read results (``leaderboard``, ``policy``, ``verify``) never change them
(``verify --update`` is the one explicit exception).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler

from mpqbench import __version__
from mpqbench.errors import UserError

log = logging.getLogger("mpqbench")
CONSOLE = Console(stderr=True)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit status 2."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog.split()[0]} --help)", file=sys.stderr)
        raise SystemExit(2)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _labels(text: str) -> list[str]:
    """Comma-separated method labels; a comma inside parentheses belongs to its label (``ddq(a=8,variant=fixed)``)."""
    protected = re.sub(r"\([^()]*\)", lambda m: m.group(0).replace(",", "\0"), text)
    return [label.replace("\0", ",") for label in _csv(protected)]


def _common() -> argparse.ArgumentParser:
    """Flags every subcommand accepts, before or after its name."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log progress of each phase")
    common.add_argument("--disable", type=_csv, default=argparse.SUPPRESS, metavar="PLUGINS",
                        help="entry-point plugins not to load (also $MPQBENCH_DISABLE)")
    return common


def _results(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", "--out", dest="results", default="results", metavar="DIR",
                        help="results folder holding runs/ (--out is the same, as `run` spells it)")


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = _Parser(prog="mpqbench", description=__doc__, parents=[common],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mpqbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", parents=[common], help="run a grid of methods x models x data sets x budgets x seeds")
    run.add_argument("--config", help="TOML file with the same keys as these flags (flags win); see examples/")
    run.add_argument("--suite", help="a shipped protocol (qat, ptq, ...; 'list' lists them), a --config that comes "
                                     "with mpqbench (flags win); see docs/protocols.md")
    run.add_argument("--methods", type=_csv, help="e.g. fp32,uniform:w=4,ompq:beta=1 (name:key=value...)")
    run.add_argument("--targets", type=_csv, help="hardware targets, e.g. arm-qemu")
    run.add_argument("--models", type=_csv)
    run.add_argument("--datasets", type=_csv)
    run.add_argument("--budgets", type=_csv, help="e.g. size_mb=w4,w3 or avg_bits=3.5 or bitops_g=0.5")
    run.add_argument("--seeds", type=_csv, help="e.g. 0,1,2")
    run.add_argument("--recipe", help="full (default), quick or tiny")
    run.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                     help="override a recipe field, e.g. --set qat_epochs=3")
    run.add_argument("--first-last", help="8 (default: first/last layers at W8A8) or search")
    run.add_argument("--out", help="results folder to write (default results)")
    run.add_argument("--jobs", help="cells to run in parallel (default 1)")
    run.add_argument("--executor", help="local (default with --jobs 1), process (default with --jobs > 1), "
                                        "or one a plugin registers")
    run.add_argument("--data-root", help="folder with the data set's files (CIFAR-10, Fashion-MNIST)")
    run.add_argument("--deploy-images", help="test images each target runs (default 256)")
    run.add_argument("--device", help="auto (default: the GPU if there is one), cpu or cuda")
    run.add_argument("--retry-failed", action="store_true", default=None, help="run failed cells again")
    run.add_argument("--keep-going", action="store_true", default=None,
                     help="record cells refused before running (e.g. an unreachable budget) as failed and run the rest")
    run.add_argument("--dry-run", action="store_true",
                     help="print the expanded grid (to run, done, checkpoints to train) and exit")
    run.add_argument("--no-progress", action="store_true")

    board = sub.add_parser("leaderboard", parents=[common], help="tables from the run records")
    _results(board)
    board.add_argument("--format", choices=["text", "md", "csv", "json", "latex"], default="text",
                       help="text (default: ranked tables that fit 120 columns, with a legend), md, csv or json (with "
                            "provenance), latex (booktabs)")
    board.add_argument("--write", metavar="DIR",
                       help="write leaderboard.{md,csv,json,svg,png}, bitmaps/ (bits per layer) and, for budget "
                            "sweeps, leaderboard-pareto.{svg,png} (top-1 against weight bits) into DIR")
    board.add_argument("--stale", action="store_true", help="show records of older method code as rows of their own")
    board.add_argument("--columns", metavar="KEYS", help="columns to show, e.g. method,top1,size, or changes to the "
                       "default, e.g. +train,-bitops (an unknown key lists the known ones)")
    board.add_argument("--sort", metavar="KEY[:asc|desc]", help="order rows within each group (default: rank)")
    board.add_argument("--wide", action="store_true", help="every column, no width limit")
    for name in ("model", "dataset", "method", "budget"):
        board.add_argument(f"--{name}", f"--{name}s", dest=name, type=_labels if name == "method" else _csv,
                           metavar="NAMES",
                           help=f"only these {name}s (comma list)" + (", by label or name" if name == "method" else ""))

    publish = sub.add_parser("publish", parents=[common], help="a static web site (tables, plots, records) of results")
    publish.add_argument("out_dir", metavar="OUT_DIR")
    publish.add_argument("--results", "--out", dest="results", action="append", metavar="DIR",
                         help="results folder holding runs/ (repeat for several; default results)")
    publish.add_argument("--title", default="mpqbench leaderboard")
    publish.add_argument("--stale", action="store_true", help="show records of older method code as rows of their own")

    compare = sub.add_parser("compare", parents=[common],
                             help="two result folders (or two methods of one) side by side, paired over seeds")
    compare.add_argument("a", metavar="A", help="results folder")
    compare.add_argument("b", metavar="B", nargs="?", help="second results folder (or use --methods)")
    compare.add_argument("--methods", type=_labels, metavar="X,Y",
                         help="compare two methods (labels) within A; a row without a budget (uniform W3A4) "
                              "meets every budget")
    compare.add_argument("--baseline", metavar="METHOD",
                         help="every method of A against METHOD (e.g. uniform) at the same budget and A bits")
    compare.add_argument("--metric", default="top1", help="top1 (default), int_top1, drop, size_mb, bitops_g, ...")
    compare.add_argument("--alpha", type=float, default=0.05, help="significance level of the paired t-test")
    compare.add_argument("--across-recipes", action="store_true",
                         help="two folders: match rows ignoring the recipe (the same grid under two recipes)")
    compare.add_argument("--format", choices=["text", "json"], default="text")

    sub.add_parser("plugins", parents=[common], help="list the loaded plugins and what they provide")

    policy = sub.add_parser("policy", parents=[common], help="per-layer bits of runs, side by side")
    policy.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="run ids or unique prefixes")
    _results(policy)

    verify = sub.add_parser("verify", parents=[common],
                            help="check targets against the reference executor on a stored run (read-only)")
    verify.add_argument("run_id")
    verify.add_argument("--targets", type=_csv, required=True)
    _results(verify)
    verify.add_argument("--images", type=int, default=256)
    verify.add_argument("--data-root")
    verify.add_argument("--update", action="store_true", help="also write the new target results into the record")

    bench = sub.add_parser("bench", parents=[common], help="benchmarks that print figures (speed, search cost)")
    bench.add_argument("name", help="see 'mpqbench bench list'")
    bench.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _config(args):
    from mpqbench.pipeline.config import SweepConfig

    if args.suite and args.config:
        raise UserError("--suite and --config both name a configuration: pass one (flags then override it)")
    cfg = SweepConfig.from_suite(args.suite) if args.suite else \
        SweepConfig.from_toml(args.config) if args.config else SweepConfig()
    for key in ("methods", "targets", "models", "datasets", "budgets", "seeds", "recipe", "first_last", "out",
                "executor", "data_root", "device", "retry_failed", "keep_going"):
        value = getattr(args, key, None)
        if value is not None:
            cfg.set(key, value)
    for key in ("jobs", "deploy_images"):
        value = getattr(args, key, None)
        if value is not None:
            try:
                cfg.set(key, int(value))
            except ValueError:
                raise UserError(f"--{key.replace('_', '-')}: expected an integer >= 1, not {value!r}") from None
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq:
            raise UserError(f"--set takes FIELD=VALUE, not {item!r}")
        cfg.recipe_overrides[key.strip()] = value.strip()
    return cfg


def cmd_run(args, registry) -> int:
    from mpqbench.pipeline.driver import sweep
    from mpqbench.pipeline.store import RunStore
    from mpqbench.report import leaderboard
    from mpqbench.system.paths import cache_dir

    if args.suite == "list":
        from mpqbench import suites

        print(suites.listing())
        return 0
    cfg = _config(args)
    outcomes = sweep(cfg, registry, cache_dir(), frozenset(getattr(args, "disable", ())), console=CONSOLE,
                     show_progress=not args.no_progress, dry_run=args.dry_run)
    if args.dry_run:
        return 0
    ids = {o.id for o in outcomes}
    print(leaderboard.markdown(leaderboard.table(r for r in RunStore(cfg.out).records() if r.id in ids)))
    failed = [o for o in outcomes if o.status in ("failed", "kept-failed")]
    for o in failed:
        kept = " (failed earlier; --retry-failed to run it again)" if o.status == "kept-failed" else ""
        print(f"failed: {o.label} ({o.id}): {_line(o.error)}{kept}", file=sys.stderr)
    problems: dict[tuple[str, str], int] = {}
    for o in outcomes:
        for target, text in o.targets.items():
            problems[(target, text)] = problems.get((target, text), 0) + 1
    for (target, text), n in problems.items():
        print(f"{target} {_line(text)} ({n} run{'s' if n > 1 else ''}; full text in the records)", file=sys.stderr)
    reused = sum(o.status == "cached" for o in outcomes)
    print(f"{len(outcomes) - len(failed)} runs finished ({reused} reused), {len(failed)} failed; records in "
          f"{Path(cfg.out) / 'runs'}", file=sys.stderr)
    return 1 if failed else 0


def _line(text: str | None, limit: int = 200) -> str:
    first = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return first[:limit] + ("..." if len(first) > limit else "")


def _store(folder: str):
    from mpqbench.pipeline.store import RunStore

    store = RunStore(folder)
    store.check_readable()
    return store


def cmd_leaderboard(args, registry) -> int:
    from mpqbench.report import latex, leaderboard, provenance, terminal
    from mpqbench.report.columns import select

    records = list(_store(args.results).records())
    df = leaderboard.table(records, stale=args.stale)
    if not df.empty:
        df = select(df, model=args.model, dataset=args.dataset, method=args.method, budget=args.budget)
    if args.write:
        if df.empty:
            raise UserError(f"no finished or failed runs in {args.results}/runs: nothing to write")
        for path in leaderboard.write(df, Path(args.write), records=records):
            print(f"wrote {path}", file=sys.stderr)
    elif args.format == "text":
        print(terminal.render(df, args.columns, args.sort, args.wide), end="")
    elif args.format == "md":
        print(leaderboard.markdown(df))
    elif args.format == "csv":
        print(provenance.to_csv(df), end="")
    elif args.format == "latex":
        print(latex.render(df, args.columns, args.sort), end="")
    else:
        print(provenance.to_json(df))
    return 0


def cmd_publish(args, registry) -> int:
    from mpqbench.report import site

    for path in site.publish(args.out_dir, args.results or ["results"], title=args.title, stale=args.stale):
        print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_compare(args, registry) -> int:
    from mpqbench.report import compare

    if sum(x is not None for x in (args.b, args.methods, args.baseline)) != 1:
        raise UserError("compare takes two results folders (A B), or one folder and --methods X,Y or --baseline M")
    if args.across_recipes and args.b is None:
        raise UserError("--across-recipes compares two results folders (A B)")
    if args.baseline is not None:
        result = compare.baseline(_store(args.a).records(), args.baseline, metric=args.metric, alpha=args.alpha)
    elif args.methods is not None:
        if len(args.methods) != 2:
            raise UserError(f"--methods takes two method labels, not {len(args.methods)}")
        result = compare.methods(_store(args.a).records(), *args.methods, metric=args.metric, alpha=args.alpha)
    else:
        result = compare.folders(_store(args.a).records(), _store(args.b).records(), (args.a, args.b),
                                 metric=args.metric, alpha=args.alpha, across_recipes=args.across_recipes)
    width = max(120, shutil.get_terminal_size((120, 24)).columns)  # a wide terminal ($COLUMNS) unfolds verdicts
    print(compare.render(result, width) if args.format == "text" else compare.to_json(result), end="")
    return 0


def cmd_plugins(args, registry) -> int:
    from tabulate import tabulate

    from mpqbench.plugin.params import describe

    rows = [(p.name, p.distribution, p.version, p.module, "; ".join(p.provides) or "-", p.error or "")
            for p in registry.plugins]
    print(tabulate(rows, headers=["plugin", "distribution", "version", "module", "provides", "error"],
                   maxcolwidths=[None, None, None, None, 50, 40]))
    rows = [(kind, name, obj.description, describe(getattr(obj, "params", {})))
            for kind, table in registry.tables.items() for name, obj in sorted(table.items())]
    print()
    print(tabulate(rows, headers=["kind", "name", "description", "parameters (defaults)"],
                   maxcolwidths=[None, None, 60, 50]))
    return 0


def cmd_policy(args, registry) -> int:
    """One row per layer (weights, MACs), one ``W/A`` column per run; each run is described above."""
    from tabulate import tabulate

    store = _store(args.results)
    records = [store.find(run_id) for run_id in args.run_ids]
    for record in records:
        if record.policy is None:
            raise UserError(f"run {record.id} has no policy ({record.status}: {record.error})")
    layers = records[0].layers
    headers = ["layer", "params", "MACs"]
    for i, record in enumerate(records, 1):
        spec = record.spec
        print(f"[{i}] {record.label}  {spec['model']}/{spec['dataset']}  budget {spec['budget']}  "
              f"seed {spec['seed']}  run {record.id}")
        headers.append(f"[{i}] W/A")
    rows = [(name, *layers.get(name, ("", "")), *(_bits(r.policy.get(name)) for r in records))
            for name in records[0].policy]
    print(tabulate(rows, headers=headers, colalign=("left",) + ("right",) * (len(headers) - 1)))
    return 0


def _bits(pair) -> str:
    return f"{pair[0]}/{pair[1]}" if pair else "-"


def cmd_verify(args, registry) -> int:
    from mpqbench.pipeline.spec import Component
    from mpqbench.pipeline.stages import redeploy
    from mpqbench.system.paths import cache_dir

    store = _store(args.results)
    record = store.find(args.run_id)
    artifact = store.integer_model(record)
    if args.images < 1:
        raise UserError("--images must be at least 1")
    targets = [Component.parse(t, registry.target) for t in args.targets]
    data = registry.dataset(record.spec["dataset"]).load(args.data_root, cache_dir() / "data")
    try:
        sections = redeploy(artifact.read_bytes(), data.test.x[:args.images].numpy(), registry, targets, record.id,
                            cache_dir())
    except ValueError as exc:
        raise UserError(f"run {record.id}: {exc}") from None
    ok = True
    for name, section in sections.items():
        if section["status"] != "done":
            print(f"{name}: {section['status']}: {_line(section.get('reason') or section.get('error'))}")
            ok = False
            continue
        check = section["check"]
        ok &= check["bit_exact"]
        print(f"{name}: bit_exact={check['bit_exact']} max_abs_diff={check['max_abs_diff']} "
              f"mismatches={check['mismatches']} first_divergent_layer={check['first_divergent_layer']} "
              f"images={check['images']}")
    if args.update:
        record.targets.update(sections)
        store.write(record)
        print(f"updated {store.path(record.id)}", file=sys.stderr)
    return 0 if ok else 1


def cmd_bench(args, registry) -> int:
    benchmarks = registry.tables["benchmark"]
    if args.name == "list":
        for name in sorted(benchmarks):
            print(f"{name:20s} {benchmarks[name].description}")
        return 0
    return registry.get("benchmark", args.name).run(args.args, registry)


COMMANDS = {"run": cmd_run, "leaderboard": cmd_leaderboard, "publish": cmd_publish, "compare": cmd_compare,
            "plugins": cmd_plugins, "policy": cmd_policy,
            "verify": cmd_verify, "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # on a terminal, log lines go through rich (above the progress bar, never tearing it); elsewhere one plain
    # line per record, never wrapped
    handler = RichHandler(console=CONSOLE, show_time=False, show_path=False, markup=False) \
        if CONSOLE.is_terminal else logging.StreamHandler(sys.stderr)
    fmt = "%(name)s: %(message)s" if CONSOLE.is_terminal else "%(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING, format=fmt,
                        force=True, handlers=[handler])
    try:
        from mpqbench.plugin.registry import load_registry

        registry = load_registry(set(getattr(args, "disable", ())))
        return COMMANDS[args.command](args, registry)
    except UserError as exc:
        print(f"mpqbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mpqbench: interrupted; finished runs are kept, run the same command again to resume",
              file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # every record is already written atomically; skip the interpreter's exit handlers, where a process
        # pool whose workers were just terminated can wait forever on its management thread
        os._exit(130)


if __name__ == "__main__":
    sys.exit(main())
