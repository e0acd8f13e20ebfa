"""Benchmarks over models x datasets x tasks, one CLIP_benchmark result JSON per (model, dataset, task).

CLIP_benchmark (``clip_benchmark eval``) writes ``{dataset, model, pretrained, task, metrics, language}`` per run
and ``clip_benchmark build`` flattens ``metrics`` into CSV columns; our files add the backbone fingerprint, the data
location, sample counts and timings beside those keys, so CB's ``build`` reads them unchanged. Every image and
prompt goes through the feature and text caches, so rerunning a grid costs reading arrays, not encoding images.
"""
from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TASKS = ("zeroshot_classification", "zeroshot_retrieval", "linear_probe", "fewshot")
LANGUAGE = "en"  # every card's class names and templates are English
SUPPORT_PER_CLASS = 16  # linear_probe / fewshot on a set without a train split: first 16 per class support, rest test

# name -> (evaluation data, card, labelled support data or None), paths under the shared data folder
REGISTRY: dict[str, tuple[str, str, str | None]] = {
    "cifar10": ("cifar10/test.npz", "cifar10", "cifar10/train.npz"),
    "tinyimagenet-val": ("tinyimagenet/val", "tinyimagenet", None),
    "dtd10": ("dtd10/all", "dtd", None),
    "mnist": ("mnist_rgb/test.npz", "mnist", None),
    "flickr8k": ("flickr8k_1k", "flickr8k_concepts", None),  # captions: retrieval, and multi-label concepts
}


def default_data_root() -> Path:
    """Where registry names point: ``$ZEROSHOT_SHARED_DATA``, else ``../shared/data``."""
    return Path(os.environ.get("ZEROSHOT_SHARED_DATA", "../shared/data"))


@dataclass(frozen=True)
class BenchmarkDataset:
    """One evaluation set: ``name`` as results report it, its data, the card naming its classes (None: retrieval
    only), labelled ``support`` images for linear_probe / fewshot (None: split ``data`` per class)."""

    name: str
    data: Path
    card: str | None = None
    support: Path | None = None

    @property
    def captions(self) -> bool:
        """A caption folder (``images/`` + ``captions.csv``): retrieval, and multi-label classes from the captions."""
        return (self.data / "captions.csv").is_file() and (self.data / "images").is_dir()

    def tasks(self) -> tuple[str, ...]:
        """The tasks this data can be evaluated on (CLIP_benchmark's ``--task auto``, several at once)."""
        if self.captions:
            return ("zeroshot_classification",) * bool(self.card) + ("zeroshot_retrieval",)
        return ("zeroshot_classification", "linear_probe", "fewshot") if self.card else ()


def read_list(value: str) -> list[str]:
    """A comma-separated list, or (CLIP_benchmark's convention) a text file naming one entry per line; blank lines
    and ``#`` comments are skipped. ``"a,b"`` -> ``["a", "b"]``."""
    path = Path(value).expanduser()
    if path.is_file() and path.suffix in (".txt", ".list", ""):
        lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
        items = [line for line in lines if line]
        if not items:
            raise ValueError(f"{value} lists nothing; write one entry per line")
        return items
    return [item.strip() for item in value.split(",") if item.strip()]


def resolve_datasets(names: Iterable[str], *, data_root: str | os.PathLike | None = None,
                     card: str | None = None) -> list[BenchmarkDataset]:
    """Registry names (under ``data_root``) or paths (classes from ``card``) as :class:`BenchmarkDataset`; an
    unknown name or a missing path fails here, before any model loads."""
    import difflib

    root = Path(data_root) if data_root is not None else default_data_root()
    out = []
    for name in names:
        if name in REGISTRY:
            data, own_card, support = REGISTRY[name]
            ds = BenchmarkDataset(name, root / data, own_card, root / support if support else None)
            if not ds.data.exists():
                raise FileNotFoundError(f"dataset {name}: {ds.data} does not exist; pass --data-root (the folder "
                                        "holding cifar10/, tinyimagenet/ ...) or set ZEROSHOT_SHARED_DATA")
        elif Path(name).expanduser().exists():
            ds = BenchmarkDataset(name, Path(name).expanduser(), card)
        else:
            close = difflib.get_close_matches(name, REGISTRY, n=1)
            raise ValueError(f"unknown dataset {name!r}{f' (did you mean {close[0]!r}?)' if close else ''}; give "
                             f"one of {', '.join(REGISTRY)} or an existing path (with --card for its classes)")
        out.append(ds)
    if card and all(ds.name in REGISTRY for ds in out):
        raise ValueError(f"--card {card} names the classes of datasets given as paths, and every dataset here is a "
                         "registry name with its own card: drop --card")
    return out


def model_and_tag(spec: str) -> tuple[str, str | None]:
    """CLIP_benchmark's (model, pretrained) of a ``--models`` entry: open_clip ``NAME/TAG`` splits; a folder,
    ``default``, ``local-dir:`` and ``hf-hub:`` names stay whole (no tag)."""
    from ..backbone import looks_like_path

    whole = spec == "default" or spec.startswith(("local-dir:", "hf-hub:")) or looks_like_path(spec) \
        or Path(spec).expanduser().is_dir()
    if whole or "/" not in spec:
        return spec, None
    name, tag = spec.split("/", 1)
    return name, tag


def slug(text: str) -> str:
    """``runs/student/model`` -> ``runs-student-model``: a name part safe in a file name."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).strip("-.") or "x"


def result_path(folder: str | os.PathLike, dataset: str, model: str, pretrained: str, task: str) -> Path:
    """CLIP_benchmark's default output name, ``{dataset}_{pretrained}_{model}_{language}_{task}.json``."""
    return Path(folder) / f"{slug(dataset)}_{slug(pretrained)}_{slug(model)}_{LANGUAGE}_{task}.json"


@dataclass
class Context:
    """What every run of one model shares: its backbone, the run options and the features extracted so far (an
    image set is read from the cache once, however many tasks use it)."""

    backbone: object
    cache_dir: str | os.PathLike | None
    extract_options: dict
    leaked: set[tuple[str, str]]
    shots: tuple[int, ...]
    seeds: tuple[int, ...]
    features: dict

    def labelled(self, spec: Path, *, drop_leaked: bool = True):
        """(FeatureSet of the labelled, decodable, not leaked images of ``spec``, how many were left out as leaked)."""
        from ..datasets import open_dataset
        from ..extraction import extract

        if spec not in self.features:
            dataset = open_dataset(spec)
            fs = extract(self.backbone, dataset, cache_dir=self.cache_dir, **self.extract_options)
            self.features[spec] = fs, np.isin(fs.ids, sorted(self.leaked_ids(spec, dataset.location)))
        fs, leaked = self.features[spec]
        leaked = leaked if drop_leaked else np.zeros(len(fs), bool)
        return fs.subset(np.flatnonzero((fs.labels >= 0) & ~leaked)), int(leaked.sum())

    def leaked_ids(self, spec: Path, location: str | None = None) -> set[str]:
        """Ids of ``spec``'s images named in the ``--exclude-leaked`` pairs (matched by the data's location; without
        pairs the data is not opened a second time just to learn it)."""
        if not self.leaked:
            return set()
        if location is None:
            from ..datasets import open_dataset

            location = open_dataset(spec).location
        return {i for where, i in self.leaked if where == location}

    def class_embeddings(self, card: str, dataset_classes: list[str] | None):
        from ..prompts import class_embeddings, load_card

        selected = load_card(card).select(dataset_classes)
        return class_embeddings(self.backbone, selected.classes, selected.templates, cache_dir=self.cache_dir)

    def support_and_test(self, ds: BenchmarkDataset):
        """(support, test, leaked count): the dataset's train split, or its first 16 images per class."""
        from .fewshot import split_per_class

        test, n_leaked = self.labelled(ds.data)
        if ds.support is not None:
            return self.labelled(ds.support, drop_leaked=False)[0], test, n_leaked
        support_rows, test_rows = split_per_class(test.labels, SUPPORT_PER_CLASS)
        return test.subset(support_rows), test.subset(test_rows), n_leaked


def zeroshot_classification(ctx: Context, ds: BenchmarkDataset) -> dict:
    """CB's ``acc1``, ``acc5``, ``mean_per_class_recall``; on a caption folder, its multi-label
    ``mean_average_precision`` over the card's concepts."""
    from ..metrics import zero_shot_metrics

    if ds.captions:
        from ..prompts import load_card
        from .multilabel import evaluate_multilabel

        card = load_card(ds.card)
        found = evaluate_multilabel(ctx.backbone, ds.data, card.classes, card.templates, cache_dir=ctx.cache_dir,
                                    extract_options=ctx.extract_options, exclude=ctx.leaked_ids(ds.data / "images"))
        return {"metrics": {"mean_average_precision": found["mean_average_precision"]}, "n": found["n_images"],
                "chance_mean_average_precision": found["chance_mean_average_precision"],
                "excluded_leaked": found["n_excluded"], "failed": len(found["failed"])}
    fs, n_leaked = ctx.labelled(ds.data)
    W = ctx.class_embeddings(ds.card, fs.classes)
    found = zero_shot_metrics(fs.features, fs.labels, W, ctx.backbone.logit_scale)
    metrics = {k: found[k] for k in ("acc1", "acc5", "mean_per_class_recall")}
    return {"metrics": metrics, "n": found["n"], "excluded_leaked": n_leaked, "failed": len(fs.failed)}


def zeroshot_retrieval(ctx: Context, ds: BenchmarkDataset) -> dict:
    """CB's ``image_retrieval_recall@k`` / ``text_retrieval_recall@k`` for k = 1, 5, 10."""
    from .retrieval import evaluate_retrieval

    found = evaluate_retrieval(ctx.backbone, ds.data, cache_dir=ctx.cache_dir, extract_options=ctx.extract_options,
                               exclude=ctx.leaked_ids(ds.data / "images"))
    metrics = {k: v for k, v in found.items() if "recall@" in k}
    return {"metrics": metrics, "n": found["n_images"], "n_texts": found["n_texts"],
            "excluded_leaked": found["n_excluded"], "failed": len(found["failed"])}


def linear_probe(ctx: Context, ds: BenchmarkDataset) -> dict:
    """CB's ``lp_acc1``, ``lp_acc5``, ``lp_mean_per_class_recall``: :class:`~zeroshot.heads.LinearProbe` (C chosen
    on a validation split of the support set) fitted on every support image."""
    from ..heads import LinearProbe
    from ..metrics import classification_metrics

    support, test, n_leaked = ctx.support_and_test(ds)
    probe = LinearProbe(random_state=ctx.seeds[0]).fit(np.asarray(support.features), support.labels)
    scores = np.full((len(test), len(test.classes)), -np.inf)
    scores[:, probe.classes_] = probe.decision_function(np.asarray(test.features))  # classes absent from support
    found = classification_metrics(scores, test.labels)
    metrics = {f"lp_{k}": found[k] for k in ("acc1", "acc5", "mean_per_class_recall")}
    return {"metrics": metrics, "n": found["n"], "n_support": len(support), "C": float(probe.chosen_["C"]),
            "excluded_leaked": n_leaked, "failed": len(test.failed)}


def fewshot(ctx: Context, ds: BenchmarkDataset) -> dict:
    """Top-1 of every few-shot head per shot count, mean over seeds (``{head}_{k}shot_acc1``), and
    ``fewshot_acc1``: the best head's at the largest shot count (named in ``best_head``)."""
    from .fewshot import run_fewshot, summarise

    support, test, n_leaked = ctx.support_and_test(ds)
    W = ctx.class_embeddings(ds.card, test.classes)
    rows = run_fewshot(np.asarray(support.features), support.labels, np.asarray(test.features), test.labels, W,
                       shots=ctx.shots, seeds=ctx.seeds, logit_scale=ctx.backbone.logit_scale)
    summary = [s for s in summarise(rows) if s["mean"] is not None]
    metrics = {f"{s['head']}_{s['shots']}shot_acc1": s["mean"] for s in summary}
    top = max((s for s in summary if s["shots"] == max(ctx.shots)), key=lambda s: s["mean"])
    metrics["fewshot_acc1"] = top["mean"]
    return {"metrics": metrics, "best_head": top["head"], "n": len(test), "n_support": len(support),
            "shots": list(ctx.shots), "seeds": list(ctx.seeds), "excluded_leaked": n_leaked,
            "failed": len(test.failed)}


EVALUATORS: dict[str, Callable[[Context, BenchmarkDataset], dict]] = {
    "zeroshot_classification": zeroshot_classification, "zeroshot_retrieval": zeroshot_retrieval,
    "linear_probe": linear_probe, "fewshot": fewshot}


def check_tasks(tasks: Iterable[str]) -> list[str]:
    """The task names, or a ValueError naming the first unknown one and the choices."""
    tasks = list(tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task {unknown[0]!r}; choose from {', '.join(TASKS)}")
    return tasks


def plan(datasets: list[BenchmarkDataset], tasks: Iterable[str]) -> list[tuple[BenchmarkDataset, str]]:
    """The (dataset, task) pairs to run: each requested task on every dataset that has it. A task no dataset has,
    or a dataset that gets no task, is an error naming what would make it run."""
    tasks = check_tasks(tasks)
    pairs = [(ds, t) for ds in datasets for t in tasks if t in ds.tasks()]
    for task in tasks:
        if not any(t == task for _, t in pairs):
            raise ValueError(f"no dataset given supports {task}: " + ("it needs a caption folder (images/ + "
                             "captions.csv) such as flickr8k" if task == "zeroshot_retrieval" else
                             "it needs labelled images and a card (--card for a path)"))
    for ds in datasets:
        if not any(d is ds for d, _ in pairs):
            raise ValueError(f"dataset {ds.name} supports none of the tasks {', '.join(tasks)} (it supports "
                             f"{', '.join(ds.tasks()) or 'nothing: a path needs --card'})")
    return pairs


def run_benchmark(models: list[str], datasets: list[BenchmarkDataset], tasks: Iterable[str],
                  output: str | os.PathLike, *, load: Callable[[str], object], skip_existing: bool = False,
                  leaked: set[tuple[str, str]] = frozenset(), cache_dir: str | os.PathLike | None = None,
                  extract_options: dict | None = None, shots: tuple[int, ...] = (1, 4, 16),
                  seeds: tuple[int, ...] = (1, 2, 3), report: Callable[[dict, Path], None] | None = None) -> list[Path]:
    """Evaluate every model on every (dataset, task) of :func:`plan`, writing one result JSON each in ``output``
    (:func:`result_path`); returns the paths written or kept. ``load(spec)`` gives a backbone; ``skip_existing``
    keeps results already written for the same model fingerprint; ``leaked`` ((data location, id) pairs, e.g.
    :func:`zeroshot.retrieval.dedup.flagged_images` of a ``zeroshot dedup`` pairs.csv) drops those images from
    evaluation sets; ``report(result, path)`` is called after each run."""
    from ..cache import atomic_write_json

    pairs = plan(datasets, tasks)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in models:
        backbone = load(spec)
        model, tag = model_and_tag(spec)
        pretrained = tag or backbone.fingerprint
        ctx = Context(backbone, cache_dir, dict(extract_options or {}), set(leaked), tuple(shots), tuple(seeds), {})
        for ds, task in pairs:
            path = result_path(output, ds.name, model, pretrained, task)
            paths.append(path)
            if skip_existing and path.is_file():
                continue
            start = time.perf_counter()
            found = EVALUATORS[task](ctx, ds)
            result = {"dataset": ds.name, "model": model, "pretrained": pretrained, "task": task,
                      "metrics": found.pop("metrics"), "language": LANGUAGE, "fingerprint": backbone.fingerprint,
                      "data": str(ds.data), "card": ds.card if task != "zeroshot_retrieval" else None, **found,
                      "seconds": round(time.perf_counter() - start, 3)}
            atomic_write_json(path, result)
            if report:
                report(result, path)
    return paths


def print_result(result: dict, path: Path) -> None:
    """One stderr line per finished run: where, what, the main metric and how long it took."""
    from .benchmark_report import main_metric

    name, value = main_metric(result)
    print(f"{result['dataset']} · {result['model']} · {result['task']}: {name} {value:.4f} "
          f"({result['seconds']:.1f} s) -> {path.name}", file=sys.stderr)
