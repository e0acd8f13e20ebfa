"""What ``zeroshot gen-eval`` writes beside ``results.json``: a Markdown table and three plots (FD against
sample size, precision / recall, per-class consistency)."""
from __future__ import annotations

import os

import numpy as np


def markdown(result: dict, title: str) -> str:
    """``results.md``: the headline metrics, then one row per class when there are labels."""
    fd, m = result["frechet_distance"], result["manifold"]
    lines = [f"# {title}", "",
             f"{result['n_generated']:,} generated vs {result['n_reference']:,} reference images; "
             f"{result['features']}.", "",
             "| metric | value |", "|---|---:|",
             f"| Fréchet distance (FD) | {fd['fd']:.4f} |",
             f"| FD {fd['level']:.0%} bootstrap CI ({fd['n_boot']} resamples) | {fd['ci_low']:.4f} - "
             f"{fd['ci_high']:.4f} |",
             f"| FD floor: two halves of the reference ({fd['floor_n']:,} each) | "
             f"{fd['floor_reference_halves']:.4f} |",
             f"| precision (k = {m['k_pr']}) | {m['precision']:.4f} |",
             f"| recall (k = {m['k_pr']}) | {m['recall']:.4f} |",
             f"| density (k = {m['k_dc']}) | {m['density']:.4f} |",
             f"| coverage (k = {m['k_dc']}) | {m['coverage']:.4f} |"]
    if "clip_score" in result:
        c = result["clip_score"]
        lines.append(f"| CLIPScore (w = {c['w']}; x100 as torchmetrics) | {c['clip_score']:.4f} "
                     f"({c['clip_score_x100']:.2f}) |")
    if "ref_clip_score" in result:
        lines.append(f"| RefCLIPScore | {result['ref_clip_score']['ref_clip_score']:.4f} |")
    consistency = result.get("class_consistency", {})
    for side in ("generated", "reference"):
        if side in consistency:
            lines.append(f"| class consistency, {side} (zero-shot top-1; chance {consistency[side]['chance']:.3f}) "
                         f"| {consistency[side]['accuracy']:.4f} |")
    names = list(consistency.get("generated", {}).get("per_class", {})) or list(result.get("per_class", {}))
    if names:
        lines += ["", "| class | generated images | consistency | reference consistency | FD | precision | recall | "
                  "coverage |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name in names:
            gen = consistency.get("generated", {})
            ref = consistency.get("reference", {}).get("per_class", {})
            row = result.get("per_class", {}).get(name)
            cells = [name, str(gen.get("n_per_class", {}).get(name, "")), _fmt(gen.get("per_class", {}).get(name)),
                     _fmt(ref.get(name)), *(_fmt(row and row[k]) for k in ("fd", "precision", "recall", "coverage"))]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4f}"


def plot_fd_vs_n(result: dict, path: str | os.PathLike, title: str) -> None:
    """FD on nested subsamples against their size (log axis), the estimate on all images with its bootstrap CI
    (beside the last size: the two sides may differ in size), and the reference-halves floor: how far the number
    is from its small-sample bias."""
    from matplotlib.figure import Figure

    fd = result["frechet_distance"]
    n = [p["n"] for p in fd["vs_n"]]
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(n, [p["fd"] for p in fd["vs_n"]], "o-", color="tab:blue", label="FD, generated vs reference")
    ax.errorbar([n[-1] * 1.06], [fd["fd"]], yerr=[[fd["fd"] - fd["ci_low"]], [fd["ci_high"] - fd["fd"]]], fmt="s",
                color="black", capsize=6, label=f"all images ({fd['n_generated']:,} generated vs "
                f"{fd['n_real']:,} reference), {fd['level']:.0%} bootstrap CI")
    ax.axhline(fd["floor_reference_halves"], color="tab:green", ls="--",
               label=f"floor: two reference halves of {fd['floor_n']:,}")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("images per side (nested subsamples)")
    ax.set_ylabel("Fréchet distance")
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)


def plot_precision_recall(result: dict, path: str | os.PathLike, title: str) -> None:
    """Precision against recall: the whole set as a star, each class (when labelled) as a dot."""
    from matplotlib.figure import Figure

    m = result["manifold"]
    fig = Figure(figsize=(6, 5.5), layout="constrained")
    ax = fig.add_subplot()
    per_class = result.get("per_class", {})
    if per_class:
        ax.scatter([v["recall"] for v in per_class.values()], [v["precision"] for v in per_class.values()],
                   s=18, color="tab:gray", alpha=0.7, label=f"per class ({len(per_class)})")
        if len(per_class) <= 20:
            for name, v in per_class.items():
                ax.annotate(name, (v["recall"], v["precision"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
    ax.scatter([m["recall"]], [m["precision"]], s=220, marker="*", color="tab:red", zorder=3,
               label=f"all: precision {m['precision']:.3f}, recall {m['recall']:.3f}\n"
                     f"density {m['density']:.3f}, coverage {m['coverage']:.3f}")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(f"recall (k = {m['k_pr']}): reference inside the generated manifold")
    ax.set_ylabel(f"precision (k = {m['k_pr']}): generated inside the reference manifold")
    ax.set_title(title, fontsize=11)
    ax.legend(loc="lower left", fontsize=8)
    fig.savefig(path, dpi=100)


def plot_class_consistency(result: dict, path: str | os.PathLike, title: str) -> None:
    """Per class, the zero-shot top-1 of the generated images against their intended class, beside the same on
    the reference images, worst generated class on top; chance as a line."""
    from matplotlib.figure import Figure

    consistency = result["class_consistency"]
    generated = consistency["generated"]["per_class"]
    reference = consistency.get("reference", {}).get("per_class", {})
    names = sorted(generated, key=generated.get, reverse=True)
    y = np.arange(len(names))
    fig = Figure(figsize=(8, 1.6 + 0.3 * len(names)), layout="constrained")
    ax = fig.add_subplot()
    height = 0.4 if reference else 0.8
    ax.barh(y + (height / 2 if reference else 0), [generated[c] for c in names], height=height, color="tab:blue",
            label=f"generated: {consistency['generated']['accuracy']:.1%}")
    if reference:
        ax.barh(y - height / 2, [reference.get(c, np.nan) for c in names], height=height, color="tab:orange",
                label=f"reference: {consistency['reference']['accuracy']:.1%}")
    ax.axvline(consistency["generated"]["chance"], color="tab:red", ls=":",
               label=f"chance {consistency['generated']['chance']:.1%}")
    ax.set_yticks(y, names, fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.7, len(names) - 0.3)
    ax.set_xlabel("zero-shot top-1 against the intended class")
    ax.set_title(title, fontsize=11)
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path, dpi=100)
