"""``zeroshot export`` and :mod:`zeroshot.runtime`: ONNX towers equal to torch, a runtime without torch, int8."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import zeroshot
from zeroshot.backbone import create_untrained_folder, timm_text_pair_config
from zeroshot.cli import main
from zeroshot.onnx_export import MAX_FP32_DIFFERENCE, export
from zeroshot.runtime import EXPORT_FILE, ExportedModel, is_exported, load_exported

from conftest import npz_slice

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TORCH_STACK = ("torch", "torchvision", "open_clip", "timm", "transformers", "sklearn", "scipy", "faiss", "matplotlib")


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """256 CIFAR-10 test images (.npz) and their labels."""
    path = npz_slice(tmp_path_factory.mktemp("cifar"), "cifar10", "test.npz", rows=slice(0, 256))
    return path, np.load(path, allow_pickle=False)["labels"]


@pytest.fixture(scope="module")
def default_export(tmp_path_factory):
    """The shipped default model exported with CIFAR-10's label set and its text tower (fp32)."""
    card = zeroshot.load_card("cifar10")
    folder = tmp_path_factory.mktemp("exports") / "default"
    return export("default", folder, classes=card.classes, templates=card.templates, text_tower=True, cache_dir=False)


@pytest.fixture(scope="module")
def tiny_export(tiny_model_dir, tmp_path_factory):
    return export(tiny_model_dir, tmp_path_factory.mktemp("exports") / "tiny", classes=["cat", "dog", "ship"],
                  cache_dir=False)


def torch_features(spec, data) -> np.ndarray:
    return zeroshot.extract(zeroshot.load_backbone(spec, device="cpu"), data, cache_dir=False, progress=False).features


# --- parity with torch ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_default_model_export_matches_torch_on_cifar10(default_export, cifar):
    path, labels = cifar
    model = load_exported(default_export)
    ids, features, failed = model.encode_dataset(zeroshot.open_dataset(path), batch_size=100)
    expected = torch_features("default", path)
    assert not failed and len(ids) == 256
    assert np.abs(features - expected).max() <= MAX_FP32_DIFFERENCE
    ours = model.predict_proba(features).argmax(1)
    W = zeroshot.class_embeddings(zeroshot.load_backbone("default", device="cpu"), CIFAR_CLASSES,
                                  zeroshot.load_card("cifar10").templates, cache_dir=False)
    theirs = (expected @ W.T).argmax(1)
    assert abs((ours == labels).mean() - (theirs == labels).mean()) <= 0.001
    assert (ours == labels).mean() > 0.25  # the default model is far above chance (0.10) on CIFAR-10


@pytest.mark.slow
def test_exported_text_tower_matches_torch_and_its_tokenizer_open_clips(default_export):
    backbone = zeroshot.load_backbone("default", device="cpu")
    texts = ["a photo of a cat.", "Caf\u00e9 &amp; cr\u00e8me   br\u00fbl\u00e9e", "  spaced\tout\ntext ",
             "word " * 100, "", "\U0001F600 emoji"]
    model = load_exported(default_export)
    assert np.abs(model.encode_texts(texts) - backbone.encode_texts(texts)).max() <= MAX_FP32_DIFFERENCE
    ours = model._text[1](texts)
    for tokens, row in zip(ours, backbone.tokenizer(texts).tolist()):
        assert tokens == [t for t in row if t != 0]
    assert len(ours[3]) == backbone.tokenizer.context_length  # truncated like open_clip's


@pytest.mark.slow
def test_open_vocabulary_classes_through_the_exported_text_tower(default_export, tmp_path):
    model = load_exported(default_export)
    names, W = model.label_set(["cat", "dog"], ["a photo of a {}."], cache_dir=tmp_path)
    backbone = zeroshot.load_backbone("default", device="cpu")
    expected = zeroshot.class_embeddings(backbone, ["cat", "dog"], ["a photo of a {}."], cache_dir=False)
    assert names == ["cat", "dog"] and np.abs(W - expected).max() <= MAX_FP32_DIFFERENCE
    assert model.label_set()[0] == CIFAR_CLASSES  # the exported label set without arguments


@pytest.mark.parametrize("tower", ["resnet10t_050", "mobilenetv3_small_050"])
def test_student_towers_export_with_their_real_pooled_width(tower, tmp_path):
    """Students (our resnet10t_050, a timm tower with a conv head after pooling) export and match torch."""
    folder = create_untrained_folder(tmp_path / tower, timm_text_pair_config(tower, image_size=32))
    out = export(folder, tmp_path / "export")
    info = json.loads((out / EXPORT_FILE).read_text())
    assert info["image_encoder"]["max_abs_difference_vs_torch"] <= MAX_FP32_DIFFERENCE
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 40, 48, 3), dtype=np.uint8)
    backbone = zeroshot.load_backbone(folder, device="cpu")
    import torch

    expected = backbone.encode_images(torch.stack([backbone.transform(im) for im in images])).numpy()
    assert np.abs(load_exported(out).encode_images(list(images)) - expected).max() <= MAX_FP32_DIFFERENCE


# --- the runtime without torch -----------------------------------------------------------------------------------
BLOCK_TORCH = textwrap.dedent(f"""
    import sys
    for name in {TORCH_STACK!r}:
        sys.modules[name] = None  # as where they are not installed: importing them raises ImportError
    from zeroshot.cli import main
    try:
        main(sys.argv[1:])
    finally:
        print("imported:", sorted(n for n in {TORCH_STACK!r} if sys.modules.get(n) is not None), file=sys.stderr)
""")


def run_without_torch(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_classify_with_an_export_runs_without_torch(tiny_export, tiny_model_dir, messy_folder, tmp_path):
    """The runtime path never imports torch (nor open_clip, scikit-learn, faiss ...): they are made unimportable
    and the CSV equals the torch path's; a corrupt file is skipped and reported."""
    out = tmp_path / "pred.csv"
    done = run_without_torch("classify", "--model", str(tiny_export), str(messy_folder), "--output", str(out),
                             cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "imported: []" in done.stderr
    assert "skipped" in done.stderr and "could not be decoded" in done.stderr
    rows = out.read_text().splitlines()
    torch_csv = tmp_path / "torch.csv"
    main(["classify", "--model", str(tiny_model_dir), str(messy_folder), "--classes", "cat,dog,ship",
          "--output", str(torch_csv), "--quiet", "--cache-dir", str(tmp_path / "cache")])
    theirs = torch_csv.read_text().splitlines()
    assert [r.split(",")[:2] for r in rows] == [r.split(",")[:2] for r in theirs]
    ours_scores = np.array([[float(v) for v in r.split(",")[3::2]] for r in rows[1:]])
    their_scores = np.array([[float(v) for v in r.split(",")[3::2]] for r in theirs[1:]])
    assert np.abs(ours_scores - their_scores).max() <= 1e-4


def test_a_command_that_needs_torch_says_which_install_it_needs(tiny_model_dir, messy_folder, tmp_path):
    done = run_without_torch("classify", "--model", str(tiny_model_dir), str(messy_folder), "--classes", "a,b",
                             cwd=tmp_path)
    assert done.returncode == 2
    error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "pip install 'zeroshot[full]'" in error[0] and "Traceback" not in done.stderr


def test_runtime_module_imports_without_torch(tiny_export, tmp_path):
    code = (f"import sys\nfor n in {TORCH_STACK!r}: sys.modules[n] = None\n"
            f"from zeroshot.runtime import load_exported\n"
            f"m = load_exported({str(tiny_export)!r})\n"
            "import json, numpy as np\n"
            "print(json.dumps(m.classify([np.zeros((40, 40, 3), np.uint8)], top_k=2)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (pairs,) = json.loads(done.stdout)  # one image: its two best (class, probability) pairs
    assert len(pairs) == 2 and {name for name, _ in pairs} <= {"cat", "dog", "ship"} and pairs[0][1] >= pairs[1][1]


# --- int8 --------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_int8_export_is_smaller_and_close_to_fp32(default_export, cifar, tmp_path):
    path, labels = cifar
    card = zeroshot.load_card("cifar10")
    out = export("default", tmp_path / "int8", classes=card.classes, templates=card.templates, int8=True,
                 calibration=path, calibration_size=64, seed=0, cache_dir=False)
    info = json.loads((out / EXPORT_FILE).read_text())
    assert info["image_encoder"]["int8"]["mode"] == "static"
    assert info["image_encoder"]["int8"]["calibration_images"] == 64
    assert info["fingerprint"] != json.loads((default_export / EXPORT_FILE).read_text())["fingerprint"]
    assert (out / "image_encoder.onnx").stat().st_size < 0.4 * (default_export / "image_encoder.onnx").stat().st_size
    data = zeroshot.open_dataset(path)
    fp32 = load_exported(default_export).encode_dataset(data)[1]
    int8_model = load_exported(out)
    int8 = int8_model.encode_dataset(data)[1]
    assert np.mean(np.sum(fp32 * int8, axis=1)) > 0.99
    agree = (int8_model.predict_proba(int8).argmax(1) == load_exported(default_export).predict_proba(fp32).argmax(1))
    assert agree.mean() > 0.9


# --- wrong input: one line, nothing left behind -------------------------------------------------------------------
def run_cli(args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, capsys.readouterr().err


def test_export_writes_a_self_describing_folder(tiny_export, tiny_model_dir):
    info = json.loads((tiny_export / EXPORT_FILE).read_text())
    backbone = zeroshot.load_backbone(tiny_model_dir, device="cpu")
    assert info["source"]["fingerprint"] == backbone.fingerprint and info["space"] == backbone.space
    assert info["preprocess"]["size"] == 32 and info["text_encoder"] is None and info["classes"] == 3
    assert is_exported(tiny_export) and not is_exported(tiny_model_dir)
    assert sorted(p.name for p in tiny_export.iterdir()) == ["class_embeddings.npy", "classes.json",
                                                             "image_encoder.onnx", EXPORT_FILE]
    import onnx

    graph = onnx.load(str(tiny_export / "image_encoder.onnx")).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch axis


def test_export_refuses_what_it_cannot_do_before_working(tiny_model_dir, tiny_export, tmp_path, capsys):
    code, err = run_cli(["export", str(tiny_model_dir), "--output", str(tmp_path / "a"), "--int8"], capsys)
    assert code == 2 and "--calibration" in err
    code, err = run_cli(["export", str(tiny_model_dir), "--output", str(tmp_path / "a"), "--calibration", "x"], capsys)
    assert code == 2 and "--calibration is for --int8" in err
    code, err = run_cli(["export", str(tiny_model_dir), "--output", str(tmp_path / "a"), "--text-tower"], capsys)
    assert code == 2 and "open_clip's own tokenizer" in err and "--classes / --card" in err
    code, err = run_cli(["export", str(tiny_model_dir), "--output", str(tiny_export)], capsys)
    assert code == 2 and "already exists" in err
    code, err = run_cli(["export", str(tmp_path / "nope"), "--output", str(tmp_path / "a")], capsys)
    assert code == 2 and "does not exist" in err
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob(".a.export-*"))


def test_an_interrupted_export_leaves_nothing(tiny_model_dir, tmp_path, monkeypatch):
    import zeroshot.onnx_export as onnx_export

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "image_sample", fail)
    with pytest.raises(KeyboardInterrupt):
        export(tiny_model_dir, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_exported_folders_are_refused_where_a_torch_model_is_needed(tiny_export, messy_folder, capsys):
    with pytest.raises(ValueError, match="exported .ONNX. model"):
        zeroshot.load_backbone(tiny_export)
    code, err = run_cli(["classify", "--model", str(tiny_export), str(messy_folder), "--classes", "cow,pig"], capsys)
    assert code == 2 and "its own 3 classes (cat, dog, ship)" in err and "--text-tower" in err
    code, err = run_cli(["classify", "--model", str(tiny_export), str(messy_folder), "--multi-label"], capsys)
    assert code == 2 and "--multi-label" in err and "exported model" in err


def test_runtime_refuses_damaged_or_newer_folders(tiny_export, tmp_path):
    import shutil

    copy = shutil.copytree(tiny_export, tmp_path / "copy")
    info = json.loads((copy / EXPORT_FILE).read_text())
    (copy / EXPORT_FILE).write_text(json.dumps({**info, "format": 99}))
    with pytest.raises(ValueError, match="format 99"):
        ExportedModel(copy)
    (copy / EXPORT_FILE).write_text(json.dumps(info))
    (copy / "image_encoder.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="image_encoder.onnx is missing"):
        ExportedModel(copy)
    with pytest.raises(FileNotFoundError, match="not an exported model"):
        ExportedModel(tmp_path)
    with pytest.raises(ValueError, match="without its text tower"):
        load_exported(tiny_export).encode_texts(["a"])


def test_two_exports_into_one_folder_leave_one_whole_export(tiny_model_dir, tmp_path):
    out = tmp_path / "export"
    command = [sys.executable, "-m", "zeroshot", "export", str(tiny_model_dir), "--output", str(out), "--classes",
               "cat,dog", "--quiet"]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    assert sorted(code for code, _ in results) == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert loser.startswith("error:") and ("already exists" in loser or "another process" in loser)
    assert load_exported(out).classes == ["cat", "dog"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no staging folder left
