"""Student vs teacher, side by side in one run: image-tower images/s (batch 32, same threads, warm-up excluded),
parameters and weight-file size; then CIFAR-10 test zero-shot top-1 of both with the teacher's class embeddings.

    python scripts/bench_student.py STUDENT_FOLDER [--teacher default]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import zeroshot
from zeroshot.backbone import WEIGHTS_FILE
from zeroshot.heads import ZeroShotClassifier


def images_per_second(backbone, size: int, rounds: int = 30) -> float:
    x = torch.randint(0, 256, (32, 3, size, size), dtype=torch.uint8)
    for _ in range(3):
        backbone.encode_images(x)
    start = time.perf_counter()
    for _ in range(rounds):
        backbone.encode_images(x)
    return rounds * 32 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("student")
    parser.add_argument("--teacher", default="default")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    args = parser.parse_args()
    teacher = zeroshot.load_backbone(args.teacher, device="cpu")
    student = zeroshot.load_backbone(args.student, device="cpu")
    print(f"# teacher {teacher.fingerprint}, student {student.fingerprint}, {torch.get_num_threads()} threads")
    speed = {}
    for _ in range(2):  # interleaved rounds, best of two
        for name, model in (("teacher", teacher), ("student", student)):
            speed[name] = max(speed.get(name, 0), images_per_second(model, model.transform.size))
    card = zeroshot.load_card("cifar10")
    W = zeroshot.class_embeddings(teacher, card.classes, card.templates)
    row = {}
    for name, model in (("teacher", teacher), ("student", student)):
        fs = zeroshot.extract(model, Path(args.data) / "cifar10" / "test.npz", progress=False)
        acc = float((ZeroShotClassifier().fit(classes=W).predict(fs.features) == fs.labels).mean())
        params = sum(p.numel() for p in model.model.visual.parameters())
        folder = Path(model.info["folder"])
        row[name] = {"img_s": round(speed[name], 1), "cifar10_top1": acc, "image_params_M": round(params / 1e6, 2),
                     "weights_MB": round((folder / WEIGHTS_FILE).stat().st_size / 2**20, 1)}
    row["ratio"] = {"speed": round(speed["student"] / speed["teacher"], 2),
                    "accuracy_retained": round(row["student"]["cifar10_top1"] / row["teacher"]["cifar10_top1"], 3)}
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
