"""Image collections: folders, file lists, ``.npz`` arrays and WebDataset tar shards.

Every dataset knows its ids and labels up front (cheap), in a deterministic order, and decodes one image at a
time on demand. ``open_dataset`` picks the right kind from a path. Undecodable files are not errors here: the
extraction engine gets a :class:`~zeroshot.images.BadImage` back for them, skips them and reports their ids.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .images import IMAGE_EXTENSIONS


class Dataset:
    """A sized, indexable image collection with ``ids`` (str), ``labels`` (int, -1 = none) and ``classes``."""

    kind = "dataset"

    def __init__(self, ids: list[str], labels: np.ndarray, classes: list[str] | None, location: str):
        if len(ids) != len(labels):
            raise ValueError(f"{len(ids)} ids but {len(labels)} labels")
        if len(set(ids)) != len(ids):
            raise ValueError(f"{location}: sample ids are not unique; give each file a distinct name")
        self.ids = list(ids)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = classes
        self.location = location

    def __len__(self) -> int:
        return len(self.ids)

    def raw(self, index: int):
        """The undecoded sample: a file path, encoded bytes or an image array."""
        raise NotImplementedError

    def signature(self) -> dict:
        """What identifies this data for the feature cache: kind, location, and a digest of ids and labels."""
        digest = hashlib.sha256("\n".join(self.ids).encode() + self.labels.tobytes()).hexdigest()[:16]
        return {"kind": self.kind, "location": self.location, "n": len(self), "content": digest + self._stat_digest()}

    def _stat_digest(self) -> str:
        return ""

    def __repr__(self) -> str:
        n_classes = len(self.classes) if self.classes else 0
        return f"{type(self).__name__}({self.location!r}, n={len(self)}, classes={n_classes})"


class _FileDataset(Dataset):
    """Samples that are files on disk; the cache signature includes their sizes and mtimes."""

    def __init__(self, paths: list[Path], ids, labels, classes, location):
        super().__init__(ids, labels, classes, location)
        self.paths = [str(p) for p in paths]

    def raw(self, index: int) -> str:
        return self.paths[index]

    def _stat_digest(self) -> str:
        h = hashlib.sha256()
        for p in self.paths:
            try:
                st = os.stat(p)
                h.update(f"{st.st_size}:{st.st_mtime_ns};".encode())
            except OSError:
                h.update(b"missing;")
        return h.hexdigest()[:16]


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


class ImageFolder(_FileDataset):
    """``root/<class>/**/<file>`` (labels = sorted sub-folder names) or a flat folder of unlabelled images."""

    kind = "folder"

    def __init__(self, root: str | os.PathLike):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        paths, labels, classes = [], [], None
        if class_dirs:
            classes = [d.name for d in class_dirs]
            for label, d in enumerate(class_dirs):
                files = sorted(p for p in d.rglob("*") if p.is_file() and _is_image_name(p.name))
                paths += files
                labels += [label] * len(files)
        else:
            paths = sorted(p for p in root.iterdir() if p.is_file() and _is_image_name(p.name))
            labels = [-1] * len(paths)
        if not paths:
            raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
        ids = [p.relative_to(root).as_posix() for p in paths]
        super().__init__(paths, ids, labels, classes, str(root.resolve()))


class FileList(_FileDataset):
    """A CSV with a ``path`` column and an optional ``label`` column (an int or a class name).

    Relative paths are resolved against the CSV's folder. Class names come from ``classes.json`` beside the
    file if present, else from the sorted distinct names in the ``label`` column.
    """

    kind = "filelist"

    def __init__(self, csv_path: str | os.PathLike):
        csv_path = Path(csv_path)
        delimiter = "\t" if csv_path.suffix.lower() == ".tsv" else ","
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter=delimiter))
        if not rows or "path" not in rows[0]:
            raise ValueError(f"{csv_path}: expected a CSV header with a 'path' column (and optionally 'label')")
        classes = _classes_beside(csv_path)
        raw_labels = [r.get("label", "") or "" for r in rows]
        if all(v.lstrip("-").isdigit() for v in raw_labels if v):
            labels = [int(v) if v else -1 for v in raw_labels]
        else:
            classes = classes or sorted({v for v in raw_labels if v})
            index = {c: i for i, c in enumerate(classes)}
            unknown = sorted({v for v in raw_labels if v and v not in index})
            if unknown:
                raise ValueError(f"{csv_path}: labels {unknown[:5]} are not in classes.json")
            labels = [index[v] if v else -1 for v in raw_labels]
        paths = [(csv_path.parent / r["path"]) for r in rows]
        ids = [r["path"] for r in rows]
        super().__init__(paths, ids, labels, classes, str(csv_path.resolve()))


class NpzArrays(Dataset):
    """``.npz`` with ``images`` (N,H,W[,3]) uint8, optional ``labels`` and ``ids``; ``classes.json`` beside it.

    Ids and labels are read at once; the image array only when the first image is needed.
    """

    kind = "npz"

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z:
                raise ValueError(f"{path}: an .npz dataset needs an 'images' array (N,H,W,3) uint8")
            n = len(z["labels"]) if "labels" in z else len(z["images"])
            labels = z["labels"] if "labels" in z else np.full(n, -1)
            ids = [str(i) for i in z["ids"]] if "ids" in z else [f"{i:06d}" for i in range(n)]
        self._images = None
        super().__init__(ids, labels, _classes_beside(path), str(path.resolve()))

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            with np.load(self.location, allow_pickle=False) as z:
                images = z["images"]
            if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(self):
                raise ValueError(f"{self.location}: 'images' must be uint8 (N,H,W) or (N,H,W,C) with one row per "
                                 f"label, got {images.dtype} {images.shape}")
            self._images = images
        return self._images

    def raw(self, index: int) -> np.ndarray:
        return self.images[index]

    def __getstate__(self):
        return {**self.__dict__, "_images": None}

    def _stat_digest(self) -> str:
        st = os.stat(self.location)
        return hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]


class ArrayImages(Dataset):
    """Images held in memory, (N,H,W,3) uint8 (rendered ones, say); the cache signature digests their pixels, so
    other pixels under the same ``name`` are never served from the cache."""

    kind = "arrays"

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None, *, name: str = "arrays"):
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"{name}: images must be uint8 (N,H,W,C), got {images.dtype} {images.shape}")
        self.images = images
        n = len(images)
        super().__init__([f"{i:06d}" for i in range(n)], np.full(n, -1) if labels is None else labels, None, name)

    def raw(self, index: int) -> np.ndarray:
        return self.images[index]

    def _stat_digest(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.images).tobytes()).hexdigest()[:16]


class TarShards(Dataset):
    """WebDataset shards (``.tar`` or ``.tar.gz``): members grouped by key, an image plus ``.cls`` and/or ``.txt``.

    The shards are indexed once at construction. Plain tars are then read by seeking; gzip shards are
    decompressed whole, one shard cached per process, which suits the contiguous batches the engine reads.
    ``texts`` keeps each sample's ``.txt`` (a caption or class name).
    """

    kind = "tar"

    def __init__(self, shards: str | os.PathLike | list):
        self.shards = [str(Path(s).resolve()) for s in expand_shards(shards)]
        ids, labels, texts, self._where = [], [], [], []
        for shard_index, shard in enumerate(self.shards):
            for key, member in _index_tar(shard).items():
                if "image" not in member:
                    continue
                ids.append(key)
                labels.append(member.get("cls", -1))
                texts.append(member.get("txt", ""))
                self._where.append((shard_index, *member["image"]))
        if not ids:
            raise ValueError(f"no image samples in shards {self.shards[:3]}")
        self.texts = texts
        self._cache: tuple[int, bytes] | None = None
        super().__init__(ids, labels, _classes_beside(Path(self.shards[0])), self.shards[0])

    def raw(self, index: int) -> bytes:
        shard_index, offset, size = self._where[index]
        path = self.shards[shard_index]
        if not path.endswith((".gz", ".tgz")):
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(size)
        if self._cache is None or self._cache[0] != shard_index:
            import gzip

            with gzip.open(path, "rb") as f:
                self._cache = (shard_index, f.read())
        return self._cache[1][offset : offset + size]

    def __getstate__(self):
        return {**self.__dict__, "_cache": None}

    def _stat_digest(self) -> str:
        h = hashlib.sha256()
        for s in self.shards:
            st = os.stat(s)
            h.update(f"{s}:{st.st_size}:{st.st_mtime_ns};".encode())
        return h.hexdigest()[:16]


def _index_tar(path: str) -> dict[str, dict]:
    """key -> {"image": (offset, size), "cls": int, "txt": str} for one shard, in member order."""
    samples: dict[str, dict] = {}
    with tarfile.open(path, "r:*") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, ext = _split_key(info.name)
            entry = samples.setdefault(key, {})
            if ext in ("cls", "txt"):
                text = tar.extractfile(info).read().decode("utf-8", "replace").strip()
                if ext == "cls":
                    entry["cls"] = int(text) if text.lstrip("-").isdigit() else -1
                else:
                    entry["txt"] = text
            elif _is_image_name(info.name) and "image" not in entry:
                entry["image"] = (info.offset_data, info.size)
    return samples


def _split_key(member_name: str) -> tuple[str, str]:
    """WebDataset convention: the key is the member name up to the first dot of its base name; the rest is the
    extension (lower-cased)."""
    folder, _, base = member_name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_shards(spec) -> list[Path]:
    """Expand a brace pattern (``train-{000000..000009}.tar.gz``), a folder of shards, or a list of paths."""
    if isinstance(spec, (list, tuple)):
        return [p for s in spec for p in expand_shards(s)]
    spec = str(spec)
    m = _BRACE.search(spec)
    if m:
        lo, hi = m.group(1), m.group(2)
        width = len(lo)
        return [Path(spec[: m.start()] + f"{i:0{width}d}" + spec[m.end() :]) for i in range(int(lo), int(hi) + 1)]
    path = Path(spec)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if _is_tar_name(p.name))
    return [path]


def _is_tar_name(name: str) -> bool:
    return name.endswith((".tar", ".tar.gz", ".tgz"))


def _classes_beside(path: Path) -> list[str] | None:
    """``classes.json`` (a JSON list of names) in the same folder as ``path``, if there is one."""
    candidate = (path if path.is_dir() else path.parent) / "classes.json"
    if candidate.is_file():
        classes = json.loads(candidate.read_text())
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise ValueError(f"{candidate} must be a JSON list of class names")
        return classes
    return None


class ImageFiles(_FileDataset):
    """An explicit list of image files (e.g. ``zeroshot classify a.jpg b.png``), unlabelled."""

    kind = "files"

    def __init__(self, paths: list[str | os.PathLike]):
        paths = [Path(p) for p in paths]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"image files not found: {missing[:5]}")
        folder = os.path.commonpath([str(p.resolve().parent) for p in paths]) if paths else ""
        super().__init__(paths, [str(p) for p in paths], [-1] * len(paths), None, folder)


@dataclass(frozen=True)
class ShardPlan:
    """A dataset cut into fixed work units: shard ``s`` holds indices ``[s * shard_size, (s + 1) * shard_size)``,
    encoded in batches of ``batch_size``. It depends only on (n, batch_size, shard_size), so every run, engine and
    machine encodes exactly the same batches, writes the same bytes and can take over another's unfinished units.
    Computed per shard, so a plan over 100M images costs nothing to hold."""

    n: int
    batch_size: int
    shard_size: int

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.shard_size < self.batch_size or self.shard_size % self.batch_size:
            raise ValueError(f"shard size {self.shard_size} must be a positive multiple of the batch size "
                             f"{self.batch_size}")

    def __len__(self) -> int:
        return -(-self.n // self.shard_size)

    def rows(self, shard: int) -> range:
        """The dataset indices of ``shard``."""
        if not 0 <= shard < len(self):
            raise IndexError(f"shard {shard} is not in a plan of {len(self)} shards")
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.n))

    def batches(self, shard: int) -> list[list[int]]:
        """The batches of ``shard``, each a list of dataset indices."""
        rows = self.rows(shard)
        return [list(rows[lo : lo + self.batch_size]) for lo in range(0, len(rows), self.batch_size)]


def open_dataset(spec: str | os.PathLike | list) -> Dataset:
    """Open a dataset from a path: a folder (class sub-folders, flat images, or tar shards), ``.npz``, ``.csv``,
    tar shard(s) with an optional ``{a..b}`` brace range, or image file(s)."""
    if isinstance(spec, (list, tuple)):
        if len(spec) == 1:
            return open_dataset(spec[0])
        if all(_is_tar_name(Path(str(s)).name) for s in spec):  # a shell-expanded train-*.tar.gz
            return TarShards(list(spec))
        return ImageFiles(spec)
    text = str(spec)
    path = Path(text)
    if _BRACE.search(text) or _is_tar_name(path.name):
        return TarShards(text)
    if path.is_dir():
        entries = list(path.iterdir())
        if any(_is_tar_name(p.name) for p in entries) and not any(
                p.is_dir() or _is_image_name(p.name) for p in entries):
            return TarShards(path)
        return ImageFolder(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return NpzArrays(path)
    if suffix in (".csv", ".tsv", ".txt"):
        return FileList(path)
    if _is_image_name(path.name):
        return ImageFiles([path])
    raise ValueError(f"cannot tell what kind of dataset {path} is: use a folder, .npz, .csv, .tar[.gz] or image files")


__all__ = [
    "Dataset", "ImageFolder", "FileList", "NpzArrays", "TarShards", "ImageFiles", "open_dataset",
    "expand_shards", "ShardPlan",
]
