"""OOD acceptance table and scoring speed for a model (default: the shipped default model), CPU only.

Accuracy: ID CIFAR-10 test vs MNIST test (far OOD), DTD-10 (textures) and Tiny ImageNet val (near OOD); AUROC, FPR95,
AUPR-In/Out of every detector. Mahalanobis and kNN are fitted on CIFAR-10 train (2,000); CLIPN's negation map is
trained here on Flickr8k-1k captions of its first 800 images (the default model holds out the last 200) plus
CIFAR-10 train images with their class prompts; the training-free hand-written "no" prompts are reported too.
Speed: 100,000 x D real features (all cached sets, tiled) scored by each detector, best of --repeats runs, with kNN
against a 10,000-feature ID bank (CIFAR-10 test), exact ("Flat") and approximate ("IVF100,Flat", nprobe 8; its
AUROC cost is checked with an 8,000-image bank). Wall and CPU seconds are both printed: on a busy machine the wall
time of an idle 2-core CPU lies between CPU-s / 2 (both threads busy) and CPU-s.

    python scripts/bench_ood.py [--model default] [--json bench_out/ood.json] [--output bench_out/ood]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

import zeroshot
from zeroshot.train.negation import (NegationConfig, caption_targets, class_prompt_targets, join_targets,
                                  train_negation)
from zeroshot.heads import CLIPN, KNN, MCM
from zeroshot.evaluation.ood import DETECTORS, fit_detector, write_report
from zeroshot.ood_metrics import auroc, evaluate_detectors, markdown_table

SETS = {"cifar10 train": "cifar10/train.npz", "cifar10 test": "cifar10/test.npz", "mnist": "mnist_rgb/test.npz",
        "dtd10": "dtd10/all", "tinyimagenet val": "tinyimagenet/val", "flickr8k": "flickr8k_1k/images"}
OOD = ("mnist", "dtd10", "tinyimagenet val")
HAND_NEGATIONS = ["a photo without a {}.", "a photo of no {}."]
FLICKR_TRAIN_IMAGES = 800  # scripts/train_default_model.py trains on these and holds out the rest


def best_seconds(fn, repeats: int) -> dict:
    """Best wall time of ``repeats`` runs, and the CPU seconds (all threads) of that run."""
    runs = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        runs.append((time.perf_counter() - wall, time.process_time() - cpu))
    wall, cpu = min(runs)
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timing runs per detector (the best is kept)")
    parser.add_argument("--json")
    parser.add_argument("--output", help="also write the table, ROC curves and histograms here")
    args = parser.parse_args()
    data = Path(args.data)
    cache = args.cache_dir  # None: the default cache
    backbone = zeroshot.load_backbone(args.model, device="cpu")
    features = {name: zeroshot.extract(backbone, data / path, cache_dir=cache, progress=False)
                for name, path in SETS.items()}
    print(f"# model {backbone.name}, fingerprint {backbone.fingerprint}, seed {args.seed}, logit scale "
          f"{backbone.logit_scale:.2f}, torch threads {torch.get_num_threads()}")
    print("# data: " + ", ".join(f"{n} {SETS[n]} ({len(features[n])})" for n in SETS))

    card = zeroshot.load_card("cifar10").select(features["cifar10 test"].classes)
    W = zeroshot.class_embeddings(backbone, card.classes, card.templates, cache_dir=cache)
    train = features["cifar10 train"]
    start = time.perf_counter()
    negation = train_negation(*join_targets(
        caption_targets(features["flickr8k"], data / "flickr8k_1k" / "captions.csv", backbone,
                        first=FLICKR_TRAIN_IMAGES, cache_dir=cache),
        class_prompt_targets(train, card.classes, card.templates, backbone, cache_dir=cache)),
        logit_scale=backbone.logit_scale, config=NegationConfig(seed=args.seed),
        info={"fingerprint": backbone.fingerprint, "data": {
            "captions": f"flickr8k_1k/captions.csv, first {FLICKR_TRAIN_IMAGES} images by sorted name",
            "class_prompts": f"{SETS['cifar10 train']} x the cifar10 card's {len(card.templates)} templates"}})
    best = min(negation.info["history"], key=lambda r: r["val_total"])
    print(f"# negation map: {negation.info['n_images']} images ({FLICKR_TRAIN_IMAGES} Flickr8k + {len(train)} "
          f"CIFAR-10 train), {negation.info['n_texts']} texts, trained in {negation.info['seconds']} s "
          f"({time.perf_counter() - start:.0f} s with text encoding); best epoch {best['epoch']}: held-out matched "
          f"pairs said yes {best['val_yes_acc']:.3f}, non-matching said no {best['val_no_acc']:.3f}")

    side = {"class_embeddings": W, "no_class_embeddings": negation(W), "class_names": card.classes}
    detectors = {n: fit_detector(n, logit_scale=backbone.logit_scale, train=train, **side) for n in DETECTORS}
    detectors["mcm T=1/s (MSP)"] = MCM(temperature=1 / backbone.logit_scale).fit(class_embeddings=W)
    hand = zeroshot.class_embeddings(backbone, card.classes, HAND_NEGATIONS, cache_dir=cache)
    detectors["clipn-atd, hand-written no prompts"] = CLIPN("atd", backbone.logit_scale).fit(class_embeddings=W, no_class_embeddings=hand)
    X_id = features["cifar10 test"].features
    rows, scores = evaluate_detectors(detectors, X_id, {n: features[n].features for n in OOD})
    print(markdown_table(rows))

    decisions = {}
    for name in ("clipn-ctw", "clipn-atd"):
        accept = {n: float((detectors[name].predict(f.features) == 1).mean())
                  for n, f in [("cifar10 test", features["cifar10 test"])] + [(n, features[n]) for n in OOD]}
        decisions[name] = {"id_accepted": round(accept["cifar10 test"], 4),
                           **{f"{n} rejected": round(1 - accept[n], 4) for n in OOD}}
    print("# threshold-free CLIPN decisions: " + json.dumps(decisions))
    zero_shot_acc = float(np.mean((X_id @ W.T).argmax(axis=1) == features["cifar10 test"].labels))
    print(f"# ID zero-shot top-1 (the 'yes' side, same for every text detector): {zero_shot_acc:.4f}")

    queries = np.concatenate([np.asarray(f.features) for f in features.values()])
    queries = np.ascontiguousarray(np.tile(queries, (-(-100_000 // len(queries)), 1))[:100_000])
    bank_10k = features["cifar10 test"].features
    timed = {n: detectors[n] for n in ("mcm", "maxlogit", "energy", "mahalanobis", "relative-mahalanobis",
                                       "clipn-atd")}
    timed["knn Flat (exact), 10,000 bank"] = KNN().fit(bank_10k)  # k = 10 by the default rule
    timed["knn IVF100,Flat nprobe 8, 10,000 bank"] = KNN(index="IVF100,Flat", nprobe=8).fit(bank_10k)
    load_before = os.getloadavg()[0]
    speed = {n: best_seconds(lambda d=d: d.score_samples(queries), args.repeats) for n, d in timed.items()}
    load_after = os.getloadavg()[0]
    exact = timed["knn Flat (exact), 10,000 bank"].score_samples(queries)
    approx = timed["knn IVF100,Flat nprobe 8, 10,000 bank"].score_samples(queries)
    ivf_agreement = {"same_score": float(np.mean(np.abs(exact - approx) < 1e-6)),
                     "mean_abs_diff": float(np.abs(exact - approx).mean())}
    # what the approximation costs in detection: bank = 8,000 CIFAR-10 test images, ID = the other 2,000
    bank_8k, held_out = X_id[:8000], X_id[8000:]
    for name, knn in (("exact", KNN().fit(bank_8k)), ("ivf", KNN(index="IVF100,Flat", nprobe=8).fit(bank_8k))):
        s_id = knn.score_samples(held_out)
        ivf_agreement[f"auroc_{name}"] = {n: auroc(s_id, knn.score_samples(features[n].features)) for n in OOD}
    print(f"# scoring {queries.shape[0]:,} x {queries.shape[1]} features, best of {args.repeats}; 1-minute load "
          f"average {load_before:.1f} before, {load_after:.1f} after, on {os.cpu_count()} CPUs:")
    print("\n".join(f"{n}: {t['wall_s']} s wall, {t['cpu_s']} CPU-s" for n, t in speed.items()))
    print(f"# IVF vs exact kNN on those queries, and AUROC with an 8,000 CIFAR-10 test bank vs the other 2,000: "
          f"{json.dumps(ivf_agreement)}")

    meta = {"model": backbone.name, "fingerprint": backbone.fingerprint, "seed": args.seed, "card": "cifar10",
            "id": SETS["cifar10 test"],
            "ood": [SETS[n] for n in OOD], "train": SETS["cifar10 train"], "negation": negation.info,
            "clipn_decisions": decisions, "id_zero_shot_acc1": zero_shot_acc, "speed_seconds": speed,
            "ivf_agreement": ivf_agreement}
    if args.output:
        write_report(Path(args.output), rows, scores, meta)
    if args.json:
        Path(args.json).write_text(json.dumps({**meta, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
