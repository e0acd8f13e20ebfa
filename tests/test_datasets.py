"""Dataset kinds (folders, CSV lists, npz arrays, tar shards), open_dataset dispatch, signatures and pickling."""
from __future__ import annotations

import copy
import io
import json
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared
from zeroshot.datasets import (
    ArrayImages, Dataset, FileList, ImageFiles, ImageFolder, NpzArrays, TarShards, expand_shards, open_dataset,
)
from zeroshot.images import BadImage, ImageTransform, decode_raw, open_image

SMALL = ImageTransform(size=8)


def image_bytes(color=(255, 0, 0), fmt="JPEG", size=(12, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def write_image(path, color=(255, 0, 0), size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".png": "PNG", ".bmp": "BMP"}.get(path.suffix.lower(), "JPEG")
    path.write_bytes(image_bytes(color, fmt, size))
    return path


def write_shard(path, samples, mode="w"):
    """samples: list of (key, {ext: bytes}) written as WebDataset members ``<key>.<ext>``."""
    with tarfile.open(path, mode) as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def mean_colour(raw) -> np.ndarray:
    return np.asarray(open_image(raw)).reshape(-1, 3).mean(axis=0)


# --- ImageFolder -------------------------------------------------------------------------------------------------

@pytest.fixture
def class_folder(tmp_path):
    root = tmp_path / "folder"
    write_image(root / "zebra" / "z1.jpg")
    write_image(root / "ant" / "b.png")
    write_image(root / "ant" / "a.JPEG")
    (root / "ant" / "notes.txt").write_text("not an image")
    (root / "ant" / "labels.csv").write_text("x")
    write_image(root / "mole" / "deep" / "er" / "m.bmp")
    (root / ".cache").mkdir()
    write_image(root / ".cache" / "hidden.jpg")
    write_image(root / "stray.jpg")  # loose file beside class folders: not part of any class
    return root


def test_image_folder_classes_labels_and_ids(class_folder):
    ds = ImageFolder(class_folder)
    assert ds.classes == ["ant", "mole", "zebra"]
    assert ds.ids == ["ant/a.JPEG", "ant/b.png", "mole/deep/er/m.bmp", "zebra/z1.jpg"]
    assert ds.labels.tolist() == [0, 0, 1, 2]
    assert ds.labels.dtype == np.int64
    assert len(ds) == 4
    assert ds.raw(2) == str(class_folder / "mole" / "deep" / "er" / "m.bmp")
    assert ds.location == str(class_folder.resolve())
    assert decode_raw(ds.raw(0), SMALL).shape == (3, 8, 8)


def test_image_folder_flat_is_unlabelled(tmp_path):
    write_image(tmp_path / "b.jpg")
    write_image(tmp_path / "a.png")
    (tmp_path / "c.txt").write_text("x")
    ds = ImageFolder(tmp_path)
    assert ds.ids == ["a.png", "b.jpg"]
    assert ds.labels.tolist() == [-1, -1]
    assert ds.classes is None


def test_image_folder_empty_raises(tmp_path):
    with pytest.raises(ValueError, match="no image files"):
        ImageFolder(tmp_path)
    (tmp_path / "readme.md").write_text("x")
    with pytest.raises(ValueError):
        ImageFolder(tmp_path)
    (tmp_path / "cls").mkdir()
    with pytest.raises(ValueError):
        ImageFolder(tmp_path)


def test_image_folder_missing_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        ImageFolder(tmp_path / "nope")


@pytest.mark.slow
def test_real_dtd_folder_order_matches_classes_json():
    root = shared("dtd10", "all")
    ds = ImageFolder(root)
    assert ds.classes == json.loads((root.parent / "classes.json").read_text())
    assert len(ds) == 1200
    assert np.bincount(ds.labels).tolist() == [120] * 10


# --- FileList ----------------------------------------------------------------------------------------------------

def test_file_list_class_names_without_classes_json(tmp_path):
    write_image(tmp_path / "imgs" / "a.jpg")
    (tmp_path / "list.csv").write_text("path,label\nimgs/a.jpg,zebra\nimgs/b.jpg,ant\nimgs/c.jpg,zebra\nimgs/d.jpg,\n")
    ds = FileList(tmp_path / "list.csv")
    assert ds.classes == ["ant", "zebra"]
    assert ds.labels.tolist() == [1, 0, 1, -1]
    assert ds.ids == ["imgs/a.jpg", "imgs/b.jpg", "imgs/c.jpg", "imgs/d.jpg"]
    assert ds.raw(0) == str(tmp_path / "imgs" / "a.jpg")  # relative to the CSV's folder, not the cwd
    assert decode_raw(ds.raw(0), SMALL).shape == (3, 8, 8)


def test_file_list_class_names_follow_classes_json(tmp_path):
    (tmp_path / "classes.json").write_text(json.dumps(["zebra", "mole", "ant"]))
    (tmp_path / "list.csv").write_text("path,label\na.jpg,ant\nb.jpg,zebra\n")
    ds = FileList(tmp_path / "list.csv")
    assert ds.classes == ["zebra", "mole", "ant"]
    assert ds.labels.tolist() == [2, 0]


def test_file_list_unknown_class_name_raises(tmp_path):
    (tmp_path / "classes.json").write_text(json.dumps(["zebra", "ant"]))
    (tmp_path / "list.csv").write_text("path,label\na.jpg,ant\nb.jpg,unicorn\n")
    with pytest.raises(ValueError, match="unicorn"):
        FileList(tmp_path / "list.csv")


def test_file_list_bad_classes_json_raises(tmp_path):
    (tmp_path / "classes.json").write_text(json.dumps({"0": "zebra"}))
    (tmp_path / "list.csv").write_text("path,label\na.jpg,zebra\n")
    with pytest.raises(ValueError, match="classes.json"):
        FileList(tmp_path / "list.csv")


def test_file_list_integer_labels(tmp_path):
    (tmp_path / "list.csv").write_text("path,label\na.jpg,3\nb.jpg,0\nc.jpg,\nd.jpg,12\n")
    ds = FileList(tmp_path / "list.csv")
    assert ds.labels.tolist() == [3, 0, -1, 12]
    assert ds.classes is None


def test_file_list_without_label_column(tmp_path):
    (tmp_path / "list.csv").write_text("path\na.jpg\nsub/b.jpg\n")
    ds = FileList(tmp_path / "list.csv")
    assert ds.labels.tolist() == [-1, -1]
    assert ds.ids == ["a.jpg", "sub/b.jpg"]


def test_file_list_header_without_path_raises(tmp_path):
    (tmp_path / "list.csv").write_text("file,label\na.jpg,0\n")
    with pytest.raises(ValueError, match="'path'"):
        FileList(tmp_path / "list.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="'path'"):
        FileList(tmp_path / "empty.csv")


def test_tsv_file_list_is_tab_separated(tmp_path):
    (tmp_path / "list.tsv").write_text("path\tlabel\na, b.jpg\tcat\nc.jpg\tdog\n")
    ds = open_dataset(tmp_path / "list.tsv")
    assert isinstance(ds, FileList)
    assert ds.ids == ["a, b.jpg", "c.jpg"]
    assert ds.labels.tolist() == [0, 1]


# --- NpzArrays ---------------------------------------------------------------------------------------------------

@pytest.fixture
def npz_path(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 6, 5, 3), dtype=np.uint8)
    path = tmp_path / "arrays.npz"
    np.savez(path, images=images, labels=np.array([2, 0, 1, 2]), ids=np.array(["w", "x", "y", "z"]))
    (tmp_path / "classes.json").write_text(json.dumps(["a", "b", "c"]))
    return path, images


def test_npz_ids_labels_classes_and_raw(npz_path):
    path, images = npz_path
    ds = NpzArrays(path)
    assert ds.ids == ["w", "x", "y", "z"]
    assert ds.labels.tolist() == [2, 0, 1, 2]
    assert ds.classes == ["a", "b", "c"]
    assert ds._images is None  # images are read lazily
    np.testing.assert_array_equal(ds.raw(3), images[3])
    out = decode_raw(ds.raw(1), ImageTransform(size=5, resize_mode="squash"))
    assert out.shape == (3, 5, 5)


def test_npz_defaults_without_ids_and_labels(tmp_path):
    path = tmp_path / "bare.npz"
    np.savez(path, images=np.zeros((3, 4, 4, 3), np.uint8))
    ds = NpzArrays(path)
    assert ds.ids == ["000000", "000001", "000002"]
    assert ds.labels.tolist() == [-1, -1, -1]
    assert ds.classes is None


def test_npz_without_images_raises(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, labels=np.arange(3))
    with pytest.raises(ValueError, match="'images'"):
        NpzArrays(path)


def test_npz_float_images_raise_on_first_read(tmp_path):
    path = tmp_path / "f.npz"
    np.savez(path, images=np.zeros((2, 4, 4, 3), np.float32), labels=np.array([0, 1]))
    ds = NpzArrays(path)  # cheap construction does not read the images
    with pytest.raises(ValueError, match="uint8"):
        ds.raw(0)


def test_npz_image_count_must_match_labels(tmp_path):
    path = tmp_path / "m.npz"
    np.savez(path, images=np.zeros((3, 4, 4, 3), np.uint8), labels=np.array([0, 1]))
    with pytest.raises(ValueError):
        NpzArrays(path).raw(0)


def test_npz_greyscale_arrays_decode_to_three_equal_channels(tmp_path):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (2, 8, 8), dtype=np.uint8)
    path = tmp_path / "g.npz"
    np.savez(path, images=grey, labels=np.array([0, 1]))
    ds = NpzArrays(path)
    out = decode_raw(ds.raw(1), SMALL)
    assert out.shape == (3, 8, 8) and out.dtype == torch.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[c].numpy(), grey[1])


def test_npz_single_channel_arrays_decode(tmp_path):
    grey = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8, 1)
    path = tmp_path / "g1.npz"
    np.savez(path, images=grey)
    out = decode_raw(NpzArrays(path).raw(0), SMALL)
    assert out.shape == (3, 8, 8)
    np.testing.assert_array_equal(out[2].numpy(), grey[0, ..., 0])


@pytest.mark.slow
def test_real_cifar10_npz():
    ds = NpzArrays(shared("cifar10", "test.npz"))
    assert len(ds) == 10000
    assert ds.classes == json.loads(shared("cifar10", "classes.json").read_text())
    assert ds.classes[3] == "cat"
    assert ds.labels[:5].tolist() == [3, 8, 8, 0, 6]
    assert ds.raw(0).shape == (32, 32, 3)


# --- TarShards ---------------------------------------------------------------------------------------------------

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def make_shards(folder, suffix=".tar", mode="w"):
    folder.mkdir(parents=True, exist_ok=True)
    write_shard(folder / f"shard-000000{suffix}", [
        ("k0", {"jpg": image_bytes(RED), "cls": b"1", "txt": b"a red square\n"}),
        ("k1", {"jpg": b"this is not a jpeg", "cls": b"0", "txt": b"broken"}),
        ("k2", {"txt": b"caption without an image"}),
    ], mode)
    write_shard(folder / f"shard-000001{suffix}", [
        ("meta", {"json": b"{}"}),  # no image member: not a sample
        ("k3", {"json": b'{"note": "not the image"}', "png": image_bytes(BLUE, "PNG"), "cls": b"2"}),
        ("sub/k4", {"cls": b"x", "jpeg": image_bytes(GREEN)}),
    ], mode)
    return folder


@pytest.mark.parametrize("suffix,mode", [(".tar", "w"), (".tar.gz", "w:gz"), (".tgz", "w:gz")])
def test_tar_shards_samples(tmp_path, suffix, mode):
    folder = make_shards(tmp_path / "shards", suffix, mode)
    ds = TarShards([folder / f"shard-000000{suffix}", folder / f"shard-000001{suffix}"])
    assert ds.ids == ["k0", "k1", "k3", "sub/k4"]  # k2 has no image
    assert ds.labels.tolist() == [1, 0, 2, -1]  # a non-integer .cls is no label
    assert ds.texts == ["a red square", "broken", "", ""]
    assert ds.raw(0) == image_bytes(RED)
    assert ds.raw(2) == image_bytes(BLUE, "PNG")
    assert ds.raw(1) == b"this is not a jpeg"
    np.testing.assert_allclose(mean_colour(ds.raw(3)), GREEN, atol=3)
    np.testing.assert_allclose(mean_colour(ds.raw(0)), RED, atol=3)  # back to the first shard
    with pytest.raises(BadImage):
        decode_raw(ds.raw(1), SMALL)
    assert decode_raw(ds.raw(2), SMALL).shape == (3, 8, 8)


def test_tar_shards_classes_json_beside(tmp_path):
    folder = make_shards(tmp_path / "s")
    (folder / "classes.json").write_text(json.dumps(["x", "y", "z"]))
    ds = TarShards(folder / "shard-000000.tar")
    assert ds.classes == ["x", "y", "z"]
    assert ds.ids == ["k0", "k1"]


def test_tar_shards_without_images_raise(tmp_path):
    path = write_shard(tmp_path / "t.tar", [("a", {"txt": b"x"}), ("b", {"cls": b"1"})])
    with pytest.raises(ValueError, match="no image samples"):
        TarShards(path)


def test_tar_duplicate_keys_across_shards_raise(tmp_path):
    for i in range(2):
        write_shard(tmp_path / f"d-{i}.tar", [("same", {"jpg": image_bytes()})])
    with pytest.raises(ValueError, match="not unique"):
        TarShards([tmp_path / "d-0.tar", tmp_path / "d-1.tar"])


def test_expand_shards_brace_folder_and_list(tmp_path):
    folder = make_shards(tmp_path / "s")
    (folder / "notes.txt").write_text("x")
    expected = [folder / "shard-000000.tar", folder / "shard-000001.tar"]
    assert expand_shards(str(folder / "shard-{000000..000001}.tar")) == expected
    assert expand_shards(folder) == expected
    assert expand_shards([expected[1], str(folder / "shard-{000000..000000}.tar")]) == [expected[1], expected[0]]
    assert expand_shards("x-{08..10}.tar.gz") == [
        type(expected[0])(p) for p in ("x-08.tar.gz", "x-09.tar.gz", "x-10.tar.gz")]


def test_open_dataset_brace_pattern_and_shard_folder(tmp_path):
    folder = make_shards(tmp_path / "s")
    for spec in (str(folder / "shard-{000000..000001}.tar"), folder):
        ds = open_dataset(spec)
        assert isinstance(ds, TarShards)
        assert ds.ids == ["k0", "k1", "k3", "sub/k4"]
        assert ds.raw(2) == image_bytes(BLUE, "PNG")


@pytest.mark.slow
def test_real_tinyimagenet_shard():
    path = shared("tinyimagenet", "train-000000.tar.gz")
    ds = open_dataset(path)
    assert isinstance(ds, TarShards)
    assert len(ds) == 5000
    assert len(ds.classes) == 200
    assert ds.labels.min() == 0 and ds.labels.max() == 199
    assert np.bincount(ds.labels, minlength=200).tolist() == [25] * 200
    assert ds.texts[0] == ds.classes[ds.labels[0]]
    assert open_image(ds.raw(0)).size == (64, 64)


# --- open_dataset dispatch ---------------------------------------------------------------------------------------

def test_open_dataset_dispatch(tmp_path, class_folder, npz_path):
    npz, _ = npz_path
    assert isinstance(open_dataset(class_folder), ImageFolder)
    assert isinstance(open_dataset(str(npz)), NpzArrays)
    (tmp_path / "l.csv").write_text("path\na.jpg\n")
    assert isinstance(open_dataset(tmp_path / "l.csv"), FileList)
    write_shard(tmp_path / "one.tar", [("a", {"jpg": image_bytes()})])
    assert isinstance(open_dataset(tmp_path / "one.tar"), TarShards)


def test_open_dataset_image_files(tmp_path):
    a = write_image(tmp_path / "a.jpg")
    b = write_image(tmp_path / "b.png")
    single = open_dataset(a)
    assert isinstance(single, ImageFiles)
    assert single.ids == [str(a)] and single.labels.tolist() == [-1]
    several = open_dataset([str(b), str(a)])
    assert isinstance(several, ImageFiles)
    assert several.ids == [str(b), str(a)] and several.classes is None
    assert isinstance(open_dataset([tmp_path]), ImageFolder)  # a one-element list is its element


def test_open_dataset_missing_and_unknown(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_dataset(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError):
        open_dataset(tmp_path / "nothing.tar")
    with pytest.raises(FileNotFoundError):
        open_dataset([tmp_path / "a.jpg", tmp_path / "b.jpg"])
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match="cannot tell"):
        open_dataset(tmp_path / "weights.bin")


# --- signature and ids -------------------------------------------------------------------------------------------

def test_folder_signature_tracks_content_and_mtime(class_folder):
    sig = ImageFolder(class_folder).signature()
    assert sig["kind"] == "folder" and sig["n"] == 4
    assert ImageFolder(class_folder).signature() == sig  # stable when nothing changed

    path = class_folder / "ant" / "a.JPEG"
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    sig_mtime = ImageFolder(class_folder).signature()
    assert sig_mtime != sig

    write_image(path, color=(1, 2, 3), size=(30, 30))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # same mtime, new size
    assert ImageFolder(class_folder).signature() not in (sig, sig_mtime)


def test_folder_signature_tracks_labels_and_membership(class_folder):
    sig = ImageFolder(class_folder).signature()
    (class_folder / "zebra").rename(class_folder / "aardvark")  # same files, different labels and ids
    assert ImageFolder(class_folder).signature() != sig
    sig2 = ImageFolder(class_folder).signature()
    write_image(class_folder / "ant" / "c.jpg")
    assert ImageFolder(class_folder).signature() != sig2


def test_npz_and_tar_signatures_track_file_changes(tmp_path, npz_path):
    npz, _ = npz_path
    tar = write_shard(tmp_path / "t.tar", [("a", {"jpg": image_bytes()})])
    for opener, path in ((NpzArrays, npz), (TarShards, tar)):
        sig = opener(path).signature()
        assert opener(path).signature() == sig
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        assert opener(path).signature() != sig, opener.__name__


def test_duplicate_ids_raise(tmp_path):
    with pytest.raises(ValueError, match="not unique"):
        Dataset(["a", "b", "a"], np.zeros(3), None, "here")
    with pytest.raises(ValueError):
        Dataset(["a", "b"], np.zeros(3), None, "here")
    a = write_image(tmp_path / "a.jpg")
    with pytest.raises(ValueError, match="not unique"):
        ImageFiles([a, a])
    path = tmp_path / "dup.npz"
    np.savez(path, images=np.zeros((2, 4, 4, 3), np.uint8), ids=np.array(["x", "x"]))
    with pytest.raises(ValueError, match="not unique"):
        NpzArrays(path)


# --- pickling for DataLoader workers -----------------------------------------------------------------------------

def test_pickled_gzip_shards_drop_the_cached_bytes(tmp_path):
    folder = make_shards(tmp_path / "s", ".tar.gz", "w:gz")
    ds = TarShards(folder)
    first = ds.raw(0)
    assert ds._cache is not None and len(ds._cache[1]) > 10_000  # the whole decompressed shard
    state = ds.__getstate__()
    assert state["_cache"] is None
    assert ds._cache is not None  # the parent keeps its own cache
    blob = pickle.dumps(ds)
    assert len(blob) < len(ds._cache[1])
    clone = copy.deepcopy(ds)  # goes through __getstate__, as a worker's copy does
    assert clone._cache is None
    assert clone.raw(0) == first and clone.ids == ds.ids and clone.texts == ds.texts


def test_pickled_npz_drops_the_image_array(tmp_path):
    path = tmp_path / "big.npz"
    images = np.random.default_rng(0).integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    np.savez(path, images=images)
    ds = NpzArrays(path)
    ds.raw(0)
    assert ds._images is not None
    assert ds.__getstate__()["_images"] is None
    blob = pickle.dumps(ds)
    assert len(blob) < images.nbytes // 10
    clone = copy.deepcopy(ds)  # goes through __getstate__, as a worker's copy does
    assert clone._images is None
    np.testing.assert_array_equal(clone.raw(49), images[49])


def test_array_images_are_keyed_by_their_pixels():
    """Rendered images held in memory: the cache signature changes with any pixel, not just with the name."""
    pixels = np.zeros((3, 8, 8, 3), np.uint8)
    images = ArrayImages(pixels, np.array([0, 1, 2]), name="rendered")
    assert len(images) == 3 and images.raw(1) is not None and images.labels.tolist() == [0, 1, 2]
    changed = pixels.copy()
    changed[2, 7, 7, 0] = 1
    assert images.signature() != ArrayImages(changed, np.array([0, 1, 2]), name="rendered").signature()
    assert images.signature() == ArrayImages(pixels.copy(), np.array([0, 1, 2]), name="rendered").signature()
    with pytest.raises(ValueError, match="uint8"):
        ArrayImages(pixels.astype(np.float32))
