"""The few-shot protocol (shot sampling, splits, rows, summary, report) and the ``zeroshot fewshot`` command, on a
small real slice of CIFAR-10 encoded by the shipped default model."""
import csv
import json

import numpy as np
import pytest

from conftest import shared
from zeroshot import class_embeddings, extract, load_backbone, load_card
from zeroshot.cli import main
from zeroshot.evaluation.fewshot import (markdown_table, plot_accuracy_vs_shots, run_fewshot, sample_shots,
                                         split_per_class, summarise, write_report)


def test_sample_shots_draws_k_per_class_with_the_seed():
    labels = np.repeat(np.arange(4), [5, 6, 7, 8])
    rows = sample_shots(labels, 3, seed=1)
    assert np.bincount(labels[rows]).tolist() == [3] * 4 and len(np.unique(rows)) == 12
    np.testing.assert_array_equal(rows, sample_shots(labels, 3, seed=1))
    assert not np.array_equal(rows, sample_shots(labels, 3, seed=2))
    with pytest.raises(ValueError, match="6-shot sampling needs 6 support images per class; classes \\[0\\]"):
        sample_shots(labels, 6, seed=1)


def test_split_per_class_takes_the_first_rows_of_each_class():
    labels = np.array([1, 0, 1, 0, 1, 0, 2, 2, 2])
    support, test = split_per_class(labels, 2)
    assert support.tolist() == [0, 1, 2, 3, 6, 7] and test.tolist() == [4, 5, 8]
    with pytest.raises(ValueError, match="no test images"):
        split_per_class(labels, 3)


@pytest.fixture(scope="module")
def cifar_slice(tmp_path_factory):
    """npz slices of CIFAR-10 (train: 12 per class, the support pool; test: 30 per class) and their features."""
    folder = tmp_path_factory.mktemp("fewshot")
    for split, per_class in (("train", 12), ("test", 30)):
        with np.load(shared("cifar10", f"{split}.npz"), allow_pickle=False) as z:
            rows = split_per_class(z["labels"], per_class)[0]
            (folder / split).mkdir()
            np.savez(folder / split / "slice.npz", images=z["images"][rows], labels=z["labels"][rows],
                     ids=z["ids"][rows])
        (folder / split / "classes.json").write_text(shared("cifar10", "classes.json").read_text())
    backbone = load_backbone(device="cpu")
    support, test = (extract(backbone, folder / s / "slice.npz", cache_dir=folder / "cache", progress=False)
                     for s in ("train", "test"))
    card = load_card("cifar10").select(test.classes)
    W = class_embeddings(backbone, card.classes, card.templates, cache_dir=folder / "cache")
    return folder, backbone, support, test, W


HEADS = ("zero-shot", "zlap", "zlap-inductive", "gda", "tip", "teen")


def test_protocol_rows_summary_and_report(cifar_slice, tmp_path, capsys, saved_figures):
    _, backbone, support, test, W = cifar_slice
    X, y, Xt, yt = np.asarray(support.features), support.labels, np.asarray(test.features), test.labels
    rows = run_fewshot(X, y, Xt, yt, W, shots=(1, 4), seeds=(1, 2), heads=HEADS, progress=True)
    assert len(rows) == 3 + 2 * 2 * 3
    assert "gda 1-shot seed 1: not fitted" in capsys.readouterr().err
    by = {(r["head"], r["shots"], r["seed"]): r for r in rows}
    zero_shot = ((Xt @ W.T).argmax(axis=1) == yt).mean()
    assert by[("zero-shot", 0, "")]["acc1"] == pytest.approx(zero_shot)
    assert zero_shot > 0.2  # chance is 0.1
    gda_one_shot = by[("gda", 1, 1)]
    assert gda_one_shot["acc1"] is None and "single shot" in gda_one_shot["error"]
    tip = by[("tip", 4, 2)]
    assert tip["search"] == "validation split carved from the support set" and set(tip["chosen"]) == {"alpha", "beta"}
    assert by[("tip", 1, 1)]["search"].startswith("defaults")
    again = run_fewshot(X, y, Xt, yt, W, shots=(4,), seeds=(2,), heads=("tip",))
    assert again[0]["acc1"] == tip["acc1"] and again[0]["chosen"] == tip["chosen"]  # seeded

    summary = summarise(rows)
    gda4 = next(s for s in summary if s["head"] == "gda" and s["shots"] == 4)
    accs = [by[("gda", 4, seed)]["acc1"] for seed in (1, 2)]
    assert gda4["n_seeds"] == 2 and gda4["mean"] == pytest.approx(np.mean(accs))
    assert gda4["std"] == pytest.approx(np.std(accs, ddof=1))
    gda1 = next(s for s in summary if s["head"] == "gda" and s["shots"] == 1)
    assert gda1["n_seeds"] == 0 and gda1["n_failed"] == 2 and gda4["n_failed"] == 0
    table = markdown_table(summary)
    assert "| gda |  | n/a |" in table and "4 shots" in table

    write_report(rows, tmp_path, {"fingerprint": backbone.fingerprint}, title="slice")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accuracy_vs_shots.png", "rows.csv", "summary.json"]
    report = json.loads((tmp_path / "summary.json").read_text())
    assert report["meta"]["fingerprint"] == backbone.fingerprint and len(report["rows"]) == len(rows)
    assert (tmp_path / "accuracy_vs_shots.png").read_bytes()[:4] == b"\x89PNG"
    ax = saved_figures[0].axes[0]  # GDA's missing 1-shot point is marked, not silently dropped
    assert "gda: fit failed at 1 shot (every seed)" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert [t.get_text() for t in ax.texts] == ["gda: no fit"] and ax.get_title() == "slice"
    assert ax.get_ylabel() == "top-1 accuracy (%), mean ± std over 2 seeds"


def test_plot_names_seeds_that_failed_at_some_shot_counts(tmp_path, saved_figures):
    rows = [{"head": "tip", "shots": k, "seed": seed, "acc1": None if (k, seed) == (2, 1) else 0.5}
            for k in (1, 2) for seed in (1, 2)]
    plot_accuracy_vs_shots(summarise(rows), tmp_path / "plot.png", "t")
    ax = saved_figures[0].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["tip (1 of 2 seeds failed at 2 shots)"]
    assert len(ax.texts) == 0  # every shot count has a point: nothing to mark on the axis


def test_protocol_rejects_unknown_heads_and_labels(cifar_slice):
    _, _, support, test, W = cifar_slice
    X, y, Xt, yt = np.asarray(support.features), support.labels, np.asarray(test.features), test.labels
    with pytest.raises(ValueError, match="unknown heads"):
        run_fewshot(X, y, Xt, yt, W, heads=("gda", "magic"))
    with pytest.raises(ValueError, match="outside the 10 classes"):
        run_fewshot(X, y + 5, Xt, yt, W, heads=("gda",))


def test_cli_fewshot_with_a_support_set_and_with_a_split(cifar_slice, tmp_path, capsys):
    folder, backbone, _, _, _ = cifar_slice
    common = ["--card", "cifar10", "--seeds", "1", "--cache-dir", str(folder / "cache"), "--quiet", "--device", "cpu"]
    main(["fewshot", "--dataset", str(folder / "test" / "slice.npz"), "--support", str(folder / "train" / "slice.npz"),
          "--shots", "2,4", "--heads", "zero-shot,tip,caps", "--output", str(tmp_path / "a"), *common])
    out = capsys.readouterr().out
    assert backbone.fingerprint in out and "| tip |" in out and "| caps |" in out
    with open(tmp_path / "a" / "rows.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["head"], r["shots"]) for r in rows] == [("zero-shot", "0"), ("tip", "2"), ("caps", "2"), ("tip", "4"),
                                                      ("caps", "4")]
    meta = json.loads((tmp_path / "a" / "summary.json").read_text())["meta"]
    assert meta["n_support_pool"] == 120 and meta["n_test"] == 300 and meta["fingerprint"] == backbone.fingerprint

    main(["fewshot", "--dataset", str(folder / "test" / "slice.npz"), "--support-per-class", "8", "--shots", "4",
          "--heads", "gda", "--output", str(tmp_path / "b"), *common])
    meta = json.loads((tmp_path / "b" / "summary.json").read_text())["meta"]
    assert meta["n_support_pool"] == 80 and meta["n_test"] == 220

    with pytest.raises(SystemExit) as exited:
        main(["fewshot", "--dataset", str(folder / "test" / "slice.npz"), "--output", str(tmp_path / "c"), *common])
    assert exited.value.code == 2 and "--support DATASET" in capsys.readouterr().err
