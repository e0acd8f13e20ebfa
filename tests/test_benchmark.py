"""``zeroshot benchmark``: the grid plan, CLIP_benchmark's file names and schema, and a whole grid on small real
slices of the shared data (run, rerun from the cache, --skip-existing, --exclude-leaked, build)."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from conftest import flickr_slice, npz_slice, shared

from zeroshot.cli import main
from zeroshot.evaluation.benchmark import BenchmarkDataset, model_and_tag, plan, read_list, resolve_datasets, result_path
from zeroshot.evaluation.benchmark_report import load_results, main_metric, markdown

CB_KEYS = {"dataset", "model", "pretrained", "task", "metrics", "language"}  # clip_benchmark eval's dump


def clip_benchmark_build(paths: list) -> list[dict]:
    """``clip_benchmark build`` as its documentation and cli.py (``main_build``) describe it: each file's fields,
    ``metrics`` spread into them, plus ``model_fullname = model + ' ' + pretrained`` (a str concatenation, so a
    non-string ``pretrained`` fails there)."""
    rows = []
    for path in paths:
        data = json.loads(open(path).read())
        row = {**data["metrics"], **data}
        del row["metrics"]
        row["model_fullname"] = row["model"] + " " + row["pretrained"]
        rows.append(row)
    return rows


def test_read_list_takes_commas_or_a_file(tmp_path):
    assert read_list("cifar10, dtd10,,mnist") == ["cifar10", "dtd10", "mnist"]
    listed = tmp_path / "datasets.txt"
    listed.write_text("# CLIP_benchmark style\ncifar10\n\n  dtd10  # textures\n")
    assert read_list(str(listed)) == ["cifar10", "dtd10"]
    listed.write_text("# nothing\n")
    with pytest.raises(ValueError, match="lists nothing"):
        read_list(str(listed))


def test_model_and_tag_split_like_clip_benchmark(tmp_path):
    folder = tmp_path / "student"
    folder.mkdir()
    assert model_and_tag("ViT-B-32/laion2b_s34b_b79k") == ("ViT-B-32", "laion2b_s34b_b79k")
    assert model_and_tag("ViT-B-32") == ("ViT-B-32", None)
    assert model_and_tag("default") == ("default", None)
    assert model_and_tag(str(folder)) == (str(folder), None)
    assert model_and_tag("./runs/student/model") == ("./runs/student/model", None)
    assert model_and_tag("hf-hub:org/repo") == ("hf-hub:org/repo", None)


def test_result_path_is_clip_benchmarks_default_name(tmp_path):
    assert result_path(tmp_path, "cifar10", "ViT-B-32", "openai", "zeroshot_classification").name == \
        "cifar10_openai_ViT-B-32_en_zeroshot_classification.json"
    assert result_path(tmp_path, "a/b", "runs/student/model", "ab12", "fewshot").name == \
        "a-b_ab12_runs-student-model_en_fewshot.json"


def test_resolve_datasets_names_paths_and_mistakes(tmp_path):
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "test.npz").touch()
    [ds] = resolve_datasets(["cifar10"], data_root=tmp_path)
    assert ds == BenchmarkDataset("cifar10", tmp_path / "cifar10/test.npz", "cifar10", tmp_path / "cifar10/train.npz")
    with pytest.raises(ValueError, match="did you mean 'cifar10'"):
        resolve_datasets(["cifar1O"], data_root=tmp_path)
    with pytest.raises(FileNotFoundError, match="--data-root"):
        resolve_datasets(["mnist"], data_root=tmp_path)
    [path] = resolve_datasets([str(tmp_path / "cifar10")], data_root=tmp_path, card="cifar10")
    assert path.card == "cifar10" and path.support is None
    with pytest.raises(ValueError, match="drop --card"):
        resolve_datasets(["cifar10"], data_root=tmp_path, card="mnist")


def test_plan_runs_each_task_where_it_applies(tmp_path):
    captions = flickr_slice(tmp_path / "flickr", 2)
    labelled = BenchmarkDataset("cifar10", tmp_path / "x.npz", "cifar10")
    retrieval_only = BenchmarkDataset("flickr", captions)
    both = BenchmarkDataset("flickr8k", captions, "flickr8k_concepts")
    pairs = plan([labelled, retrieval_only, both], ["zeroshot_classification", "zeroshot_retrieval"])
    assert [(d.name, t) for d, t in pairs] == [("cifar10", "zeroshot_classification"),
                                               ("flickr", "zeroshot_retrieval"),
                                               ("flickr8k", "zeroshot_classification"),
                                               ("flickr8k", "zeroshot_retrieval")]
    assert [t for _, t in plan([labelled], ["linear_probe", "fewshot"])] == ["linear_probe", "fewshot"]
    with pytest.raises(ValueError, match="caption folder"):
        plan([labelled], ["zeroshot_retrieval"])
    with pytest.raises(ValueError, match="dataset flickr supports none"):
        plan([labelled, retrieval_only], ["zeroshot_classification"])
    with pytest.raises(ValueError, match="unknown task 'zero_shot'"):
        plan([labelled], ["zero_shot"])
    with pytest.raises(ValueError, match="a card \\(--card for a path\\)"):
        plan([BenchmarkDataset("x", tmp_path / "x.npz")], ["linear_probe"])


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A data root shaped like ../shared/data with small real slices: CIFAR-10 (200 test, 100 train images) and
    30 Flickr8k photos with their captions."""
    root = tmp_path_factory.mktemp("data")
    npz_slice(root / "cifar10", "cifar10", "test.npz", rows=slice(0, 200))
    npz_slice(root / "cifar10", "cifar10", "train.npz", rows=slice(0, 2000, 20))
    flickr_slice(root / "flickr8k_1k", 30)
    return root


def run(args: list[str]) -> None:
    main(["benchmark", *args, "--device", "cpu", "--quiet"])


def test_a_whole_grid_runs_reruns_from_the_cache_and_builds(data_root, tmp_path, capsys):
    out = tmp_path / "bench"
    grid = ["--models", "default", "--datasets", "cifar10,flickr8k", "--data-root", str(data_root),
            "--tasks", "zeroshot_classification,zeroshot_retrieval,linear_probe,fewshot", "--shots", "1,2",
            "--seeds", "1", "--output", str(out)]
    run(grid)
    files = sorted(out.glob("*.json"))
    results = {(r["dataset"], r["task"]): r for r in load_results(files)}
    assert sorted(results) == [("cifar10", "fewshot"), ("cifar10", "linear_probe"),
                               ("cifar10", "zeroshot_classification"), ("flickr8k", "zeroshot_classification"),
                               ("flickr8k", "zeroshot_retrieval")]
    for r in results.values():
        assert CB_KEYS <= set(r) and r["model"] == "default" and r["pretrained"] == r["fingerprint"]
        assert r["language"] == "en" and all(isinstance(v, float) for v in r["metrics"].values())
    zs = results["cifar10", "zeroshot_classification"]
    assert zs["n"] == 200 and set(zs["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert zs["metrics"]["acc1"] > 0.2  # chance 0.1; the default model scores about 0.4 on CIFAR-10
    assert set(results["cifar10", "linear_probe"]["metrics"]) == {"lp_acc1", "lp_acc5", "lp_mean_per_class_recall"}
    assert results["cifar10", "linear_probe"]["n_support"] == 100
    few = results["cifar10", "fewshot"]
    assert few["metrics"]["fewshot_acc1"] == few["metrics"][f"{few['best_head']}_2shot_acc1"]
    assert "mean_average_precision" in results["flickr8k", "zeroshot_classification"]["metrics"]
    assert results["flickr8k", "zeroshot_retrieval"]["n"] == 30
    assert results["flickr8k", "zeroshot_retrieval"]["n_texts"] == 150

    # clip_benchmark build reads every file; a rerun from the cache gives the same metrics
    assert len(clip_benchmark_build(files)) == 5
    first = {f.name: json.loads(f.read_text())["metrics"] for f in files}
    run(grid)
    assert {f.name: json.loads(f.read_text())["metrics"] for f in files} == first
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    run([*grid, "--skip-existing"])
    assert {f: f.stat().st_mtime_ns for f in files} == mtimes
    assert "5 result(s)" in capsys.readouterr().err

    table = tmp_path / "table.csv"
    main(["benchmark", "build", str(out), "--output", str(table)])
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and list(rows[0])[:6] == ["dataset", "model", "pretrained", "model_fullname", "task",
                                                     "language"]
    assert {r["model_fullname"] for r in rows} == {f"default {zs['fingerprint']}"}
    assert float(next(r for r in rows if r["task"] == "zeroshot_classification" and r["dataset"] == "cifar10")
                 ["acc1"]) == zs["metrics"]["acc1"]
    assert table.with_suffix(".png").stat().st_size > 5000
    assert f"| default {zs['fingerprint']} | {100 * zs['metrics']['acc1']:.2f} |" in table.with_suffix(".md").read_text()


def test_exclude_leaked_drops_listed_images(data_root, tmp_path):
    from zeroshot import open_dataset

    cifar = open_dataset(data_root / "cifar10" / "test.npz")
    flickr = open_dataset(data_root / "flickr8k_1k" / "images")
    pairs = tmp_path / "pairs.csv"
    with open(pairs, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["set", "id", "match_set", "match_id", "cosine"])
        writer.writerows([["/train", "t1", cifar.location, cifar.ids[0], "1.0"],
                          ["/train", "t2", cifar.location, cifar.ids[5], "0.98"],
                          [flickr.location, flickr.ids[3], "/train", "t3", "0.99"]])
    out = tmp_path / "bench"
    run(["--models", "default", "--datasets", "cifar10,flickr8k", "--data-root", str(data_root), "--tasks",
         "zeroshot_classification,zeroshot_retrieval", "--exclude-leaked", str(pairs), "--output", str(out)])
    results = {(r["dataset"], r["task"]): r for r in load_results([out])}
    assert results["cifar10", "zeroshot_classification"]["n"] == 198
    assert results["cifar10", "zeroshot_classification"]["excluded_leaked"] == 2
    assert results["flickr8k", "zeroshot_retrieval"]["n"] == 29
    assert results["flickr8k", "zeroshot_retrieval"]["n_texts"] == 145
    assert results["flickr8k", "zeroshot_classification"]["excluded_leaked"] == 1


def test_markdown_and_main_metric_of_clip_benchmark_files():
    results = [{"dataset": "cifar10", "model": "ViT-B-32", "pretrained": "openai", "task": "zeroshot_classification",
                "metrics": {"acc1": 0.8983, "acc5": 0.9958, "mean_per_class_recall": 0.8982}, "language": "en"},
               {"dataset": "voc2007_multilabel", "model": "ViT-B-32", "pretrained": "openai",
                "task": "zeroshot_classification", "metrics": {"mean_average_precision": 0.7}, "language": "en"},
               {"dataset": "flickr8k", "model": "ViT-B-32", "pretrained": "openai", "task": "zeroshot_retrieval",
                "metrics": {"image_retrieval_recall@5": 0.5, "text_retrieval_recall@5": 0.6}, "language": "en"}]
    assert main_metric(results[1]) == ("mean_average_precision", 0.7)
    text = markdown(results)
    assert "| model | cifar10 (top-1) | voc2007_multilabel (mAP) |" in text
    assert "| ViT-B-32 openai | 89.83 | 70.00 |" in text and "| ViT-B-32 openai | 50.00 |" in text


@pytest.mark.parametrize("args, message", [
    (["--models", "default", "--datasets", "cifar1O"], "did you mean 'cifar10'"),
    (["--models", "default"], "give --models and --datasets"),
    (["--models", "default", "--datasets", "cifar10", "--tasks", "retrieval"], "unknown task 'retrieval'"),
    (["--models", "default", "--datasets", "cifar10", "--exclude-leaked", "missing.csv"], "does not exist"),
    (["build"], "needs result .json files"),
    (["build", "nothing-here"], "does not exist"),
    (["bench/", "--models", "default"], "unexpected argument 'bench/'"),
])
def test_mistakes_are_one_line(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["benchmark", *args, "--output", str(tmp_path / "out.csv" if "build" in args else tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and message in err[0], err


def test_build_refuses_a_non_result_file(tmp_path, capsys):
    bad = tmp_path / "metrics.json"
    bad.write_text(json.dumps({"acc1": 0.4}))
    with pytest.raises(SystemExit):
        main(["benchmark", "build", str(bad), "--output", str(tmp_path / "t.csv")])
    assert "is not a benchmark result (no dataset, model, pretrained, task, metrics)" in capsys.readouterr().err


def test_registry_paths_exist_in_the_shared_data():
    root = shared()
    datasets = resolve_datasets(["cifar10", "tinyimagenet-val", "dtd10", "mnist", "flickr8k"], data_root=root)
    assert [d.tasks() for d in datasets][-1] == ("zeroshot_classification", "zeroshot_retrieval")
    assert all(os.path.exists(d.data) for d in datasets) and np.all([d.support is None or d.support.exists()
                                                                      for d in datasets])
