"""What the sub-commands share: the model / run options and the steps built from them."""
from __future__ import annotations

import argparse
import os
import sys


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Options every command that runs a model shares."""
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--cache-dir", default=None, help="feature cache (default: $ZEROSHOT_CACHE or ~/.cache/zeroshot)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--decode``, ``--workers`` and the run options."""
    p.add_argument("--model", default=os.environ.get("ZEROSHOT_MODEL", "default"),
                   help="model folder, local-dir:PATH, open_clip NAME[/PRETRAINED], or 'default' (the shipped "
                        "offline model; $ZEROSHOT_MODEL overrides)")
    p.add_argument("--decode", default="exact", choices=["exact", "draft"],
                   help="draft: JPEG DCT-scaled decoding, faster, pixels differ slightly (own cache)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader decode workers")
    add_run_args(p)


def add_class_args(p: argparse.ArgumentParser, classes_help: str = "comma-separated class names, in label order") -> None:
    """``--card`` and ``--classes``: where class names and prompt templates come from."""
    p.add_argument("--card", help="dataset card giving class names and templates, e.g. cifar10")
    p.add_argument("--classes", help=classes_help)


def backbone_from_args(args):
    from .. import load_backbone

    return load_backbone(args.model, device=args.device, precision=args.precision, decode=args.decode)


def extract_from_args(args, backbone, data):
    from .. import extract

    return extract(backbone, data, cache_dir=args.cache_dir, batch_size=args.batch_size, num_workers=args.workers,
                   progress=not args.quiet)


def classes_and_templates(args, dataset_classes=None) -> tuple[list[str], list[str]]:
    """Class names and templates from ``--classes`` (templates from ``--card`` if given) or ``--card``."""
    from .. import load_card

    if args.classes:
        names = [c.strip() for c in args.classes.split(",") if c.strip()]
        templates = load_card(args.card).templates if args.card else ["a photo of a {}."]
        return names, templates
    if not args.card:
        raise ValueError("give --classes 'a,b,c' or --card NAME")
    card = load_card(args.card).select(dataset_classes)
    return card.classes, card.templates


def class_embeddings_from_args(args, backbone, dataset_classes=None):
    """(class names, (C, D) class text embeddings) from ``--classes`` / ``--card``, cached."""
    from .. import class_embeddings

    names, templates = classes_and_templates(args, dataset_classes)
    return names, class_embeddings(backbone, names, templates, cache_dir=args.cache_dir)


def report_failed(fs) -> None:
    """List the files a FeatureSet skipped on stderr."""
    if fs.failed:
        print(f"skipped {len(fs.failed)} file(s) that could not be decoded:", file=sys.stderr)
        for i, reason in fs.failed.items():
            print(f"  {i}: {reason}", file=sys.stderr)


def int_list(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]``."""
    return [int(v) for v in text.split(",") if v.strip()]
