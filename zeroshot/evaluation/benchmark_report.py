"""``benchmark build``: result JSON files (ours or CLIP_benchmark's) into one CSV, a Markdown table and a PNG.

The CSV follows ``clip_benchmark build``: one row per file, ``metrics`` flattened into columns, ``model_fullname``
= ``model + " " + pretrained``; columns in a fixed order (CB's come in set order). The Markdown table and the PNG
show each task's main metric, models as rows and datasets as columns.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

REQUIRED = ("dataset", "model", "pretrained", "task", "metrics")
FIRST_COLUMNS = ("dataset", "model", "pretrained", "model_fullname", "task", "language")
# per task, the metric its table shows: the first one a result has (multi-label classification reports mAP)
MAIN_METRICS = {"zeroshot_classification": ("acc1", "mean_average_precision"),
                "zeroshot_retrieval": ("image_retrieval_recall@5",),
                "linear_probe": ("lp_acc1",), "fewshot": ("fewshot_acc1",)}
SHORT_NAMES = {"acc1": "top-1", "mean_average_precision": "mAP", "image_retrieval_recall@5": "text->image R@5",
               "lp_acc1": "linear probe top-1", "fewshot_acc1": "few-shot top-1"}


def result_files(paths: list[str | os.PathLike]) -> list[Path]:
    """The ``.json`` files named, and those directly inside named folders (as ``clip_benchmark build`` reads)."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix == ".json")
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path} does not exist; give result .json files or folders holding them")
    if not files:
        raise ValueError(f"no .json result files in {', '.join(map(str, paths))}; run zeroshot benchmark first")
    return files


def load_results(paths: list[str | os.PathLike]) -> list[dict]:
    """Every result file's content; a file that is not a result names itself and what it lacks."""
    results = []
    for path in result_files(paths):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path} is not a readable JSON file ({exc}); remove it or rerun its evaluation") from None
        missing = [k for k in REQUIRED if not isinstance(result, dict) or k not in result]
        if missing:
            raise ValueError(f"{path} is not a benchmark result (no {', '.join(missing)}); give the JSON files "
                             "zeroshot benchmark or clip_benchmark eval wrote")
        results.append(result)
    return results


def flat_row(result: dict) -> dict:
    """CLIP_benchmark's CSV row of a result: its fields with ``metrics`` spread out, plus ``model_fullname``."""
    row = {**result["metrics"], **{k: v for k, v in result.items() if k != "metrics"}}
    row["model_fullname"] = f"{row['model']} {row['pretrained']}"
    return row


def write_csv(results: list[dict], path: str | os.PathLike) -> None:
    """One row per result (:func:`flat_row`), the identifying columns first, then metrics, then the rest."""
    rows = [flat_row(r) for r in results]
    metrics = sorted({k for r in results for k in r["metrics"]})
    rest = sorted({k for row in rows for k in row} - set(FIRST_COLUMNS) - set(metrics))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*FIRST_COLUMNS, *metrics, *rest])
        writer.writeheader()
        writer.writerows(rows)


def main_metric(result: dict) -> tuple[str, float]:
    """(name, value) of the metric a result is summarised by (:data:`MAIN_METRICS`); NaN when it has none."""
    metrics = result["metrics"]
    name = next((m for m in MAIN_METRICS.get(result["task"], ()) if m in metrics), None)
    if name is None:
        name = next(iter(metrics), "none")
    value = metrics.get(name)
    return name, float(value) if isinstance(value, (int, float)) else math.nan


def grid(results: list[dict], task: str) -> tuple[list[str], list[str], dict, dict]:
    """(models, datasets, {(model, dataset): value}, {dataset: metric name}) of one task's main metric, models and
    datasets in alphabetical order; a later result of the same cell replaces an earlier one."""
    cells, names = {}, {}
    for r in results:
        if r["task"] == task:
            model = f"{r['model']} {r['pretrained']}".strip()
            names[r["dataset"]], cells[model, r["dataset"]] = main_metric(r)
    return sorted({m for m, _ in cells}), sorted(names), cells, names


def tasks_of(results: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["task"] for r in results))


def markdown(results: list[dict]) -> str:
    """Per task, a Markdown table of its main metric (in %), models as rows and datasets as columns."""
    parts = []
    for task in tasks_of(results):
        models, datasets, cells, names = grid(results, task)
        head = [f"{d} ({SHORT_NAMES.get(names[d], names[d])})" for d in datasets]
        lines = [f"**{task}**", "", "| model | " + " | ".join(head) + " |", "|---|" + "---:|" * len(datasets)]
        for m in models:
            values = [cells.get((m, d)) for d in datasets]
            lines.append(f"| {m} | " + " | ".join("" if v is None or math.isnan(v) else f"{100 * v:.2f}"
                                                  for v in values) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def plot(results: list[dict], path: str | os.PathLike) -> None:
    """One table of the main metrics: models as rows, a column per (task, dataset), cells shaded by value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    columns, models, cells = [], {}, {}
    for task in tasks_of(results):
        task_models, datasets, task_cells, names = grid(results, task)
        models.update(dict.fromkeys(task_models))
        columns += [(task, d, f"{d}\n{SHORT_NAMES.get(names[d], names[d])}") for d in datasets]
        cells.update({(m, task, d): v for (m, d), v in task_cells.items()})
    models = list(models)
    values = np.array([[cells.get((m, t, d), np.nan) for t, d, _ in columns] for m in models], dtype=float)
    width = 1.0 + 0.075 * max(map(len, models)) + 1.25 * len(columns)
    fig, ax = plt.subplots(figsize=(width, 1.3 + 0.5 * len(models)))
    ax.imshow(np.nan_to_num(values, nan=0.0), cmap="Greens", vmin=0, vmax=1.4, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, "-" if np.isnan(v) else f"{100 * v:.1f}", ha="center", va="center", fontsize=10)
    ax.set_xticks(range(len(columns)), [label for *_, label in columns], fontsize=8)
    ax.set_yticks(range(len(models)), models, fontsize=8)
    ax.tick_params(length=0)
    for j in range(1, len(columns)):  # a thicker rule where the task changes
        ax.axvline(j - 0.5, color="black" if columns[j][0] != columns[j - 1][0] else "white", lw=1.5)
    ax.set_title("main metric per task, % (" + "; ".join(tasks_of(results)) + ")", fontsize=9, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build(paths: list[str | os.PathLike], output: str | os.PathLike) -> dict[str, Path]:
    """Write ``output`` (CSV), and beside it the same name with ``.md`` and ``.png``; returns the three paths."""
    results = load_results(paths)
    output = Path(output)
    written = {"csv": output, "md": output.with_suffix(".md"), "png": output.with_suffix(".png")}
    write_csv(results, written["csv"])
    written["md"].write_text(markdown(results))
    plot(results, written["png"])
    return written
