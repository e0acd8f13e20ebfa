"""Export a backbone for deployment: its image tower (and optionally its text tower) as ONNX with a dynamic batch
axis, its preprocessing and fingerprint as JSON, a fixed label set's class embeddings, and optionally int8 weights
and activations (ONNX Runtime quantisation). :mod:`zeroshot.runtime` runs the folder without torch.

Every file is checked before the folder appears: the ONNX checker, then the exported towers against torch on the
same inputs (fp32: at most :data:`MAX_FP32_DIFFERENCE` apart, else the export fails), and the runtime's tokenizer
against open_clip's on the prompts. The folder is written beside ``output`` and renamed into place at the end, so
an interrupted export leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from .backbone import sha256_file
from .cache import digest
from .runtime import (CLASS_EMBEDDINGS_FILE, CLASSES_FILE, EXPORT_FILE, EXPORT_FORMAT, ExportedModel, TextTokenizer,
                      onnx_session)

IMAGE_FILE, TEXT_FILE, TOKENIZER_FILE = "image_encoder.onnx", "text_encoder.onnx", "tokenizer.json"
OPSET = 18
MAX_FP32_DIFFERENCE = 1e-4  # features are unit rows; float32 reordering moves them by ~1e-7
PROBE_TEXTS = ["a photo of a dog.", "an airplane above the clouds", "x", "a very blurry photo of the small red "
               "truck that is parked next to two cyclists on a rainy street in the old town at night."]


def export(model, output: str | os.PathLike, *, classes: list[str] | None = None,
           templates: list[str] | None = None, text_tower: bool = False, int8: bool = False,
           calibration=None, calibration_size: int = 256, seed: int = 0,
           cache_dir: str | os.PathLike | None | bool = None) -> Path:
    """Write ``model`` (a :class:`~zeroshot.Backbone` or a spec for :func:`~zeroshot.load_backbone`) to the new
    folder ``output`` for :mod:`zeroshot.runtime`; returns the folder.

    ``classes`` (with prompt ``templates``) store a label set, so a classifier deploys with no text tower;
    ``text_tower`` exports the text tower and its tokenizer for open-vocabulary use (Hugging Face tokenizer towers,
    which mask padding). ``int8`` quantises the image tower statically, its activation ranges calibrated on
    ``calibration_size`` images drawn with ``seed`` from ``calibration`` (any dataset :func:`~zeroshot.open_dataset`
    opens; no labels needed), and the text tower dynamically (its activations depend on text length).
    """
    from . import load_backbone
    from .datasets import open_dataset

    output = Path(output).expanduser()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FileExistsError(f"{output} already exists; give a new folder for the export (or remove it)")
    if int8 and calibration is None:
        raise ValueError("int8 quantisation calibrates the image tower's activations on images: pass calibration "
                         "(--calibration DATA, a few hundred unlabelled images like those the model will see)")
    if calibration_size < 1:
        raise ValueError(f"calibration_size must be at least 1, got {calibration_size}")
    _require_onnx()
    calibration = open_dataset(calibration) if isinstance(calibration, (str, os.PathLike, list)) else calibration
    backbone = model if hasattr(model, "encode_images") else load_backbone(model, device="cpu")
    if text_tower:
        check_text_tower_exportable(backbone)

    staging = output.with_name(f".{output.name}.export-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        sample = image_sample(backbone, calibration, calibration_size, seed)
        image_info = export_image_tower(backbone, staging, sample, int8=int8, calibration_size=calibration_size,
                                        seed=seed)
        text_info = export_text_tower(backbone, staging, int8=int8, probes=classes) if text_tower else None
        if classes:
            from .prompts import class_embeddings

            W = class_embeddings(backbone, classes, templates, cache_dir=cache_dir)
            np.save(staging / CLASS_EMBEDDINGS_FILE, W.astype(np.float32), allow_pickle=False)
            label_set = {"classes": list(classes), "templates": templates}
            (staging / CLASSES_FILE).write_text(json.dumps(label_set, indent=1))
        info = {
            "format": EXPORT_FORMAT,
            "source": {"name": backbone.name, "fingerprint": backbone.fingerprint},
            "fingerprint": digest([backbone.fingerprint, backbone.transform.fingerprint()]
                                  + [sha256_file(staging / part["file"]) for part in (image_info, text_info) if part]),
            "space": backbone.space,
            "embed_dim": backbone.embed_dim,
            "logit_scale": backbone.logit_scale,
            "preprocess": backbone.transform.fingerprint(),
            "image_encoder": image_info,
            "text_encoder": text_info,
            "classes": len(classes) if classes else None,
        }
        (staging / EXPORT_FILE).write_text(json.dumps(info, indent=1) + "\n")
        ExportedModel(staging)  # the folder loads as the runtime will read it
        try:
            with contextlib.suppress(FileNotFoundError):
                output.rmdir()  # empty (checked above)
            os.replace(staging, output)
        except OSError:
            if output.is_dir() and any(output.iterdir()):  # another export filled it meanwhile
                raise FileExistsError(f"{output} was written by another process during this export; give a new "
                                      "folder (or remove it)") from None
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


@contextlib.contextmanager
def quiet_tools():
    """Silence the exporter's and the quantiser's progress lines, warnings and root-logger notes (they would
    bury the one summary the command prints); errors still raise."""
    from .backbone import FromPackage

    root = logging.getLogger()
    filters = [FromPackage("onnxruntime"), FromPackage("onnxscript"), FromPackage("torch")]
    for f in filters:
        root.addFilter(f)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for f in filters:
            root.removeFilter(f)


def _require_onnx() -> None:
    for module in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(module)
        except ImportError as exc:
            raise ImportError(f"exporting needs the package {module!r}, which this installation lacks; pip install "
                              "'zeroshot[export]'") from exc


def check_text_tower_exportable(backbone) -> None:
    """Refuse ``--text-tower`` for a tower the runtime could not tokenise or pad: only Hugging Face tokenizer
    towers that mask padding are exported (open_clip's own towers read padding positions and use its BPE
    tokenizer, which needs torch)."""
    from open_clip.tokenizer import HFTokenizer

    from .backbone import _padding_id

    if not isinstance(backbone.tokenizer, HFTokenizer) or _padding_id(backbone.model) is None:
        raise ValueError(f"{backbone.name}: only text towers with a Hugging Face tokenizer that mask padding export "
                         "(this one uses open_clip's own tokenizer); export a fixed label set with --classes / --card "
                         "instead of --text-tower")


def image_sample(backbone, data, size: int, seed: int) -> np.ndarray:
    """(n, s, s, 3) uint8: ``size`` images drawn with ``seed`` from ``data`` (files that fail to decode are
    skipped), or without data 32 seeded random images, to check and calibrate an export on."""
    from .images import BadImage, decode_raw_array

    rng = np.random.default_rng(seed)
    s = backbone.transform.size
    if data is None:
        return rng.integers(0, 256, (32, s, s, 3), dtype=np.uint8)
    arrays = []
    for index in np.sort(rng.choice(len(data), size=min(size, len(data)), replace=False)):
        with contextlib.suppress(BadImage):
            arrays.append(decode_raw_array(data.raw(int(index)), backbone.transform))
    if not arrays:
        raise ValueError(f"none of the {min(size, len(data))} calibration images of {data.location} could be "
                         "decoded; give image files")
    return np.stack(arrays)


def unit_rows_module(owner, method: str):
    """A torch module whose forward is ``owner.<method>(x)`` L2-normalised, so the graph outputs the features."""
    import torch
    import torch.nn.functional as F

    class UnitRows(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.owner = owner

        def forward(self, x):
            return F.normalize(getattr(self.owner, method)(x), dim=-1)

    return UnitRows().eval()


def on_cpu(module):
    """``module`` itself when its weights are on the CPU, else a CPU copy (the backbone keeps its device)."""
    import copy

    return module if all(p.device.type == "cpu" for p in module.parameters()) else copy.deepcopy(module).cpu()


def in_batches(encode, inputs: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """``encode`` (a numpy -> numpy function) over ``inputs`` in batches, concatenated."""
    return np.concatenate([encode(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)])


def torch_features(module, inputs: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return in_batches(lambda x: module(torch.from_numpy(x)).numpy(), inputs)


def onnx_features(path: Path, inputs: np.ndarray) -> np.ndarray:
    session = onnx_session(path)
    name = session.get_inputs()[0].name
    return in_batches(lambda x: session.run(None, {name: x})[0], inputs)


def to_onnx(module, example, path: Path, input_name: str, output_name: str, dynamic: dict[int, str]) -> None:
    """``torch.onnx.export`` (the dynamo exporter) of ``module`` at opset :data:`OPSET` with the named dynamic
    axes, weights inside the file below 1.5 GB, then the ONNX checker."""
    import onnx
    import torch

    size = sum(p.numel() * p.element_size() for p in module.parameters())
    dims = {axis: torch.export.Dim(name, min=1) for axis, name in dynamic.items()}
    with quiet_tools():
        torch.onnx.export(module, (example,), str(path), input_names=[input_name], output_names=[output_name],
                          dynamo=True, dynamic_shapes=(dims,), opset_version=OPSET, external_data=size > 1.5e9,
                          verbose=False)
    onnx.checker.check_model(str(path), full_check=True)


def check_parity(what: str, difference: float) -> None:
    if difference > MAX_FP32_DIFFERENCE:
        raise RuntimeError(f"the exported {what} differs from torch by {difference:.2e} (more than "
                           f"{MAX_FP32_DIFFERENCE:.0e}); rerun with --debug and report it with the model name")


def export_image_tower(backbone, folder: Path, sample: np.ndarray, *, int8: bool, calibration_size: int,
                       seed: int) -> dict:
    """``image_encoder.onnx``: normalised (B, 3, s, s) float32 pixels -> (B, D) unit rows; checked against torch
    on ``sample`` (then the calibration set of an int8 export)."""
    import torch

    module = unit_rows_module(on_cpu(backbone.model.visual).eval(), "forward")
    pixels = backbone.transform.normalize_array(sample)
    expected = torch_features(module, pixels)
    path = folder / IMAGE_FILE
    to_onnx(module, torch.from_numpy(pixels[:2]), path, "pixel_values", "image_embeds", {0: "batch"})
    difference = float(np.abs(onnx_features(path, pixels) - expected).max())
    check_parity("image tower", difference)
    info = {"file": IMAGE_FILE, "input": "pixel_values", "output": "image_embeds", "opset": OPSET,
            "max_abs_difference_vs_torch": difference, "checked_on": len(sample), "int8": None}
    if int8:
        info["int8"] = quantize_image_tower(path, pixels, calibration_size, seed)
        info["int8"]["mean_cosine_vs_fp32"] = mean_cosine(path, pixels, expected)
    return info


def export_text_tower(backbone, folder: Path, *, int8: bool, probes: list[str] | None) -> dict:
    """``text_encoder.onnx`` (int64 token ids, (B, L) with both axes dynamic -> (B, D) unit rows) and the
    tokenizer; tokens and embeddings checked against open_clip on the probe texts."""
    import torch

    tokenizer_json = folder / TOKENIZER_FILE
    backbone.tokenizer.tokenizer.backend_tokenizer.save(str(tokenizer_json))
    context_length = int(backbone.tokenizer.context_length)
    pad_id = int(backbone.tokenizer.tokenizer.pad_token_id)
    texts = PROBE_TEXTS + [f"a photo of a {name}." for name in probes or []]
    tokenizer = TextTokenizer(tokenizer_json, context_length, pad_id)
    ours = tokenizer(texts)
    reference = backbone.tokenizer(texts)
    for text, tokens, row in zip(texts, ours, reference.tolist()):
        if tokens != [t for t in row if t != pad_id][:len(tokens)] or len(tokens) != sum(t != pad_id for t in row):
            raise RuntimeError(f"the runtime tokenizer splits {text!r} differently from open_clip's; report it with "
                               "the model name")
    ids = tokenizer.pad(ours)
    width = ids.shape[1]
    module = unit_rows_module(on_cpu(backbone.model).eval(), "encode_text")
    expected = torch_features(module, ids)
    path = folder / TEXT_FILE
    to_onnx(module, torch.from_numpy(ids[:2, :max(2, width // 2)]), path, "input_ids", "text_embeds",
            {0: "batch", 1: "tokens"})
    difference = float(np.abs(onnx_features(path, ids) - expected).max())
    check_parity("text tower", difference)
    info = {"file": TEXT_FILE, "tokenizer": TOKENIZER_FILE, "input": "input_ids", "output": "text_embeds",
            "context_length": context_length, "pad_id": pad_id, "opset": OPSET,
            "max_abs_difference_vs_torch": difference, "int8": None}
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        fp32 = path.with_suffix(".fp32.onnx")
        path.rename(fp32)
        with quiet_tools():
            quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8, per_channel=True)
        fp32.unlink()
        info["int8"] = {"mode": "dynamic", "weights": "int8 per channel",
                        "mean_cosine_vs_fp32": mean_cosine(path, ids, expected)}
    return info


def quantize_image_tower(path: Path, pixels: np.ndarray, calibration_size: int, seed: int) -> dict:
    """Static int8 quantisation in place (QDQ, per-channel int8 weights, uint8 activations with min-max ranges
    from ``pixels``), after ONNX Runtime's pre-processing (shape inference, graph optimisation)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(np.array_split(pixels, max(1, len(pixels) // 32)))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"pixel_values": batch}

    prepared = path.with_suffix(".prepared.onnx")
    with quiet_tools():
        quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)  # its symbolic pass fails on Expand
        quantize_static(str(prepared), str(path), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    prepared.unlink()
    return {"mode": "static", "weights": "int8 per channel", "activations": "uint8", "calibration_images": len(pixels),
            "calibration_size": calibration_size, "seed": seed}


def mean_cosine(path: Path, inputs: np.ndarray, expected: np.ndarray) -> float:
    """Mean cosine between a quantised tower's features and the fp32 ones on the same inputs."""
    return float(np.mean(np.sum(onnx_features(path, inputs) * expected, axis=1)))
