"""``zeroshot ood ...``: fit, score with and evaluate OOD detectors, and train the CLIPN-style negation map.

The top half builds detectors by name (shared with ``scripts/bench_ood.py``); the bottom half is the commands.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

import numpy as np

DETECTORS = ("mcm", "maxlogit", "energy", "mahalanobis", "relative_mahalanobis", "knn", "clipn_ctw", "clipn_atd")
FEATURE_DETECTORS = ("mahalanobis", "relative_mahalanobis", "knn")  # fitted on ID image features
CLIPN_DETECTORS = ("clipn_ctw", "clipn_atd")  # need a negation map


def fit_detector(name: str, *, logit_scale: float, classes=None, no_classes=None, class_names=None,
                 train=None):
    """A fitted detector by name: text detectors from ``classes`` (+ ``no_classes`` for CLIPN), feature detectors
    from the ``train`` FeatureSet (its labels feed Mahalanobis when every row has one)."""
    from .heads import CLIPN, KNN, MCM, Energy, Mahalanobis, MaxLogit, RelativeMahalanobis

    if name in FEATURE_DETECTORS:
        if train is None:
            raise ValueError(f"detector {name} is fitted on ID image features: give ID training images")
        labels = np.asarray(train.labels)
        detector = {"mahalanobis": Mahalanobis, "relative_mahalanobis": RelativeMahalanobis, "knn": KNN}[name]()
        return detector.fit(train.features, labels if len(labels) and (labels >= 0).all() else None)
    if classes is None:
        raise ValueError(f"detector {name} scores against class text embeddings: give ID class names")
    if name in CLIPN_DETECTORS:
        if no_classes is None:
            raise ValueError(f"detector {name} needs a negation map (train one with 'zeroshot ood train-clipn')")
        return CLIPN(name.split("_")[1], logit_scale).fit(classes=classes, no_classes=no_classes,
                                                         class_names=class_names)
    detector = {"mcm": MCM(), "maxlogit": MaxLogit(), "energy": Energy(logit_scale=logit_scale)}[name]
    return detector.fit(classes=classes, class_names=class_names)


def choose_detectors(spec: str, *, have_classes: bool, have_train: bool,
                     have_negation: bool) -> tuple[list[str], list[str]]:
    """(detectors to run, notes on the ones 'all' leaves out): 'all' means every detector the inputs allow."""
    if spec != "all":
        names = [n.strip() for n in spec.split(",") if n.strip()]
        unknown = [n for n in names if n not in DETECTORS]
        if unknown:
            raise ValueError(f"unknown detectors {unknown}; choose from {', '.join(DETECTORS)} or 'all'")
        return names, []
    names, notes = [], []
    for name in DETECTORS:
        if name not in FEATURE_DETECTORS and not have_classes:
            notes.append(f"{name}: skipped, needs --card or --classes")
        elif name in FEATURE_DETECTORS and not have_train:
            notes.append(f"{name}: skipped, needs --train ID images")
        elif name in CLIPN_DETECTORS and not have_negation:
            notes.append(f"{name}: skipped, needs --negation (zeroshot ood train-clipn)")
        else:
            names.append(name)
    return names, notes


def dataset_label(path: str) -> str:
    """A short name for a dataset path: its last two components (``mnist_rgb/test.npz``)."""
    return "/".join(Path(str(path).rstrip("/")).parts[-2:])


# --- commands -------------------------------------------------------------------------------------------------


def _class_side(args, backbone, dataset_classes=None) -> dict:
    """classes / no_classes / class_names for the text detectors, from --card/--classes and --negation."""
    from . import class_embeddings, default_cache_dir
    from .cli import classes_and_templates

    if not (args.card or args.classes):
        return {}
    names, templates = classes_and_templates(args, dataset_classes)
    W = class_embeddings(backbone, names, templates, cache_dir=args.cache_dir or default_cache_dir())
    side = {"classes": W, "class_names": names}
    if getattr(args, "negation", None):
        from .clipn_train import NegationMap

        side["no_classes"] = NegationMap.load(args.negation, fingerprint=backbone.fingerprint)(W)
    return side


def cmd_fit(args) -> None:
    from .cli import backbone_from_args, extract_from_args
    from .ood_metrics import threshold_at_tpr

    backbone = backbone_from_args(args)
    id_fs = extract_from_args(args, backbone, args.id) if args.id else None
    calibration = id_fs
    train = None
    if args.detector in FEATURE_DETECTORS:
        if id_fs is None:
            raise ValueError(f"--detector {args.detector} is fitted on ID images: give --id ID_IMAGES")
        if not 0 <= args.calibration_fraction < 1:
            raise ValueError(f"--calibration-fraction must be in [0, 1), got {args.calibration_fraction}")
        held_out = np.random.default_rng(args.seed).random(len(id_fs)) < args.calibration_fraction
        train, calibration = id_fs.subset(np.flatnonzero(~held_out)), id_fs.subset(np.flatnonzero(held_out))
    side = _class_side(args, backbone, id_fs.classes if id_fs is not None else None)
    detector = fit_detector(args.detector, logit_scale=backbone.logit_scale, train=train, **side)
    n_calibration = len(calibration) if calibration is not None else 0
    threshold = threshold_at_tpr(detector.score_samples(calibration.features), args.tpr) if n_calibration else None
    detector.save(args.out, fingerprint=backbone.fingerprint, model=backbone.name, detector=args.detector,
                  id_data=args.id, threshold=threshold, tpr=args.tpr, calibration_n=n_calibration)
    print(json.dumps({"detector": args.detector, "out": args.out, "fingerprint": backbone.fingerprint,
                      "threshold": threshold, "tpr": args.tpr, "calibration_n": n_calibration}, indent=1))


def cmd_score(args) -> None:
    from .cli import backbone_from_args, extract_from_args, report_failed
    from .heads import load_head
    from .heads._base import HEAD_JSON

    backbone = backbone_from_args(args)
    detector = load_head(args.detector, fingerprint=backbone.fingerprint)
    threshold = args.threshold
    if threshold is None:
        threshold = json.loads((Path(args.detector) / HEAD_JSON).read_text()).get("threshold")
    if threshold is None:
        raise ValueError(f"{args.detector} has no calibrated threshold (it was fitted without --id images): "
                         "pass --threshold, or refit it with --id")
    fs = extract_from_args(args, backbone, args.images if len(args.images) > 1 else args.images[0])
    scores = detector.score_samples(fs.features)
    out = open(args.output, "w", newline="") if args.output else sys.stdout
    writer = csv.writer(out)
    writer.writerow(["id", "score", "flagged"])
    writer.writerows([i, f"{s:.7g}", int(s < threshold)] for i, s in zip(fs.ids, scores))
    if args.output:
        out.close()
        print(f"wrote {len(scores)} scores to {args.output}; {int((scores < threshold).sum())} flagged as OOD "
              f"(score < {threshold:.6g})", file=sys.stderr)
    report_failed(fs)


def cmd_train_clipn(args) -> None:
    from . import default_cache_dir
    from .cli import backbone_from_args, classes_and_templates, extract_from_args
    from .clipn_train import NegationConfig, caption_targets, class_prompt_targets, join_targets, train_negation

    if not (args.captions or args.id):
        raise ValueError("give --captions FOLDER (images/ + captions.csv) and/or --id labelled ID images with --card")
    backbone = backbone_from_args(args)
    cache = args.cache_dir or default_cache_dir()
    parts, sources = [], {}
    if args.captions:
        folder = Path(args.captions)
        images = extract_from_args(args, backbone, folder / "images")
        parts.append(caption_targets(images, folder / "captions.csv", backbone, first=args.first, cache_dir=cache))
        sources["captions"] = {"folder": str(folder), "first": args.first, "images": len(parts[-1][0]),
                               "captions": len(parts[-1][1].embeddings)}
    if args.id:
        images = extract_from_args(args, backbone, args.id)
        names, templates = classes_and_templates(args, images.classes)
        parts.append(class_prompt_targets(images, names, templates, backbone, cache_dir=cache))
        sources["class_prompts"] = {"data": str(args.id), "images": len(images), "classes": names,
                                    "templates": len(templates)}
    features, targets = join_targets(*parts)
    config = NegationConfig(rank=args.rank, epochs=args.epochs, seed=args.seed)
    negation = train_negation(features, targets, logit_scale=backbone.logit_scale, config=config,
                              info={"fingerprint": backbone.fingerprint, "model": backbone.name, "data": sources})
    negation.save(args.out)
    info = negation.info
    best = min(info["history"], key=lambda r: r.get("val_total", 0))
    print(json.dumps({"out": args.out, "fingerprint": backbone.fingerprint, "images": info["n_images"],
                      "texts": info["n_texts"], "best_epoch": best, "seconds": info["seconds"]}, indent=1))


def cmd_eval(args) -> None:
    from .cli import backbone_from_args, extract_from_args
    from .heads import ZeroShotClassifier
    from .metrics import classification_metrics
    from .ood_metrics import evaluate_detectors, markdown_table

    backbone = backbone_from_args(args)
    id_fs = extract_from_args(args, backbone, args.id)
    ood = {dataset_label(p): extract_from_args(args, backbone, p).features for p in args.ood.split(",") if p}
    train = extract_from_args(args, backbone, args.train) if args.train else None
    names, notes = choose_detectors(args.detectors, have_classes=bool(args.card or args.classes),
                                    have_train=train is not None, have_negation=bool(args.negation))
    side = _class_side(args, backbone, id_fs.classes)
    detectors = {n: fit_detector(n, logit_scale=backbone.logit_scale, train=train, **side) for n in names}
    rows, scores = evaluate_detectors(detectors, id_fs.features, ood)
    report = {"model": backbone.name, "fingerprint": backbone.fingerprint, "id": str(args.id),
              "ood": args.ood.split(","), "train": args.train, "negation": args.negation, "skipped": notes}
    if "classes" in side and (np.asarray(id_fs.labels) >= 0).all():
        zero_shot = ZeroShotClassifier(logit_scale=backbone.logit_scale).fit(classes=side["classes"])
        report["id_zero_shot_acc1"] = classification_metrics(zero_shot.decision_function(id_fs.features),
                                                             id_fs.labels)["acc1"]
    write_report(Path(args.output), rows, scores, report)
    print(markdown_table(rows))
    for note in notes:
        print(note, file=sys.stderr)
    print(f"wrote results.json/.csv/.md, roc_*.png and hist_*.png to {args.output}", file=sys.stderr)


def write_report(out: Path, rows: list[dict], scores: dict, meta: dict) -> None:
    """results.json (meta + rows), results.csv, results.md, one ROC PNG per OOD set, one histogram PNG per detector."""
    from .ood_metrics import markdown_table, plot_roc, plot_score_histograms, roc_curve

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({**meta, "results": rows}, indent=1))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.md").write_text(markdown_table(rows) + "\n")
    for ood_name in dict.fromkeys(r["ood"] for r in rows):
        curves = {d: roc_curve(s["ID"], s[ood_name])[:2] for d, s in scores.items()}
        plot_roc(curves, out / f"roc_{_slug(ood_name)}.png", title=f"ID {dataset_label(meta['id'])} vs {ood_name}")
    for detector, per_set in scores.items():
        plot_score_histograms(per_set, out / f"hist_{_slug(detector)}.png", title=detector)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def add_commands(sub) -> None:
    from .cli import add_model_args

    ood = sub.add_parser("ood", help="out-of-distribution detection: fit, score, eval, train-clipn")
    ood_sub = ood.add_subparsers(dest="ood_command", required=True)

    def class_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--card", help="dataset card of the ID classes (names + templates), e.g. cifar10")
        p.add_argument("--classes", help="comma-separated ID class names")

    p = ood_sub.add_parser("fit", help="fit one detector and save it (safetensors + JSON, with the fingerprint)")
    p.add_argument("--detector", required=True, choices=DETECTORS)
    p.add_argument("--out", required=True, help="output folder of the saved detector")
    class_args(p)
    p.add_argument("--id", help="ID images: training features of mahalanobis/knn (labels used when present) and "
                                "the calibration set of the threshold")
    p.add_argument("--negation", help="negation map folder from 'zeroshot ood train-clipn' (clipn_* detectors)")
    p.add_argument("--tpr", type=float, default=0.95, help="ID acceptance rate the saved threshold keeps")
    p.add_argument("--calibration-fraction", type=float, default=0.2,
                   help="share of --id held out to set the threshold of mahalanobis/knn (fitted on the rest)")
    p.add_argument("--seed", type=int, default=0)
    add_model_args(p)
    p.set_defaults(func=cmd_fit)

    p = ood_sub.add_parser("score", help="CSV of id, score (higher = more ID), flagged (1 = below the threshold)")
    p.add_argument("detector", help="folder written by 'zeroshot ood fit'")
    p.add_argument("images", nargs="+", help="image files, a folder, .npz, .csv or tar shards")
    p.add_argument("--threshold", type=float, help="override the threshold saved with the detector")
    p.add_argument("--output", help="CSV path (default: stdout)")
    add_model_args(p)
    p.set_defaults(func=cmd_score)

    p = ood_sub.add_parser("eval", help="AUROC / FPR95 / AUPR table of detectors, ROC and histogram PNGs")
    p.add_argument("--id", required=True, help="ID test images")
    p.add_argument("--ood", required=True, help="comma-separated OOD datasets")
    p.add_argument("--train", help="ID training images for mahalanobis / relative_mahalanobis / knn")
    class_args(p)
    p.add_argument("--negation", help="negation map folder for clipn_ctw / clipn_atd")
    p.add_argument("--detectors", default="all", help=f"'all' or a comma-separated subset of {', '.join(DETECTORS)}")
    p.add_argument("--output", default="ood_eval", help="output folder (default: ./ood_eval)")
    add_model_args(p)
    p.set_defaults(func=cmd_eval)

    p = ood_sub.add_parser("train-clipn", help="train a CLIPN-style negation map on captions and/or class prompts")
    p.add_argument("--out", required=True, help="output folder (negation.safetensors + negation.json)")
    p.add_argument("--captions", help="folder with images/ and captions.csv (image,caption_idx,caption)")
    p.add_argument("--first", type=int, default=None,
                   help="use only the first N caption images by sorted name (800 for ../shared/data/flickr8k_1k: "
                        "the default model holds out the last 200)")
    p.add_argument("--id", help="labelled ID images, paired with their class prompts (needs --card or --classes)")
    class_args(p)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    add_model_args(p)
    p.set_defaults(func=cmd_train_clipn)
