"""Caption matching and near-duplicate thresholds on Flickr8k-1k, the figures of README's Search section.

Caption matching: the 200 held-out images (`flickr_split`, the images the default model never saw) are indexed with
4 of their 5 captions; the 5th is the query. Prints text->image recall@1/5/10 by image alone and with
``captions=True``. Near-duplicates: the largest cosine between two of the 1,000 distinct photos, and the share of
200 seeded copies (JPEG re-encoded at quality 70, half size, mirrored) within ``DEDUP_COSINE`` of their original.

    python scripts/bench_captions.py [--data ../shared/data] [--model default] [--cache-dir DIR]
"""
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

import zeroshot
from zeroshot.retrieval.index import Index
from zeroshot.retrieval.search import (
    DEDUP_COSINE,
    add_captions,
    image_features,
    search_text,
)
from zeroshot.train.default_captions import flickr_split


def caption_recall(backbone, images, held_paths, held_captions) -> dict:
    names = [p.name for p in held_paths]
    position = {str(i): row for row, i in enumerate(images.ids)}
    index = Index.build(images.subset([position[n] for n in names]))
    add_captions(index, backbone, [n for n, caps in zip(names, held_captions) for _ in caps[1:]],
                 [c for caps in held_captions for c in caps[1:]])
    queries = [caps[0] for caps in held_captions]
    result = {}
    for captions in (False, True):
        hits = search_text(index, backbone, queries, k=10, captions=captions)
        rank = np.array([next((r for r, h in enumerate(hs) if h.id == n), 10) for hs, n in zip(hits, names)])
        result["with captions" if captions else "image only"] = {f"recall@{k}": float((rank < k).mean())
                                                                 for k in (1, 5, 10)}
    return result


def near_duplicates(backbone, images, data, seed: int = 0) -> dict:
    X = np.asarray(images.features)
    S = X @ X.T
    np.fill_diagonal(S, -1)
    picked = np.random.default_rng(seed).choice(len(X), 200, replace=False)
    copies = {"re-encoded q70": lambda m: (m, 70), "half size": lambda m: (m.resize((m.width // 2, m.height // 2)), 85),
              "mirrored": lambda m: (m.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 95)}
    result = {"closest distinct pair": float(S.max()), "threshold": DEDUP_COSINE}
    for name, make in copies.items():
        blobs = []
        for row in picked:
            copy, quality = make(Image.open(data / "flickr8k_1k" / "images" / str(images.ids[row])).convert("RGB"))
            blobs.append(io.BytesIO())
            copy.save(blobs[-1], "JPEG", quality=quality)
        cosines = (image_features(backbone, [b.getvalue() for b in blobs]) * X[picked]).sum(axis=1)
        result[f"{name} above threshold"] = float((cosines > DEDUP_COSINE).mean())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data", help="folder holding flickr8k_1k")
    parser.add_argument("--model", default="default", help="backbone to measure")
    parser.add_argument("--cache-dir", default=None, help="feature cache (default: the zeroshot cache)")
    args = parser.parse_args()
    data = Path(args.data)
    _, _, held_paths, held_captions = flickr_split(data)
    backbone = zeroshot.load_backbone(args.model, device="cpu")
    images = zeroshot.extract(backbone, data / "flickr8k_1k" / "images", cache_dir=args.cache_dir, progress=False)
    print(json.dumps({"fingerprint": backbone.fingerprint,
                      "captions": caption_recall(backbone, images, held_paths, held_captions),
                      "near-duplicates": near_duplicates(backbone, images, data)}, indent=1))


if __name__ == "__main__":
    main()
