"""Run an exported model (``zeroshot export``) with ONNX Runtime, NumPy and Pillow only: no torch, open_clip or
transformers, so a deployment installs ``zeroshot[runtime]`` (about 10x smaller) and starts in well under a second.

An exported folder holds ``zeroshot_export.json`` (preprocessing, fingerprint, the files below), the image tower
``image_encoder.onnx`` and, as exported, a fixed label set (``classes.json`` + ``class_embeddings.npy``) and/or the
text tower ``text_encoder.onnx`` with its ``tokenizer.json`` for open-vocabulary use. Features come out as
L2-normalised float32 rows in the source model's embedding space, so heads fitted on the source model's features
apply to them.
"""
from __future__ import annotations

import html
import json
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from .features import load_npy
from .images import BadImage, ImageTransform, decode_raw_array
from .metrics import softmax

EXPORT_FILE = "zeroshot_export.json"
EXPORT_FORMAT = 1  # zeroshot_export.json's format version
CLASSES_FILE, CLASS_EMBEDDINGS_FILE = "classes.json", "class_embeddings.npy"


def is_exported(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder written by ``zeroshot export``."""
    return (Path(path).expanduser() / EXPORT_FILE).is_file()


def onnx_session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session of ``path`` with all graph optimisations; ``threads``: intra-op threads (None:
    ONNX Runtime's choice, one per physical core)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ImportError("running an exported model needs the package 'onnxruntime', which this installation lacks; "
                          "pip install 'zeroshot[runtime]'") from exc
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class TextTokenizer:
    """open_clip's ``HFTokenizer`` without transformers: the same cleaning (ftfy, HTML entities, whitespace) and the
    same ``tokenizer.json``, truncated at the context length. Each batch is padded to its longest text only: an
    exported Hugging Face tower masks padding, so the embeddings do not change."""

    def __init__(self, path: Path, context_length: int, pad_id: int):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.enable_truncation(context_length)
        self.tokenizer.no_padding()
        self.pad_id = pad_id

    @staticmethod
    def clean(text: str) -> str:
        import ftfy

        return " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).split())

    def __call__(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch([self.clean(t) for t in texts])]

    def pad(self, tokens: Sequence[list[int]]) -> np.ndarray:
        """Token lists as one (B, longest) int64 array, padded with the pad id."""
        ids = np.full((len(tokens), max(map(len, tokens))), self.pad_id, np.int64)
        for row, token_ids in zip(ids, tokens):
            row[:len(token_ids)] = token_ids
        return ids


class ExportedModel:
    """An exported folder, loaded for inference: ``encode_images``, ``encode_texts`` (with a text tower),
    ``predict_proba`` and ``classify`` (with a label set or a text tower). It also stands in for a
    :class:`~zeroshot.Backbone` where only ``fingerprint`` and ``encode_texts`` are needed
    (:func:`zeroshot.class_embeddings`)."""

    def __init__(self, folder: str | os.PathLike, *, threads: int | None = None, decode: str | None = None):
        self.folder = Path(folder).expanduser()
        if not is_exported(self.folder):
            raise FileNotFoundError(f"{folder} is not an exported model: {EXPORT_FILE} is missing; make one with "
                                    "zeroshot export MODEL --output DIR")
        info = json.loads((self.folder / EXPORT_FILE).read_text())
        if info.get("format") != EXPORT_FORMAT:
            raise ValueError(f"{self.folder / EXPORT_FILE} has format {info.get('format')!r}; this zeroshot reads "
                             f"format {EXPORT_FORMAT}: export the model again with this version")
        self.info = info
        self.threads = threads
        self.name = info["source"]["name"]
        self.fingerprint = info["fingerprint"]
        self.space = info["space"]
        self.embed_dim = int(info["embed_dim"])
        self.logit_scale = float(info["logit_scale"])
        preprocess = {k: tuple(v) if isinstance(v, list) else v for k, v in info["preprocess"].items()}
        self.transform = ImageTransform(**{**preprocess, **({"decode": decode} if decode else {})})
        self.classes: list[str] | None = None
        self.class_embeddings: np.ndarray | None = None
        if info.get("classes"):
            self.classes = json.loads((self.folder / CLASSES_FILE).read_text())["classes"]
            self.class_embeddings = np.array(load_npy(self.folder / CLASS_EMBEDDINGS_FILE, mmap=False))
        for part in ("image_encoder", "text_encoder"):
            if info.get(part) and not (self.folder / info[part]["file"]).is_file():
                raise FileNotFoundError(f"{self.folder}: {info[part]['file']} is missing; export the model again")

    def __repr__(self) -> str:
        parts = [f"dim={self.embed_dim}", f"fingerprint={self.fingerprint}"]
        if self.classes:
            parts.append(f"classes={len(self.classes)}")
        return f"ExportedModel({str(self.folder)!r}, {', '.join(parts)}, text_tower={self.has_text_tower})"

    @property
    def has_text_tower(self) -> bool:
        return bool(self.info.get("text_encoder"))

    @cached_property
    def _image_session(self):
        return onnx_session(self.folder / self.info["image_encoder"]["file"], self.threads)

    @cached_property
    def _text(self) -> tuple[object, TextTokenizer]:
        text = self.info.get("text_encoder")
        if not text:
            raise ValueError(f"{self.folder} was exported without its text tower, so it cannot encode texts: export "
                             "again with --text-tower")
        tokenizer = TextTokenizer(self.folder / text["tokenizer"], text["context_length"], text["pad_id"])
        return onnx_session(self.folder / text["file"], self.threads), tokenizer

    # --- images -------------------------------------------------------------------------------------------
    def encode_arrays(self, pixels: np.ndarray) -> np.ndarray:
        """(B, size, size, 3) uint8 arrays, as :meth:`ImageTransform.to_array` makes them -> (B, D) unit rows."""
        session = self._image_session
        (out,) = session.run(None, {session.get_inputs()[0].name: self.transform.normalize_array(pixels)})
        return out

    def encode_images(self, images: Iterable, batch_size: int = 32) -> np.ndarray:
        """Image paths, encoded bytes, PIL images or HxWx3 uint8 arrays -> (N, D) float32 unit rows; a file that
        cannot be decoded raises :class:`~zeroshot.images.BadImage` (``encode_dataset`` skips such files)."""
        arrays = [self.transform.to_array(img) if isinstance(img, Image.Image) else
                  decode_raw_array(img, self.transform) for img in images]
        return self._encode_stacked(arrays, batch_size)

    def encode_dataset(self, data, batch_size: int = 32, workers: int | None = None
                       ) -> tuple[list[str], np.ndarray, dict[str, str]]:
        """(ids, (N, D) features, {id: reason} of the files skipped) of a :class:`~zeroshot.Dataset`. Files are
        decoded on ``workers`` threads (default: up to 4; Pillow decodes outside the GIL), the next batch while the
        model runs this one."""

        def decode(index: int):
            try:
                return decode_raw_array(data.raw(index), self.transform)
            except BadImage as exc:
                return exc

        ids, features, failed = [], [], {}
        with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
            def submit(start: int) -> list:
                return [(i, pool.submit(decode, i)) for i in range(start, min(start + batch_size, len(data)))]

            pending = submit(0)
            for start in range(0, len(data), batch_size):
                current, pending = pending, submit(start + batch_size)
                arrays = []
                for index, future in current:
                    result = future.result()
                    if isinstance(result, BadImage):
                        failed[data.ids[index]] = str(result)
                    else:
                        ids.append(data.ids[index])
                        arrays.append(result)
                if arrays:
                    features.append(self.encode_arrays(np.stack(arrays)))
        return ids, np.concatenate(features) if features else np.zeros((0, self.embed_dim), np.float32), failed

    def _encode_stacked(self, arrays: list[np.ndarray], batch_size: int) -> np.ndarray:
        out = np.zeros((len(arrays), self.embed_dim), np.float32)
        for start in range(0, len(arrays), batch_size):
            out[start:start + batch_size] = self.encode_arrays(np.stack(arrays[start:start + batch_size]))
        return out

    # --- texts --------------------------------------------------------------------------------------------
    def encode_texts(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """list of T strings -> (T, D) float32 unit rows, in the order given (needs the exported text tower).
        Texts are encoded shortest first, each batch padded to its longest."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("encode_texts takes a list of strings")
        session, tokenizer = self._text
        tokens = tokenizer(texts)
        order = np.argsort([len(t) for t in tokens], kind="stable")
        out = np.zeros((len(texts), self.embed_dim), np.float32)
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            ids = tokenizer.pad([tokens[r] for r in rows])
            (out[rows],) = session.run(None, {session.get_inputs()[0].name: ids})
        return out

    # --- classification -----------------------------------------------------------------------------------
    def label_set(self, classes: list[str] | None = None, templates: list[str] | None = None,
                  cache_dir: str | os.PathLike | None | bool = None) -> tuple[list[str], np.ndarray]:
        """(class names, (C, D) class embeddings): the exported label set, or ``classes`` (with ``templates``)
        through the exported text tower. Asking an export without a text tower for other classes is an error."""
        from .prompts import class_embeddings

        if classes is None or (self.classes is not None and list(classes) == self.classes):
            if self.classes is None:
                raise ValueError(f"{self.folder} has no label set: give the class names (--classes / --card), "
                                 "or export with --classes / --card")
            return self.classes, self.class_embeddings
        if not self.has_text_tower:
            exported = f"its own {len(self.classes)} classes ({', '.join(self.classes[:5])}" \
                       f"{', ...' if len(self.classes) > 5 else ''})" if self.classes else "no label set"
            raise ValueError(f"{self.folder} was exported with {exported} and without its text tower, so it cannot "
                             "score other classes: drop --classes / --card, or export again with --text-tower")
        return list(classes), class_embeddings(self, list(classes), templates, cache_dir=cache_dir)

    def predict_proba(self, features: np.ndarray, class_embeddings: np.ndarray | None = None) -> np.ndarray:
        """(N, C) softmax of ``logit_scale * features @ W.T``, W the exported label set unless given."""
        W = self.label_set()[1] if class_embeddings is None else class_embeddings
        return softmax(self.logit_scale * (features @ W.T))

    def classify(self, images: Iterable, top_k: int = 5) -> list[list[tuple[str, float]]]:
        """Per image, its ``top_k`` (class, probability) pairs, best first, against the exported label set."""
        names, W = self.label_set()
        proba = self.predict_proba(self.encode_images(images), W)
        top = np.argsort(-proba, axis=1, kind="stable")[:, :top_k]
        return [[(names[j], float(p[j])) for j in row] for row, p in zip(top, proba)]


def load_exported(folder: str | os.PathLike, *, threads: int | None = None, decode: str | None = None
                  ) -> ExportedModel:
    """Load a folder written by ``zeroshot export`` (see :class:`ExportedModel`); ``decode="draft"`` overrides the
    exported JPEG decoding (see :class:`~zeroshot.images.ImageTransform`)."""
    return ExportedModel(folder, threads=threads, decode=decode)
