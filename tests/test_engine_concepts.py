"""Concept counting on Ray (issue 15): the partition plan, and Ray counts equal to the local engine's, field by field.

Every Ray test joins the session's one local cluster (``ray_cluster``); corpora are small and synthetic, cut into
partitions of a few hundred bytes so that cuts fall mid-line and one partition can be empty.
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from zeroshot.cli import main
from zeroshot.concepts import Concept, count_corpus, iter_captions
from zeroshot.concepts.corpus import iter_partition, plan_partitions

WORDS = ["dog", "dogs", "cat", "a", "hot", "the", "sea", "lion", "airplane", "aeroplane", "on", "beach", "red", "car"]
CONCEPTS = ["dog", "cat", "hot dog", "sea lion", Concept("airplane", ("aeroplane",)), "car", "zebra"]


def captions(n: int, seed: int = 0) -> list[str]:
    """``n`` seeded captions of 1-9 words, some with a comma, a quote or leading capitals."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 10))))
        out.append(text.capitalize() + (', "really"' if i % 7 == 0 else ""))
    return out


def assert_same(local, ray) -> None:
    """Two count_corpus results agree in every field of every concept, and in the corpus size."""
    (index, expected), (summary, got) = local, ray
    assert summary.n_captions == index.n_captions and summary.total_weight == index.total_weight
    assert [c.name for c in got] == [c.name for c in expected]
    for e, g in zip(expected, got):
        assert (g.count, g.n_captions, g.frequency, g.variants, g.examples, g.missing) == \
            (e.count, e.n_captions, e.frequency, e.variants, e.examples, e.missing), e.name
        assert type(g.count) is type(e.count) and g.caption_ids.dtype == e.caption_ids.dtype == np.uint32
        assert np.array_equal(g.caption_ids, e.caption_ids), e.name


@pytest.fixture
def text_corpus(tmp_path) -> Path:
    path = tmp_path / "captions.txt"
    path.write_text("\n".join(captions(300)) + "\n\n")  # a trailing blank caption too
    return path


def test_plan_is_deterministic_contiguous_and_cut_at_line_starts(text_corpus):
    plan = plan_partitions(text_corpus, partition_bytes=500)
    assert plan == plan_partitions(text_corpus, partition_bytes=500) and len(plan) > 5
    data = text_corpus.read_bytes()
    assert plan[0].start == 0 and plan[-1].stop == len(data)
    assert all(a.stop == b.start and a.start < a.stop for a, b in pairwise(plan))
    assert all(data[p.start - 1:p.start] == b"\n" for p in plan[1:])
    assert all(p.stop - p.start >= 500 for p in plan[:-1])   # cut at the first line start past the size
    read = [c for p in plan for c in iter_partition(p)]
    assert read == list(iter_captions(text_corpus))            # every line exactly once, in order


def test_a_line_longer_than_a_partition_and_an_empty_file(tmp_path):
    path = tmp_path / "long.txt"
    path.write_text("a dog " * 200 + "\ncat\n" + "x " * 10)  # no final newline
    plan = plan_partitions(path, partition_bytes=100)
    assert [(p.start, p.stop) for p in plan] == [(0, 1201), (1201, 1225)]
    assert [c for p in plan for c in iter_partition(p)] == list(iter_captions(path))
    (tmp_path / "empty.txt").write_text("")
    assert [(p.start, p.stop) for p in plan_partitions(tmp_path / "empty.txt")] == [(0, 0)]
    with pytest.raises(ValueError, match="positive"):
        plan_partitions(path, partition_bytes=0)


@pytest.mark.parametrize("mode", ["all_unigrams", "phrase"])
def test_ray_equals_local_on_a_text_file_cut_mid_line(ray_cluster, text_corpus, mode):
    local = count_corpus(text_corpus, CONCEPTS, mode=mode)
    ray = count_corpus(text_corpus, CONCEPTS, mode=mode, engine="ray", address=ray_cluster, partition_bytes=700)
    assert_same(local, ray)
    assert local[1][0].count > 0 and local[1][-1].missing == ["zebra"]


def test_ray_equals_local_on_several_files_with_an_empty_one(ray_cluster, tmp_path):
    texts = captions(120, seed=1)
    for i, part in enumerate((texts[:50], [], texts[50:])):  # part-01 is empty: one empty partition
        (tmp_path / f"part-{i:02d}.txt").write_text("".join(c + "\n" for c in part))
    source = str(tmp_path / "part-{00..02}.txt")
    plan = plan_partitions(source, partition_bytes=400)
    assert any(p.start == p.stop == 0 for p in plan) and len({p.path for p in plan}) == 3
    assert list(iter_captions(source)) == texts
    assert_same(count_corpus(source, CONCEPTS),
                count_corpus(source, CONCEPTS, engine="ray", address=ray_cluster, num_workers=1,
                             partition_bytes=400))


def test_ray_equals_local_on_csv_with_quoted_newlines_and_jsonl(ray_cluster, tmp_path):
    texts = [c.replace(" ", "\n") if i % 3 == 0 else c for i, c in enumerate(captions(200, seed=2))]
    with open(tmp_path / "c.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "caption"])
        writer.writerows([i, c] for i, c in enumerate(texts))
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"caption": c}) + "\n" for c in texts))
    for name in ("c.csv", "c.jsonl"):
        plan = plan_partitions(tmp_path / name, partition_bytes=300)
        assert len(plan) > 5 and [c for p in plan for c in iter_partition(p)] == texts, name
        assert_same(count_corpus(tmp_path / name, CONCEPTS),
                    count_corpus(tmp_path / name, CONCEPTS, engine="ray", address=ray_cluster, partition_bytes=300))


def test_ray_task_errors_are_the_library_errors(ray_cluster, text_corpus, tmp_path):
    (tmp_path / "c.jsonl").write_text('{"caption": "a dog"}\n{"text": "a cat"}\n')
    with pytest.raises(ValueError, match="no field 'caption'"):
        count_corpus(tmp_path / "c.jsonl", ["dog"], engine="ray", address=ray_cluster)
    with pytest.raises(TypeError, match="corpus path"):
        count_corpus(lambda: ["a dog"], ["dog"], engine="ray", address=ray_cluster)
    with pytest.raises(ValueError, match="engine"):
        count_corpus(text_corpus, ["dog"], engine="spark")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zeroshot", "concepts", "count", *args], capture_output=True,
                          text=True, timeout=180, check=False)


def test_cli_ray_writes_the_same_files(ray_cluster, text_corpus, tmp_path):
    (tmp_path / "concepts.txt").write_text("dog\ncat\nairplane: aeroplane\nhot dog\nzebra\n")
    common = ["--corpus", str(text_corpus), "--concepts", str(tmp_path / "concepts.txt"), "--synonyms", "card"]
    main(["concepts", "count", *common, "--output", str(tmp_path / "local.csv")])
    run = cli(*common, "--output", str(tmp_path / "ray.csv"), "--engine", "ray", "--address", ray_cluster,
              "--num-workers", "2")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "local.csv").read_bytes()
    assert (tmp_path / "ray.meta.json").read_text() == (tmp_path / "local.meta.json").read_text()


def test_cli_bad_address_is_one_line_at_once(text_corpus, tmp_path):
    pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[test]' (or '.[ray]')")
    started = time.perf_counter()
    run = cli("--corpus", str(text_corpus), "--classes", "dog", "--output", str(tmp_path / "c.csv"),
              "--engine", "ray", "--address", "127.0.0.1:9")
    assert time.perf_counter() - started < 60
    assert run.returncode == 1 and run.stderr.count("\n") == 1 and "no Ray cluster answers" in run.stderr
    assert not (tmp_path / "c.csv").exists()


def test_cli_without_ray_is_a_usage_error(text_corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as where it is not installed
    with pytest.raises(SystemExit) as exit_:
        main(["concepts", "count", "--corpus", str(text_corpus), "--classes", "dog", "--output",
              str(tmp_path / "c.csv"), "--engine", "ray"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "zeroshot[ray]" in err
    with pytest.raises(SystemExit) as exit_:
        main(["concepts", "count", "--corpus", str(text_corpus), "--classes", "dog", "--output",
              str(tmp_path / "c.csv"), "--num-workers", "2"])
    assert exit_.value.code == 2 and "--engine ray" in capsys.readouterr().err
