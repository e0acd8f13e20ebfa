"""Queries through a backbone (text, image files, ids) and the index/search CLI, with the tiny test model."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

from zeroshot import Index, extract
from zeroshot.cli import main
from zeroshot.prompts import class_embeddings
from zeroshot.retrieval.search import (
    image_features, search_ids, search_images, search_text, text_features,
)


@pytest.fixture(scope="module")
def picture_folder(tmp_path_factory):
    """12 distinct small pictures in a flat folder."""
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"p{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def indexed(tiny_backbone, picture_folder, tmp_path_factory):
    features = extract(tiny_backbone, picture_folder, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)
    return Index.build(features), features


def test_text_queries_average_their_templates(tiny_backbone):
    templates = ["a photo of {}.", "{}"]
    Q = text_features(tiny_backbone, ["red car", "a dog", "red car"], templates)
    np.testing.assert_allclose(Q[[0, 1]], class_embeddings(tiny_backbone, ["red car", "a dog"], templates), atol=1e-6)
    np.testing.assert_array_equal(Q[0], Q[2])
    np.testing.assert_allclose(text_features(tiny_backbone, "a dog"), tiny_backbone.encode_texts(["a dog"]), atol=1e-6)
    with pytest.raises(ValueError, match="empty text query"):
        text_features(tiny_backbone, ["fine", "  "])


def test_search_by_text_image_file_and_id(indexed, tiny_backbone, picture_folder):
    index, features = indexed
    hits, = search_text(index, tiny_backbone, ["a photo"], k=5)
    assert len(hits) == 5 and [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(h.path == str(picture_folder / h.id) for h in hits)
    by_file = search_images(index, tiny_backbone, [picture_folder / "p03.png", (picture_folder / "p07.png").read_bytes()], k=3)
    assert [hits[0].id for hits in by_file] == ["p03.png", "p07.png"] and by_file[0][0].score > 0.999
    by_id = search_ids(index, ["p03.png", "p07.png"], k=4)
    assert [len(h) for h in by_id] == [4, 4]
    assert "p03.png" not in [h.id for h in by_id[0]] and "p07.png" not in [h.id for h in by_id[1]]


def test_bad_queries_are_refused(indexed, tiny_backbone):
    index, _ = indexed
    with pytest.raises(ValueError, match="the uploaded image: not a decodable image"):
        image_features(tiny_backbone, [b"not an image"])
    with pytest.raises(KeyError, match="nope"):
        search_ids(index, ["nope"])
    other = Index.build(np.eye(3, 32, dtype=np.float32), fingerprint="someone-else")
    with pytest.raises(ValueError, match="rebuild the index"):
        search_text(other, tiny_backbone, ["x"])


def test_cli_build_search_and_formats(tiny_model_dir, picture_folder, tmp_path, capsys):
    common = ["--model", str(tiny_model_dir), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    main(["index", "build", str(picture_folder), "--out", str(tmp_path / "idx"), *common])
    built = json.loads(capsys.readouterr().out)
    assert built["factory"] == "Flat" and built["n"] == 12 and built["images"]

    main(["search", str(tmp_path / "idx"), "--image", str(picture_folder / "p05.png"), "-k", "3", "--format", "json", *common])
    (answer,) = json.loads(capsys.readouterr().out)
    assert answer["results"][0]["id"] == "p05.png" and len(answer["results"]) == 3

    main(["search", str(tmp_path / "idx"), "--text", "a cat", "--text", "a dog", "-k", "2", "--format", "csv", *common])
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [r["query"] for r in rows] == ["a cat", "a cat", "a dog", "a dog"] and rows[0]["path"].endswith(".png")

    main(["search", str(tmp_path / "idx"), "--id", "p01.png", "-k", "2"])  # by id: no model needed
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["query", "rank", "score", "id", "path"] and len(table) == 3

    with pytest.raises(SystemExit) as exited:
        main(["search", str(tmp_path / "idx"), "--id", "missing.png"])
    assert exited.value.code == 2 and "not in the index" in capsys.readouterr().err


def test_cli_builds_from_a_saved_feature_set(indexed, tmp_path, capsys):
    _, features = indexed
    features.save(tmp_path / "features")
    main(["index", "build", str(tmp_path / "features"), "--out", str(tmp_path / "idx"), "--index", "HNSW8",
          "--ef-search", "20"])
    built = json.loads(capsys.readouterr().out)
    assert built["factory"] == "HNSW8" and built["params"] == {"efSearch": 20}
    assert Index.load(tmp_path / "idx", fingerprint=features.fingerprint).paths[0].endswith("p00.png")


def test_cli_refuses_another_model(indexed, tmp_path, capsys):
    index, _ = indexed
    index.save(tmp_path / "idx")
    with pytest.raises(SystemExit) as exited:
        main(["search", str(tmp_path / "idx"), "--text", "x", "--model", "default"])
    assert exited.value.code == 2 and f"fingerprint {index.fingerprint}" in capsys.readouterr().err
