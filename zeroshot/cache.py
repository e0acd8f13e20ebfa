"""The on-disk cache: where it lives, how it is laid out, and how many processes share it safely.

Layout, under the cache folder (``$ZEROSHOT_CACHE``, else ``~/.cache/zeroshot``)::

    <fingerprint>/images/<data key>/   one extraction: a FeatureSet, or the shards of an unfinished one
    <fingerprint>/views/<key>/view-N/  teacher views of a distillation, one FeatureSet per view
    <fingerprint>/text/<digest>.npy    text embeddings (class prompts, captions)
    hashes/<digest>                    a weights file's SHA-256, by its path, inode, size and times (fingerprints)

Every ``cache_dir`` argument goes through :func:`resolve_cache_dir`: ``None`` means the default cache, a path
has ``~`` expanded, and ``False`` means no cache at all. Files are written under a name unique to the writer
(pid + random suffix) and renamed into place, so any number of processes can write the same entry; the steps that
must not interleave (joining shards) hold :func:`entry_lock`. Each load touches a ``last_used`` file that
``zeroshot cache ls`` shows and ``zeroshot cache prune --older-than`` goes by.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

KINDS = ("images", "views")  # the entry folders under a fingerprint; "text" holds loose files
LAST_USED, LOCK = "last_used", ".lock"
TMP_SUFFIX = ".tmp"


def default_cache_dir() -> Path:
    """``$ZEROSHOT_CACHE`` or ``~/.cache/zeroshot`` (``~`` expanded in both)."""
    return Path(os.environ.get("ZEROSHOT_CACHE") or Path.home() / ".cache" / "zeroshot").expanduser()


def resolve_cache_dir(cache_dir: str | os.PathLike | None | bool) -> Path | None:
    """The cache folder a ``cache_dir`` argument means: None -> the default, a path -> itself with ``~`` expanded,
    False -> None (no cache)."""
    if cache_dir is False:
        return None
    if cache_dir is None:
        return default_cache_dir()
    if cache_dir is True or (isinstance(cache_dir, str) and not cache_dir):
        raise ValueError(f"cache_dir must be a folder, None (the default cache) or False (no cache), not {cache_dir!r}")
    return Path(cache_dir).expanduser()


def digest(key, length: int = 16) -> str:
    """A short stable name for a JSON-serialisable key."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:length]


def remembered_digest(path: str | os.PathLike, compute: Callable[[Path], str]) -> str:
    """``compute(path)`` (a file's hash), remembered in the default cache's ``hashes/`` by the file's absolute path,
    inode, size, modification and change times, so weights that did not change are not read again to fingerprint a
    model (the 90 MB text tower, on every load). Any write to the file changes its change time, which no user can
    set back, so a rewritten file is hashed again. Where the cache cannot be read or written, it is computed each
    time."""
    path = Path(path).resolve()
    stat = path.stat()
    key = [str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]
    memo = default_cache_dir() / "hashes" / digest(key, 32)
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return memo.read_text(encoding="ascii")
    value = compute(path)
    with contextlib.suppress(OSError):
        memo.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(memo, lambda f: f.write(value.encode("ascii")))
    return value


def images_entry(cache: Path, fingerprint: str, data_key: dict) -> Path:
    """The folder of one extraction: ``<cache>/<fingerprint>/images/<digest of data_key>``."""
    return cache / fingerprint / "images" / digest(data_key)


def views_entry(cache: Path, fingerprint: str, key: dict) -> Path:
    """The folder of a distillation's teacher views: ``<cache>/<fingerprint>/views/<digest of key>``."""
    return cache / fingerprint / "views" / digest(key)


def text_path(cache: Path, fingerprint: str, key) -> Path:
    """The file of one text-embedding array: ``<cache>/<fingerprint>/text/<digest of key>.npy``."""
    return cache / fingerprint / "text" / f"{digest(key, 24)}.npy"


# ---- writing safely --------------------------------------------------------------------------------------------

def _atomic_write(path: Path, write) -> None:
    """``write(file)`` into a temporary name unique to this writer, fsync, rename over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """Save ``array`` as ``path`` so that no reader ever sees a partial file, whoever else writes it too."""
    _atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def atomic_concat_npy(path: Path, parts, shape: tuple[int, ...], dtype) -> None:
    """Save the row-wise concatenation of ``parts`` (an iterable of arrays, e.g. loaded one at a time) as one
    ``.npy`` of ``shape``, atomically, holding only one part in memory: a join of 100M feature rows never needs
    them all in RAM."""
    dtype = np.dtype(dtype)

    def write(f) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
        np.lib.format.write_array_header_1_0(f, header)
        written = 0
        for part in parts:
            f.write(np.ascontiguousarray(part, dtype=dtype).tobytes())
            written += len(part)
        if written != shape[0]:
            raise ValueError(f"{path}: the parts hold {written} rows, not {shape[0]}")

    _atomic_write(path, write)


def atomic_write_json(path: Path, data: dict) -> None:
    """Write ``data`` as JSON to ``path`` atomically (see :func:`atomic_save_npy`)."""
    _atomic_write(path, lambda f: f.write(json.dumps(data, indent=1).encode()))


def read_json(path: Path) -> dict:
    """A JSON file's content, or {} when it is missing or unreadable (a damaged entry is re-made, not an error)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def npy_intact(path: Path, shape: tuple | None = None) -> bool:
    """Whether ``path`` is a whole ``.npy`` file (size = header + data) of ``shape`` (None: any length on that axis);
    cheap: reads the header only."""
    try:
        with open(path, "rb") as f:
            read_header = _NPY_HEADERS[np.lib.format.read_magic(f)]
            file_shape, _, dtype = read_header(f)
            data_start = f.tell()
        size = os.path.getsize(path)
    except (OSError, ValueError, KeyError):
        return False
    shape_ok = shape is None or (len(shape) == len(file_shape)
                                 and all(want is None or want == got for want, got in zip(shape, file_shape)))
    return shape_ok and size == data_start + int(np.prod(file_shape)) * dtype.itemsize


@contextlib.contextmanager
def entry_lock(folder: Path):
    """Hold an exclusive lock on a cache entry (``folder/.lock``, ``fcntl.flock``): one process at a time."""
    with open(Path(folder) / LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def touch_last_used(path: Path) -> None:
    """Record that an entry (a folder: its ``last_used`` file) or a text file was just used."""
    path = Path(path)
    with contextlib.suppress(OSError):  # a read-only cache still loads
        if path.is_dir():
            (path / LAST_USED).touch()
        else:
            os.utime(path)


# ---- listing and pruning ---------------------------------------------------------------------------------------

@dataclass
class Entry:
    """One cache entry (or a fingerprint's text cache, ``kind == "text"``) as ``zeroshot cache ls`` shows it."""

    path: Path
    fingerprint: str
    kind: str
    backbone: str | None
    location: str | None
    rows: int
    complete: bool
    bytes: int
    last_used: float


def _size_and_mtime(path: Path) -> tuple[int, float]:
    files = [p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file()]
    stats = [p.stat() for p in files]
    return sum(s.st_size for s in stats), max((s.st_mtime for s in stats), default=path.stat().st_mtime)


def _entry(folder: Path, fingerprint: str, kind: str) -> Entry:
    """Describe an images entry (one manifest, or shard sidecars) or a views entry (a manifest per view)."""
    manifests = [folder / "manifest.json"] if kind == "images" else sorted(folder.glob("*/manifest.json"))
    metas = [read_json(m) for m in manifests]
    complete = bool(metas) and all(m.get("complete") for m in metas)
    rows = (sum(int(m.get("n", 0)) for m in metas) if complete
            else sum(int(read_json(s).get("rows", 0)) for s in folder.glob("shard-*.json")))
    first = metas[0] if metas else {}
    size, mtime = _size_and_mtime(folder)
    last_used = (folder / LAST_USED).stat().st_mtime if (folder / LAST_USED).is_file() else mtime
    return Entry(folder, fingerprint, kind, first.get("backbone"), first.get("dataset", {}).get("location"), rows,
                 complete, size, last_used)


def _text_entry(folder: Path, fingerprint: str) -> Entry:
    files = list(folder.glob("*.npy"))
    size, mtime = _size_and_mtime(folder)
    return Entry(folder, fingerprint, "text", None, None, len(files), True, size, mtime)


def list_entries(cache_dir: str | os.PathLike | None = None) -> list[Entry]:
    """Every entry of a cache, by fingerprint then kind; each fingerprint's text files summed into one entry."""
    cache = resolve_cache_dir(cache_dir)
    if cache is None or not cache.is_dir():
        return []
    entries = []
    for fp_dir in sorted(p for p in cache.iterdir() if p.is_dir()):
        for kind in KINDS:
            entries += [_entry(f, fp_dir.name, kind) for f in sorted((fp_dir / kind).glob("*")) if f.is_dir()]
        if (fp_dir / "text").is_dir():
            entries.append(_text_entry(fp_dir / "text", fp_dir.name))
    return entries


def prune(cache_dir: str | os.PathLike | None = None, *, older_than_days: float | None = None,
          fingerprint: str | None = None, incomplete: bool = False, everything: bool = False,
          dry_run: bool = False) -> list[Entry]:
    """Remove the entries that match every filter given (``fingerprint`` is a prefix); returns them.

    ``everything`` matches all entries; with no filter at all nothing matches, so a bare call removes nothing.
    ``incomplete`` matches unfinished extractions only (text caches are always complete).
    """
    if not (everything or fingerprint or incomplete or older_than_days is not None):
        return []
    cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
    chosen = [e for e in list_entries(cache_dir)
              if (fingerprint is None or e.fingerprint.startswith(fingerprint))
              and (not incomplete or not e.complete)
              and (cutoff is None or e.last_used < cutoff)]
    if not dry_run:
        for e in chosen:
            shutil.rmtree(e.path, ignore_errors=True)
            for parent in (e.path.parent, e.path.parent.parent):  # drop emptied kind and fingerprint folders
                with contextlib.suppress(OSError):
                    parent.rmdir()
    return chosen
