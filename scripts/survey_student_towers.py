"""Which timm families could make a 4x-faster student? Image-tower speed of candidates against the default model's
tower (resnet10t at 64 px), in torch (conv+BN folded, channels_last, as zeroshot encodes) and exported to ONNX
Runtime, side by side in one run: batch 32, same threads, interleaved rounds, best of three. Speed does not depend
on the weights, so the towers are untrained (seeded); how much zero-shot accuracy a trained student keeps is
measured per trained student by scripts/bench_student.py.

    python scripts/survey_student_towers.py [--towers resnet10t_050,lcnet_050,...] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from bench_export import best_rate

from zeroshot.backbone import _fast_image_tower, build_model, timm_text_pair_config
from zeroshot.onnx_export import onnx_session, to_onnx, unit_rows_module

SEED = 0
TOWERS = ("resnet10t_050,lcnet_050,lcnet_075,lcnet_100,mobilenetv3_small_050,mobilenetv3_small_075,"
          "mobilenetv3_small_100,mobilenetv4_conv_small_050,ghostnet_050,repghostnet_050,mnasnet_small,tinynet_e")
REFERENCE = "resnet10t"  # the default model's image tower


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--towers", default=TOWERS)
    parser.add_argument("--size", type=int, default=64, help="input size (the default model's)")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    names = [REFERENCE] + [n for n in args.towers.split(",") if n != REFERENCE]
    x = np.random.default_rng(SEED).standard_normal((32, 3, args.size, args.size)).astype(np.float32)
    encoders, info = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            torch.manual_seed(SEED)
            visual = build_model(timm_text_pair_config(name, image_size=args.size)).visual.eval()
            fast = _fast_image_tower(visual, "cpu")
            path = Path(tmp) / f"{name}.onnx"
            to_onnx(unit_rows_module(visual, "forward"), torch.from_numpy(x[:2]), path, "pixel_values", "out",
                    {0: "batch"})
            session = onnx_session(path, threads)

            def torch_encode(batch, fast=fast):
                with torch.inference_mode():
                    return fast(torch.from_numpy(batch).contiguous(memory_format=torch.channels_last))

            encoders[name] = {"torch": torch_encode,
                              "onnx": lambda batch, s=session: s.run(None, {"pixel_values": batch})}
            info[name] = {"params_M": round(sum(p.numel() for p in visual.parameters()) / 1e6, 2)}
        speed = {}
        for _ in range(3):
            for name, pair in encoders.items():
                for kind, encode in pair.items():
                    speed[name, kind] = max(speed.get((name, kind), 0), best_rate(encode, x, 20))
    print(f"# seed {SEED}, {threads} threads, {args.size} px, batch 32, untrained towers; speed vs {REFERENCE} in "
          "the same runtime")
    print("| tower | params (M) | torch img/s | vs resnet10t | ONNX Runtime img/s | vs resnet10t (ORT) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in names:
        t, o = speed[name, "torch"], speed[name, "onnx"]
        info[name].update(torch_img_s=round(t, 1), onnx_img_s=round(o, 1),
                          torch_vs_reference=round(t / speed[REFERENCE, "torch"], 2),
                          onnx_vs_reference=round(o / speed[REFERENCE, "onnx"], 2))
        print(f"| {name} | {info[name]['params_M']} | {t:.0f} | {info[name]['torch_vs_reference']:.2f}x | {o:.0f} | "
              f"{info[name]['onnx_vs_reference']:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=1) + "\n")


if __name__ == "__main__":
    main()
