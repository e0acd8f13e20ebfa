"""``zeroshot`` command line: a thin layer over the Python API."""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from importlib import import_module
from pathlib import Path

import numpy as np

# Modules outside this file that contribute sub-commands (few-shot, OOD, retrieval).
COMMAND_MODULES: tuple[str, ...] = ("retrieval_cli", "ood", "fewshot")


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Options every command that runs a model shares."""
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--cache-dir", default=None, help="feature cache (default: $ZEROSHOT_CACHE or ~/.cache/zeroshot)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=os.environ.get("ZEROSHOT_MODEL", "default"),
                   help="model folder, local-dir:PATH, open_clip NAME[/PRETRAINED], or 'default' (the shipped "
                        "offline model; $ZEROSHOT_MODEL overrides)")
    p.add_argument("--decode", default="exact", choices=["exact", "draft"],
                   help="draft: JPEG DCT-scaled decoding, faster, pixels differ slightly (own cache)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader decode workers")
    add_run_args(p)


def backbone_from_args(args):
    from . import load_backbone

    return load_backbone(args.model, device=args.device, precision=args.precision, decode=args.decode)


def extract_from_args(args, backbone, data):
    from . import default_cache_dir, extract

    return extract(backbone, data, cache_dir=args.cache_dir or default_cache_dir(), batch_size=args.batch_size,
                   num_workers=args.workers, progress=not args.quiet)


def classes_and_templates(args, dataset_classes=None):
    from . import load_card

    if args.classes:
        names = [c.strip() for c in args.classes.split(",") if c.strip()]
        templates = load_card(args.card).templates if args.card else ["a photo of a {}."]
        return names, templates
    if not args.card:
        sys.exit("error: give --classes 'a,b,c' or --card NAME")
    card = load_card(args.card).select(dataset_classes)
    return card.classes, card.templates


def _classifier(args, backbone, dataset_classes=None):
    from . import class_embeddings, default_cache_dir
    from .heads import ZeroShotClassifier

    names, templates = classes_and_templates(args, dataset_classes)
    W = class_embeddings(backbone, names, templates, cache_dir=args.cache_dir or default_cache_dir())
    return ZeroShotClassifier(logit_scale=backbone.logit_scale).fit(classes=W, class_names=names)


def cmd_extract(args) -> None:
    backbone = backbone_from_args(args)
    fs = extract_from_args(args, backbone, args.data)
    if args.output:
        fs.save(args.output)
    print(json.dumps({"n": len(fs), "dim": int(fs.features.shape[1]), "fingerprint": backbone.fingerprint,
                      "failed": fs.failed, "output": args.output}, indent=1))


def cmd_classify(args) -> None:
    backbone = backbone_from_args(args)
    fs = extract_from_args(args, backbone, args.images if len(args.images) > 1 else args.images[0])
    clf = _classifier(args, backbone)
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
    from .metrics import classification_metrics, plot_confusion_matrix

    start = time.perf_counter()
    backbone = backbone_from_args(args)
    fs = extract_from_args(args, backbone, args.dataset)
    clf = _classifier(args, backbone, fs.classes)
    metrics = classification_metrics(clf.decision_function(fs.features), fs.labels)
    out = Path(args.output or "eval")
    out.mkdir(parents=True, exist_ok=True)
    report = {"model": backbone.name, "fingerprint": backbone.fingerprint, "dataset": str(args.dataset),
              "card": args.card, "classes": clf.class_names_, "failed": fs.failed, **metrics,
              "seconds": round(time.perf_counter() - start, 3)}
    (out / "metrics.json").write_text(json.dumps(report, indent=1))
    plot_confusion_matrix(metrics["confusion_matrix"], clf.class_names_, out / "confusion_matrix.png",
                          title=f"{Path(str(args.dataset)).name}: top-1 = {metrics['acc1']:.3f}")
    print(json.dumps({k: report[k] for k in ("model", "fingerprint", "dataset", "n", "acc1", "acc5",
                                             "mean_per_class_recall", "seconds")}, indent=1))
    print(f"wrote {out / 'metrics.json'} and {out / 'confusion_matrix.png'}", file=sys.stderr)
    report_failed(fs)


def cmd_distill(args) -> None:
    from . import class_embeddings, default_cache_dir, load_backbone, load_card
    from .distill import distill

    teacher = load_backbone(args.teacher, device=args.device, precision=args.precision)
    anchors = None
    if args.anchors:
        card = load_card(args.anchors)
        anchors = class_embeddings(teacher, card.classes, card.templates, cache_dir=args.cache_dir or default_cache_dir())
    chosen = {"student": args.student} if args.student else {}
    student = distill(teacher, args.data, args.out, **chosen, loss=args.loss, views=args.views,
                      epochs=args.epochs, batch_size=args.batch_size or 128, lr=args.lr, seed=args.seed,
                      anchors=anchors, affinity_weight=args.affinity_weight if anchors is not None else 0.0,
                      init=args.init, max_minutes=args.minutes, max_steps=args.max_steps, cache_dir=args.cache_dir,
                      progress=not args.quiet)
    report = json.loads((Path(args.out) / "model" / "distillation.json").read_text())
    print(json.dumps({"student": str(Path(args.out) / "model"), "fingerprint": student.fingerprint,
                      "teacher_fingerprint": teacher.fingerprint, "held_out_cosine": report["held_out_cosine"],
                      "minutes": round(report["seconds"] / 60, 1)}, indent=1))


def report_failed(fs) -> None:
    if fs.failed:
        print(f"skipped {len(fs.failed)} file(s) that could not be decoded:", file=sys.stderr)
        for i, reason in fs.failed.items():
            print(f"  {i}: {reason}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zeroshot", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("extract", help="encode a dataset into a cached FeatureSet")
    p.add_argument("data", help="image folder, .npz, .csv file list, or tar shards")
    p.add_argument("--output", help="also save the FeatureSet to this folder")
    add_model_args(p)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("classify", help="zero-shot predictions for images (CSV)")
    p.add_argument("images", nargs="+", help="image files, a folder, .npz, .csv or tar shards")
    p.add_argument("--classes", help="comma-separated class names")
    p.add_argument("--card", help="dataset card (class names + templates), e.g. cifar10")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--output", help="CSV path (default: stdout)")
    add_model_args(p)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("eval", help="zero-shot accuracy on a labelled dataset (metrics.json + confusion PNG)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--card", help="dataset card giving class names and templates")
    p.add_argument("--classes", help="comma-separated class names, in label order")
    p.add_argument("--output", help="output folder (default: ./eval)")
    add_model_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("distill", help="distil a teacher's image tower into a small timm student")
    p.add_argument("--teacher", default=os.environ.get("ZEROSHOT_MODEL", "default"))
    p.add_argument("--student", help="timm model name (default: zeroshot.distill.DEFAULT_STUDENT)")
    p.add_argument("--data", required=True, help="unlabelled training images (any dataset kind)")
    p.add_argument("--out", required=True, help="output folder; the student is written to OUT/model")
    p.add_argument("--loss", default="cosine", choices=["cosine", "l1", "affinity"])
    p.add_argument("--views", type=int, default=5, help="teacher-encoded views per image (view 0 is the clean one)")
    p.add_argument("--anchors", help="dataset card whose class prompts anchor the affinity term (e.g. tinyimagenet)")
    p.add_argument("--affinity-weight", type=float, default=1.0, help="weight of the affinity term with --anchors")
    p.add_argument("--init", help="a student folder to continue training from (same --student), or 'teacher': start "
                   "a narrower copy of a ResNet teacher from its weights (e.g. resnet10t -> resnet10t_050)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--minutes", type=float, default=None, help="stop training after this many minutes")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (reproducible budget)")
    p.add_argument("--seed", type=int, default=0)
    add_run_args(p)
    p.set_defaults(func=cmd_distill)

    for module in COMMAND_MODULES:  # each adds its own sub-commands through add_commands(sub)
        import_module(f".{module}", __package__).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, TypeError) as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
