"""``zeroshot gen-eval``: generated images against real ones in one backbone's embedding space."""
from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from .options import (add_class_args, add_model_args, backbone_from_args, check_at_least, check_exists, check_output,
                      check_run_args, extract_from_args, open_data, report_failed)


def read_id_rows(path: str, column: str, what: str) -> dict[str, list[str]]:
    """A CSV with a header naming ``id`` and ``column``: id -> its values in file order (an id may repeat)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"id", column} <= set(reader.fieldnames):
            raise ValueError(f"{what} {path} needs a header with the columns id,{column}; it has "
                             f"{reader.fieldnames}")
        rows: dict[str, list[str]] = {}
        for row in reader:
            rows.setdefault(row["id"], []).append(row[column])
    return rows


def generated_labels(args, data) -> tuple[list[str] | None, np.ndarray | None]:
    """(class names, intended class per generated image, -1 = none) from ``--labels``: ``folder`` (the dataset's
    class folders or .npz labels) or a CSV ``id,label``; (None, None) without it."""
    if args.labels is None:
        return None, None
    if args.labels == "folder":
        if not data.classes or (data.labels < 0).all():
            raise ValueError(f"--labels folder: {data.location} has no class folders or labels; put each class's "
                             "images in a folder named after it, or give --labels FILE (CSV id,label)")
        return list(data.classes), data.labels
    check_exists("--labels", args.labels)
    named = {i: values[0] for i, values in read_id_rows(args.labels, "label", "--labels").items()}
    known = set(data.ids)
    unknown = [i for i in named if i not in known]
    if len(unknown) == len(named):
        raise ValueError(f"--labels {args.labels}: none of its ids are images of {data.location} (e.g. "
                         f"{unknown[:3]}, images are named like {data.ids[:3]})")
    names = sorted(set(named.values()))
    index = {name: i for i, name in enumerate(names)}
    return names, np.array([index[named[i]] if i in named else -1 for i in data.ids])


def class_set(args, label_names: list[str]) -> tuple[list[str], list[str]]:
    """(class names the zero-shot judge chooses among, templates): the intended classes, or ``--classes`` (which
    must include them); templates from ``--card`` (which must know the classes), else "a photo of a {}."."""
    from .. import load_card

    names = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else list(label_names)
    missing = [n for n in label_names if n not in names]
    if missing:
        raise ValueError(f"--classes lacks the intended classes {missing[:5]}; add them or drop --classes")
    if args.card:
        card = load_card(args.card)
        return names, card.select(names).templates
    return names, ["a photo of a {}."]


def aligned_labels(names: list[str], data_classes: list[str] | None, labels: np.ndarray) -> np.ndarray | None:
    """The reference set's labels renumbered into ``names`` (-1 where its class is not one of them)."""
    if not data_classes or (labels < 0).all():
        return None
    position = np.array([names.index(c) if c in names else -1 for c in data_classes] + [-1])
    return position[labels]  # label -1 picks the appended -1


def read_prompts(args, ids: list[str]) -> tuple[dict | None, dict | None]:
    """``--prompts`` (id -> [prompt]) and ``--references`` (id -> captions), read and checked against the generated
    images before any model loads; an image without a prompt or a reference is an error (the scores are per image)."""
    if args.prompts is None:
        return None, None
    check_exists("--prompts", args.prompts)
    prompts = read_id_rows(args.prompts, "prompt", "--prompts")
    missing = [i for i in ids if i not in prompts]
    if missing:
        raise ValueError(f"--prompts {args.prompts} has no prompt for {len(missing)} generated image(s), e.g. "
                         f"{missing[:3]}; give one row id,prompt per image")
    if args.references is None:
        return prompts, None
    check_exists("--references", args.references)
    captions = read_id_rows(args.references, "caption", "--references")
    if any(i not in captions for i in ids):
        raise ValueError(f"--references {args.references} has no caption for some generated images; give at least "
                         "one row id,caption per image")
    return prompts, captions


def prompt_embeddings(args, backbone, prompts: dict | None, captions: dict | None, ids: list[str]):
    """(prompt embedding per generated image, reference caption embeddings, their owner rows), in ``ids`` order."""
    from ..prompts import encode_texts_cached

    if prompts is None:
        return None, None, None
    P = encode_texts_cached(backbone, [prompts[i][0] for i in ids], args.cache_dir)
    if captions is None:
        return P, None, None
    owner = np.array([row for row, i in enumerate(ids) for _ in captions[i]])
    texts = [c for i in ids for c in captions[i]]
    return P, encode_texts_cached(backbone, texts, args.cache_dir), owner


def cmd_gen_eval(args) -> None:
    from .. import class_embeddings
    from ..extraction import is_cached
    from ..generative.evaluate import evaluate_generated
    from ..generative.report import markdown, plot_class_consistency, plot_fd_vs_n, plot_precision_recall
    from ..plotting import dataset_label, model_label

    start = time.perf_counter()
    check_run_args(args)
    check_at_least("--bootstrap", args.bootstrap, 2)
    check_output("--output", args.output, folder=True)
    if args.references and not args.prompts:
        raise ValueError("--references are scored against each image's prompt: add --prompts")
    generated, reference = open_data(args.generated), open_data(args.reference)
    label_names, labels = generated_labels(args, generated)
    names, templates = class_set(args, label_names) if label_names else (None, None)
    prompts, captions = read_prompts(args, generated.ids)
    backbone = backbone_from_args(args)
    cached = is_cached(backbone, reference, args.cache_dir)
    ref_start = time.perf_counter()
    R = extract_from_args(args, backbone, reference)
    ref_seconds = time.perf_counter() - ref_start
    G = extract_from_args(args, backbone, generated)
    position = {i: n for n, i in enumerate(generated.ids)}
    kept = np.array([position[i] for i in G.ids], dtype=np.int64)  # files that failed to decode drop out
    W = class_embeddings(backbone, names, templates, cache_dir=args.cache_dir) if names else None
    P, refs, owner = prompt_embeddings(args, backbone, prompts, captions, list(G.ids))
    result = evaluate_generated(
        G.features, R.features, generated_labels=labels[kept] if labels is not None else None,
        reference_labels=aligned_labels(names, reference.classes, R.labels) if names else None,
        class_names=names, class_embeddings=W, prompts=P, references=refs, reference_owner=owner,
        n_boot=args.bootstrap, seed=args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    report = {"model": backbone.name, "fingerprint": backbone.fingerprint, "generated": str(args.generated),
              "reference": str(args.reference), "seed": args.seed, "templates": templates,
              "reference_features_from_cache": cached, "reference_seconds": round(ref_seconds, 2), **result,
              "failed": {"generated": G.failed, "reference": R.failed},
              "seconds": round(time.perf_counter() - start, 2)}
    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    title = (f"{dataset_label(args.generated)} vs {dataset_label(args.reference)} · {model_label(backbone.name)} "
             f"({backbone.fingerprint[:8]})")
    (out / "results.md").write_text(markdown(result, title))
    plot_fd_vs_n(result, out / "fd_vs_n.png", title)
    plot_precision_recall(result, out / "precision_recall.png", title)
    written = ["results.json", "results.md", "fd_vs_n.png", "precision_recall.png"]
    if "class_consistency" in result:
        plot_class_consistency(result, out / "class_consistency.png", title)
        written.append("class_consistency.png")
    fd, m = result["frechet_distance"], result["manifold"]
    summary = {"fd": round(fd["fd"], 4), "fd_ci": [round(fd["ci_low"], 4), round(fd["ci_high"], 4)],
               "fd_floor": round(fd["floor_reference_halves"], 4), **{k: round(m[k], 4) for k in
                                                                     ("precision", "recall", "density", "coverage")}}
    if "class_consistency" in result:
        summary["class_consistency"] = round(result["class_consistency"]["generated"]["accuracy"], 4)
    if "clip_score" in result:
        summary["clip_score"] = round(result["clip_score"]["clip_score"], 4)
    print(json.dumps(summary, indent=1))
    print(f"wrote {', '.join(written)} to {out}", file=sys.stderr)
    print(f"reference features: {len(R):,} "
          + ("from the cache, nothing decoded" if cached else
             f"encoded in {ref_seconds:.1f} s and cached: the next evaluation against this reference reuses them"),
          file=sys.stderr)
    report_failed(G.failed)
    report_failed(R.failed)


def add_commands(sub) -> None:
    p = sub.add_parser("gen-eval", help="generated images against real ones: Fréchet distance, precision/recall, "
                       "density/coverage, CLIPScore, class consistency (results.json, results.md, plots)")
    p.add_argument("generated", help="the generated images: folder (class folders with --labels folder), .npz, "
                   ".csv or tar shards")
    p.add_argument("--reference", required=True, help="real images to compare with (any dataset kind; its features "
                   "are cached, so later runs against it only encode the generated side)")
    add_class_args(p, "comma-separated class names the zero-shot judge chooses among (default: the intended "
                      "classes of --labels)")
    p.add_argument("--labels", help="intended class of each generated image, for class consistency and the "
                   "per-class breakdown: 'folder' (the class folders / .npz labels) or a CSV id,label")
    p.add_argument("--prompts", help="CSV id,prompt: the prompt of each generated image (CLIPScore)")
    p.add_argument("--references", help="with --prompts: CSV id,caption, one or more reference captions per "
                   "generated image (RefCLIPScore)")
    p.add_argument("--bootstrap", type=int, default=100, help="bootstrap resamples for the FD interval")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the subsamples")
    p.add_argument("--output", required=True, help="output folder")
    add_model_args(p)
    p.set_defaults(func=cmd_gen_eval)
