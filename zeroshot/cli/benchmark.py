"""``zeroshot benchmark``: models x datasets x tasks into CLIP_benchmark result files; ``benchmark build`` tables."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ..evaluation.benchmark import REGISTRY, TASKS
from .options import (MODEL_HELP, add_decode_args, backbone_from_args, check_exists, check_output, check_run_args,
                      extract_options, int_list)

RUN_OPTIONS = ("models", "datasets", "card", "exclude_leaked")


def cmd_benchmark(args) -> None:
    if args.build:
        return cmd_build(args)
    from ..evaluation.benchmark import check_tasks, plan, print_result, read_list, resolve_datasets, run_benchmark
    from ..prompts import load_card
    from ..retrieval.dedup import flagged_images

    if not (args.models and args.datasets):
        raise ValueError("give --models and --datasets to run a benchmark, or 'benchmark build RESULTS... --output "
                         "table.csv' to aggregate results")
    check_run_args(args)
    check_output("--output", args.output, folder=True)
    check_exists("--exclude-leaked", args.exclude_leaked)
    shots, seeds = int_list(args.shots), int_list(args.seeds)
    if args.card:
        load_card(args.card)
    models, tasks = read_list(args.models), check_tasks(read_list(args.tasks))
    datasets = resolve_datasets(read_list(args.datasets), data_root=args.data_root, card=args.card)
    runs = len(plan(datasets, tasks)) * len(models)
    leaked = flagged_images(args.exclude_leaked) if args.exclude_leaked else set()
    print(f"benchmark: {len(models)} model(s) x {len(datasets)} dataset(s) x {len(tasks)} task(s) = {runs} run(s), "
          f"results in {args.output}", file=sys.stderr)
    start = time.perf_counter()
    written = []
    paths = run_benchmark(models, datasets, tasks, args.output, load=lambda spec: backbone_from_args(args, spec),
                          skip_existing=args.skip_existing, leaked=leaked, cache_dir=args.cache_dir,
                          extract_options=extract_options(args),
                          shots=tuple(shots), seeds=tuple(seeds),
                          report=lambda result, path: (written.append(path), print_result(result, path)))
    kept = len(paths) - len(written)
    print(f"{len(paths)} result(s) in {args.output}" + (f" ({kept} kept from an earlier run)" if kept else "")
          + f" in {time.perf_counter() - start:.1f} s; tables: zeroshot benchmark build {args.output} --output "
          "benchmark.csv", file=sys.stderr)


def cmd_build(args) -> None:
    from ..evaluation.benchmark_report import build

    if args.build[0] != "build" or len(args.build) < 2:
        raise ValueError(f"unexpected argument {args.build[0]!r}: 'benchmark build' takes result files"
                         if args.build[0] != "build" else "benchmark build needs result .json files or folders")
    given = [f"--{o.replace('_', '-')}" for o in RUN_OPTIONS if getattr(args, o)]
    if given:
        raise ValueError(f"{', '.join(given)} belong to a benchmark run, not to 'benchmark build': drop them")
    if Path(args.output).suffix != ".csv":
        raise ValueError(f"--output {args.output}: benchmark build writes a CSV; give a path ending in .csv (the "
                         ".md and .png are written beside it)")
    check_output("--output", args.output)
    written = build(args.build[1:], args.output)
    print(Path(written["md"]).read_text())
    print(f"wrote {written['csv']}, {written['md']} and {written['png']}", file=sys.stderr)


def add_commands(sub) -> None:
    p = sub.add_parser("benchmark", help="evaluate models x datasets x tasks, one CLIP_benchmark JSON per run; "
                       "'benchmark build RESULTS... --output table.csv' aggregates them",
                       description="Run: zeroshot benchmark --models M1,M2 --datasets cifar10,flickr8k --tasks "
                       "zeroshot_classification,zeroshot_retrieval --output bench/. Aggregate: zeroshot benchmark "
                       "build bench/ --output bench.csv (CSV as clip_benchmark build writes it, plus .md and .png).")
    p.add_argument("build", nargs="*", metavar="build RESULTS",
                   help="'build' followed by result .json files or folders: aggregate them into --output")
    p.add_argument("--models", help=f"comma-separated models, each a {MODEL_HELP}; or a text file, one per line")
    p.add_argument("--datasets", help=f"comma-separated names ({', '.join(REGISTRY)}) or paths (with --card); or a "
                   "text file, one per line")
    p.add_argument("--tasks", default="zeroshot_classification",
                   help=f"comma-separated, from {', '.join(TASKS)}; each runs on the datasets that have it "
                        "(retrieval on caption folders)")
    p.add_argument("--output", required=True, help="a run's folder of result files; for build, the CSV path (.md "
                   "and .png are written beside it)")
    p.add_argument("--card", help="dataset card naming the classes of datasets given as paths")
    p.add_argument("--data-root", default=None, help="the folder dataset names point into (default: "
                   "$ZEROSHOT_SHARED_DATA or ../shared/data)")
    p.add_argument("--skip-existing", action="store_true",
                   help="keep result files already written for the same model weights (fingerprint) instead of "
                        "evaluating again")
    p.add_argument("--exclude-leaked", metavar="PAIRS_CSV",
                   help="leave out evaluation images listed in a 'zeroshot dedup --against' pairs.csv (e.g. found "
                        "in the training data)")
    p.add_argument("--shots", default="1,4,16", help="fewshot: shots per class")
    p.add_argument("--seeds", default="1,2,3", help="fewshot: seeds of the shot draws (the first also seeds "
                   "linear_probe's validation split)")
    add_decode_args(p)
    p.set_defaults(func=cmd_benchmark)
