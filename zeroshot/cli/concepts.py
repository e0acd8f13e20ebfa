"""``zeroshot concepts count | fit | report``: how often each class occurs in a caption corpus, against its accuracy."""
from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

from .options import (add_class_args, add_engine_args, add_model_args, backbone_from_args, check_classes, check_engine_args,
                      check_exists, check_output, check_run_args, classes_and_templates, open_data, report_failed)

SYNONYM_SOURCES = ("card", "wordnet", "none")
COUNT_KINDS = ("text", "image", "integrated")
TAG_THRESHOLD = 0.15  # the default model: ~99th percentile of image-prompt cosines (model_zoo: precision 0.25 there)


def read_concept_file(path: str | Path) -> dict[str, list[str]]:
    """A concept file: one concept per line, optionally ``name: syn1, syn2``; blank lines and ``#`` comments skipped."""
    concepts: dict[str, list[str]] = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, synonyms = line.partition(":")
            concepts[name.strip()] = [s.strip() for s in synonyms.split(",") if s.strip()]
    if not concepts:
        raise ValueError(f"{path} names no concepts; write one per line, optionally 'name: synonym, synonym'")
    return concepts


def concept_names(args) -> list[str]:
    """Class names from ``--concepts FILE``, ``--classes`` or ``--card`` (exactly one source of names)."""
    if args.concepts:
        if args.classes or args.card:
            raise ValueError("give the concepts one way: --concepts FILE, or --card / --classes")
        return list(read_concept_file(args.concepts))
    return classes_and_templates(args)[0]


def concepts_from_args(args, names: list[str]) -> list:
    """One :class:`Concept` per name, its variants the name plus synonyms from ``--synonyms``: ``card`` (the card
    carries none, so the name alone, plus any a ``--concepts`` file gives), ``wordnet`` (the shipped WordNet extract),
    ``none``, or a concept file whose synonyms are merged by name."""
    from ..concepts.matching import Concept

    given = read_concept_file(args.concepts) if args.concepts else {}
    if args.synonyms == "wordnet":
        from ..concepts.wordnet import synonyms

        extra = {n: synonyms(n) for n in names}
    elif args.synonyms not in SYNONYM_SOURCES:
        extra = read_concept_file(args.synonyms)
    else:
        extra = {}
    if args.synonyms == "none":
        given = {}
    return [Concept(n, (*given.get(n, ()), *extra.get(n, ()))) for n in names]


def check_count_args(args) -> None:
    """The cheap checks of counting: the concept source, the synonym file, the lemmatiser name."""
    from ..concepts.lemmas import get_lemmatiser

    check_exists("--concepts", args.concepts)
    if args.synonyms not in SYNONYM_SOURCES:
        check_exists("--synonyms", args.synonyms)
    get_lemmatiser(args.lemmatiser)


def count_text(args, names: list[str], corpus: dict, engine: dict | None = None) -> tuple[list[dict], dict]:
    """Text-side counts of ``names`` in ``--corpus`` (``corpus``: its description) on ``engine`` (the
    :func:`engine_options`; default: local): counts.csv rows and the provenance that goes with them, the same for
    every engine, as the counts are."""
    from ..concepts.lemmas import get_lemmatiser
    from ..concepts.matching import count_corpus

    lemmatiser = get_lemmatiser(args.lemmatiser)
    index, counts = count_corpus(args.corpus, concepts_from_args(args, names), mode=args.mode, lemmatiser=lemmatiser,
                                 examples=3, column=args.column, **(engine or {}))
    rows = [{"concept": c.name, "text_count": c.count, "frequency": c.frequency, "variants": c.variants,
             "examples": c.examples} for c in counts]
    meta = {"corpus": corpus, "n_captions": index.n_captions, "lemmatiser": lemmatiser.name,
            "lemmatiser_version": lemmatiser.version, "mode": args.mode, "synonyms": args.synonyms}
    return rows, meta


def engine_options(args) -> dict:
    """``count_corpus``'s engine arguments from ``--engine``, ``--address`` and ``--num-workers``, checked before the
    corpus is read through for its sha256."""
    check_engine_args(args)
    return {"engine": args.engine, "address": args.address, "num_workers": args.num_workers}


def meta_path(counts_csv: str | Path) -> Path:
    """The provenance written beside ``counts.csv``: ``counts.meta.json``."""
    return Path(counts_csv).with_suffix(".meta.json")


def corpus_from_args(args) -> dict:
    """The description of ``--corpus`` (a missing or unknown corpus fails here, before any counting)."""
    from ..concepts.corpus import describe_corpus

    return describe_corpus(args.corpus)


def cmd_count(args) -> None:
    from ..concepts.report import write_counts_csv

    check_count_args(args)
    engine = engine_options(args)
    check_output("--output", args.output)
    names = concept_names(args)
    rows, meta = count_text(args, names, corpus_from_args(args), engine)
    write_counts_csv(args.output, rows)
    meta_path(args.output).write_text(json.dumps(meta, indent=1))
    print_table(rows)
    print(f"wrote {args.output} and {meta_path(args.output)}", file=sys.stderr)


def accuracy_from_metrics(path: str | Path) -> tuple[dict[str, float], dict]:
    """Per-class accuracy (%) from a ``zeroshot eval`` metrics.json (``per_class_recall``), and the file itself."""
    metrics = json.loads(Path(path).read_text())
    if "per_class_recall" not in metrics:
        raise ValueError(f"{path} has no per_class_recall; rerun zeroshot eval to write a metrics.json that has it")
    return {k: 100 * float(v) for k, v in metrics["per_class_recall"].items()}, metrics


def fit_and_write(out: Path, counts: dict[str, float], accuracy: dict[str, float], meta: dict, *, seed: int,
                  count: str, zero_counts: str) -> dict | None:
    """Fit the trend and write ``fit.json`` and ``trend.png`` in ``out``; returns the fit. A corpus that names too few
    of the concepts to fit anything (DTD textures in Flickr captions) is a finding, not a usage error: it warns,
    records why in ``fit.json`` (``fit: null``) and draws no plot."""
    from ..concepts.fit import fit_trend
    from ..concepts.report import plot_trend, trend_title, write_fit_json

    out.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "count": count, "seed": seed, "zero_counts": zero_counts}
    try:
        fit = fit_trend(counts, accuracy, seed=seed, zero_counts=zero_counts)
    except ValueError as exc:
        warnings.warn(f"no trend fitted: {exc}", stacklevel=2)
        write_fit_json(out / "fit.json", None, {**meta, "not_fitted": str(exc), "counts": counts})
        print(f"wrote {out / 'fit.json'} (no trend: too few concepts occur in the corpus)", file=sys.stderr)
        return None
    write_fit_json(out / "fit.json", fit, meta)
    corpus = Path(str(meta.get("corpus", {}).get("path", "the corpus"))).name
    model = f"{meta.get('model', '?')} ({str(meta.get('fingerprint', ''))[:12]})"
    plot_trend(out / "trend.png", fit["points"], fit,
               title=trend_title(model, corpus, int(meta.get("n_captions", 0)), fit, count), count=count)
    print(f"slope {fit['slope']:.2f} accuracy points per 10x captions, 95 % CI [{fit['slope_ci95'][0]:.2f}, "
          f"{fit['slope_ci95'][1]:.2f}], Pearson r = {fit['pearson']['r'] or float('nan'):.2f}, n = {fit['n']} "
          f"({len(fit['zero_count'])} with count 0)")
    print(f"wrote {out / 'fit.json'} and {out / 'trend.png'}", file=sys.stderr)
    return fit


def cmd_fit(args) -> None:
    from ..concepts.report import read_counts_csv

    check_exists("--counts", args.counts)
    check_exists("--metrics", args.metrics)
    check_output("--output", args.output, folder=True)
    counts = read_counts_csv(args.counts, f"{args.count}_count")
    accuracy, metrics = accuracy_from_metrics(args.metrics)
    provenance = meta_path(args.counts)
    meta = json.loads(provenance.read_text()) if provenance.is_file() else {"counts": str(args.counts)}
    meta |= {k: metrics.get(k) for k in ("model", "fingerprint", "dataset", "card")}
    fit_and_write(Path(args.output), counts, accuracy, meta, seed=args.seed, count=args.count,
                  zero_counts=args.zero_counts)


def per_class_accuracy(args, data) -> tuple[dict[str, float], object]:
    """Zero-shot per-class recall (%) on ``data``, computed as ``zeroshot eval`` does; and the backbone."""
    from .classify import zero_shot_eval

    backbone = backbone_from_args(args)
    fs, _, metrics = zero_shot_eval(args, backbone, data)
    report_failed(fs.failed)
    return {k: 100 * float(v) for k, v in metrics["per_class_recall"].items()}, backbone


def cmd_report(args) -> None:
    from ..concepts.report import write_counts_csv

    check_run_args(args)
    check_count_args(args)
    if args.count != "text" and args.corpus != "default-model":
        raise ValueError(f"--count {args.count} needs the image side, known only for --corpus default-model")
    out = Path(args.output)
    check_output("--output", out, folder=True)
    data = open_data(args.dataset)
    check_classes(args, data)
    if args.corpus == "default-model":
        check_exists("--data", Path(args.data) / "tinyimagenet")
    elif args.tagger:
        raise ValueError("--tagger tags the training images of --corpus default-model; other corpora have no images")
    corpus = None if args.corpus == "default-model" else corpus_from_args(args)
    accuracy, backbone = per_class_accuracy(args, data)
    names = list(accuracy)
    rows, meta = count_text(args, names, corpus) if corpus else count_default_model(args, names)
    out.mkdir(parents=True, exist_ok=True)
    write_counts_csv(out / "counts.csv", rows)
    print_table(rows, accuracy)
    counts = {r["concept"]: r[f"{args.count}_count"] for r in rows}
    meta |= {"model": args.model, "fingerprint": backbone.fingerprint, "dataset": str(args.dataset),
             "card": args.card, "synonyms": args.synonyms}
    fit_and_write(out, counts, accuracy, meta, seed=args.seed, count=args.count, zero_counts=args.zero_counts)
    print_fit_grid(rows, accuracy, seed=args.seed)


def print_fit_grid(rows: list[dict], accuracy: dict[str, float], *, seed: int) -> None:
    """Slope, CI, Pearson and Spearman for every measured count and both zero-count rules, side by side: the
    paper's notebooks fit zero counts at 1, the spec's default leaves them out, and the choice moves r a lot."""
    from ..concepts.fit import ZERO_COUNTS, fit_trend

    print(f"{'count':11s} {'zero counts':12s} {'n':>3s} {'slope':>7s} {'95 % CI':>17s} {'r':>6s} {'rho':>6s}")
    for kind in (k for k in COUNT_KINDS if rows and rows[0].get(f"{k}_count") is not None):
        for rule in ZERO_COUNTS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    fit = fit_trend({r["concept"]: r[f"{kind}_count"] for r in rows}, accuracy, seed=seed,
                                    zero_counts=rule)
                except ValueError as exc:
                    print(f"{kind:11s} {rule:12s} not fitted: {exc}")
                    continue
            lo, hi = fit["slope_ci95"]
            print(f"{kind:11s} {rule:12s} {fit['n']:3d} {fit['slope']:7.2f} [{lo:7.2f}, {hi:7.2f}] "
                  f"{fit['pearson']['r'] or float('nan'):6.2f} {fit['spearman']['rho'] or float('nan'):6.2f}")


def count_default_model(args, names: list[str]) -> tuple[list[dict], dict]:
    """Text, image and integrated counts of ``names`` in the default model's own training corpus (methods §1c):
    counts.csv rows and their provenance, from :mod:`zeroshot.concepts.image_side`."""
    from ..concepts.default_model import default_model_counts

    rows, meta = default_model_counts(concepts_from_args(args, names), data=args.data, mode=args.mode,
                                      lemmatiser=args.lemmatiser, tagger=tagger_from_args(args, names))
    meta["image_side"] = (f"CLIP-tagged by {args.tagger} at cosine >= {args.tag_threshold}" if args.tagger else
                          "Tiny ImageNet labels mapped to the concepts through WordNet descendants")
    return rows, meta


def tagger_from_args(args, names: list[str]):
    """With ``--tagger``: a callable tagging every training image of the corpus with that backbone (the concepts'
    card prompts, cosine >= ``--tag-threshold``); None otherwise."""
    if not args.tagger:
        return None
    from .. import class_embeddings
    from ..concepts.default_model import corpus_tags

    print(f"note: the image side is tagged by {args.tagger}: tagging a model's own training images with that same "
          "model is circular, so read its image and integrated counts as the model's own opinion", file=sys.stderr)
    tagger = backbone_from_args(args, args.tagger)
    W = class_embeddings(tagger, names, classes_and_templates(args)[1], cache_dir=args.cache_dir,
                         progress=not args.quiet)
    return lambda corpus: corpus_tags(corpus, tagger, W, args.tag_threshold, cache_dir=args.cache_dir,
                                      progress=not args.quiet)


def print_table(rows: list[dict], accuracy: dict[str, float] | None = None) -> None:
    """A short table: concept, its counts, and its accuracy when known."""
    kinds = [k for k in ("text_count", "image_count", "integrated_count") if any(r.get(k) is not None for r in rows)]
    print(f"{'concept':24s} " + " ".join(f"{k.split('_')[0]:>10s}" for k in kinds) + ("  accuracy" if accuracy else ""))
    for r in rows:
        cells = " ".join(f"{'' if r.get(k) is None else r[k]:>10}" for k in kinds)
        acc = f"  {accuracy[r['concept']]:7.1f}%" if accuracy else ""
        print(f"{r['concept'][:24]:24s} {cells}{acc}")


def add_count_args(p) -> None:
    """How captions are matched: corpus column, synonyms, match mode, lemmatiser."""
    p.add_argument("--column", help="CSV/TSV/parquet column or JSONL field holding the caption (default: caption)")
    p.add_argument("--synonyms", default="wordnet",
                   help="wordnet (the first noun sense's lemmas, from the shipped WordNet extract), card "
                        "(names only: the shipped cards carry no synonyms), none, or a concept file "
                        "'name: syn1, syn2'")
    p.add_argument("--mode", default="all_unigrams", choices=["all_unigrams", "phrase"],
                   help="all_unigrams: every word of a name in the caption (the paper); phrase: contiguous")
    p.add_argument("--lemmatiser", default="lemminflect",
                   help="lemminflect, simplemma, spacy-lookups, spacy:MODEL or none")


def add_fit_args(p) -> None:
    """How the trend is fitted: the bootstrap seed and what a zero count means."""
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--zero-counts", default="exclude", choices=["exclude", "as_one"],
                   help="concepts never counted: left out of the fit (exclude), or fitted at count 1 as the paper's "
                        "notebooks do (as_one)")


def add_commands(sub) -> None:
    concepts = sub.add_parser("concepts", help="concept frequency in a caption corpus vs zero-shot accuracy")
    concepts_sub = concepts.add_subparsers(dest="concepts_command", required=True)

    p = concepts_sub.add_parser("count", help="count captions mentioning each class (counts.csv)")
    p.add_argument("--corpus", required=True, help="caption file: .txt, .csv/.tsv, .jsonl, .parquet, or tar shards")
    add_class_args(p)
    p.add_argument("--concepts", help="concept file: one per line, optionally 'name: syn1, syn2'")
    add_count_args(p)
    p.add_argument("--output", required=True, help="counts.csv to write (its provenance goes to counts.meta.json)")
    add_engine_args(p, workers_help="Ray tasks at once, one partition of the corpus each (default: one per CPU)")
    p.set_defaults(func=cmd_count)

    p = concepts_sub.add_parser("fit", help="fit accuracy against log frequency (fit.json + trend.png)")
    p.add_argument("--counts", required=True, help="counts.csv from zeroshot concepts count")
    p.add_argument("--metrics", required=True, help="metrics.json from zeroshot eval (per_class_recall)")
    p.add_argument("--count", default="text", choices=COUNT_KINDS, help="which count to fit")
    add_fit_args(p)
    p.add_argument("--output", required=True, help="output folder")
    p.set_defaults(func=cmd_fit)

    p = concepts_sub.add_parser("report", help="eval + count + fit in one go (counts.csv, fit.json, trend.png)")
    p.add_argument("--dataset", required=True, help="labelled dataset for per-class zero-shot accuracy")
    p.add_argument("--card", required=True, help="dataset card: class names and templates")
    p.add_argument("--corpus", required=True,
                   help="caption file, or default-model: the shipped default model's own training captions "
                        "(text, image and integrated counts)")
    add_count_args(p)
    p.add_argument("--count", default="text", choices=COUNT_KINDS,
                   help="which count to fit; image and integrated need --corpus default-model")
    p.add_argument("--tagger", help="with --corpus default-model: a backbone that tags every training image (cosine "
                   "to the class prompts >= --tag-threshold) instead of the Tiny ImageNet labels")
    p.add_argument("--tag-threshold", type=float, default=TAG_THRESHOLD,
                   help="cosine a tagged image reaches")
    p.add_argument("--data", default=os.environ.get("ZEROSHOT_SHARED_DATA", "../shared/data"),
                   help="with --corpus default-model: the shared data folder the default model trained on "
                        "(tinyimagenet/ and flickr8k_1k/; $ZEROSHOT_SHARED_DATA sets the default)")
    add_fit_args(p)
    p.add_argument("--output", required=True, help="output folder")
    add_model_args(p)
    p.set_defaults(func=cmd_report, classes=None, concepts=None)
