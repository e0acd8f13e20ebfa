"""Student vs teacher, side by side in one run (methods/distillation.md, section 4).

Speed: image-tower images/s at batch 32 and batch-1 latency, same threads, warm-up excluded, rounds interleaved;
size: image-tower parameters, MACs at the input size, weight-file MB. Quality on CIFAR-10 test with the teacher's
class embeddings (cifar10 card): zero-shot top-1 of both, retention, top-1 agreement, mean cosine between the two
feature sets; downstream: a 16-shot linear probe (train.npz support) and MCM AUROC against MNIST on each.

    python scripts/bench_student.py STUDENT_FOLDER [--teacher default] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from bench_export import best_rate

import zeroshot
from zeroshot.backbone import WEIGHTS_FILE
from zeroshot.evaluation.fewshot import sample_shots
from zeroshot.heads import MCM, LinearProbe, ZeroShotClassifier
from zeroshot.ood_metrics import auroc

SEED = 0


def images_per_second(backbone, batch: int, rounds: int) -> float:
    x = torch.randint(0, 256, (batch, 3, backbone.transform.size, backbone.transform.size), dtype=torch.uint8)
    return best_rate(backbone.encode_images, x, rounds)


def macs(backbone) -> float:
    """Multiply-accumulates of one image through the image tower (torch's flop counter / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, backbone.transform.size, backbone.transform.size)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        backbone.model.visual(x)
    return counter.get_total_flops() / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("student")
    parser.add_argument("--teacher", default="default")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    data = Path(args.data)
    models = {"teacher": zeroshot.load_backbone(args.teacher, device="cpu"),
              "student": zeroshot.load_backbone(args.student, device="cpu")}
    zeroshot.check_same_space(*models.values())
    print(f"# seed {SEED}, teacher {models['teacher'].fingerprint}, student {models['student'].fingerprint}, "
          f"{torch.get_num_threads()} threads, data: cifar10 test/train, mnist_rgb test")
    speed, latency = {}, {}
    for _ in range(3):  # interleaved rounds, best of three
        for name, model in models.items():
            speed[name] = max(speed.get(name, 0), images_per_second(model, 32, 20))
            latency[name] = min(latency.get(name, 1e9), 1000 / images_per_second(model, 1, 100))

    card = zeroshot.load_card("cifar10")
    W = zeroshot.class_embeddings(models["teacher"], card.classes, card.templates)
    row, features, predictions = {}, {}, {}
    for name, model in models.items():
        test = zeroshot.extract(model, data / "cifar10" / "test.npz", progress=False)
        train = zeroshot.extract(model, data / "cifar10" / "train.npz", progress=False)
        mnist = zeroshot.extract(model, data / "mnist_rgb" / "test.npz", progress=False)
        features[name] = np.asarray(test.features)
        predictions[name] = ZeroShotClassifier().fit(class_embeddings=W).predict(test.features)
        support = sample_shots(train.labels, 16, SEED)
        probe = LinearProbe(random_state=SEED).fit(train.features[support], train.labels[support])
        mcm = MCM().fit(class_embeddings=W)
        mcm_auroc = auroc(mcm.score_samples(test.features), mcm.score_samples(mnist.features))
        folder = Path(model.info["folder"])
        row[name] = {
            "img_s_batch32": round(speed[name], 1), "latency_ms_batch1": round(latency[name], 2),
            "image_params_M": round(sum(p.numel() for p in model.model.visual.parameters()) / 1e6, 2),
            "image_MMACs": round(macs(model) / 1e6, 1),
            "weights_MB": round((folder / WEIGHTS_FILE).stat().st_size / 2**20, 1),
            "cifar10_zero_shot_top1": float((predictions[name] == test.labels).mean()),
            "cifar10_linear_probe_16shot_top1": float((probe.predict(test.features) == test.labels).mean()),
            "mcm_auroc_cifar10_vs_mnist": round(float(mcm_auroc), 4),
        }
    teacher, student = row["teacher"], row["student"]
    row["student_vs_teacher"] = {
        "speed": round(student["img_s_batch32"] / teacher["img_s_batch32"], 2),
        "zero_shot_retained": round(student["cifar10_zero_shot_top1"] / teacher["cifar10_zero_shot_top1"], 3),
        "linear_probe_retained": round(student["cifar10_linear_probe_16shot_top1"]
                                       / teacher["cifar10_linear_probe_16shot_top1"], 3),
        "top1_agreement": float((predictions["student"] == predictions["teacher"]).mean()),
        "mean_cosine_cifar10": round(float((features["student"] * features["teacher"]).sum(1).mean()), 4),
        "size": round(student["weights_MB"] / teacher["weights_MB"], 2),
    }
    report = json.dumps(row, indent=1)
    print(report)
    if args.json:
        Path(args.json).write_text(report + "\n")


if __name__ == "__main__":
    main()
