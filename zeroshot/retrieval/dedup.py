"""Near-duplicate images: pairs whose unit feature rows reach a cosine threshold, within one set or between two
(train/evaluation leakage), found by exact faiss range search chunk by chunk, grouped, written as CSV and shown
side by side on a contact sheet.

The default threshold is the search page's :data:`~zeroshot.retrieval.search.DEDUP_COSINE`, 0.97: measured for the
default model (``scripts/bench_dedup.py``: 300 images copied four ways, seed 0) it is the lowest of 0.90, 0.93, 0.95,
0.97, 0.98, 0.99 whose precision is at least 0.95 in both pools. Flickr8k-1k: precision 0.990, recall 0.675 (half
size and JPEG q30 copies 1.0, mirrored 0.48, centre crop 80 % 0.22). Tiny ImageNet val, 64 px: precision 0.956,
recall 0.42 (JPEG 0.85, mirrored 0.42, half size 0.24, crop 0.18); at 0.95 its precision drops to 0.80, as distinct
64-px photos of like scenes (underwater, sky) reach cosine 0.99. The 3 Tiny ImageNet train images byte-identical to
val images score 1.0, the top 3 of 399 train/val pairs at 0.97. Lower the threshold to find more, and check the
contact sheet.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..datasets import Dataset
from ..images import BadImage, ImageTransform, decode_raw
from .index import feature_rows, read_rows, row_chunks
from .search import DEDUP_COSINE

DEFAULT_THRESHOLD = DEDUP_COSINE
QUERY_ROWS = 2048  # queries per range search: one call returns at most QUERY_ROWS * CHUNK_ROWS pairs
MAX_PAIRS = 20_000_000  # 240 MB of pairs; more means the threshold is far below near-duplicates
SHEET_COLUMNS = 3  # pairs side by side on one line of the contact sheet
THUMBNAIL = 128  # pixels per image on the contact sheet
PAIRS_HEADER = ["set", "id", "match_set", "match_id", "cosine"]
GROUPS_HEADER = ["group", "set", "id"]


@dataclass(frozen=True)
class Pairs:
    """Pairs at or above a cosine, best first: rows ``a`` of the searched set, rows ``b`` of the other set (or of the
    same set, then ``a < b``), and their ``cosine``."""

    a: np.ndarray
    b: np.ndarray
    cosine: np.ndarray

    def __len__(self) -> int:
        return len(self.cosine)

    def select(self, keep) -> Pairs:
        """The pairs a boolean mask, slice or positions ``keep`` picks, in their order."""
        return Pairs(self.a[keep], self.b[keep], self.cosine[keep])

    def top(self, n: int) -> Pairs:
        """The ``n`` closest pairs."""
        return self.select(slice(None, n))

    def at_least(self, threshold: float) -> Pairs:
        """The pairs whose cosine reaches ``threshold`` (compared in float32, as found)."""
        return self.top(int((self.cosine >= np.float32(threshold)).sum()))


@dataclass(frozen=True)
class Groups:
    """Images in groups numbered from 1 in the order of each group's closest pair: ``side`` 0 is the searched set,
    1 the other one; ``row`` is the image's row in that set."""

    group: np.ndarray
    side: np.ndarray
    row: np.ndarray


def check_threshold(threshold: float) -> float:
    """The faiss radius for ``cosine >= threshold``: range search keeps inner products strictly above it."""
    if not 0 < threshold <= 1:
        raise ValueError(f"--threshold must be a cosine in (0, 1], got {threshold}; near-duplicates lie above ~0.9")
    return float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))


def find_pairs(X, Y=None, *, threshold: float = DEFAULT_THRESHOLD, query_rows: int = QUERY_ROWS,
               max_pairs: int = MAX_PAIRS) -> Pairs:
    """Pairs of rows with cosine >= ``threshold``: X against Y, or within X when Y is None (each unordered pair once,
    no self pairs). Exact: Y is indexed ``CHUNK_ROWS`` rows at a time (``IndexFlatIP``) and X range-searched against
    each chunk ``query_rows`` at a time, so memory stays bounded by the chunks and the pairs found."""
    radius = check_threshold(threshold)
    X = feature_rows(X)
    within = Y is None
    Y = X if within else feature_rows(Y, dim=X.shape[1])
    found, total = [], 0
    for start, stop in row_chunks(len(Y)):
        index = _flat_index(read_rows(Y, start, stop))
        for first in range(0, stop if within else len(X), query_rows):
            last = min(first + query_rows, stop if within else len(X))
            a, b, cosine = _range_search(index, read_rows(X, first, last), radius)
            a, b = a + first, b + start
            keep = a < b if within else slice(None)
            found.append((a[keep], b[keep], cosine[keep]))
            total += len(found[-1][0])
            if total > max_pairs:
                raise ValueError(f"more than {max_pairs:,} pairs reach cosine {threshold}; raise --threshold "
                                 "(near-duplicates lie above ~0.9)")
    a, b, cosine = (np.concatenate(parts) for parts in zip(*found)) if found else (np.zeros(0, np.int64),) * 3
    order = np.lexsort((b, a, -cosine))
    return Pairs(a[order].astype(np.int64), b[order].astype(np.int64), cosine[order].astype(np.float32))


def _flat_index(rows: np.ndarray):
    import faiss

    index = faiss.IndexFlatIP(rows.shape[1])
    index.add(rows)
    return index


def _range_search(index, queries: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query positions, index positions, inner products) of every inner product above ``radius``."""
    lims, cosine, positions = index.range_search(queries, radius)
    return np.repeat(np.arange(len(queries)), np.diff(lims).astype(np.int64)), positions, cosine


def components(pairs: Pairs, n: int) -> Groups:
    """Within-set pairs joined into connected groups (a ~ b ~ c is one group even when a, c fall short of the
    threshold); each group's images in row order."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs.a, pairs.b)), shape=(n, n))
    count, label = connected_components(graph, directed=False)
    rows = np.unique(np.r_[pairs.a, pairs.b])
    group = _numbered(label[pairs.a], count)[label[rows]]
    order = np.lexsort((rows, group))
    return Groups(group[order], np.zeros(len(rows), np.int64), rows[order])


def match_groups(pairs: Pairs) -> Groups:
    """Between-set pairs as one group per image of the searched set: that image (side 0), then its matches in
    the other set (side 1), closest first."""
    queries = np.unique(pairs.a)
    number = _numbered(pairs.a, int(pairs.a.max(initial=-1)) + 1)
    group = np.r_[number[queries], number[pairs.a]]
    side = np.r_[np.zeros(len(queries), np.int64), np.ones(len(pairs), np.int64)]
    order = np.lexsort((side, group))  # stable: matches keep the pairs' closest-first order
    return Groups(group[order], side[order], np.r_[queries, pairs.b][order])


def _numbered(keys: np.ndarray, size: int) -> np.ndarray:
    """A lookup from key (0..size-1) to its group number: 1, 2, ... in the order keys first occur in ``keys``
    (the closest pair first); 0 for keys that do not occur."""
    unique, first = np.unique(keys, return_index=True)
    number = np.zeros(size, np.int64)
    number[unique[np.argsort(first)]] = np.arange(1, len(unique) + 1)
    return number


def write_pairs(path: str | os.PathLike, pairs: Pairs, first: tuple[str, np.ndarray],
                second: tuple[str, np.ndarray] | None = None) -> Path:
    """``set,id,match_set,match_id,cosine``, closest first; ``first`` / ``second`` are the sets' (location, ids),
    ``second`` omitted for pairs within one set."""
    (location, ids), (match_location, match_ids) = first, second or first
    rows = zip([location] * len(pairs), np.asarray(ids)[pairs.a], [match_location] * len(pairs),
               np.asarray(match_ids)[pairs.b], np.char.mod("%.6f", pairs.cosine))
    return _write_csv(path, PAIRS_HEADER, rows)


def write_groups(path: str | os.PathLike, groups: Groups, first: tuple[str, np.ndarray],
                 second: tuple[str, np.ndarray] | None = None) -> Path:
    """``group,set,id``: one line per image of each group (see :class:`Groups`)."""
    (location, ids), (match_location, match_ids) = first, second or first
    names = np.array([location, match_location], dtype=object)[groups.side]
    both = np.r_[np.asarray(ids, dtype=str), np.asarray(match_ids, dtype=str)]
    return _write_csv(path, GROUPS_HEADER, zip(groups.group.tolist(), names, both[groups.row + groups.side * len(ids)]))


def _write_csv(path: str | os.PathLike, header: list[str], rows) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return Path(path)


def flagged_images(path: str | os.PathLike) -> set[tuple[str, str]]:
    """Every (set location, id) on either side of a pairs CSV written by :func:`write_pairs`: the images that
    ``--exclude-leaked`` drops."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = set(PAIRS_HEADER) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path} is not a pairs CSV from `zeroshot dedup` (no {', '.join(sorted(missing))} "
                             "column); give the pairs.csv that `zeroshot dedup --output DIR` wrote")
        return {pair for row in reader for pair in ((row["set"], row["id"]), (row["match_set"], row["match_id"]))}


def dataset_rows(dataset: Dataset, ids) -> np.ndarray:
    """Rows of ``dataset`` holding FeatureSet ``ids`` (a FeatureSet skips images that failed to decode, so its rows
    need not be the dataset's)."""
    known = np.asarray(dataset.ids, dtype=str)
    order = np.argsort(known)
    return order[np.searchsorted(known, np.asarray(ids, dtype=str), sorter=order)]


def contact_sheet(path: str | os.PathLike, pairs: Pairs, data: Dataset, other: Dataset | None = None, *,
                  title: str = "") -> Path:
    """A PNG of ``pairs`` (rows of ``data`` and ``other``, or of ``data`` twice), each pair side by side under
    its rank and cosine, each image under its id; images are read through the datasets and shown as the model saw
    them (resized and centre-cropped)."""
    from matplotlib.figure import Figure

    sides = (data, other or data)
    columns = min(max(len(pairs), 1), SHEET_COLUMNS)
    lines = max(1, -(-len(pairs) // columns))
    fig = Figure(figsize=(4.2 * columns, 2.6 * lines + 0.6), layout="constrained")
    fig.suptitle(title + ("" if len(pairs) else "\nno pair reaches the threshold"), fontsize=12)
    panels = fig.subfigures(lines, columns, squeeze=False).ravel() if len(pairs) else []
    for rank, (panel, a, b, cosine) in enumerate(zip(panels, pairs.a, pairs.b, pairs.cosine), 1):
        panel.suptitle(f"#{rank}   cosine {cosine:.4f}", fontsize=10)
        for ax, dataset, row in zip(panel.subplots(1, 2), sides, (a, b)):
            _show(ax, dataset, int(row), named=other is not None)
    fig.savefig(path, dpi=100)
    return Path(path)


def _show(ax, dataset: Dataset, row: int, *, named: bool) -> None:
    """One image on ``ax`` under its id (and its set's folder name when two sets are shown)."""
    from ..plotting import dataset_label

    try:
        ax.imshow(decode_raw(dataset.raw(row), ImageTransform(size=THUMBNAIL)).permute(1, 2, 0).numpy())
    except (BadImage, OSError) as exc:
        ax.text(0.5, 0.5, f"cannot read:\n{exc}", ha="center", va="center", wrap=True, fontsize=7)
    name = str(dataset.ids[row])
    ax.set_title(name if len(name) <= 26 else "…" + name[-25:], fontsize=8)
    if named:
        ax.set_xlabel(dataset_label(dataset.location), fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
