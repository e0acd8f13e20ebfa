"""``zeroshot extract``, ``classify`` and ``eval``: features, zero-shot predictions and zero-shot accuracy."""
from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from .options import (add_class_args, add_engine_args, add_model_args, backbone_from_args, check_at_least, check_classes,
                      check_exists, check_output, check_run_args, class_embeddings_from_args, classes_and_templates,
                      extract_from_args, extract_options, open_data, report_failed)


def zero_shot_classifier(args, backbone, dataset_classes=None):
    """A fitted zero-shot classifier from ``--classes`` / ``--card`` with the backbone's logit scale."""
    from ..heads import ZeroShotClassifier

    names, W = class_embeddings_from_args(args, backbone, dataset_classes)
    return ZeroShotClassifier(logit_scale=backbone.logit_scale).fit(class_embeddings=W, class_names=names)


def zero_shot_eval(args, backbone, data):
    """(FeatureSet, class names, CLIP_benchmark metrics with per-class recall) of labelled ``data``; from cached
    features and text this imports neither torch nor scikit-learn."""
    from ..metrics import zero_shot_metrics

    fs = extract_from_args(args, backbone, data)
    names, W = class_embeddings_from_args(args, backbone, fs.classes)
    return fs, names, zero_shot_metrics(fs.features, fs.labels, W, backbone.logit_scale, names)


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
    from ..runtime import is_exported

    check_run_args(args)
    check_at_least("--top-k", args.top_k)
    check_output("--output", args.output)
    if is_exported(args.model):
        return exported_classify(args)
    check_classes(args)
    data = open_data(args.images)
    targets = labelled_targets(args, data)
    backbone = backbone_from_args(args)
    fs = extract_from_args(args, backbone, data)
    if args.multi_label:
        return multilabel_classify(args, backbone, fs, targets)
    clf = zero_shot_classifier(args, backbone)
    write_predictions(args.output, *top_k_rows(fs.ids, clf.predict_proba(fs.features), clf.class_names_, args.top_k))
    report_failed(fs.failed)


def exported_classify(args) -> None:
    """``classify --model EXPORTED``: the same CSV from a ``zeroshot export`` folder through ONNX Runtime, with no
    torch; its label set, or ``--classes`` / ``--card`` through its text tower. Nothing is cached but the text."""
    from ..runtime import load_exported

    unsupported = [flag for flag, given in (("--multi-label", args.multi_label), ("--targets", args.targets),
                                            ("--precision", args.precision != "fp32"),
                                            ("--device", args.device not in (None, "cpu")))
                   if given]
    if unsupported:
        raise ValueError(f"{' and '.join(unsupported)}: not available with an exported model ({args.model} runs on "
                         "the CPU in fp32, or int8 when exported so); drop them, or use the source model")
    model = load_exported(args.model, decode=args.decode)
    classes, templates = classes_and_templates(args) if args.classes or args.card else (None, None)
    data = open_data(args.images)
    names, W = model.label_set(classes, templates, cache_dir=args.cache_dir)
    ids, features, failed = model.encode_dataset(data, batch_size=args.batch_size or 32, workers=args.workers)
    if not ids and failed:
        raise OSError(f"none of the {len(failed)} file(s) of {data.location} could be decoded; check that they "
                      "are image files (JPEG, PNG, WebP ...) and readable")
    write_predictions(args.output, *top_k_rows(ids, model.predict_proba(features, W), names, args.top_k))
    report_failed(failed)


def top_k_rows(ids, proba: np.ndarray, names: list[str], top_k: int) -> tuple[list[str], list[list]]:
    """The prediction CSV's header and rows: id, best class, then the top k classes with their probabilities."""
    k = min(top_k, proba.shape[1])
    top = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    header = ["id", "prediction"] + [f"{kind}{j + 1}" for j in range(k) for kind in ("class", "score")]
    rows = [[i, names[t[0]]] + [v for j in t for v in (names[j], f"{p[j]:.4f}")] for i, t, p in zip(ids, top, proba)]
    return header, rows


def write_predictions(output: str | None, header: list[str], rows: list[list]) -> None:
    """One CSV row per image to ``output``, or to stdout without it."""
    out = open(output, "w", newline="") if output else sys.stdout
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    if output:
        out.close()
        print(f"wrote {len(rows)} predictions to {output}", file=sys.stderr)


def labelled_targets(args, data) -> tuple[list[str], np.ndarray] | None:
    """``--targets`` as (image ids, (N, C) 0/1), read and checked against the classes and the images before the model
    loads; None without it."""
    if args.targets is None:
        return None
    if not args.multi_label:
        raise ValueError("--targets labels images for --multi-label: add --multi-label or drop --targets")
    from ..evaluation.multilabel import align_targets, read_targets

    check_exists("--targets", args.targets)
    ids, Y = read_targets(args.targets, classes_and_templates(args)[0])
    align_targets(data.ids, ids, Y)  # a target naming none of the images fails now
    return ids, Y


def multilabel_classify(args, backbone, fs, targets: tuple[list[str], np.ndarray] | None) -> None:
    """``classify --multi-label``: per image the classes predicted present and every class's probability (CSV). The
    per-class sigmoids are fitted on these images unlabelled, or with ``--targets`` on the labelled ones (Platt
    scaling, F1-best thresholds), whose mAP and per-class AP are then printed."""
    from ..evaluation.multilabel import align_targets, multilabel_metrics
    from ..heads.multilabel import MultiLabelZeroShot

    names, W = class_embeddings_from_args(args, backbone)
    clf = MultiLabelZeroShot(logit_scale=backbone.logit_scale)
    X = np.asarray(fs.features)
    if targets is None:
        clf.fit(X, class_embeddings=W, class_names=names)
    else:
        labelled, Y = align_targets(fs.ids.tolist(), *targets, strict=False)  # images that failed to decode drop out
        clf.fit(X[labelled], Y, class_embeddings=W, class_names=names)
    proba, present = clf.predict_proba(X), clf.predict(X)
    rows = [[i, ";".join(n for n, flag in zip(names, flags) if flag), *(f"{v:.4f}" for v in p)]
            for i, flags, p in zip(fs.ids.tolist(), present, proba)]
    write_predictions(args.output, ["id", "present", *names], rows)
    if targets is not None:
        metrics = multilabel_metrics(clf.decision_function(X[labelled]), Y, names)
        print(f"mAP {metrics['mean_average_precision']:.1%} on {len(labelled)} labelled images (random scores: "
              f"{metrics['chance_mean_average_precision']:.1%}); per class, AP (positive images):", file=sys.stderr)
        for name, ap in sorted(metrics["per_class_average_precision"].items(), key=lambda item: -item[1]):
            print(f"  {name}: {ap:.1%} ({metrics['positives_per_class'][name]})", file=sys.stderr)
    report_failed(fs.failed)


def cmd_eval(args) -> None:
    from ..metrics import plot_confusion_matrix, top_confusions
    from ..plotting import run_title

    start = time.perf_counter()
    check_run_args(args)
    out = Path(args.output or "eval")
    check_output("--output", out, folder=True)
    if args.multi_label:
        return multilabel_eval(args, out, start)
    if args.task == "zeroshot_retrieval":
        return retrieval_eval(args, out, start)
    data = open_data(args.dataset)
    check_classes(args, data)
    backbone = backbone_from_args(args)
    fs, names, metrics = zero_shot_eval(args, backbone, data)
    out.mkdir(parents=True, exist_ok=True)
    report = {"model": backbone.name, "fingerprint": backbone.fingerprint, "dataset": str(args.dataset),
              "card": args.card, "classes": names, "failed": fs.failed, **metrics,
              "seconds": round(time.perf_counter() - start, 3)}
    (out / "metrics.json").write_text(json.dumps(report, indent=1))
    with open(out / "top_confusions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["true", "predicted", "images", "share_of_true"])
        writer.writeheader()
        writer.writerows(top_confusions(metrics["confusion_matrix"], names))
    title = f"{run_title(args.card, args.dataset, backbone.name, backbone.fingerprint)}: top-1 {metrics['acc1']:.1%}"
    plot_confusion_matrix(metrics["confusion_matrix"], names, out / "confusion_matrix.png", title=title,
                          normalize=args.normalize)
    print(json.dumps({k: report[k] for k in ("model", "fingerprint", "dataset", "n", "acc1", "acc5",
                                             "mean_per_class_recall", "seconds")}, indent=1))
    print(f"wrote {out / 'metrics.json'}, confusion_matrix.png and top_confusions.csv", file=sys.stderr)
    report_failed(fs.failed)


def retrieval_eval(args, out: Path, start: float) -> None:
    """``eval --task zeroshot_retrieval``: CLIP_benchmark's retrieval recall@1/5/10 on a caption folder."""
    from ..evaluation.retrieval import caption_dataset, evaluate_retrieval

    given = [flag for flag, value in (("--card", args.card), ("--classes", args.classes)) if value]
    if given:
        raise ValueError(f"{' and '.join(given)} name classes for zeroshot_classification; zeroshot_retrieval reads "
                         "the captions in the dataset folder: drop them")
    caption_dataset(args.dataset)  # a folder without captions.csv fails before the model loads
    backbone = backbone_from_args(args)
    metrics = evaluate_retrieval(backbone, args.dataset, cache_dir=args.cache_dir,
                                 extract_options=extract_options(args))
    out.mkdir(parents=True, exist_ok=True)
    report = {"task": args.task, "model": backbone.name, "fingerprint": backbone.fingerprint,
              "dataset": str(args.dataset), **metrics, "seconds": round(time.perf_counter() - start, 3)}
    (out / "metrics.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "failed"}, indent=1))
    print(f"wrote {out / 'metrics.json'}", file=sys.stderr)
    note_failed(metrics["failed"])


def multilabel_eval(args, out: Path, start: float) -> None:
    """``eval --multi-label``: CLIP_benchmark's mean average precision on a caption folder, each image's targets the
    classes its captions mention (:func:`~zeroshot.evaluation.multilabel.caption_concept_targets`)."""
    from ..evaluation.multilabel import evaluate_multilabel, plot_average_precision
    from ..evaluation.retrieval import caption_dataset
    from ..plotting import run_title

    if args.task != "zeroshot_classification":
        raise ValueError(f"--multi-label scores classes (zeroshot_classification), not {args.task}: drop --task or "
                         "--multi-label")
    names, templates = classes_and_templates(args)
    caption_dataset(args.dataset)  # a folder without captions fails before the model loads
    backbone = backbone_from_args(args)
    metrics = evaluate_multilabel(backbone, args.dataset, names, templates, cache_dir=args.cache_dir,
                                  extract_options=extract_options(args))
    out.mkdir(parents=True, exist_ok=True)
    report = {"task": args.task, "multi_label": True, "model": backbone.name, "fingerprint": backbone.fingerprint,
              "dataset": str(args.dataset), "card": args.card, "classes": names, **metrics,
              "seconds": round(time.perf_counter() - start, 3)}
    (out / "metrics.json").write_text(json.dumps(report, indent=1))
    title = (f"{run_title(args.card, args.dataset, backbone.name, backbone.fingerprint)}: "
             f"mAP {metrics['mean_average_precision']:.1%}")
    plot_average_precision(metrics, metrics["n_images"], out / "average_precision.png", title=title)
    print(json.dumps({k: report[k] for k in ("model", "fingerprint", "dataset", "n_images", "n_classes",
                                             "mean_average_precision", "chance_mean_average_precision", "seconds")},
                     indent=1))
    print(f"wrote {out / 'metrics.json'} and average_precision.png", file=sys.stderr)
    note_failed(metrics["failed"])


def note_failed(failed: dict) -> None:
    """How many files an evaluation skipped, on stderr (metrics.json lists them)."""
    if failed:
        print(f"skipped {len(failed)} file(s) that could not be decoded (listed in metrics.json)", file=sys.stderr)


def add_commands(sub) -> None:
    p = sub.add_parser("extract", help="encode a dataset into a cached FeatureSet")
    p.add_argument("data", help="image folder, .npz, .csv file list, or tar shards")
    p.add_argument("--output", help="also save the FeatureSet to this folder")
    add_model_args(p)
    add_engine_args(p, gpus=True, workers_help="Ray workers, each loading the model once (default: one per "
                    "--gpus-per-worker GPUs, else one per 2 CPUs of the cluster)")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("classify", help="zero-shot predictions for images (CSV)",
                       description="Zero-shot predictions for images (CSV). --model may also be a folder made by "
                       "`zeroshot export`: it then runs on ONNX Runtime without torch, with its own label set or, if "
                       "exported with its text tower, any --classes / --card.")
    p.add_argument("images", nargs="+", help="image files, a folder, .npz, .csv or tar shards")
    add_class_args(p, "comma-separated class names")
    p.add_argument("--top-k", type=int, default=5, help="classes (with scores) listed per image")
    p.add_argument("--multi-label", action="store_true",
                   help="score every class on its own (per-class sigmoid, no softmax): the CSV lists per image the "
                        "classes present and each class's probability; without --targets each class is calibrated "
                        "on these images, predicted present on about 10%% of them (--top-k is not used)")
    p.add_argument("--targets", metavar="FILE",
                   help="with --multi-label: labels for (some of) these images, a CSV with a header "
                   "'id,<class>,<class>...' and 0/1 per class, or a caption folder / captions.csv (a class is present "
                   "when a caption mentions it); fits the calibration and F1-best thresholds on them and prints "
                   "their mAP and per-class AP")
    p.add_argument("--output", help="CSV path (default: stdout)")
    add_model_args(p)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("eval", help="zero-shot accuracy on a labelled dataset (metrics.json + confusion PNG), "
                       "image-text retrieval recall on a caption dataset (--task zeroshot_retrieval), or multi-label "
                       "mAP on a caption dataset (--multi-label)")
    p.add_argument("--task", choices=("zeroshot_classification", "zeroshot_retrieval"),
                   default="zeroshot_classification",
                   help="zeroshot_classification: accuracy against --card/--classes; zeroshot_retrieval: "
                        "CLIP_benchmark's image->text and text->image recall@1/5/10 (--dataset is a folder with "
                        "images/ and captions.csv)")
    p.add_argument("--dataset", required=True, help="labelled images: class folders, .npz, .csv or tar shards; for "
                   "zeroshot_retrieval and --multi-label a folder holding images/ and captions.csv (columns image, "
                   "caption)")
    add_class_args(p)
    p.add_argument("--multi-label", action="store_true",
                   help="multi-label zeroshot_classification: CLIP_benchmark's mean average precision (+ per-class AP "
                        "and average_precision.png) on a caption folder (images/ + captions.csv), an image's "
                        "targets being the classes its captions mention, e.g. --card flickr8k_concepts")
    p.add_argument("--output", help="output folder (default: ./eval)")
    p.add_argument("--normalize", choices=("rows", "none"), default="rows",
                   help="confusion_matrix.png cells: 'rows' = %% of the true class (classes of any size compare), "
                        "'none' = image counts (metrics.json always has the counts)")
    add_model_args(p)
    p.set_defaults(func=cmd_eval)
