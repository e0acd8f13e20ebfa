"""``zeroshot ood`` on small real slices with the shipped default model: eval table + plots, fit -> score CSV,
the fingerprint refusal, and a short CLIPN negation-map training."""
import csv
import json

import numpy as np
import pytest

from conftest import DEFAULT_FINGERPRINT, shared
from zeroshot.cli import main
from zeroshot.evaluation.ood import DETECTORS


@pytest.fixture(scope="module")
def slices(tmp_path_factory):
    """CIFAR-10 test (ID, 200), CIFAR-10 train (20 per class) and MNIST test (OOD, 200) as .npz slices."""
    root = tmp_path_factory.mktemp("ood_slices")
    (root / "cifar").mkdir()
    (root / "mnist").mkdir()
    with np.load(shared("cifar10", "test.npz"), allow_pickle=False) as z:
        np.savez(root / "cifar" / "id.npz", images=z["images"][:200], labels=z["labels"][:200])
    with np.load(shared("cifar10", "train.npz"), allow_pickle=False) as z:
        np.savez(root / "cifar" / "train.npz", images=z["images"][::10], labels=z["labels"][::10])
    with np.load(shared("mnist_rgb", "test.npz"), allow_pickle=False) as z:
        np.savez(root / "mnist" / "test.npz", images=z["images"][:200], labels=z["labels"][:200])
    (root / "cifar" / "classes.json").write_text(shared("cifar10", "classes.json").read_text())
    (root / "mnist" / "classes.json").write_text(shared("mnist_rgb", "classes.json").read_text())
    return root


def _classes() -> str:
    """The CIFAR-10 names with the single default template: 10 prompts to encode instead of the card's 180."""
    return ",".join(json.loads(shared("cifar10", "classes.json").read_text()))


def _run(*argv, cache) -> None:
    main([*map(str, argv), "--cache-dir", str(cache), "--quiet", "--device", "cpu"])


def test_train_clipn_then_eval_every_detector(slices, tmp_path, capsys, no_network):
    cache, negation, out = slices / "cache", tmp_path / "negation", tmp_path / "eval"
    _run("ood", "train-clipn", "--id", slices / "cifar" / "train.npz", "--classes", _classes(), "--epochs", "3",
         "--output", negation, cache=cache)
    info = json.loads((negation / "negation.json").read_text())
    assert info["fingerprint"] == DEFAULT_FINGERPRINT and info["data"]["class_prompts"]["images"] == 200
    assert len(info["history"]) == 3
    with pytest.warns(UserWarning, match="shrunk"):  # 200 training samples for 384 dimensions
        _run("ood", "eval", "--id", slices / "cifar" / "id.npz", "--ood", slices / "mnist" / "test.npz", "--train",
             slices / "cifar" / "train.npz", "--classes", _classes(), "--negation", negation, "--output", out,
             cache=cache)
    report = json.loads((out / "results.json").read_text())
    assert report["fingerprint"] == DEFAULT_FINGERPRINT and report["id_zero_shot_acc1"] > 0.2
    assert [r["detector"] for r in report["results"]] == list(DETECTORS) and report["skipped"] == []
    by_name = {r["detector"]: r for r in report["results"]}
    assert by_name["energy"]["auroc"] > 0.8 and by_name["energy"]["n_out"] == 200
    with open(out / "results.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(DETECTORS)
    assert "| clipn-atd |" in capsys.readouterr().out
    pngs = {p.name for p in out.glob("*.png")}
    assert "roc_mnist_test_npz.png" in pngs and "hist_knn.png" in pngs and len(pngs) == 1 + len(DETECTORS)


def test_fit_then_score_flags_ood_and_refuses_another_backbone(slices, tmp_path, capsys):
    cache, detector = slices / "cache", tmp_path / "mahalanobis"
    with pytest.warns(UserWarning, match="shrunk"):  # 160 training samples for 384 dimensions
        _run("ood", "fit", "--detector", "mahalanobis", "--id", slices / "cifar" / "train.npz", "--output", detector,
             cache=cache)
    meta = json.loads((detector / "head.json").read_text())
    assert meta["fingerprint"] == DEFAULT_FINGERPRINT and 20 < meta["calibration_n"] < 60 and meta["tpr"] == 0.95
    flagged = {}
    for name, data in (("id", slices / "cifar" / "id.npz"), ("ood", slices / "mnist" / "test.npz")):
        _run("ood", "score", detector, data, "--output", tmp_path / f"{name}.csv", cache=cache)
        with open(tmp_path / f"{name}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 200 and set(rows[0]) == {"id", "score", "flagged"}
        flagged[name] = np.mean([int(r["flagged"]) for r in rows])
    assert flagged["id"] < 0.3 and flagged["ood"] > flagged["id"]
    meta["fingerprint"] = "0123456789abcdef"  # as if fitted with another backbone
    (detector / "head.json").write_text(json.dumps(meta))
    with pytest.raises(SystemExit) as exited:
        _run("ood", "score", detector, slices / "mnist" / "test.npz", cache=cache)
    assert exited.value.code == 2 and f"0123456789abcdef, not {DEFAULT_FINGERPRINT}" in capsys.readouterr().err


def test_text_detector_without_id_images_needs_a_threshold(slices, tmp_path, capsys):
    cache, detector = slices / "cache", tmp_path / "energy"
    _run("ood", "fit", "--detector", "energy", "--classes", _classes(), "--output", detector, cache=cache)
    with pytest.raises(SystemExit) as exited:
        _run("ood", "score", detector, slices / "mnist" / "test.npz", cache=cache)
    assert exited.value.code == 2 and "no calibrated threshold" in capsys.readouterr().err
    _run("ood", "score", detector, slices / "mnist" / "test.npz", "--threshold", "0", "--output", tmp_path / "s.csv",
         cache=cache)
    assert len((tmp_path / "s.csv").read_text().splitlines()) == 201
    with pytest.raises(SystemExit) as exited:
        _run("ood", "fit", "--detector", "mahalanobis", "--classes", "a,b", "--output", tmp_path / "m", cache=cache)
    assert exited.value.code == 2 and "fitted on ID images" in capsys.readouterr().err


def test_eval_prints_a_line_per_detector_as_it_goes(slices, tmp_path, capsys):
    main(["ood", "eval", "--id", str(slices / "cifar" / "id.npz"), "--ood", str(slices / "mnist" / "test.npz"),
          "--classes", _classes(), "--detectors", "energy,mcm", "--output", str(tmp_path / "eval"),
          "--cache-dir", str(slices / "cache"), "--device", "cpu"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[")]
    assert [line.split(":")[0] for line in lines] == ["[1/2] energy", "[2/2] mcm"]
    assert all(" AUROC " in line and " / FPR95 " in line and line.endswith(" s)") for line in lines)
