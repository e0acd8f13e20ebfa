"""Generated-image metrics where the answer is known (issue 21; ``shared/methods/generated_image_eval.md``).

Real images stand in for generated ones. Each set (CIFAR-10 test, Tiny ImageNet val, MNIST test) is split at
random (seed 0) into two disjoint halves of 5,000: half A is the reference, half B the "generated" side, as it is
or degraded (Gaussian blur, additive noise, JPEG quality, classes removed, one class duplicated over a growing share
of the images, as mode collapse). Against CIFAR-10's half A also MNIST and DTD-10, far from it. Class consistency of
half B with its true and with shuffled labels. Features: the default model, cached; every metric as `zeroshot
gen-eval` computes it (FD point estimates here; the bootstrap in the speed part).

Speed (``--speed``): every metric on 50,000 x 512 random unit rows against 50,000 on this machine's cores.

    python scripts/bench_generative.py [--json OUT]            # the sanity experiments
    python scripts/bench_generative.py --speed [--json OUT]    # the timings
"""
from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

import zeroshot
from zeroshot.generative import (bootstrap_frechet, clip_score_summary, frechet_distance, frechet_floor,
                                 frechet_vs_n, manifold_metrics)
from zeroshot.generative.evaluate import class_consistency, fd_sizes

SEED = 0
ROOT = Path(__file__).resolve().parents[1]
HALF = 5000
DEGRADATIONS = {  # name -> strengths (0 = the undegraded half)
    "blur_sigma": (0, 0.5, 1, 1.5, 2, 3),
    "noise_sigma": (0, 8, 16, 32, 64),
    "jpeg_quality": (100, 90, 70, 50, 30, 10),
}


def degrade(images: np.ndarray, kind: str, strength: float, rng: np.random.Generator) -> np.ndarray:
    """(N, H, W, 3) uint8 images blurred (Gaussian, sigma in pixels), noised (Gaussian, sigma in grey levels) or
    re-encoded as JPEG at a quality."""
    if kind == "noise_sigma":
        return np.clip(images + rng.normal(0, strength, images.shape), 0, 255).astype(np.uint8)
    out = np.empty_like(images)
    for i, image in enumerate(images):
        pil = Image.fromarray(image)
        if kind == "blur_sigma":
            out[i] = np.asarray(pil.filter(ImageFilter.GaussianBlur(strength)))
        else:
            buffer = io.BytesIO()
            pil.save(buffer, "JPEG", quality=int(strength))
            out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return out


class Encoder:
    """Image arrays -> features of the default model, through .npz files in ``folder`` and the feature cache."""

    def __init__(self, folder: Path):
        self.backbone = zeroshot.load_backbone("default", device="cpu")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        path = self.folder / f"{name}.npz"
        if not path.exists():
            np.savez(path, images=images, labels=labels, ids=np.array([f"{name}/{i}" for i in range(len(images))]))
        return np.asarray(zeroshot.extract(self.backbone, path, progress=False).features)


def tiny_imagenet_val(data: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    folder = zeroshot.open_dataset(data / "tinyimagenet" / "val")
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in folder.paths])
    return images, folder.labels, folder.classes


def set_metrics(R: np.ndarray, G: np.ndarray) -> dict:
    m = manifold_metrics(R, G)
    return {"n": len(G), "fd": round(frechet_distance(R, G), 5),
            **{k: round(m[k], 4) for k in ("precision", "recall", "density", "coverage")}}


def monotone(values: list[float], rising: bool = True) -> bool:
    steps = np.diff(values)
    return bool((steps > 0).all() if rising else (steps < 0).all())


def sanity(data: Path, out: Path) -> dict:
    encode = Encoder(out / "data")
    rng = np.random.default_rng(SEED)
    cifar = np.load(data / "cifar10" / "test.npz", allow_pickle=False)
    mnist = np.load(data / "mnist_rgb" / "test.npz", allow_pickle=False)
    sets = {"cifar10": (cifar["images"], cifar["labels"], json.loads((data / "cifar10" / "classes.json").read_text())),
            "tinyimagenet": tiny_imagenet_val(data),
            # never JPEG-compressed, unlike the two above: a control for the JPEG-quality series
            "mnist_rgb": (mnist["images"], mnist["labels"],
                          json.loads((data / "mnist_rgb" / "classes.json").read_text()))}
    card = {name: zeroshot.load_card(name.removesuffix("_rgb")) for name in sets}
    report = {}
    for name, (images, labels, classes) in sets.items():
        order = rng.permutation(len(images))
        a, b = order[:HALF], order[HALF:2 * HALF]
        R = encode(f"{name}-A", images[a], labels[a])
        B = encode(f"{name}-B", images[b], labels[b])
        halves_k5 = manifold_metrics(R, B, k_pr=5)
        row = {"reference": f"{name} half A ({HALF})", "floor_two_halves_of_A": round(frechet_floor(R, SEED), 5),
               "half_B": set_metrics(R, B), "half_B_precision_recall_k5": [round(halves_k5["precision"], 4),
                                                                          round(halves_k5["recall"], 4)]}
        if name == "cifar10":
            pick = rng.permutation(len(mnist["images"]))[:HALF]
            row["mnist"] = set_metrics(R, encode("mnist", mnist["images"][pick], mnist["labels"][pick]))
            dtd = zeroshot.extract(encode.backbone, data / "dtd10" / "all", progress=False)
            row["dtd10"] = set_metrics(R, np.asarray(dtd.features))
        for kind, strengths in DEGRADATIONS.items():
            results = []
            for strength in strengths:
                G = encode(f"{name}-B-{kind}-{strength}", degrade(images[b], kind, strength,
                                                                  np.random.default_rng(SEED)), labels[b])
                results.append({kind: strength, **set_metrics(R, G)})
            fds = [r["fd"] for r in results]
            row[kind] = {"steps": results, "fd_monotone": monotone(fds)}  # strengths grow along each list
        n_classes = len(classes)
        removed = []
        for drop in (0, n_classes // 5, n_classes // 2, 4 * n_classes // 5):
            keep = ~np.isin(labels[b], np.arange(drop))
            removed.append({"classes_removed": drop, **set_metrics(R, B[keep])})
        row["classes_removed"] = removed
        collapse = []
        one_class = np.flatnonzero(labels[b] == 0)
        for share in (0, 0.25, 0.5, 0.75, 1.0):  # that share of half B replaced by copies of one class's images
            replaced = rng.permutation(HALF)[:int(share * HALF)] if share else np.array([], int)
            rows = np.arange(HALF)
            rows[replaced] = one_class[np.arange(len(replaced)) % len(one_class)]
            collapse.append({"share_one_class": share, **set_metrics(R, B[rows])})
        row["mode_collapse"] = collapse
        W = zeroshot.class_embeddings(encode.backbone, classes, card[name].templates)
        zero_shot = float(((B @ W.T).argmax(1) == labels[b]).mean())
        shuffled = np.random.default_rng(SEED).permutation(labels[b])
        row["class_consistency"] = {
            "true_labels": round(class_consistency(B, labels[b], W, classes)["accuracy"], 4),
            "zero_shot_top1": round(zero_shot, 4),
            "shuffled_labels": round(class_consistency(B, shuffled, W, classes)["accuracy"], 4),
            "chance": round(1 / n_classes, 4)}
        report[name] = row
        print(json.dumps({name: row}, indent=1), flush=True)
    return report


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, round(time.perf_counter() - start, 2)


def speed(n: int, dim: int, n_boot: int) -> dict:
    rng = np.random.default_rng(SEED)
    R = rng.standard_normal((n, dim), dtype=np.float32)
    G = rng.standard_normal((n, dim), dtype=np.float32) + np.float32(0.05)
    R /= np.linalg.norm(R, axis=1, keepdims=True)
    G /= np.linalg.norm(G, axis=1, keepdims=True)
    T = rng.standard_normal((n, dim), dtype=np.float32)
    seconds = {}
    _, seconds["fd_point"] = timed(lambda: frechet_distance(R, G))
    boot, seconds[f"fd_bootstrap_{n_boot}"] = timed(lambda: bootstrap_frechet(R, G, n_boot=n_boot, seed=SEED))
    _, seconds["fd_floor"] = timed(lambda: frechet_floor(R, SEED))
    _, seconds["fd_vs_n"] = timed(lambda: frechet_vs_n(R, G, fd_sizes(n), SEED))
    manifold, seconds["precision_recall_density_coverage"] = timed(lambda: manifold_metrics(R, G))
    _, seconds["clip_score"] = timed(lambda: clip_score_summary(G, T))
    return {"n_real": n, "n_generated": n, "dim": dim, "seconds": seconds, "total_s": round(sum(seconds.values()), 1),
            "fd": round(boot["fd"], 6), "precision": manifold["precision"], "recall": manifold["recall"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--out", default="bench_out/generative", help="degraded image sets (.npz) go here")
    parser.add_argument("--speed", action="store_true", help="time the metrics on random features instead")
    parser.add_argument("--n", type=int, default=50000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--bootstrap", type=int, default=100)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    data = "random unit rows" if args.speed else "cifar10 test, tinyimagenet val, mnist_rgb test, dtd10"
    print(f"# seed {SEED}, {os.cpu_count()} CPUs, default model "
          f"{zeroshot.load_backbone('default', device='cpu').fingerprint}, data: {data}")
    report = speed(args.n, args.dim, args.bootstrap) if args.speed else sanity(Path(args.data), Path(args.out))
    if args.speed:
        print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
