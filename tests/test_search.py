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
    add_captions, image_features, read_captions, search_ids, search_images, search_text, text_features,
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
    main(["index", "build", str(picture_folder), "--output", str(tmp_path / "idx"), *common])
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
    main(["index", "build", str(tmp_path / "features"), "--output", str(tmp_path / "idx"), "--index", "HNSW8",
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


def test_near_duplicates_of_a_better_result_are_hidden(tiny_backbone, rng):
    """q's neighbours: a, then a' (a re-encoded a: cosine 0.99 to it), then b; dedup hides a' and keeps k results."""
    D = tiny_backbone.embed_dim

    def unit(v):
        return v / np.linalg.norm(v)

    q = unit(rng.standard_normal(D))
    a = unit(q + 0.6 * unit(rng.standard_normal(D)))
    X = np.stack([q, a, unit(a + 0.1 * unit(rng.standard_normal(D))), unit(q + 1.2 * unit(rng.standard_normal(D)))]
                 + [unit(rng.standard_normal(D)) for _ in range(6)]).astype(np.float32)
    ids = ["q", "a", "a2", "b"] + [f"x{i}" for i in range(6)]
    index = Index.build(X, ids, fingerprint=tiny_backbone.fingerprint)
    assert X[1] @ X[2] > 0.97 and [h.id for h in search_ids(index, ["q"], k=3)[0]] == ["a", "a2", "b"]
    hidden = search_ids(index, ["q"], k=3, dedup=0.97)[0]
    assert [h.id for h in hidden][:2] == ["a", "b"] and len(hidden) == 3
    assert [h.id for h in search_ids(index, ["q"], k=3, dedup=0.999)[0]] == ["a", "a2", "b"]  # 0.995 apart: kept
    texts = search_text(index, tiny_backbone, ["anything"], k=9, dedup=0.97)[0]
    assert not {"a", "a2"} <= {h.id for h in texts}  # whichever of the pair ranks lower is hidden
    with pytest.raises(ValueError, match="dedup must be a cosine"):
        search_ids(index, ["q"], dedup=1.5)


def test_captions_are_matched_by_id_or_file_name_and_rank_text_queries(indexed, tiny_backbone, tmp_path):
    _, features = indexed
    index = Index.build(features.features, [f"set/{i}" for i in features.ids], fingerprint=features.fingerprint)
    with pytest.raises(ValueError, match="holds no captions"):
        search_text(index, tiny_backbone, ["a red bicycle"], captions=True)
    (tmp_path / "captions.csv").write_text("image,caption_idx,caption\n"
                                           "p03.png,0,a red bicycle leaning on a wall\n"  # the file name of an id
                                           "set/p05.png,0,two cats asleep\n"              # an id
                                           "p03.png,1,  \n"                                # blank: skipped
                                           "nowhere.png,0,not indexed\n")
    names, texts = read_captions(tmp_path / "captions.csv")
    assert add_captions(index, tiny_backbone, names, texts) == 2
    assert index.captions_of(index.positions(["set/p05.png"])[0]) == ["two cats asleep"]
    query = "a red bicycle leaning on a wall"
    hits = search_text(index, tiny_backbone, [query], k=3, captions=True)[0]
    image_score = float(index.vectors(["set/p03.png"])[0] @ text_features(tiny_backbone, [query])[0])
    assert hits[0].id == "set/p03.png" and hits[0].caption == query
    assert hits[0].score == pytest.approx((image_score + 1) / 2, abs=1e-5)  # mean of image and caption cosine
    assert all(h.caption is None for h in hits[1:] if h.id != "set/p05.png")
    assert search_text(index, tiny_backbone, ["a red bicycle"], k=3)[0][0].caption is None  # captions not asked for
    with pytest.raises(ValueError, match="none of the 1 captions names an indexed image"):
        add_captions(index, tiny_backbone, ["elsewhere.png"], ["x"])
    (tmp_path / "bad.csv").write_text("file,text\na.png,x\n")
    with pytest.raises(ValueError, match="no caption or image column"):
        read_captions(tmp_path / "bad.csv")


def test_cli_index_build_with_captions_and_serve_options(tiny_model_dir, picture_folder, tmp_path, capsys,
                                                          monkeypatch):
    (tmp_path / "captions.csv").write_text("image,caption\np03.png,a red bicycle\np03.png,a bike\nelse.png,x\n")
    common = ["--model", str(tiny_model_dir), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    main(["index", "build", str(picture_folder), "--output", str(tmp_path / "idx"), "--captions",
          str(tmp_path / "captions.csv"), *common])
    assert json.loads(capsys.readouterr().out)["captions"] == 2
    served = {}
    monkeypatch.setattr("zeroshot.retrieval.serve.serve", lambda service, host, port, **kw: served.update(kw, s=service))
    main(["serve", str(tmp_path / "idx"), "--allow-host", "box.lan", "--dedup-cosine", "0.9", *common])
    service = served.pop("s")
    assert served == {"verbose": False, "allow_hosts": ["box.lan"]} and service.dedup_cosine == 0.9
    assert service.index.captions_of(service.index.positions(["p03.png"])[0]) == ["a red bicycle", "a bike"]
    assert service.thumbnails == tmp_path / "cache" / "thumbnails"
    with pytest.raises(SystemExit):
        main(["index", "build", str(picture_folder), "--output", str(tmp_path / "idx2"), "--captions",
              str(tmp_path / "missing.csv"), *common])
    assert "--captions" in capsys.readouterr().err and not (tmp_path / "idx2").exists()
