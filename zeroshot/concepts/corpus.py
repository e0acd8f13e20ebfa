"""Caption corpora streamed one caption at a time: txt, CSV/TSV, JSONL, parquet, WebDataset shards, Flickr folders.

A corpus is also readable by partition (:func:`plan_partitions`, :func:`iter_partition`), so that an engine can count
it in pieces: byte ranges cut at line starts for the line formats, whole files for parquet and tar shards. Reading
every partition of the plan in order yields exactly the captions of :func:`iter_captions`, because that function
reads each file as one whole-file partition with the same readers.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

from ..datasets import expand_shards

_FORMATS = {".txt": "txt", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".parquet": "parquet",
            ".tar": "webdataset", ".tgz": "webdataset", ".tar.gz": "webdataset"}
_KNOWN = ("a .txt, .csv, .tsv, .jsonl or .parquet file (or a brace pattern of them: part-{00..09}.txt), "
          "WebDataset .tar/.tar.gz shards, or a folder with captions.csv")
_LINE_KINDS = ("txt", "jsonl", "csv", "tsv")  # split into byte ranges; the others by whole files
PARTITION_BYTES = 16 << 20  # a unit of work: large enough to amortise a task, small enough to balance 2..1000 workers
_SCAN_CHUNK = 16 << 20


@dataclass(frozen=True)
class Partition:
    """A unit of a corpus: the bytes ``[start, stop)`` of one file (``stop`` None: to its end), read as ``kind``.

    Line formats are cut at line starts (CSV/TSV only where no quoted field is open), so a partition holds whole
    captions; parquet and tar shards are whole files."""

    kind: str
    path: str
    start: int = 0
    stop: int | None = None


def iter_captions(source: str | os.PathLike, *, column: str | None = None) -> Iterator[str]:
    """Stream the captions of ``source``; caption ids are their 0-based positions (a txt file's line numbers).

    ``column`` names the CSV/TSV/parquet column or JSONL field (default ``caption``) or, for WebDataset shards,
    the member extension (default ``txt``).
    """
    kind, files = _resolve(source)
    for path in files:
        yield from iter_partition(Partition(kind, str(path)), column=column)


def iter_partition(partition: Partition, *, column: str | None = None) -> Iterator[str]:
    """Stream the captions of one partition (``column`` as in :func:`iter_captions`)."""
    return _READERS[partition.kind](partition, column)


def plan_partitions(source: str | os.PathLike, *, partition_bytes: int = PARTITION_BYTES) -> list[Partition]:
    """The partitions of ``source``, in caption order: the same plan on every run for the same files and size.

    Each file of a line format is cut at the first line start at least ``partition_bytes`` after the previous cut
    (an empty file is one empty partition); parquet files and tar shards are one partition each.
    """
    if partition_bytes < 1:
        raise ValueError(f"partition_bytes must be positive, not {partition_bytes}")
    kind, files = _resolve(source)
    if kind not in _LINE_KINDS:
        return [Partition(kind, str(path)) for path in files]
    cut = _quoted_cuts if kind in ("csv", "tsv") else _line_cuts
    return [Partition(kind, str(path), start, stop) for path in files
            for start, stop in pairwise(cut(path, partition_bytes))]


def describe_corpus(source: str | os.PathLike) -> dict:
    """Provenance of a corpus: its path, format and the sha256 of its files' bytes (in reading order, streamed)."""
    kind, files = _resolve(source)
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return {"path": str(source), "format": kind, "sha256": digest.hexdigest()}


def _resolve(source: str | os.PathLike) -> tuple[str, list[Path]]:
    """The format of ``source`` and the files to read, in order (a brace pattern names several)."""
    text = str(source)
    path = Path(text)
    if path.is_dir():
        if (path / "captions.csv").is_file():
            return "csv", [path / "captions.csv"]
        raise ValueError(f"{path} is a folder without captions.csv; give {_KNOWN}")
    name = path.name.lower()
    suffix = ".tar.gz" if name.endswith(".tar.gz") else path.suffix.lower()
    kind = _FORMATS.get(suffix)
    if kind is None:
        raise ValueError(f"unknown caption corpus {text!r}; give {_KNOWN}")
    files = expand_shards(text)
    missing = [str(f) for f in files if not f.is_file()]
    if missing and kind != "webdataset":
        raise FileNotFoundError(f"caption corpus {missing[0]!r} does not exist")
    return kind, files


def _line_cuts(path: Path, partition_bytes: int) -> list[int]:
    """Byte offsets ``0, cut, ..., size``: each cut the first line start at least ``partition_bytes`` past the last."""
    size = path.stat().st_size
    cuts = [0]
    with open(path, "rb") as f:
        while cuts[-1] + partition_bytes < size:
            f.seek(cuts[-1] + partition_bytes - 1)
            f.readline()  # to the end of the line holding that byte: the next line starts at or after the target
            if f.tell() >= size:
                break
            cuts.append(f.tell())
    return [*cuts, size]


def _quoted_cuts(path: Path, partition_bytes: int) -> list[int]:
    """As :func:`_line_cuts`, for CSV/TSV: a cut also needs an even number of ``"`` before it, so that no quoted
    field (which may hold newlines) is open there. That holds for RFC 4180 quoting, as ``csv.writer`` and pandas
    write it; the count is one vectorised pass over the file's bytes."""
    size = path.stat().st_size
    cuts, offset, odd = [0], 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(_SCAN_CHUNK):
            data = np.frombuffer(chunk, np.uint8)
            odd_after = np.bitwise_xor.accumulate((data == ord('"')).view(np.uint8)) ^ odd  # 1: a quote is open
            starts = offset + 1 + np.flatnonzero((data == ord("\n")) & (odd_after == 0))
            while (i := np.searchsorted(starts, cuts[-1] + partition_bytes)) < len(starts) and starts[i] < size:
                cuts.append(int(starts[i]))
            odd, offset = int(odd_after[-1]), offset + len(chunk)
    return [*cuts, size]


@contextmanager
def _text(partition: Partition, newline: str | None = None) -> Iterator[io.TextIOWrapper]:
    """The partition's bytes as UTF-8 text, decoded and newline-translated exactly as ``open(path)`` would."""
    with open(partition.path, "rb") as raw:
        raw.seek(partition.start)
        stop = partition.stop if partition.stop is not None else os.fstat(raw.fileno()).st_size
        yield io.TextIOWrapper(io.BufferedReader(_ByteRange(raw, stop - partition.start)), encoding="utf-8",
                               newline=newline)


class _ByteRange(io.RawIOBase):
    """The next ``length`` bytes of an open binary file, as a raw stream that ends there."""

    def __init__(self, raw: io.BufferedReader, length: int):
        self._raw, self._left = raw, length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._raw.readinto(memoryview(buffer)[:min(len(buffer), self._left)]) if self._left > 0 else 0
        self._left -= n
        return n


def _where(partition: Partition, number: int) -> str:
    """Where line ``number`` of a partition is: ``path:number`` in a partition that starts its file, else the line
    counted from the partition's first byte."""
    return f"{partition.path}:{number}" if partition.start == 0 else \
        f"{partition.path}: line {number} after byte {partition.start}"


def _txt(partition: Partition, column: str | None) -> Iterator[str]:
    with _text(partition) as f:
        for line in f:
            yield line.rstrip("\r\n")


def _delimited(delimiter: str):
    def read(partition: Partition, column: str | None) -> Iterator[str]:
        """A DictReader over the partition; past byte 0 it takes the field names from the file's header record."""
        column = column or "caption"
        fieldnames = None
        if partition.start > 0:
            with open(partition.path, encoding="utf-8", newline="") as f:
                fieldnames = next(csv.reader(f, delimiter=delimiter), None)
        with _text(partition, newline="") as f:
            reader = csv.DictReader(f, fieldnames=fieldnames, delimiter=delimiter)
            if column not in (reader.fieldnames or []):
                raise ValueError(f"{partition.path} has no column {column!r}; columns: {reader.fieldnames}")
            for row in reader:
                yield row[column] or ""
    return read


def _jsonl(partition: Partition, column: str | None) -> Iterator[str]:
    column = column or "caption"
    with _text(partition) as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                record = json.loads(line)
                if column not in record:
                    raise ValueError(f"{_where(partition, number)} has no field {column!r}")
                yield record[column] or ""


def _parquet(partition: Partition, column: str | None) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError("reading parquet captions needs pyarrow: pip install pyarrow") from exc
    column = column or "caption"
    table = pq.ParquetFile(partition.path)
    if column not in table.schema_arrow.names:
        raise ValueError(f"{partition.path} has no column {column!r}; columns: {table.schema_arrow.names}")
    for batch in table.iter_batches(batch_size=65536, columns=[column]):
        for caption in batch.column(0).to_pylist():
            yield caption or ""


def _webdataset(partition: Partition, column: str | None) -> Iterator[str]:
    """The ``.txt`` (or ``.<column>``) members of one shard, read as a stream in archive order."""
    extension = "." + (column or "txt")
    with tarfile.open(partition.path, "r|*") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(extension):
                yield tar.extractfile(member).read().decode("utf-8").strip()


_READERS = {"txt": _txt, "csv": _delimited(","), "tsv": _delimited("\t"), "jsonl": _jsonl, "parquet": _parquet,
            "webdataset": _webdataset}
