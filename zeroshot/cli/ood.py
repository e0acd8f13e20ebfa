"""``zeroshot ood fit | score | eval | train-clipn``: OOD detectors from the command line."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

from ..evaluation.ood import (DETECTORS, FEATURE_DETECTORS, choose_detectors, fit_detector, run_detectors,
                              write_report)
from ..heads.registry import canonical_name
from ..plotting import dataset_label
from .options import (add_class_args, add_model_args, add_output_arg, backbone_from_args, check_classes, check_exists,
                      check_output, check_run_args, class_embeddings_from_args, classes_and_templates,
                      extract_from_args, open_data, report_failed)


def _class_side(args, backbone, dataset_classes=None) -> dict:
    """class_embeddings / no_class_embeddings / class_names for the text detectors, from --card/--classes and
    --negation."""
    if not (args.card or args.classes):
        return {}
    names, W = class_embeddings_from_args(args, backbone, dataset_classes)
    side = {"class_embeddings": W, "class_names": names}
    if getattr(args, "negation", None):
        from ..train.negation import NegationMap

        side["no_class_embeddings"] = NegationMap.load(args.negation, fingerprint=backbone.fingerprint)(W)
    return side


def cmd_fit(args) -> None:
    check_run_args(args)
    if args.detector in FEATURE_DETECTORS:
        if not args.id:
            raise ValueError(f"--detector {args.detector} is fitted on ID images: give --id ID_IMAGES")
        if not 0 <= args.calibration_fraction < 1:
            raise ValueError(f"--calibration-fraction must be in [0, 1), got {args.calibration_fraction}")
    check_output("--output", args.output, folder=True)
    check_exists("--negation", args.negation)
    id_data = open_data(args.id) if args.id else None
    check_classes(args, id_data, required=False)
    backbone = backbone_from_args(args)
    id_fs = extract_from_args(args, backbone, id_data) if id_data is not None else None
    calibration = id_fs
    train = None
    if args.detector in FEATURE_DETECTORS:
        held_out = np.random.default_rng(args.seed).random(len(id_fs)) < args.calibration_fraction
        train, calibration = id_fs.subset(np.flatnonzero(~held_out)), id_fs.subset(np.flatnonzero(held_out))
    side = _class_side(args, backbone, id_fs.classes if id_fs is not None else None)
    detector = fit_detector(args.detector, logit_scale=backbone.logit_scale, train=train, **side)
    n_calibration = len(calibration) if calibration is not None else 0
    if n_calibration:
        detector.calibrate(calibration.features, args.tpr)
    detector.save(args.output, fingerprint=backbone.fingerprint, model=backbone.name, detector=args.detector,
                  id_data=args.id, tpr=args.tpr if n_calibration else None, calibration_n=n_calibration)
    print(json.dumps({"detector": args.detector, "out": args.output, "fingerprint": backbone.fingerprint,
                      "threshold": detector.offset_, "tpr": args.tpr, "calibration_n": n_calibration}, indent=1))


def cmd_score(args) -> None:
    from ..heads import load_head

    check_run_args(args)
    check_exists("detector folder", args.detector)
    check_output("--output", args.output)
    data = open_data(args.images)
    backbone = backbone_from_args(args)
    detector = load_head(args.detector, fingerprint=backbone.fingerprint)
    if args.threshold is not None:
        detector.offset_ = args.threshold
    if detector.offset_ is None:
        raise ValueError(f"{args.detector} has no calibrated threshold (it was fitted without --id images): "
                         "pass --threshold, or refit it with --id")
    fs = extract_from_args(args, backbone, data)
    scores = detector.score_samples(fs.features)
    flagged = scores < np.float32(detector.offset_)  # exactly predict's -1, without scoring twice
    out = open(args.output, "w", newline="") if args.output else sys.stdout
    writer = csv.writer(out)
    writer.writerow(["id", "score", "flagged"])
    writer.writerows([i, f"{s:.7g}", int(f)] for i, s, f in zip(fs.ids, scores, flagged))
    if args.output:
        out.close()
        print(f"wrote {len(scores)} scores to {args.output}; {int(flagged.sum())} flagged as OOD "
              f"(score < {detector.offset_:.6g})", file=sys.stderr)
    report_failed(fs.failed)


def cmd_train_clipn(args) -> None:
    from ..train.negation import NegationConfig, caption_targets, class_prompt_targets, join_targets, train_negation

    if not (args.captions or args.id):
        raise ValueError("give --captions FOLDER (images/ + captions.csv) and/or --id labelled ID images with --card")
    check_run_args(args)
    check_output("--output", args.output, folder=True)
    check_exists("--captions", args.captions)
    caption_data = open_data(Path(args.captions) / "images") if args.captions else None
    id_data = open_data(args.id) if args.id else None
    if id_data is not None:
        check_classes(args, id_data)
    backbone = backbone_from_args(args)
    cache = args.cache_dir
    parts, sources = [], {}
    if caption_data is not None:
        folder = Path(args.captions)
        images = extract_from_args(args, backbone, caption_data)
        parts.append(caption_targets(images, folder / "captions.csv", backbone, first=args.first, cache_dir=cache))
        sources["captions"] = {"folder": str(folder), "first": args.first, "images": len(parts[-1][0]),
                               "captions": len(parts[-1][1].embeddings)}
    if id_data is not None:
        images = extract_from_args(args, backbone, id_data)
        names, templates = classes_and_templates(args, images.classes)
        parts.append(class_prompt_targets(images, names, templates, backbone, cache_dir=cache))
        sources["class_prompts"] = {"data": str(args.id), "images": len(images), "classes": names,
                                    "templates": len(templates)}
    features, targets = join_targets(*parts)
    config = NegationConfig(rank=args.rank, epochs=args.epochs, seed=args.seed)
    negation = train_negation(features, targets, logit_scale=backbone.logit_scale, config=config,
                              info={"fingerprint": backbone.fingerprint, "model": backbone.name, "data": sources})
    negation.save(args.output)
    info = negation.info
    best = min(info["history"], key=lambda r: r.get("val_total", 0))
    print(json.dumps({"out": args.output, "fingerprint": backbone.fingerprint, "images": info["n_images"],
                      "texts": info["n_texts"], "best_epoch": best, "seconds": info["seconds"]}, indent=1))


def cmd_eval(args) -> None:
    from ..heads import ZeroShotClassifier
    from ..metrics import classification_metrics
    from ..ood_metrics import markdown_table

    check_run_args(args)
    check_output("--output", args.output, folder=True)
    check_exists("--negation", args.negation)
    id_data = open_data(args.id)
    ood_data = {dataset_label(p): open_data(p) for p in args.ood.split(",") if p}
    train_data = open_data(args.train) if args.train else None
    check_classes(args, id_data, required=False)
    names, notes = choose_detectors(args.detectors, have_classes=bool(args.card or args.classes),
                                    have_train=train_data is not None, have_negation=bool(args.negation))
    backbone = backbone_from_args(args)
    id_fs = extract_from_args(args, backbone, id_data)
    ood = {label: extract_from_args(args, backbone, data).features for label, data in ood_data.items()}
    train = extract_from_args(args, backbone, train_data) if train_data is not None else None
    side = _class_side(args, backbone, id_fs.classes)
    rows, scores = run_detectors(names, id_fs.features, ood, logit_scale=backbone.logit_scale, train=train,
                                 progress=not args.quiet, **side)
    report = {"model": backbone.name, "fingerprint": backbone.fingerprint, "id": str(args.id), "card": args.card,
              "ood": args.ood.split(","), "train": args.train, "negation": args.negation, "skipped": notes}
    if "class_embeddings" in side and (np.asarray(id_fs.labels) >= 0).all():
        zero_shot = ZeroShotClassifier(logit_scale=backbone.logit_scale).fit(class_embeddings=side["class_embeddings"])
        report["id_zero_shot_acc1"] = classification_metrics(zero_shot.decision_function(id_fs.features),
                                                             id_fs.labels)["acc1"]
    write_report(Path(args.output), rows, scores, report)
    print(markdown_table(rows))
    for note in notes:
        print(note, file=sys.stderr)
    print(f"wrote results.json/.csv/.md, roc_*.png and hist_*.png to {args.output}", file=sys.stderr)


def add_commands(sub) -> None:
    ood = sub.add_parser("ood", help="out-of-distribution detection: fit, score, eval, train-clipn")
    ood_sub = ood.add_subparsers(dest="ood_command", required=True)

    p = ood_sub.add_parser("fit", help="fit one detector and save it (safetensors + JSON, with the fingerprint)")
    p.add_argument("--detector", required=True, type=canonical_name, choices=DETECTORS,
                   help="the detector to fit ('_' for '-' works too)")
    add_output_arg(p, "output folder of the saved detector")
    add_class_args(p, "comma-separated ID class names")
    p.add_argument("--id", help="ID images: training features of mahalanobis/knn (labels used when present) and "
                                "the calibration set of the threshold")
    p.add_argument("--negation", help="negation map folder from 'zeroshot ood train-clipn' (clipn-* detectors)")
    p.add_argument("--tpr", type=float, default=0.95, help="ID acceptance rate the saved threshold keeps")
    p.add_argument("--calibration-fraction", type=float, default=0.2,
                   help="share of --id held out to set the threshold of mahalanobis/knn (fitted on the rest)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --calibration-fraction split")
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
    p.add_argument("--train", help="ID training images for mahalanobis / relative-mahalanobis / knn")
    add_class_args(p, "comma-separated ID class names")
    p.add_argument("--negation", help="negation map folder for clipn-ctw / clipn-atd")
    p.add_argument("--detectors", default="all", help=f"'all' or a comma-separated subset of {', '.join(DETECTORS)}")
    p.add_argument("--output", default="ood_eval", help="output folder")
    add_model_args(p)
    p.set_defaults(func=cmd_eval)

    p = ood_sub.add_parser("train-clipn", help="train a CLIPN-style negation map on captions and/or class prompts")
    add_output_arg(p, "output folder (negation.safetensors + negation.json)")
    p.add_argument("--captions", help="folder with images/ and captions.csv (image,caption_idx,caption)")
    p.add_argument("--first", type=int, default=None,
                   help="use only the first N caption images by sorted name (800 for ../shared/data/flickr8k_1k: "
                        "the default model holds out the last 200)")
    p.add_argument("--id", help="labelled ID images, paired with their class prompts (needs --card or --classes)")
    add_class_args(p, "comma-separated ID class names")
    p.add_argument("--rank", type=int, default=64, help="rank of the negation map's low-rank update")
    p.add_argument("--epochs", type=int, default=40, help="training epochs")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation, validation split and shuffling")
    add_model_args(p)
    p.set_defaults(func=cmd_train_clipn)
