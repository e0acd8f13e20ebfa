"""Ablations of the default model's recipe at a short, equal step budget: one change at a time, all in one process
(training and evaluation images decoded once), each row with the four zero-shot top-1 figures and Flickr8k held-out
text->image R@5.

    python scripts/ablate_default_model.py --steps 200 --variants shipped,complete,hypernyms,digits --json out.json

Variants (each starts from the same seeded initial weights and draws the same batches; the warm-up is the shipped
run's share of the schedule, 11 %):
- ``shipped``: the shipped recipe's schedule, cosine sized for 9 epochs and cut by the budget at 74 % of it (the
  shipped run stopped at step 1,325 of 1,782), scaled to ``--steps``;
- ``complete``: the cosine ends exactly at ``--steps`` (``schedule_steps``);
- ``hypernyms``: ``complete`` + WordNet hypernym captions per Tiny ImageNet class;
- ``digits``: ``complete`` + digits rendered from installed fonts and scikit-learn's ``load_digits``;
- ``hypernyms+digits``: both;
- ``+sigmoid``: SigLIP's sigmoid loss instead of the multi-positive InfoNCE; ``+soft``: soft contrastive targets
  from text-text similarity (temperature ``SOFT_TEMPERATURE``); ``+flickr4``: each Flickr photo 4 times per epoch.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from zeroshot.backbone import create_untrained_folder, load_backbone, timm_text_pair_config
from zeroshot.datasets import ImageFiles, open_dataset
from zeroshot.evaluation.retrieval import retrieval_recall
from zeroshot.extraction import decode_all
from zeroshot.images import ImageTransform
from zeroshot.prompts import class_embeddings, encode_texts_cached, load_card
from zeroshot.train.align import AlignConfig, Aligner
from zeroshot.train.default_captions import flickr_split
from zeroshot.train.default_data import training_set

SHIPPED_CUT = 1325 / 1782  # where the shipped run's time budget stopped its 9-epoch cosine
SHIPPED_WARMUP = 200 / 1782  # its linear warm-up, as a share of its schedule (kept at every budget)
SETS = [("cifar10", "cifar10/test.npz", "cifar10"), ("tinyimagenet val", "tinyimagenet/val", "tinyimagenet"),
        ("dtd10", "dtd10/all", "dtd"), ("mnist", "mnist_rgb/test.npz", "mnist")]
DIGITS_PER_CLASS = 250
SOFT_TEMPERATURE = 0.1


def encode(tower, transform: ImageTransform, images: torch.Tensor, batch: int = 512) -> np.ndarray:
    tower.eval()
    with torch.inference_mode():
        out = [torch.nn.functional.normalize(tower(transform.normalize(images[i:i + batch])).float(), dim=-1)
               for i in range(0, len(images), batch)]
    return torch.cat(out).numpy()


def evaluate(tower, transform, eval_sets: dict, flickr: tuple) -> dict:
    row = {}
    for name, (images, labels, W) in eval_sets.items():
        row[name] = float(((encode(tower, transform, images) @ W.T).argmax(1) == labels).mean())
    images, texts, owner = flickr
    row["flickr R@5"] = retrieval_recall(encode(tower, transform, images), texts, owner, ks=(5,))[
        "image_retrieval_recall@5"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--variants", default="shipped,complete,hypernyms,digits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json")
    args = parser.parse_args()
    data, seed = Path(args.data), args.seed
    cfg = timm_text_pair_config("resnet10t", 64)
    work = Path(tempfile.mkdtemp(prefix="ablate-"))
    backbone = load_backbone(create_untrained_folder(work / "init", cfg, seed=seed), device="cpu")
    transform = ImageTransform(size=64)
    initial = {k: v.clone() for k, v in backbone.model.visual.state_dict().items()}
    print(f"seed {seed}, steps {args.steps}, initial fingerprint {backbone.fingerprint}, data {data}")

    eval_sets = {}
    for name, path, card_name in SETS:
        dataset = open_dataset(data / path)
        images, rows, _ = decode_all(dataset, transform, progress=False)
        card = load_card(card_name).select(dataset.classes)
        eval_sets[name] = (images, dataset.labels[rows], class_embeddings(backbone, card.classes, card.templates))
    _, _, val_paths, val_caps = flickr_split(data)
    flickr_images, rows, _ = decode_all(ImageFiles(val_paths), transform, progress=False)
    texts = [c for k in rows for c in val_caps[k]]
    owner = np.repeat(np.arange(len(rows)), [len(val_caps[k]) for k in rows])
    flickr = (flickr_images, encode_texts_cached(backbone, texts), owner)

    decoded, results = {}, []
    for variant in args.variants.split(","):
        parts = set(variant.split("+"))
        train = training_set(data, transform, lambda texts: encode_texts_cached(backbone, texts),
                             hypernyms="hypernyms" in parts, digits_per_class=DIGITS_PER_CLASS * ("digits" in parts),
                             flickr_repeats=4 if "flickr4" in parts else 1,
                             seed=seed, decoded=decoded)
        schedule = round(args.steps / SHIPPED_CUT) if variant == "shipped" else args.steps
        config = AlignConfig(loss="sigmoid" if "sigmoid" in parts else "contrastive",
                             soft_target_temperature=SOFT_TEMPERATURE if "soft" in parts else None,
                             epochs=9, seed=seed, max_steps=args.steps, schedule_steps=schedule,
                             warmup_steps=round(schedule * SHIPPED_WARMUP))
        backbone.model.visual.load_state_dict(initial)
        start = time.perf_counter()
        Aligner(backbone.model.visual, transform, config, work / variant).fit(train.images, train.targets,
                                                                               progress=False)
        row = {"variant": variant, "steps": args.steps, "schedule_steps": schedule, "images": len(train.images),
               "minutes": round((time.perf_counter() - start) / 60, 1),
               **evaluate(backbone.model.visual, transform, eval_sets, flickr)}
        results.append(row)
        print(json.dumps(row), flush=True)
    print("| variant | CIFAR-10 | Tiny ImageNet val | DTD-10 | MNIST | Flickr held-out R@5 | train min |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['variant']} | {r['cifar10']:.4f} | {r['tinyimagenet val']:.4f} | {r['dtd10']:.4f} | "
              f"{r['mnist']:.4f} | {r['flickr R@5']:.3f} | {r['minutes']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"seed": seed, "initial_fingerprint": backbone.fingerprint,
                                               "steps": args.steps, "rows": results}, indent=1))


if __name__ == "__main__":
    main()
