"""``zeroshot gen-eval`` and ``evaluate_generated`` on real CIFAR-10 slices and synthetic features."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import zeroshot
from zeroshot.cli import main
from zeroshot.generative.evaluate import evaluate_generated, fd_sizes

from conftest import npz_slice, unit_rows


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    """Two disjoint 300-image slices of CIFAR-10 test (with labels and class names): 'generated' and reference."""
    root = tmp_path_factory.mktemp("cifar")
    return (npz_slice(root / "a", "cifar10", "test.npz", rows=slice(0, 300)),
            npz_slice(root / "b", "cifar10", "test.npz", rows=slice(300, 600)))


def run(args, capsys) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.mark.slow
def test_gen_eval_on_real_halves_reports_every_metric_and_reuses_the_reference(halves, tmp_path, capsys):
    generated, reference = halves
    cache = tmp_path / "cache"
    args = ["gen-eval", str(generated), "--reference", str(reference), "--labels", "folder", "--card", "cifar10",
            "--bootstrap", "10", "--cache-dir", str(cache), "--quiet"]
    code, out, err = run(args + ["--output", str(tmp_path / "one")], capsys)
    assert code == 0, err
    assert "encoded in" in err and "reuses them" in err
    results = json.loads((tmp_path / "one" / "results.json").read_text())
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [
        "class_consistency.png", "fd_vs_n.png", "precision_recall.png", "results.json", "results.md"]
    fd = results["frechet_distance"]
    assert fd["ci_low"] <= fd["fd"] <= fd["ci_high"] and [p["n"] for p in fd["vs_n"]] == [250, 300]
    assert fd["fd"] < 1.5 * fd["floor_reference_halves"]  # two real halves: near the small-sample floor
    assert results["manifold"]["precision"] > 0.6 and results["manifold"]["recall"] > 0.6
    # class consistency of correctly labelled real images is their zero-shot accuracy
    backbone = zeroshot.load_backbone("default", device="cpu")
    card = zeroshot.load_card("cifar10")
    features = zeroshot.extract(backbone, generated, cache_dir=cache, progress=False)
    W = zeroshot.class_embeddings(backbone, card.classes, card.templates, cache_dir=cache)
    accuracy = float(((features.features @ W.T).argmax(1) == features.labels).mean())
    assert results["class_consistency"]["generated"]["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert set(results["per_class"]) == set(card.classes)
    assert json.loads(out)["class_consistency"] == round(accuracy, 4)
    code, out, err = run(args + ["--output", str(tmp_path / "two")], capsys)
    assert code == 0 and "from the cache, nothing decoded" in err
    assert json.loads((tmp_path / "two" / "results.json").read_text())["reference_features_from_cache"] is True


@pytest.mark.slow
def test_shuffled_labels_bring_class_consistency_to_chance(halves, tmp_path, capsys):
    generated, reference = halves
    data = zeroshot.open_dataset(generated)
    shuffled = np.random.default_rng(0).permutation(data.labels)
    labels = write_csv(tmp_path / "labels.csv", ["id", "label"],
                       [(i, data.classes[c]) for i, c in zip(data.ids, shuffled)])
    code, _, err = run(["gen-eval", str(generated), "--reference", str(reference), "--labels", str(labels),
                        "--card", "cifar10", "--bootstrap", "5", "--output", str(tmp_path / "out"), "--quiet"], capsys)
    assert code == 0, err
    consistency = json.loads((tmp_path / "out" / "results.json").read_text())["class_consistency"]["generated"]
    assert consistency["chance"] == 0.1 and consistency["accuracy"] < 0.2


@pytest.mark.slow
def test_prompts_give_clip_score_and_references_ref_clip_score(halves, tmp_path, capsys):
    generated, reference = halves
    data = zeroshot.open_dataset(generated)
    prompts = write_csv(tmp_path / "prompts.csv", ["id", "prompt"],
                        [(i, f"a photo of a {data.classes[c]}.") for i, c in zip(data.ids, data.labels)])
    refs = write_csv(tmp_path / "refs.csv", ["id", "caption"],
                     [(i, text) for i, c in zip(data.ids, data.labels)
                      for text in (f"a {data.classes[c]}", f"an image of a {data.classes[c]}")])
    code, out, err = run(["gen-eval", str(generated), "--reference", str(reference), "--prompts", str(prompts),
                          "--references", str(refs), "--bootstrap", "5", "--output", str(tmp_path / "out"),
                          "--quiet"], capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    backbone = zeroshot.load_backbone("default", device="cpu")
    G = zeroshot.extract(backbone, generated, progress=False).features
    T = backbone.encode_texts([f"a photo of a {data.classes[c]}." for c in data.labels])
    assert results["clip_score"]["clip_score"] == pytest.approx(np.mean(2.5 * np.maximum((G * T).sum(1), 0)),
                                                               abs=1e-5)
    assert 0 < results["ref_clip_score"]["ref_clip_score"] < 2.5
    assert "class_consistency" not in results and "CLIPScore" in (tmp_path / "out" / "results.md").read_text()


def test_gen_eval_refuses_bad_input_in_one_line(halves, messy_folder, tmp_path, capsys):
    generated, reference = halves
    base = ["gen-eval", str(generated), "--reference", str(reference), "--output", str(tmp_path / "o")]
    code, _, err = run(base + ["--references", "x.csv"], capsys)
    assert code == 2 and "add --prompts" in err
    code, _, err = run(["gen-eval", str(messy_folder), "--reference", str(reference), "--labels", "folder",
                        "--output", str(tmp_path / "o")], capsys)
    assert code == 2 and "no class folders" in err
    labels = write_csv(tmp_path / "l.csv", ["id", "label"], [("nope.png", "cat")])
    code, _, err = run(base + ["--labels", str(labels)], capsys)
    assert code == 2 and "none of its ids" in err
    wrong = write_csv(tmp_path / "w.csv", ["image", "label"], [("a", "cat")])
    code, _, err = run(base + ["--labels", str(wrong)], capsys)
    assert code == 2 and "id,label" in err
    prompts = write_csv(tmp_path / "p.csv", ["id", "prompt"], [(zeroshot.open_dataset(generated).ids[0], "a cat")])
    code, _, err = run(base + ["--prompts", str(prompts)], capsys)
    assert code == 2 and "no prompt for 299 generated image(s)" in err and "loading model" not in err
    code, _, err = run(base + ["--bootstrap", "1"], capsys)
    assert code == 2 and "--bootstrap must be at least 2" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_evaluate_generated_on_synthetic_features_has_every_section(rng):
    R = unit_rows(rng.standard_normal((400, 16)))
    G = unit_rows(rng.standard_normal((300, 16)))
    labels_r, labels_g = rng.integers(0, 3, 400), rng.integers(0, 3, 300)
    W = unit_rows(rng.standard_normal((3, 16)))
    P = unit_rows(rng.standard_normal((300, 16)))
    result = evaluate_generated(G, R, generated_labels=labels_g, reference_labels=labels_r,
                                class_names=["a", "b", "c"], class_embeddings=W, prompts=P, n_boot=5)
    assert result["n_generated"] == 300 and result["n_reference"] == 400
    assert [p["n"] for p in result["frechet_distance"]["vs_n"]] == [250, 300]
    assert set(result["per_class"]) == {"a", "b", "c"} and "clip_score" in result
    assert set(result["class_consistency"]) == {"generated", "reference"}
    assert fd_sizes(1200) == [250, 500, 1000, 1200] and fd_sizes(100) == [100]
