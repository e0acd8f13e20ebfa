"""Near-duplicate search (``zeroshot dedup``) measured: train/val leakage in Tiny ImageNet and injected copies.

Leakage: all 50,000 Tiny ImageNet train images (10 shards) against the 10,000 val images. Are the 3 train images
byte-identical to val images (tinyimagenet/SOURCE.md, "Duplicates") found, and how many other pairs pass each
threshold?

Injected copies: a seeded sample of --sample images of the pool (Tiny ImageNet val, or Flickr8k-1k) is copied four
ways: half size (PNG), re-encoded JPEG at quality 30, mirrored (PNG) and centre-cropped to 80 % of each side (PNG).
The copies join the whole pool, and pairs are searched within it. A pair is right when both images come from one
original (original-copy or copy-copy). Per transformation: precision over the pairs holding such a copy, recall
of the original-copy pairs; overall: precision over all pairs (distinct real images that pass count as wrong,
even where they are true near-duplicates of each other) and over the pairs holding a copy, and recall of all
original-copy pairs. Also the cosine of each copy to its original (quantiles) and of the closest pair of different
originals.

    python scripts/bench_dedup.py [--data ../shared/data] [--model default] [--pool tinyimagenet|flickr8k]
        [--sample 300] [--seed 0] [--thresholds 0.9,0.93,0.95,0.97,0.98,0.99] [--no-leakage] [--json PATH]
        [--output DIR (contact sheets)]
"""
from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

import zeroshot
from zeroshot.datasets import open_dataset
from zeroshot.images import open_image
from zeroshot.plotting import run_title
from zeroshot.retrieval.dedup import Pairs, contact_sheet, find_pairs
from zeroshot.retrieval.index import seeded_rows
from zeroshot.retrieval.search import image_features

POOLS = {"tinyimagenet": "tinyimagenet/val", "flickr8k": "flickr8k_1k/images"}
TRAIN = "tinyimagenet/train-{000000..000009}.tar.gz"
LEAKED = [("n03770439_128", "fur_coat/val_5819.JPEG"), ("n03976657_138", "flagpole/val_9920.JPEG"),
          ("n03976657_298", "reel/val_8670.JPEG")]  # tinyimagenet/SOURCE.md, "Duplicates"
CROP = 0.8


def half_size(img: Image.Image) -> tuple[Image.Image, dict]:
    return img.resize((max(1, img.width // 2), max(1, img.height // 2)), Image.Resampling.BICUBIC), {"format": "PNG"}


def jpeg_q30(img: Image.Image) -> tuple[Image.Image, dict]:
    return img, {"format": "JPEG", "quality": 30}


def mirrored(img: Image.Image) -> tuple[Image.Image, dict]:
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), {"format": "PNG"}


def centre_crop(img: Image.Image) -> tuple[Image.Image, dict]:
    w, h = round(img.width * CROP), round(img.height * CROP)
    left, top = (img.width - w) // 2, (img.height - h) // 2
    return img.crop((left, top, left + w, top + h)), {"format": "PNG"}


COPIES = {"half size": half_size, "jpeg q30": jpeg_q30, "mirrored": mirrored, "centre crop 80%": centre_crop}


def copy_features(backbone, dataset, rows: np.ndarray, make, batch: int = 100) -> np.ndarray:
    """Features of one kind of copy of ``rows``, each encoded as a file would be (bytes through the transform)."""
    out = []
    for start in range(0, len(rows), batch):
        blobs = []
        for row in rows[start:start + batch]:
            copy, options = make(open_image(dataset.raw(int(row))))
            blobs.append(io.BytesIO())
            copy.save(blobs[-1], **options)
        out.append(image_features(backbone, [b.getvalue() for b in blobs]))
    return np.concatenate(out)


def scores(pairs: Pairs, family: np.ndarray, kind: np.ndarray, sample: int) -> dict:
    """Precision and recall of ``pairs`` in a pool whose rows have a ``family`` (the original's row) and a ``kind``
    (-1: an original, else the index of the copy's transformation)."""
    right = family[pairs.a] == family[pairs.b]
    one_original = (kind[pairs.a] == -1) | (kind[pairs.b] == -1)
    has_copy = (kind[pairs.a] >= 0) | (kind[pairs.b] >= 0)
    result = {"pairs": len(pairs), "distinct-image pairs": int((~right).sum()),
              "precision": _share(right), "precision on pairs with a copy": _share(right[has_copy]),
              "recall": float((right & one_original & has_copy).sum() / (sample * len(COPIES)))}
    for t, name in enumerate(COPIES):
        holds = (kind[pairs.a] == t) | (kind[pairs.b] == t)
        result[name] = {"precision": _share(right[holds]),
                        "recall": float((right & one_original & holds).sum() / sample)}
    return result


def _share(flags: np.ndarray) -> float | None:
    return float(flags.mean()) if len(flags) else None


def injected(backbone, data: Path, pool: str, sample: int, seed: int, thresholds: list[float],
             output: Path | None) -> dict:
    dataset = open_dataset(data / POOLS[pool])
    fs = zeroshot.extract(backbone, dataset, progress=False)
    X = np.asarray(fs.features)
    picked = seeded_rows(len(X), sample, seed)
    copies = [copy_features(backbone, dataset, picked, make) for make in COPIES.values()]
    pool_rows = np.concatenate([X, *copies])
    family = np.r_[np.arange(len(X)), np.tile(picked, len(COPIES))]
    kind = np.r_[np.full(len(X), -1), np.repeat(np.arange(len(COPIES)), sample)]
    start = time.perf_counter()
    pairs = find_pairs(pool_rows, threshold=min(thresholds))
    seconds = time.perf_counter() - start
    distinct = pairs.select(family[pairs.a] != family[pairs.b])
    if output is not None:
        originals = distinct.select((kind[distinct.a] < 0) & (kind[distinct.b] < 0))
        contact_sheet(output / f"distinct_{pool}.png", originals.top(24), dataset,
                      title=f"{run_title(None, dataset.location, backbone.name, backbone.fingerprint)}: closest "
                            "distinct images")
    quantiles = (0.0, 0.05, 0.25, 0.5)
    return {
        "pool": dataset.location, "images": len(X), "sample": sample, "seed": seed, "copies": len(picked) * len(COPIES),
        "search_seconds": round(seconds, 2),
        "copy cosine to its original (min, 5%, 25%, median)": {
            name: np.round(np.quantile((c * X[picked]).sum(1), quantiles), 4).tolist() for name, c in
            zip(COPIES, copies)},
        "closest pair of different originals (copies included)": float(distinct.cosine[0]) if len(distinct) else None,
        "by threshold": {str(t): scores(pairs.at_least(t), family, kind, sample) for t in thresholds},
    }


def leakage(backbone, data: Path, thresholds: list[float], output: Path | None) -> dict:
    train, val = open_dataset(data / TRAIN), open_dataset(data / "tinyimagenet" / "val")
    tf, vf = (zeroshot.extract(backbone, d, progress=False) for d in (train, val))
    start = time.perf_counter()
    pairs = find_pairs(tf.features, vf.features, threshold=min(thresholds))
    seconds = time.perf_counter() - start
    found = {(str(a), str(b)): (rank, float(c)) for rank, (a, b, c) in
             enumerate(zip(tf.ids[pairs.a], vf.ids[pairs.b], pairs.cosine), 1) if (str(a), str(b)) in LEAKED}
    if output is not None:
        contact_sheet(output / "leakage_tinyimagenet.png", pairs.top(24), train, val,
                      title=f"{run_title(None, train.location, backbone.name, backbone.fingerprint)} against val")
    by_threshold = {}
    for t in thresholds:
        kept = pairs.at_least(t)
        hits = sum(1 for rank, cosine in found.values() if cosine >= np.float32(t))
        by_threshold[str(t)] = {"pairs": len(kept), "leaked found": hits, "other pairs": len(kept) - hits}
    return {"train": train.location, "train images": len(tf), "val": val.location, "val images": len(vf),
            "search_seconds": round(seconds, 2),
            "leaked pairs (rank, cosine)": {f"{a} = {b}": found.get((a, b)) for a, b in LEAKED},
            "by threshold": by_threshold}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--model", default="default")
    parser.add_argument("--pool", default="tinyimagenet", choices=sorted(POOLS))
    parser.add_argument("--sample", type=int, default=300, help="originals copied four ways")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--thresholds", default="0.9,0.93,0.95,0.97,0.98,0.99")
    parser.add_argument("--no-leakage", action="store_true", help="skip the train/val leakage check")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--output", help="write contact sheets of the closest pairs here")
    args = parser.parse_args()
    data, thresholds = Path(args.data), sorted(float(t) for t in args.thresholds.split(","))
    output = Path(args.output) if args.output else None
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
    backbone = zeroshot.load_backbone(args.model, device="cpu")
    print(f"# model {args.model}, fingerprint {backbone.fingerprint}, pool {args.pool}, seed {args.seed}", flush=True)
    report = {"model": args.model, "fingerprint": backbone.fingerprint, "seed": args.seed}
    if not args.no_leakage:
        report["leakage"] = leakage(backbone, data, thresholds, output)
        print(json.dumps({"leakage": report["leakage"]}, indent=1), flush=True)
    report["injected"] = injected(backbone, data, args.pool, args.sample, args.seed, thresholds, output)
    print(json.dumps({"injected": report["injected"]}, indent=1), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
