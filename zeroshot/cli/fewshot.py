"""``zeroshot fewshot``: the few-shot protocol (k shots per class per seed, every head, accuracy vs shots)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..evaluation.fewshot import HEAD_NAMES
from .options import (add_class_args, add_model_args, backbone_from_args, check_at_least, check_classes,
                      check_output, check_run_args, class_embeddings_from_args, extract_from_args, int_list,
                      open_data, report_failed)


def cmd_fewshot(args) -> None:
    from ..evaluation.fewshot import markdown_table, run_fewshot, split_per_class, write_report
    from ..plotting import run_title

    if (args.support is None) == (args.support_per_class is None):
        raise ValueError("give --support DATASET (shots drawn from it) or --support-per-class N (split --dataset)")
    check_run_args(args)
    check_at_least("--support-per-class", args.support_per_class)
    shots, seeds = int_list(args.shots), int_list(args.seeds)
    check_at_least("--shots", min(shots, default=1))
    check_output("--output", args.output, folder=True)
    test_data = open_data(args.dataset)
    support_data = open_data(args.support) if args.support else None
    check_classes(args, test_data)
    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    backbone = backbone_from_args(args)
    test = extract_from_args(args, backbone, test_data)
    report_failed(test.failed)
    if support_data is not None:
        support = extract_from_args(args, backbone, support_data)
        report_failed(support.failed)
        if support.classes != test.classes:
            raise ValueError(f"{args.support} and {args.dataset} list different classes")
    else:
        labelled = test.subset(np.flatnonzero(test.labels >= 0))
        support_rows, test_rows = split_per_class(labelled.labels, args.support_per_class)
        support, test = labelled.subset(support_rows), labelled.subset(test_rows)
    test = test.subset(np.flatnonzero(test.labels >= 0))
    support = support.subset(np.flatnonzero(support.labels >= 0))
    names, W = class_embeddings_from_args(args, backbone, test.classes)
    rows = run_fewshot(np.asarray(support.features), support.labels, np.asarray(test.features), test.labels, W,
                       shots=shots, seeds=seeds, heads=heads, logit_scale=backbone.logit_scale,
                       progress=not args.quiet)
    meta = {"model": backbone.name, "fingerprint": backbone.fingerprint, "dataset": str(args.dataset),
            "support": args.support or f"first {args.support_per_class} per class of the dataset",
            "card": args.card, "classes": names, "n_support_pool": len(support), "n_test": len(test),
            "shots": shots, "seeds": seeds, "heads": heads}
    summary = write_report(rows, args.output, meta,
                           title=run_title(args.card, args.dataset, backbone.name, backbone.fingerprint))
    print(f"# model {backbone.name}, fingerprint {backbone.fingerprint}, dataset {args.dataset}, seeds {seeds}")
    print(markdown_table(summary))
    print(f"wrote {Path(args.output) / 'rows.csv'}, summary.json and accuracy_vs_shots.png", file=sys.stderr)


def add_commands(sub) -> None:
    p = sub.add_parser("fewshot", help="few-shot protocol: k shots per class per seed, every head, accuracy vs shots")
    p.add_argument("--dataset", required=True,
                   help="test images (split with --support-per-class if it is the only split)")
    p.add_argument("--support", help="images the shots are drawn from, e.g. the train split")
    p.add_argument("--support-per-class", type=int,
                   help="split --dataset: its first N images per class are the support pool, the rest the test set")
    add_class_args(p)
    p.add_argument("--shots", default="1,2,4,8,16", help="comma-separated shots per class")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (shot sampling and validation splits)")
    p.add_argument("--heads", default=",".join(HEAD_NAMES),
                   help="comma-separated heads to run, any of the default's ('_' for '-' works too)")
    p.add_argument("--output", default="fewshot", help="output folder")
    add_model_args(p)
    p.set_defaults(func=cmd_fewshot)
