"""Extraction throughput: zeroshot.extract vs a plain open_clip loop vs the model-only bound, side by side.

Workload (a): ViT-B-32 (random weights: throughput only) on 2,000 CIFAR-10 test images, forward-bound.
Workload (b): a small model (timm resnet18 tower at 64 px + all-MiniLM-L6-v2 text tower, untrained) on the DTD-10
and Flickr8k JPEG folders, decode-bound; with each row the ceiling of any schedule on this machine's cores (each
image's decode, timed alone, plus its forward in the cheapest thread count, in core-seconds, no core idle). Run it
with and without ``OMP_WAIT_POLICY=PASSIVE``: the variable applies to the plain loop and ours alike. Then cold vs warm
`zeroshot eval` on CIFAR-10 test (10,000 images) with ``--eval-model`` (the shipped default model unless named).

    python scripts/bench_extract.py [--data ../shared/data] [--workloads a,b,eval] [--eval-model M] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest.mock import patch

import numpy as np
import torch
from PIL import Image

import zeroshot
from zeroshot import extraction
from zeroshot.backbone import create_untrained_folder, timm_text_pair_config
from zeroshot.datasets import NpzArrays, open_dataset

SEED = 0
BATCH = 64
REPEATS = 3


def plain_loop(model, preprocess, dataset, n: int) -> float:
    """What a user writes by hand: PIL open, preprocess, stack, encode_image batch by batch, no workers."""
    start = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, n, BATCH):
            images = []
            for i in range(lo, min(lo + BATCH, n)):
                raw = dataset.raw(i)
                img = Image.fromarray(raw) if isinstance(raw, np.ndarray) else Image.open(raw)
                images.append(preprocess(img.convert("RGB")))
            model.encode_image(torch.stack(images))
    return n / (time.perf_counter() - start)


def model_only(encode, size: int, n_batches: int, dtype=torch.uint8) -> float:
    """Forward passes on pre-made tensors: the bound no input pipeline can beat."""
    x = torch.randint(0, 255, (BATCH, 3, size, size), dtype=torch.uint8)
    x = x if dtype == torch.uint8 else x.float().div(255)
    encode(x)  # warm-up
    start = time.perf_counter()
    for _ in range(n_batches):
        encode(x)
    return n_batches * BATCH / (time.perf_counter() - start)


def decode_only(backbone, dataset) -> float:
    """Images/s of our decoding alone (open, decode, resize, crop to uint8) in this one thread: the work a decode
    worker does per image."""
    from zeroshot.images import decode_raw

    start = time.perf_counter()
    for i in range(len(dataset)):
        decode_raw(dataset.raw(i), backbone.transform)
    return len(dataset) / (time.perf_counter() - start)


def forward_threads(encode, threads: int) -> float:
    """Model-only images/s with ``threads`` torch threads (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return model_only(encode, 64, 30)
    finally:
        torch.set_num_threads(before)


def ceiling(decode_rate: float, forward_rates: dict[int, float], cores: int) -> float:
    """The most images/s any schedule can reach on ``cores`` cores: each image costs its decode (one core) plus its
    forward in the cheapest mode, in core-seconds (t threads at r img/s cost t / r), and no core ever idles."""
    return cores / (1 / decode_rate + min(t / r for t, r in forward_rates.items()))


def ours(backbone, dataset, **kwargs) -> float:
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        fs = zeroshot.extract(backbone, dataset, cache_dir=cache, batch_size=BATCH, progress=False, **kwargs)
        seconds = time.perf_counter() - start
    return len(fs) / seconds


class Subset(zeroshot.Dataset):
    """The first n samples of a dataset (same raw access)."""

    def __init__(self, base, n):
        self.base = base
        super().__init__(base.ids[:n], base.labels[:n], base.classes, f"{base.location}[:{n}]")

    def raw(self, i):
        return self.base.raw(i)


def row(name, plain, ours_rate, bound, **extra) -> dict:
    result = {"workload": name, "plain_img_s": round(plain, 1), "ours_img_s": round(ours_rate, 1),
              "model_only_img_s": round(bound, 1), "ours_vs_plain": round(ours_rate / plain, 3),
              "ours_vs_model_only": round(ours_rate / bound, 3), **extra}
    print(json.dumps(result), flush=True)
    return result


def workload_a(data: Path) -> list[dict]:
    import open_clip

    torch.manual_seed(SEED)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32")
    model.eval()
    backbone = zeroshot.load_backbone("ViT-B-32", device="cpu")
    dataset = Subset(NpzArrays(data / "cifar10" / "test.npz"), 2000)
    print(f"# (a) ViT-B-32 random init, fingerprint {backbone.fingerprint}, 2000 CIFAR-10 test images", flush=True)
    plain = plain_loop(model, preprocess, dataset, len(dataset))
    mine = ours(backbone, dataset)
    with torch.inference_mode():
        bound = model_only(lambda x: model.encode_image(x), 224, 8, dtype=torch.float32)
    return [row("a: ViT-B-32, CIFAR-10 x2000", plain, mine, bound, fingerprint=backbone.fingerprint)]


def workload_b(data: Path, model_dir: Path) -> list[dict]:
    import open_clip

    backbone = zeroshot.load_backbone(model_dir, device="cpu")
    draft = zeroshot.load_backbone(model_dir, device="cpu", decode="draft")
    model = backbone.model  # the untouched open_clip module (ours runs a channels_last, BN-folded copy)
    preprocess = open_clip.image_transform(64, is_train=False)
    print(f"# (b) resnet18@64 + MiniLM (untrained image tower, seed {SEED}), fingerprint {backbone.fingerprint}",
          flush=True)
    with torch.inference_mode():
        plain_bound = model_only(lambda x: model.encode_image(x), 64, 30, dtype=torch.float32)
    bound = model_only(backbone.encode_images, 64, 30)
    cores = min(os.cpu_count() or 1, torch.get_num_threads())
    forward = {t: forward_threads(backbone.encode_images, t) for t in range(1, cores + 1)}
    print(f"# model-only: plain open_clip module {plain_bound:.0f} img/s, ours (channels_last, conv+BN folded) "
          f"{bound:.0f} img/s; ours by torch threads: "
          + ", ".join(f"{t}: {r:.0f} img/s" for t, r in forward.items())
          + f"; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}", flush=True)
    rows = []
    for folder in ("dtd10/all", "flickr8k_1k/images"):
        dataset = open_dataset(data / folder)
        rates = {"plain": [], "exact": [], "draft": [], "one stream": []}
        for _ in range(REPEATS):  # interleaved rounds, median: these runs last seconds, so noise matters
            rates["plain"].append(plain_loop(model, preprocess, dataset, len(dataset)))
            rates["exact"].append(ours(backbone, dataset))
            rates["draft"].append(ours(draft, dataset))
            with patch.object(extraction, "cpu_streams", lambda: 1):  # as before issue 22: one batch at a time
                rates["one stream"].append(ours(backbone, dataset))
        plain, exact, fast, single = (float(np.median(rates[k])) for k in ("plain", "exact", "draft", "one stream"))
        name = f"b: resnet18@64, {folder} x{len(dataset)}, median of {REPEATS}"
        rows.append(row(name, plain, single, bound, decode="exact, one stream", fingerprint=backbone.fingerprint))
        for decoder, rate in ((backbone, exact), (draft, fast)):
            decoding = decode_only(decoder, dataset)
            top = ceiling(decoding, forward, cores)
            rows.append(row(name, plain, rate, bound, decode=decoder.transform.decode, fingerprint=decoder.fingerprint,
                            decode_only_img_s=round(decoding, 1), ceiling_img_s=round(top, 1),
                            ceiling_vs_plain=round(top / plain, 3)))
    return rows


def cold_warm_eval(data: Path, model: str) -> list[dict]:
    """Wall time of the whole `zeroshot eval` command, empty cache (features, text, remembered weight hashes) then
    warm cache."""
    exe = Path(sys.executable).with_name("zeroshot")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(exe), "eval", "--model", model, "--dataset", str(data / "cifar10" / "test.npz"),
               "--card", "cifar10", "--output", f"{tmp}/eval", "--quiet", "--device", "cpu"]
        env = {**os.environ, "ZEROSHOT_CACHE": f"{tmp}/cache"}
        times = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, env=env)
            times.append(time.perf_counter() - start)
    result = {"workload": f"zeroshot eval, CIFAR-10 test x10000, {model}", "cold_s": round(times[0], 2),
              "warm_s": round(min(times[1:]), 2), "cold_vs_warm": round(times[0] / min(times[1:]), 1)}
    print(json.dumps(result), flush=True)
    return [result]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--workloads", default="a,b,eval")
    parser.add_argument("--eval-model", default="default", help="the model of the cold vs warm eval workload")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    data = Path(args.data)
    torch.manual_seed(SEED)
    print(f"# seed {SEED}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, batch {BATCH}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = create_untrained_folder(Path(tmp) / "small", timm_text_pair_config("resnet18", 64), seed=SEED)
        chosen = args.workloads.split(",")
        if "a" in chosen:
            rows += workload_a(data)
        if "b" in chosen:
            rows += workload_b(data, model_dir)
        if "eval" in chosen:
            rows += cold_warm_eval(data, args.eval_model)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
