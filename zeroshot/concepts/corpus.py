"""Caption corpora streamed one caption at a time: txt, CSV/TSV, JSONL, parquet, WebDataset shards, Flickr folders."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

from ..datasets import expand_shards

_FORMATS = {".txt": "txt", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".parquet": "parquet",
            ".tar": "webdataset", ".tgz": "webdataset", ".tar.gz": "webdataset"}
_KNOWN = "a .txt, .csv, .tsv, .jsonl or .parquet file, WebDataset .tar/.tar.gz shards, or a folder with captions.csv"


def iter_captions(source: str | os.PathLike, *, column: str | None = None) -> Iterator[str]:
    """Stream the captions of ``source``; caption ids are their 0-based positions (a txt file's line numbers).

    ``column`` names the CSV/TSV/parquet column or JSONL field (default ``caption``) or, for WebDataset shards,
    the member extension (default ``txt``).
    """
    kind, files = _resolve(source)
    for path in files:
        yield from _READERS[kind](path, column)


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
    """The format of ``source`` and the files to read, in order."""
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
    if kind == "webdataset":
        return kind, expand_shards(text)
    if not path.is_file():
        raise FileNotFoundError(f"caption corpus {text!r} does not exist")
    return kind, [path]


def _txt(path: Path, column: str | None) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield line.rstrip("\r\n")


def _delimited(delimiter: str):
    def read(path: Path, column: str | None) -> Iterator[str]:
        column = column or "caption"
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            if column not in (reader.fieldnames or []):
                raise ValueError(f"{path} has no column {column!r}; columns: {reader.fieldnames}")
            for row in reader:
                yield row[column] or ""
    return read


def _jsonl(path: Path, column: str | None) -> Iterator[str]:
    column = column or "caption"
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                record = json.loads(line)
                if column not in record:
                    raise ValueError(f"{path}:{number} has no field {column!r}")
                yield record[column] or ""


def _parquet(path: Path, column: str | None) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError("reading parquet captions needs pyarrow: pip install pyarrow") from exc
    column = column or "caption"
    table = pq.ParquetFile(path)
    if column not in table.schema_arrow.names:
        raise ValueError(f"{path} has no column {column!r}; columns: {table.schema_arrow.names}")
    for batch in table.iter_batches(batch_size=65536, columns=[column]):
        for caption in batch.column(0).to_pylist():
            yield caption or ""


def _webdataset(path: Path, column: str | None) -> Iterator[str]:
    """The ``.txt`` (or ``.<column>``) members of one shard, read as a stream in archive order."""
    extension = "." + (column or "txt")
    with tarfile.open(path, "r|*") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(extension):
                yield tar.extractfile(member).read().decode("utf-8").strip()


_READERS = {"txt": _txt, "csv": _delimited(","), "tsv": _delimited("\t"), "jsonl": _jsonl, "parquet": _parquet,
            "webdataset": _webdataset}
