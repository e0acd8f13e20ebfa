"""Near-duplicates: range search against brute force on synthetic features, groups, CSVs, the contact sheet, and
``zeroshot dedup`` on real Tiny ImageNet images with copies of them (default model)."""
from __future__ import annotations

import csv
import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import npz_slice, shared, unit_rows
from zeroshot.cli import main
from zeroshot.datasets import open_dataset
from zeroshot.retrieval import dedup, index
from zeroshot.retrieval.dedup import Pairs, components, find_pairs, match_groups


def brute_force(X, Y=None, threshold=0.97) -> set[tuple[int, int]]:
    S = X @ (X if Y is None else Y).T
    found = S >= np.float32(threshold)
    return set(zip(*np.nonzero(np.triu(found, 1) if Y is None else found)))


def planted(rng, n=300, d=16, copies=40, noise=0.05) -> np.ndarray:
    """n random unit rows, the last ``copies`` of them noisy copies of earlier rows (cosines about 0.95-1)."""
    X = rng.normal(size=(n, d))
    X[-copies:] = X[rng.choice(n - copies, copies)] + noise * rng.normal(size=(copies, d)) * np.linalg.norm(X[0])
    return unit_rows(X)


def as_set(pairs: Pairs) -> set[tuple[int, int]]:
    return set(zip(pairs.a.tolist(), pairs.b.tolist()))


@pytest.mark.parametrize("against", [False, True])
def test_pairs_equal_brute_force_sorted_best_first(rng, against):
    X = planted(rng)
    Y = np.r_[planted(rng, 120), X[:30]] if against else None
    pairs = find_pairs(X, Y, threshold=0.9)
    assert as_set(pairs) == brute_force(X, Y, 0.9) and len(pairs) > 30
    np.testing.assert_allclose(pairs.cosine, (X[pairs.a] * (X if Y is None else Y)[pairs.b]).sum(1), atol=1e-5)
    assert (np.diff(pairs.cosine) <= 0).all()
    assert pairs.a.dtype == pairs.b.dtype == np.int64 and pairs.cosine.dtype == np.float32


@pytest.mark.parametrize("against", [False, True])
def test_chunked_search_equals_one_shot(rng, monkeypatch, against):
    X, Y = planted(rng), (planted(rng, 150) if against else None)
    whole = find_pairs(X, Y, threshold=0.8)
    monkeypatch.setattr(index, "CHUNK_ROWS", 23)  # indexed 23 rows at a time, queried 7 at a time
    chunked = find_pairs(X, Y, threshold=0.8, query_rows=7)
    assert np.array_equal(whole.a, chunked.a) and np.array_equal(whole.b, chunked.b)
    np.testing.assert_allclose(whole.cosine, chunked.cosine, atol=1e-6)


def test_within_set_pairs_come_once_without_self_pairs(rng, monkeypatch):
    X = unit_rows(rng.normal(size=(10, 8)))
    X = np.r_[X, X, X[:2]]  # rows i, i + 10 (and i + 20 for i < 2) are identical
    monkeypatch.setattr(index, "CHUNK_ROWS", 4)
    pairs = find_pairs(X, threshold=0.999, query_rows=3)
    assert as_set(pairs) == {(i, i + 10) for i in range(10)} | {(i, 20 + i) for i in range(2)} | {
        (10 + i, 20 + i) for i in range(2)}
    assert len(pairs) == len(as_set(pairs))


def test_threshold_is_inclusive_at_the_float32_cosine():
    X = np.array([[1, 0], [0.6, 0.8], [1, 0]], np.float32)  # cosines 0.6 (exact in float32), 1.0 and 0.6
    assert as_set(find_pairs(X, threshold=0.6)) == {(0, 1), (0, 2), (1, 2)}
    above = float(np.nextafter(np.float32(0.6), np.float32(1)))
    assert as_set(find_pairs(X, threshold=above)) == {(0, 2)}
    assert as_set(find_pairs(X, threshold=1.0)) == {(0, 2)}
    assert find_pairs(X, threshold=1.0).cosine.tolist() == [1.0]


def test_no_pairs_and_their_groups_are_empty(rng):
    X = unit_rows(rng.normal(size=(50, 32)))
    pairs = find_pairs(X, threshold=0.99)
    assert len(pairs) == 0 and pairs.a.dtype == np.int64 and pairs.cosine.dtype == np.float32
    for groups in (components(pairs, len(X)), match_groups(pairs)):
        assert len(groups.group) == len(groups.side) == len(groups.row) == 0


@pytest.mark.parametrize("threshold", [0, -0.5, 1.01, float("nan")])
def test_thresholds_outside_0_1_are_refused(rng, threshold):
    with pytest.raises(ValueError, match=r"--threshold must be a cosine in \(0, 1\]"):
        find_pairs(unit_rows(rng.normal(size=(5, 4))), threshold=threshold)


def test_a_threshold_far_below_near_duplicates_stops_before_memory_runs_out(rng):
    with pytest.raises(ValueError, match="more than 100 pairs reach cosine 0.01; raise --threshold"):
        find_pairs(unit_rows(rng.random((40, 4))), threshold=0.01, max_pairs=100)


def test_components_join_chains_numbered_by_their_closest_pair():
    pairs = Pairs(np.array([5, 0, 1, 2]), np.array([6, 1, 2, 9]), np.array([0.995, 0.99, 0.98, 0.975], np.float32))
    groups = components(pairs, 12)
    assert groups.group.tolist() == [1, 1, 2, 2, 2, 2] and groups.row.tolist() == [5, 6, 0, 1, 2, 9]
    assert not groups.side.any()


def test_match_groups_hold_each_searched_image_then_its_matches_closest_first():
    pairs = Pairs(np.array([3, 1, 3]), np.array([0, 2, 4]), np.array([0.99, 0.98, 0.97], np.float32))
    groups = match_groups(pairs)
    assert list(zip(groups.group.tolist(), groups.side.tolist(), groups.row.tolist())) == [
        (1, 0, 3), (1, 1, 0), (1, 1, 4), (2, 0, 1), (2, 1, 2)]


def test_csvs_name_each_image_by_its_set_and_id(tmp_path):
    pairs = Pairs(np.array([1, 0]), np.array([0, 2]), np.array([1.0, 0.975], np.float32))
    first, second = ("/data/train", np.array(["t0", "t1"])), ("/data/val", np.array(["v,0", "v1", "v2"]))
    dedup.write_pairs(tmp_path / "pairs.csv", pairs, first, second)
    dedup.write_groups(tmp_path / "groups.csv", match_groups(pairs), first, second)
    with open(tmp_path / "pairs.csv", newline="") as f:
        assert list(csv.reader(f)) == [["set", "id", "match_set", "match_id", "cosine"],
                                       ["/data/train", "t1", "/data/val", "v,0", "1.000000"],
                                       ["/data/train", "t0", "/data/val", "v2", "0.975000"]]
    with open(tmp_path / "groups.csv", newline="") as f:
        assert list(csv.reader(f)) == [["group", "set", "id"], ["1", "/data/train", "t1"], ["1", "/data/val", "v,0"],
                                       ["2", "/data/train", "t0"], ["2", "/data/val", "v2"]]
    assert dedup.flagged_images(tmp_path / "pairs.csv") == {("/data/train", "t1"), ("/data/train", "t0"),
                                                            ("/data/val", "v,0"), ("/data/val", "v2")}
    with pytest.raises(ValueError, match="not a pairs CSV"):
        dedup.flagged_images(tmp_path / "groups.csv")


def write_shard(path: Path, members: dict[str, bytes]) -> Path:
    """A WebDataset shard of ``{member name: bytes}``."""
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_contact_sheet_reads_npz_rows_and_tar_members(tmp_path, saved_figures):
    npz = open_dataset(npz_slice(tmp_path / "npz", "cifar10", "test.npz", rows=slice(0, 3)))
    val = sorted(shared("tinyimagenet", "val", "goldfish").glob("*.JPEG"))[:2]
    shard = open_dataset(write_shard(tmp_path / "s.tar", {f"{p.stem}.jpg": p.read_bytes() for p in val}))
    pairs = Pairs(np.array([2, 0]), np.array([1, 0]), np.array([0.99, 0.975], np.float32))
    path = dedup.contact_sheet(tmp_path / "sheet.png", pairs, npz, shard, title="npz against tar")
    assert path.stat().st_size > 10_000
    panels = saved_figures[0].subfigs
    assert [p._suptitle.get_text() for p in panels[:2]] == ["#1   cosine 0.9900", "#2   cosine 0.9750"]
    assert [ax.get_title() for ax in panels[0].axes] == [npz.ids[2], shard.ids[1]]
    assert panels[0].axes[1].get_xlabel() == f"{tmp_path.name}/s.tar"  # two sets: each image names its own
    assert panels[0].axes[0].images[0].get_array().shape == (dedup.THUMBNAIL, dedup.THUMBNAIL, 3)
    assert dedup.dataset_rows(shard, [shard.ids[1], shard.ids[0]]).tolist() == [1, 0]  # FeatureSet ids -> rows
    dedup.contact_sheet(tmp_path / "none.png", pairs.top(0), npz, title="nothing")
    assert "no pair reaches the threshold" in saved_figures[1]._suptitle.get_text()


# --- zeroshot dedup on real images: 5 Tiny ImageNet val photos of different classes and copies of them ---
def copies_of(path: Path) -> dict[str, bytes]:
    """A JPEG q90 re-encoding, a 2x upscaled PNG and a mirrored PNG of one photo, by member / file name."""
    image = Image.open(path).convert("RGB")
    made = {"q90.jpg": (image, {"format": "JPEG", "quality": 90}),
            "big.png": (image.resize((128, 128), Image.Resampling.BICUBIC), {"format": "PNG"}),
            "flip.png": (image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), {"format": "PNG"})}
    out = {}
    for suffix, (copy, options) in made.items():
        buf = io.BytesIO()
        copy.save(buf, **options)
        out[f"{path.parent.name}_{path.stem}_{suffix}"] = buf.getvalue()
    return out


@pytest.fixture(scope="module")
def real_photos() -> list[Path]:
    val = shared("tinyimagenet", "val")
    return [min((val / c).glob("*.JPEG")) for c in sorted(p.name for p in val.iterdir())[::40]]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_dedup_finds_copies_within_two_shards(real_photos, tmp_path, capsys):
    originals = write_shard(tmp_path / "shard-0.tar", {f"{p.parent.name}_{p.stem}.jpg": p.read_bytes()
                                                       for p in real_photos})
    copies = write_shard(tmp_path / "shard-1.tar", {k: v for p in real_photos for k, v in copies_of(p).items()})
    main(["dedup", str(originals), str(copies), "--threshold", "0.96", "--output", str(tmp_path / "out"), "--device",
          "cpu", "--quiet"])
    out = capsys.readouterr().out.splitlines()
    location = str(originals.resolve())
    pairs = read_csv(tmp_path / "out" / "pairs.csv")
    assert {(r["set"], r["match_set"]) for r in pairs} == {(location, location)}
    found = {frozenset((r["id"], r["match_id"])) for r in pairs}
    for p in real_photos:  # the re-encoded and the upscaled copies pass 0.96 (the lowest, an upscale: 0.964)
        original = f"{p.parent.name}_{p.stem}"
        assert {frozenset((original, f"{original}_q90")), frozenset((original, f"{original}_big"))} <= found
    photos = {}  # group -> the photos its images come from
    for r in read_csv(tmp_path / "out" / "groups.csv"):
        photos.setdefault(r["group"], set()).add(re.match(r".*_val_\d+", r["id"]).group(0))
    assert len(photos) == len(real_photos) and all(len(p) == 1 for p in photos.values())  # no group mixes photos
    assert out[0] == f"pairs: {len(pairs)} at cosine >= 0.96" and out[1] == f"groups: {len(real_photos)}"
    assert out[3].startswith("model: default (fingerprint ") and out[4] == f"data: {location} (20 images)"
    assert Image.open(tmp_path / "out" / "closest_pairs.png").size[0] > 600


def test_dedup_against_matches_each_copy_with_its_original(real_photos, tmp_path, capsys):
    (tmp_path / "originals").mkdir()
    (tmp_path / "copies").mkdir()
    for p in real_photos:
        (tmp_path / "originals" / f"{p.parent.name}_{p.stem}.JPEG").write_bytes(p.read_bytes())
        for name, data in copies_of(p).items():
            (tmp_path / "copies" / name).write_bytes(data)
    main(["dedup", str(tmp_path / "copies"), "--against", str(tmp_path / "originals"), "--threshold", "0.9",
          "--pairs", "4", "--output", str(tmp_path / "out"), "--device", "cpu", "--quiet"])
    lines = capsys.readouterr().out.splitlines()
    copies, originals = (open_dataset(tmp_path / name).location for name in ("copies", "originals"))
    pairs = read_csv(tmp_path / "out" / "pairs.csv")
    assert {(r["set"], r["match_set"]) for r in pairs} == {(copies, originals)}
    assert {r["id"] for r in pairs} == set(open_dataset(tmp_path / "copies").ids)  # mirrored ones too, at 0.9
    assert all(r["id"].startswith(Path(r["match_id"]).stem + "_") for r in pairs)
    groups = read_csv(tmp_path / "out" / "groups.csv")
    assert len({r["group"] for r in groups}) == 15 and groups[0]["set"] == copies and groups[1]["set"] == originals
    assert lines[1] == "groups: 15" and lines[5] == f"against: {originals} (5 images)"


@pytest.mark.parametrize("argv, fragment", [
    (["missing_folder"], "dataset not found"),
    (["{data}", "--threshold", "0"], "--threshold must be a cosine in (0, 1]"),
    (["{data}", "--threshold", "1.5"], "--threshold must be a cosine in (0, 1]"),
    (["{data}", "--pairs", "0"], "--pairs must be at least 1"),
    (["{data}", "--against", "{data}"], "drop --against to find near-duplicates within one set"),
    (["{data}", "--against", "missing_folder"], "dataset not found"),
])
def test_bad_input_is_one_error_line_before_any_model_loads(tmp_path, capsys, monkeypatch, argv, fragment):
    monkeypatch.chdir(tmp_path)
    data = npz_slice(tmp_path, "cifar10", "test.npz", rows=slice(0, 2))
    monkeypatch.setattr("zeroshot.cli.dedup.backbone_from_args", lambda args: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit) as exited:
        main(["dedup", *[a.replace("{data}", str(data)) for a in argv], "--output", "out"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err


def test_an_output_that_cannot_be_written_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as exited:
        main(["dedup", str(tmp_path), "--output", str(tmp_path / "file" / "out")])
    assert exited.value.code == 2 and "is a file; give a folder path elsewhere" in capsys.readouterr().err
