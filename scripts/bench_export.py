"""Exported models (ONNX Runtime, fp32 and int8) against torch, side by side in one run (issue 20).

Per model: export with CIFAR-10's label set (fp32, then int8 calibrated on a seeded sample of 256 CIFAR-10 *train*
images); on the 10,000 CIFAR-10 test images the largest feature difference from torch and the zero-shot top-1 of
torch, ONNX fp32 and ONNX int8; the image tower's images/s at batch 32 and latency at batch 1 for the three, in
interleaved rounds on the same threads (best round); and, whole process, start to first prediction of
`zeroshot classify` on one new JPEG through the torch path (class embeddings already cached) and through the export.

    python scripts/bench_export.py [--models default,runs/student-v3/model] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import zeroshot
from zeroshot.onnx_export import export
from zeroshot.runtime import load_exported

SEED = 0
ROOT = Path(__file__).resolve().parents[1]


def best_rate(encode, batch: np.ndarray, rounds: int) -> float:
    """Images per second of ``encode(batch)``, warm-up excluded."""
    for _ in range(3):
        encode(batch)
    start = time.perf_counter()
    for _ in range(rounds):
        encode(batch)
    return rounds * len(batch) / (time.perf_counter() - start)


def process_seconds(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="default,runs/student-v3/model")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--out", default="bench_out/export", help="where the exports are written (replaced)")
    parser.add_argument("--cold-rounds", type=int, default=5)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    data, out = Path(args.data), Path(args.out)
    test, train = data / "cifar10" / "test.npz", data / "cifar10" / "train.npz"
    card = zeroshot.load_card("cifar10")
    threads = torch.get_num_threads()
    labels = zeroshot.open_dataset(test).labels
    print(f"# seed {SEED}, {threads} threads, data: cifar10 test (10,000), int8 calibration: 256 cifar10 train images")
    report = {}
    for spec in args.models.split(","):
        name = Path(spec).parent.name if spec != "default" else "default"
        backbone = zeroshot.load_backbone(spec, device="cpu")
        folders = {}
        for kind in ("fp32", "int8"):
            folder = out / f"{name}-{kind}"
            shutil.rmtree(folder, ignore_errors=True)
            start = time.perf_counter()
            folders[kind] = export(backbone, folder, classes=card.classes, templates=card.templates,
                                   int8=kind == "int8", calibration=train if kind == "int8" else None, seed=SEED)
            print(f"{name}: exported {kind} in {time.perf_counter() - start:.1f} s to {folder}", flush=True)
        runtimes = {kind: load_exported(folder, threads=threads) for kind, folder in folders.items()}
        W = runtimes["fp32"].class_embeddings
        features = {"torch": zeroshot.extract(backbone, test, progress=False).features}
        for kind, runtime in runtimes.items():
            ids, features[kind], failed = runtime.encode_dataset(zeroshot.open_dataset(test), batch_size=256)
            assert not failed and len(ids) == len(labels)
        top1 = {kind: float(((f @ W.T).argmax(1) == labels).mean()) for kind, f in features.items()}

        pixels = np.random.default_rng(SEED).integers(0, 256, (32, backbone.transform.size,
                                                              backbone.transform.size, 3), dtype=np.uint8)
        encoders = {"torch": lambda x: backbone.encode_images(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()),
                    **{kind: runtime.encode_arrays for kind, runtime in runtimes.items()}}
        rate, latency = {}, {}
        for _ in range(3):  # interleaved rounds, best of three
            for kind, encode in encoders.items():
                rate[kind] = max(rate.get(kind, 0), best_rate(encode, pixels, 20))
                latency[kind] = min(latency.get(kind, 1e9), 1000 / best_rate(encode, pixels[:1], 100))

        cold = {"torch": [], "onnx": []}
        cache = out / f"{name}-cache"
        shutil.rmtree(cache, ignore_errors=True)
        image = Image.fromarray(np.load(test, allow_pickle=False)["images"][0])
        zeroshot_cli = [sys.executable, "-m", "zeroshot"]
        image.save(out / "warm.jpg")
        subprocess.run(zeroshot_cli + ["classify", "--model", spec, str(out / "warm.jpg"), "--card", "cifar10",
                                       "--cache-dir", str(cache), "--quiet"], check=True, capture_output=True)
        for r in range(args.cold_rounds):  # a new file each round: its features are not cached, the text is
            jpg = out / f"cold-{r}.jpg"
            image.save(jpg)
            cold["torch"].append(process_seconds(zeroshot_cli + ["classify", "--model", spec, str(jpg), "--card",
                                                                 "cifar10", "--cache-dir", str(cache), "--quiet"]))
            cold["onnx"].append(process_seconds(zeroshot_cli + ["classify", "--model", str(folders["fp32"]),
                                                                str(jpg)]))
        report[name] = {
            "fingerprint": backbone.fingerprint,
            "export_fingerprints": {k: runtime.fingerprint for k, runtime in runtimes.items()},
            "max_abs_difference_fp32_vs_torch": float(np.abs(features["fp32"] - features["torch"]).max()),
            "cifar10_top1": top1,
            "int8_retained": round(top1["int8"] / top1["fp32"], 4),
            "int8_mean_cosine_vs_fp32": round(float((features["int8"] * features["fp32"]).sum(1).mean()), 4),
            "img_s_batch32": {k: round(v, 1) for k, v in rate.items()},
            "latency_ms_batch1": {k: round(v, 3) for k, v in latency.items()},
            "onnx_fp32_vs_torch_speed": round(rate["fp32"] / rate["torch"], 2),
            "int8_vs_fp32_speed": round(rate["int8"] / rate["fp32"], 2),
            "image_encoder_MB": {k: round((f / "image_encoder.onnx").stat().st_size / 1e6, 2)
                                 for k, f in folders.items()},
            "process_to_first_prediction_s": {k: round(statistics.median(v), 2) for k, v in cold.items()},
        }
        print(json.dumps({name: report[name]}, indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
