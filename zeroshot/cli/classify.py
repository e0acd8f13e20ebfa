"""``zeroshot extract``, ``classify`` and ``eval``: features, zero-shot predictions and zero-shot accuracy."""
from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from .options import (add_class_args, add_engine_args, add_model_args, backbone_from_args, check_at_least, check_classes,
                      check_output, check_run_args, class_embeddings_from_args, extract_from_args, open_data,
                      report_failed)


def zero_shot_classifier(args, backbone, dataset_classes=None):
    """A fitted zero-shot classifier from ``--classes`` / ``--card`` with the backbone's logit scale."""
    from ..heads import ZeroShotClassifier

    names, W = class_embeddings_from_args(args, backbone, dataset_classes)
    return ZeroShotClassifier(logit_scale=backbone.logit_scale).fit(class_embeddings=W, class_names=names)


def zero_shot_eval(args, backbone, data):
    """(FeatureSet, fitted zero-shot classifier, CLIP_benchmark metrics with per-class recall) of labelled ``data``."""
    from ..metrics import classification_metrics

    fs = extract_from_args(args, backbone, data)
    clf = zero_shot_classifier(args, backbone, fs.classes)
    return fs, clf, classification_metrics(clf.decision_function(fs.features), fs.labels, clf.class_names_)


def cmd_extract(args) -> None:
    check_run_args(args)
    check_output("--output", args.output, folder=True)
    data = open_data(args.data)
    backbone = backbone_from_args(args)
    fs = extract_from_args(args, backbone, data)
    if args.output:
        fs.save(args.output)
    print(json.dumps({"n": len(fs), "dim": int(fs.features.shape[1]), "fingerprint": backbone.fingerprint,
                      "failed": fs.failed, "output": args.output}, indent=1))


def cmd_classify(args) -> None:
    check_run_args(args)
    check_at_least("--top-k", args.top_k)
    check_classes(args)
    check_output("--output", args.output)
    data = open_data(args.images)
    backbone = backbone_from_args(args)
    fs = extract_from_args(args, backbone, data)
    clf = zero_shot_classifier(args, backbone)
    proba = clf.predict_proba(fs.features)
    k = min(args.top_k, proba.shape[1])
    top = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    header = ["id", "prediction"] + [f"{kind}{j + 1}" for j in range(k) for kind in ("class", "score")]
    rows = [[i, clf.class_names_[t[0]]] + [v for j in t for v in (clf.class_names_[j], f"{p[j]:.4f}")]
            for i, t, p in zip(fs.ids, top, proba)]
    out = open(args.output, "w", newline="") if args.output else sys.stdout
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    if args.output:
        out.close()
        print(f"wrote {len(rows)} predictions to {args.output}", file=sys.stderr)
    report_failed(fs)


def cmd_eval(args) -> None:
    from ..metrics import plot_confusion_matrix, top_confusions
    from ..plotting import run_title

    start = time.perf_counter()
    check_run_args(args)
    out = Path(args.output or "eval")
    check_output("--output", out, folder=True)
    if args.task == "zeroshot_retrieval":
        return retrieval_eval(args, out, start)
    data = open_data(args.dataset)
    check_classes(args, data)
    backbone = backbone_from_args(args)
    fs, clf, metrics = zero_shot_eval(args, backbone, data)
    out.mkdir(parents=True, exist_ok=True)
    report = {"model": backbone.name, "fingerprint": backbone.fingerprint, "dataset": str(args.dataset),
              "card": args.card, "classes": clf.class_names_, "failed": fs.failed, **metrics,
              "seconds": round(time.perf_counter() - start, 3)}
    (out / "metrics.json").write_text(json.dumps(report, indent=1))
    with open(out / "top_confusions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["true", "predicted", "images", "share_of_true"])
        writer.writeheader()
        writer.writerows(top_confusions(metrics["confusion_matrix"], clf.class_names_))
    title = f"{run_title(args.card, args.dataset, backbone.name, backbone.fingerprint)}: top-1 {metrics['acc1']:.1%}"
    plot_confusion_matrix(metrics["confusion_matrix"], clf.class_names_, out / "confusion_matrix.png", title=title,
                          normalize=args.normalize)
    print(json.dumps({k: report[k] for k in ("model", "fingerprint", "dataset", "n", "acc1", "acc5",
                                             "mean_per_class_recall", "seconds")}, indent=1))
    print(f"wrote {out / 'metrics.json'}, confusion_matrix.png and top_confusions.csv", file=sys.stderr)
    report_failed(fs)


def retrieval_eval(args, out: Path, start: float) -> None:
    """``eval --task zeroshot_retrieval``: CLIP_benchmark's retrieval recall@1/5/10 on a caption folder."""
    from ..evaluation.retrieval import caption_dataset, evaluate_retrieval

    given = [flag for flag, value in (("--card", args.card), ("--classes", args.classes)) if value]
    if given:
        raise ValueError(f"{' and '.join(given)} name classes for zeroshot_classification; zeroshot_retrieval reads "
                         "the captions in the dataset folder: drop them")
    caption_dataset(args.dataset)  # a folder without captions.csv fails before the model loads
    backbone = backbone_from_args(args)
    metrics = evaluate_retrieval(backbone, args.dataset, cache_dir=args.cache_dir, extract_options={
        "batch_size": args.batch_size, "num_workers": args.workers, "progress": not args.quiet})
    out.mkdir(parents=True, exist_ok=True)
    report = {"task": args.task, "model": backbone.name, "fingerprint": backbone.fingerprint,
              "dataset": str(args.dataset), **metrics, "seconds": round(time.perf_counter() - start, 3)}
    (out / "metrics.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "failed"}, indent=1))
    print(f"wrote {out / 'metrics.json'}", file=sys.stderr)
    if metrics["failed"]:
        print(f"skipped {len(metrics['failed'])} file(s) that could not be decoded (listed in metrics.json)",
              file=sys.stderr)


def add_commands(sub) -> None:
    p = sub.add_parser("extract", help="encode a dataset into a cached FeatureSet")
    p.add_argument("data", help="image folder, .npz, .csv file list, or tar shards")
    p.add_argument("--output", help="also save the FeatureSet to this folder")
    add_model_args(p)
    add_engine_args(p, gpus=True, workers_help="Ray workers, each loading the model once (default: one per "
                    "--gpus-per-worker GPUs, else one per 2 CPUs of the cluster)")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("classify", help="zero-shot predictions for images (CSV)")
    p.add_argument("images", nargs="+", help="image files, a folder, .npz, .csv or tar shards")
    add_class_args(p, "comma-separated class names")
    p.add_argument("--top-k", type=int, default=5, help="classes (with scores) listed per image")
    p.add_argument("--output", help="CSV path (default: stdout)")
    add_model_args(p)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("eval", help="zero-shot accuracy on a labelled dataset (metrics.json + confusion PNG), or "
                       "image-text retrieval recall on a caption dataset (--task zeroshot_retrieval)")
    p.add_argument("--task", choices=("zeroshot_classification", "zeroshot_retrieval"),
                   default="zeroshot_classification",
                   help="zeroshot_classification: accuracy against --card/--classes; zeroshot_retrieval: "
                        "CLIP_benchmark's image->text and text->image recall@1/5/10 (--dataset is a folder with "
                        "images/ and captions.csv)")
    p.add_argument("--dataset", required=True, help="labelled images: class folders, .npz, .csv or tar shards; for "
                   "zeroshot_retrieval a folder holding images/ and captions.csv (columns image, caption)")
    add_class_args(p)
    p.add_argument("--output", help="output folder (default: ./eval)")
    p.add_argument("--normalize", choices=("rows", "none"), default="rows",
                   help="confusion_matrix.png cells: 'rows' = %% of the true class (classes of any size compare), "
                        "'none' = image counts (metrics.json always has the counts)")
    add_model_args(p)
    p.set_defaults(func=cmd_eval)
