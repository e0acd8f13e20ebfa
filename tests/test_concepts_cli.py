"""``zeroshot concepts count`` and ``fit`` on a toy corpus and a hand-written metrics.json (needs the concepts
package's matching, corpus and lemmas modules: a missing one fails these tests, it does not skip them)."""
from __future__ import annotations

import csv
import json

import pytest

from conftest import DEFAULT_FINGERPRINT, npz_slice, shared
from zeroshot.cli import main
from zeroshot.concepts.report import CSV_COLUMNS

CAPTIONS = ["Two dogs playing in the park", "a dog and a cat", "a dog runs", "a hot dog stand", "a black dog",
            "a cat sleeping", "the cat on a mat", "an aeroplane in the sky", "an airplane lands", "a red car",
            "people on a street", "a frog"]
RECALL = {"dog": 0.9, "cat": 0.7, "airplane": 0.5, "car": 0.4, "frog": 0.2, "truck": 0.3}


@pytest.fixture
def toy(tmp_path):
    (tmp_path / "captions.txt").write_text("\n".join(CAPTIONS) + "\n")
    (tmp_path / "concepts.txt").write_text("dog\ncat\n# a comment\nairplane: aeroplane\ncar\nfrog\ntruck: lorry\n")
    (tmp_path / "metrics.json").write_text(json.dumps({"model": "toy", "fingerprint": "f" * 40, "dataset": "toyset",
                                                       "per_class_recall": RECALL}))
    return tmp_path


def count(toy, *extra: str) -> list[dict]:
    main(["concepts", "count", "--corpus", str(toy / "captions.txt"), "--concepts", str(toy / "concepts.txt"),
          "--output", str(toy / "counts.csv"), *extra])
    with open(toy / "counts.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_count_writes_counts_and_provenance(toy, capsys):
    rows = count(toy, "--synonyms", "card")  # the concept file's synonyms only, no WordNet ones
    assert list(rows[0]) == list(CSV_COLUMNS)
    by = {r["concept"]: r for r in rows}
    assert [r["concept"] for r in rows] == list(RECALL)
    assert {k: int(r["text_count"]) for k, r in by.items()} == {"dog": 5, "cat": 3, "airplane": 2, "car": 1,
                                                                 "frog": 1, "truck": 0}
    assert by["airplane"]["variants_matched"] == "airplane=1; aeroplane=1"
    assert by["cat"]["example_1"] and by["truck"]["example_1"] == ""
    assert by["dog"]["image_count"] == "" and float(by["dog"]["frequency"]) == pytest.approx(5 / 12)
    meta = json.loads((toy / "counts.meta.json").read_text())
    assert meta["n_captions"] == 12 and len(meta["corpus"]["sha256"]) == 64
    assert meta["lemmatiser"] == "lemminflect" and meta["lemmatiser_version"] and meta["mode"] == "all_unigrams"
    assert "dog" in capsys.readouterr().out


def test_phrase_mode_and_no_synonyms(toy):
    rows = {r["concept"]: int(r["text_count"]) for r in count(toy, "--synonyms", "none", "--mode", "phrase")}
    assert rows["airplane"] == 1 and rows["dog"] == 5


def test_fit_writes_json_and_png(toy):
    count(toy)
    with pytest.warns(UserWarning, match="fewer than 20"):
        main(["concepts", "fit", "--counts", str(toy / "counts.csv"), "--metrics", str(toy / "metrics.json"),
              "--output", str(toy / "out")])
    report = json.loads((toy / "out" / "fit.json").read_text())
    assert {"corpus", "n_captions", "lemmatiser", "lemmatiser_version", "mode", "synonyms", "model", "fingerprint",
            "dataset", "seed", "count"} <= set(report["meta"]) and report["meta"]["pos_filter"] is False
    fit = report["fit"]
    assert {"slope", "slope_ci95", "intercept", "pearson", "spearman", "r2", "n", "zero_count", "paper_binned",
            "warnings"} <= set(fit)
    assert fit["zero_count"] == ["truck"] and fit["n"] == 5 and fit["slope"] > 0
    assert (toy / "out" / "trend.png").stat().st_size > 10_000


def test_usage_errors_are_one_line(toy, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["concepts", "count", "--corpus", str(toy / "missing.txt"), "--classes", "dog,cat",
              "--output", str(toy / "counts.csv")])
    assert exit_.value.code == 2 and capsys.readouterr().err.count("\n") == 1
    count(toy)
    (toy / "bare.json").write_text(json.dumps({"acc1": 0.5}))
    with pytest.raises(SystemExit) as exit_:
        main(["concepts", "fit", "--counts", str(toy / "counts.csv"), "--metrics", str(toy / "bare.json"),
              "--output", str(toy / "out")])
    assert exit_.value.code == 2 and "per_class_recall" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["concepts", "fit", "--counts", str(toy / "counts.csv"), "--metrics", str(toy / "metrics.json"),
              "--count", "image", "--output", str(toy / "out")])
    assert exit_.value.code == 2 and "not measured" in capsys.readouterr().err


def test_report_on_real_data_evaluates_counts_and_fits(tmp_path, capsys):
    """``concepts report``: per-class zero-shot recall of the default model on 200 CIFAR-10 images, Flickr8k
    captions as the corpus (ten classes: the small-fit warning fires), counts.csv, fit.json, PNG."""
    data = npz_slice(tmp_path / "cifar", "cifar10", "test.npz", rows=slice(200))
    out = tmp_path / "report"
    with pytest.warns(UserWarning, match="fewer than 20"):
        main(["concepts", "report", "--model", "default", "--dataset", str(data), "--card", "cifar10", "--corpus",
              str(shared("flickr8k_1k", "captions.csv")), "--output", str(out), "--quiet", "--device", "cpu",
              "--cache-dir", str(tmp_path / "cache")])
    fit = json.loads((out / "fit.json").read_text())
    assert fit["meta"]["corpus"]["format"] == "csv" and fit["meta"]["n_captions"] == 5000
    assert fit["meta"]["fingerprint"] == DEFAULT_FINGERPRINT and fit["fit"]["n_concepts"] == 10
    with open(out / "counts.csv", newline="") as f:
        by = {r["concept"]: r for r in csv.DictReader(f)}
    assert float(by["dog"]["text_count"]) > 1000 and by["dog"]["image_count"] == ""
    assert (out / "trend.png").stat().st_size > 10_000
    assert "zero counts" in capsys.readouterr().out  # the side-by-side grid of fits
