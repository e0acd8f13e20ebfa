"""``zeroshot export``: a model as ONNX for :mod:`zeroshot.runtime` (no torch where it is deployed)."""
from __future__ import annotations

import contextlib
import json
import os
from functools import partial
from pathlib import Path

from .options import MODEL_HELP, add_cache_arg, add_class_args, check_at_least, check_output, classes_and_templates, \
    loading_note, open_data


def cmd_export(args) -> None:
    from .. import load_backbone
    from ..onnx_export import export

    check_output("--output", args.output, folder=True)
    check_at_least("--calibration-size", args.calibration_size)
    if args.calibration and not args.int8:
        raise ValueError("--calibration is for --int8: add --int8 or drop --calibration")
    classes, templates = classes_and_templates(args) if args.classes or args.card else (None, None)
    calibration = open_data(args.calibration) if args.calibration else None
    backbone = load_backbone(args.model, device="cpu",
                             loading=contextlib.nullcontext if args.quiet else partial(loading_note, args.model))
    folder = export(backbone, args.output, classes=classes, templates=templates, text_tower=args.text_tower,
                    int8=args.int8, calibration=calibration, calibration_size=args.calibration_size, seed=args.seed,
                    cache_dir=args.cache_dir)
    info = json.loads((folder / "zeroshot_export.json").read_text())
    print(json.dumps({"output": str(folder), "fingerprint": info["fingerprint"],
                      "source_fingerprint": info["source"]["fingerprint"], "classes": info["classes"],
                      "files_mb": {p.name: round(p.stat().st_size / 1e6, 2) for p in sorted(Path(folder).iterdir())},
                      **{f"{part}_max_abs_difference": info[part]["max_abs_difference_vs_torch"]
                         for part in ("image_encoder", "text_encoder") if info[part]},
                      **{f"{part}_int8_mean_cosine": info[part]["int8"]["mean_cosine_vs_fp32"]
                         for part in ("image_encoder", "text_encoder") if info[part] and info[part]["int8"]}},
                     indent=1))


def add_commands(sub) -> None:
    p = sub.add_parser("export", help="export a model as ONNX (image tower, preprocessing, optional label set, text "
                       "tower, int8) for zeroshot.runtime, which needs no torch: pip install 'zeroshot[runtime]'")
    p.add_argument("model", nargs="?", default=os.environ.get("ZEROSHOT_MODEL", "default"),
                   help=f"{MODEL_HELP} ($ZEROSHOT_MODEL sets the default)")
    p.add_argument("--output", required=True, help="new folder to write (must not exist, or be empty)")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format")
    add_class_args(p, "comma-separated class names: store their embeddings, so the export classifies without a "
                      "text tower")
    p.add_argument("--text-tower", action="store_true",
                   help="also export the text tower and its tokenizer (open vocabulary: any --classes at run time)")
    p.add_argument("--int8", action="store_true",
                   help="quantise to int8: the image tower statically (activations calibrated on --calibration), "
                        "the text tower dynamically")
    p.add_argument("--calibration", metavar="DATA",
                   help="with --int8: unlabelled images like those the model will see (folder, .npz, .csv, tar shards)")
    p.add_argument("--calibration-size", type=int, default=256, help="images drawn from --calibration")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration sample")
    add_cache_arg(p)
    p.add_argument("--quiet", action="store_true", help="no 'loading model' lines")
    p.set_defaults(func=cmd_export)
