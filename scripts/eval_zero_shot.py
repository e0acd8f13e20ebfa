"""Zero-shot figures of a model on every shared set: CIFAR-10, Tiny ImageNet val, DTD-10, MNIST (top-1 with the dataset
cards' templates) and Flickr8k held-out text-to-image recall@1/5/10 (the last 200 images by id, never trained on).

    python scripts/eval_zero_shot.py [--model default] [--decode exact|draft] [--sets dtd10,flickr8k] [--json out.json]
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

import zeroshot
from zeroshot.heads import ZeroShotClassifier

SETS = [("cifar10", "cifar10/test.npz", "cifar10"), ("tinyimagenet val", "tinyimagenet/val", "tinyimagenet"),
        ("dtd10", "dtd10/all", "dtd"), ("mnist", "mnist_rgb/test.npz", "mnist")]


def flickr_recall(backbone, data: Path, cache_dir, heldout: int = 200) -> dict:
    captions: dict[str, list[str]] = {}
    with open(data / "flickr8k_1k" / "captions.csv", newline="") as f:
        for row in csv.DictReader(f):
            captions.setdefault(row["image"], []).append(row["caption"].strip())
    names = sorted(captions)[-heldout:]
    images = zeroshot.extract(backbone, [str(data / "flickr8k_1k" / "images" / n) for n in names],
                              cache_dir=cache_dir, progress=False)
    order = {Path(i).name: k for k, i in enumerate(images.ids)}
    texts = [c for n in names for c in captions[n]]
    owner = np.array([order[n] for n in names for _ in captions[n]])
    scores = backbone.encode_texts(texts) @ np.asarray(images.features).T
    rank = (scores > scores[np.arange(len(owner)), owner][:, None]).sum(1)
    return {f"recall@{k}": float((rank < k).mean()) for k in (1, 5, 10)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--decode", default="exact", choices=["exact", "draft"])
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--sets", default="cifar10,tinyimagenet val,dtd10,mnist,flickr8k",
                        help="comma-separated subset of: cifar10, tinyimagenet val, dtd10, mnist, flickr8k")
    parser.add_argument("--json")
    args = parser.parse_args()
    data = Path(args.data)
    backbone = zeroshot.load_backbone(args.model, device="cpu", decode=args.decode)
    cache = args.cache_dir  # None: the default cache
    print(f"# model {backbone.name}, fingerprint {backbone.fingerprint}, decode {args.decode}")
    rows = {}
    chosen = {name.strip() for name in args.sets.split(",")}
    for name, path, card_name in [entry for entry in SETS if entry[0] in chosen]:
        features = zeroshot.extract(backbone, data / path, cache_dir=cache, progress=False)
        card = zeroshot.load_card(card_name).select(features.classes)
        W = zeroshot.class_embeddings(backbone, card.classes, card.templates, cache_dir=cache)
        clf = ZeroShotClassifier(logit_scale=backbone.logit_scale).fit(class_embeddings=W, class_names=card.classes)
        metrics = zeroshot.classification_metrics(clf.decision_function(features.features), features.labels)
        rows[name] = {k: metrics[k] for k in ("n", "acc1", "acc5", "mean_per_class_recall")}
        print(json.dumps({"dataset": name, "templates": len(card.templates), **rows[name]}), flush=True)
    if "flickr8k" in chosen:
        rows["flickr8k held-out 200"] = flickr_recall(backbone, data, cache)
        print(json.dumps({"dataset": "flickr8k held-out 200 (text->image)", **rows["flickr8k held-out 200"]}))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": backbone.name, "fingerprint": backbone.fingerprint,
                                               "decode": args.decode, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
