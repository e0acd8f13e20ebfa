"""What a concept-frequency run leaves behind: ``counts.csv`` (auditable counts), ``fit.json`` and ``trend.png``."""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

COUNT_COLUMNS = ("text_count", "image_count", "integrated_count")
CSV_COLUMNS = ("concept", *COUNT_COLUMNS, "frequency", "variants_matched", "example_1", "example_2", "example_3")


def write_counts_csv(path: str | os.PathLike, rows: Iterable[Mapping]) -> None:
    """One line per concept: ``concept``, the text / image / integrated counts (blank when not measured),
    ``frequency`` (text count / N captions), ``variants_matched`` (``variant=count; ...``) and three example captions
    for audits (``car`` matching "freight car" shows there)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            examples = [*r.get("examples", ())][:3]
            variants = "; ".join(f"{v}={n}" for v, n in r.get("variants", {}).items())
            writer.writerow([r["concept"], *(("" if r.get(k) is None else f"{r[k]:.6g}") for k in COUNT_COLUMNS),
                             f"{r['frequency']:.6g}", variants, *examples, *[""] * (3 - len(examples))])


def read_counts_csv(path: str | os.PathLike, column: str = "text_count") -> dict[str, float]:
    """concept -> count from ``counts.csv`` (``column``: one of the count columns); a blank cell is an error."""
    if column not in COUNT_COLUMNS:
        raise ValueError(f"unknown count column {column!r}; use one of {', '.join(COUNT_COLUMNS)}")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or column not in rows[0]:
        raise ValueError(f"{path} is not a counts.csv with a {column} column (write one with: zeroshot concepts count)")
    blank = [r["concept"] for r in rows if not r[column].strip()]
    if blank:
        raise ValueError(f"{path}: {column} was not measured for {blank[:5]}; choose another --count")
    return {r["concept"]: float(r[column]) for r in rows}


def write_fit_json(path: str | os.PathLike, fit: Mapping | None, meta: Mapping) -> None:
    """``{"meta": ..., "fit": ...}``; meta says where the numbers come from (corpus sha256, N captions, lemmatiser and
    version, mode, synonyms source, model fingerprint, dataset, seed) and ``pos_filter: false`` (no POS filter, unlike
    the paper's NOUN/PROPN index)."""
    Path(path).write_text(json.dumps({"meta": {**meta, "pos_filter": False}, "fit": fit}, indent=1))


def _place_labels(ax, points: list[tuple[float, float, str]], renderer) -> None:
    """Name each point next to it, trying four sides; a label that would leave the axes or cover a point, the legend
    or a label already placed is dropped (outliers come first, so they keep theirs)."""
    from matplotlib.transforms import Bbox

    frame = ax.get_window_extent(renderer)
    xy = ax.transData.transform([(x, y) for x, y, _ in points])
    marks = [Bbox.from_extents(px - 3, py - 3, px + 3, py + 3) for px, py in xy]
    taken = [ax.get_legend().get_window_extent(renderer)]
    for i, ((x, y, name), (px, py)) in enumerate(zip(points, xy)):
        others = [*marks[:i], *marks[i + 1:], *taken]
        for dx, dy, ha, va in ((5, 2, "left", "bottom"), (5, -2, "left", "top"), (-5, 2, "right", "bottom"),
                               (-5, -2, "right", "top")):
            text = ax.annotate(name, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=7,
                               color="0.25")
            box = text.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(other) for other in others):
                taken.append(box)
                break
            text.remove()


X_LABELS = {"text": "captions mentioning the concept (log scale)",
            "image": "training images showing the concept (log scale)",
            "integrated": "captions mentioning the concept whose image shows it (log scale)"}


def plot_trend(path: str | os.PathLike, points: list[Mapping], fit: Mapping, *, title: str,
               count: str = "text") -> None:
    """Accuracy against the ``count`` per concept (log x): labelled concepts, the OLS line with its bootstrap 95 %
    band, the paper's binned means ± std, and zero-count concepts at x = 1 with a hollow marker (left out of the fit,
    or fitted there when the fit's ``zero_counts`` is ``as_one``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 6))
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    counts = np.array([p["count"] for p in points], dtype=np.float64)
    acc = np.array([p["accuracy"] for p in points], dtype=np.float64)
    seen = counts > 0
    ax.scatter(counts[seen], acc[seen], s=22, color="tab:blue", zorder=3, label="concept (in the fit)")
    if (~seen).any():
        ax.scatter(np.ones((~seen).sum()), acc[~seen], s=40, marker="X", facecolors="none", edgecolors="tab:red",
                   zorder=3, label=f"never in the corpus ({(~seen).sum()}), shown at 1, "
                                   + ("fitted there" if fit.get("zero_counts") == "as_one" else "not fitted"))
    fitted = np.maximum(counts, 1) if fit.get("zero_counts") == "as_one" else counts[seen]
    grid = np.logspace(np.log10(fitted.min()), np.log10(fitted.max()), 100)  # the line and band span the fitted x
    b0, b1 = fit["intercept"], fit["slope"]
    lo, hi = fit["slope_ci95"]
    x_mean = np.log10(counts[seen]).mean()  # the band pivots at the mean of the fitted x, where the line is surest
    ax.plot(grid, b0 + b1 * np.log10(grid), color="black", linewidth=1.5,
            label=f"OLS: {b0:.1f} + {b1:.1f} log10(count)")
    y_at_mean = b0 + b1 * x_mean
    band = [y_at_mean + s * (np.log10(grid) - x_mean) for s in (lo, hi)]
    ax.fill_between(grid, np.minimum(*band), np.maximum(*band), color="black", alpha=0.1,
                    label=f"slope 95 % bootstrap CI [{lo:.1f}, {hi:.1f}]")
    binned = fit["paper_binned"]
    has = [i for i, m in enumerate(binned["mean"]) if m is not None]
    r_bins = binned["pearson_inner"]["r"]
    r_text = "" if r_bins is None else f", inner r = {r_bins:.2f}"
    ax.errorbar([binned["count_at_edge"][i] for i in has], [binned["mean"][i] for i in has],
                yerr=[binned["std"][i] for i in has], color="tab:orange", marker="s", markersize=5, linestyle="--",
                linewidth=1, capsize=2, zorder=2,
                label=f"paper's binned curve (mean ± std per ln-bin{r_text})")
    ax.set_xscale("log")
    ax.set_xlim(0.5, max(counts.max(), 10) * 4)  # room for the labels of the first and last concepts
    ax.set_ylim(-5, 105)  # accuracies: a wide CI band would stretch the axis far past them
    ax.set_xlabel(X_LABELS[count])
    ax.set_ylabel("zero-shot per-class accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")  # a rising trend leaves that corner empty
    fig.tight_layout()
    order = np.argsort(-np.abs(acc - (b0 + b1 * np.log10(np.maximum(counts, 1)))))  # outliers get their label first
    _place_labels(ax, [(max(counts[i], 1), acc[i], points[i]["concept"]) for i in order], canvas.get_renderer())
    fig.savefig(path, dpi=120)


def trend_title(model: str, corpus: str, n_captions: int, fit: Mapping, count: str = "text") -> str:
    """``model -- <count> frequency in <corpus> (N captions): slope b [lo, hi] per 10x, r``: the numbers that matter."""
    r = fit["pearson"]["r"]
    lo, hi = fit["slope_ci95"]
    return (f"{model} — {count} frequency in {corpus} (N = {n_captions:,} captions)\n"
            f"slope {fit['slope']:.1f} [{lo:.1f}, {hi:.1f}] accuracy points per 10x captions, "
            f"Pearson r = {'n/a' if r is None else f'{r:.2f}'}, {fit['n']} concepts fitted")
