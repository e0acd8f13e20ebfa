"""Dataset cards, prompt building and (cached) prompt-ensembled class embeddings."""
import json
import zlib

import numpy as np
import pytest

from conftest import shared
from zeroshot.prompts import Card, available_cards, build_prompts, class_embeddings, load_card

SHIPPED = ["cifar10", "dtd", "flickr8k", "imagenet", "mnist", "tinyimagenet"]

# zero_shot.md: the 18 CIFAR templates are nine with "a" and the same nine with "the".
_NINE = ["a photo of {} {{}}.", "a blurry photo of {} {{}}.", "a black and white photo of {} {{}}.",
         "a low contrast photo of {} {{}}.", "a high contrast photo of {} {{}}.", "a bad photo of {} {{}}.",
         "a good photo of {} {{}}.", "a photo of {} small {{}}.", "a photo of {} big {{}}."]
CIFAR_TEMPLATES = [t.format(article) for article in ("a", "the") for t in _NINE]


class FakeBackbone:
    """Deterministic pseudo-random text vectors per prompt, with varied norms; counts encode_texts calls."""

    def __init__(self, dim: int = 16, fingerprint: str = "fake-0001"):
        self.fingerprint = fingerprint
        self.dim = dim
        self.calls = 0

    def vector(self, prompt: str) -> np.ndarray:
        r = np.random.default_rng(zlib.crc32(prompt.encode()))
        return (r.standard_normal(self.dim) * r.uniform(0.2, 5.0)).astype(np.float32)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        return np.stack([self.vector(t) for t in texts])


def manual_embeddings(backbone: FakeBackbone, prompts_per_class: list[list[str]]) -> np.ndarray:
    rows = []
    for prompts in prompts_per_class:
        e = np.stack([backbone.vector(p).astype(np.float64) for p in prompts])
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        m = e.mean(axis=0)
        rows.append(m / np.linalg.norm(m))
    return np.stack(rows)


# ---- cards -----------------------------------------------------------------------------------------------------

def test_available_cards_lists_every_shipped_card():
    assert set(SHIPPED) <= set(available_cards())


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_card_loads_with_sources(name):
    card = load_card(name)
    assert isinstance(card, Card) and card.name == name
    assert len(card.labels) == len(card.classes)
    assert card.templates
    assert all(t.count("{}") == 1 for t in card.templates)
    assert isinstance(card.sources, dict) and card.sources.get("classes") and card.sources.get("templates")


@pytest.mark.parametrize("name", [n for n in SHIPPED if n != "flickr8k"])
def test_every_classification_card_builds_its_prompts(name):
    card = load_card(name)
    prompts = build_prompts(card.classes, card.templates)  # no duplicate or empty class names, valid templates
    assert len(prompts) == len(card.classes) and all(len(p) == len(card.templates) for p in prompts)
    assert len({p[0] for p in prompts}) == len(card.classes)


@pytest.mark.parametrize("name, n_classes, n_templates", [
    ("cifar10", 10, 18), ("imagenet", 1000, 80), ("tinyimagenet", 200, 80), ("dtd", 47, 8), ("mnist", 10, 1)])
def test_card_counts(name, n_classes, n_templates):
    card = load_card(name)
    assert (len(card.classes), len(card.templates)) == (n_classes, n_templates)


def test_tinyimagenet_uses_the_imagenet_templates():
    assert load_card("tinyimagenet").templates == load_card("imagenet").templates


def test_cifar10_card_matches_the_published_lists():
    card = load_card("cifar10")
    assert card.classes == json.loads(shared("cifar10", "classes.json").read_text())
    assert card.templates == CIFAR_TEMPLATES


def test_imagenet_card_matches_open_clip_except_two_deduplicated_names():
    metadata = pytest.importorskip("open_clip.zero_shot_metadata")
    card = load_card("imagenet")
    differ = {i: (a, b) for i, (a, b) in enumerate(zip(metadata.IMAGENET_CLASSNAMES, card.classes)) if a != b}
    assert differ == {744: ("missile", "projectile"), 836: ("sunglasses", "sunglass")}
    assert card.templates == [t("{}") for t in metadata.OPENAI_IMAGENET_TEMPLATES]


def test_dtd_select_follows_the_dtd10_folders():
    folders = json.loads(shared("dtd10", "classes.json").read_text())
    card = load_card("dtd").select(folders)
    assert card.classes == folders and card.labels == folders
    assert card.templates == load_card("dtd").templates
    reverse = load_card("dtd").select(folders[::-1])
    assert reverse.classes == folders[::-1]


def test_tinyimagenet_select_by_folder_labels():
    card = load_card("tinyimagenet").select(["academic_gown", "abacus", "african_elephant"])
    assert card.classes == ["academic gown", "abacus", "African elephant"]
    assert card.labels == ["academic_gown", "abacus", "african_elephant"]
    by_name = load_card("tinyimagenet").select(["African elephant", "academic gown"])
    assert by_name.labels == ["african_elephant", "academic_gown"]


def test_tinyimagenet_labels_equal_the_shared_folders():
    card = load_card("tinyimagenet")
    assert card.labels == json.loads(shared("tinyimagenet", "classes.json").read_text())


def test_select_unknown_class_names_it():
    with pytest.raises(ValueError, match="not_a_texture"):
        load_card("dtd").select(["banded", "not_a_texture"])


def test_load_unknown_card_lists_shipped_cards():
    with pytest.raises(ValueError, match="nope") as info:
        load_card("nope")
    assert "cifar10" in str(info.value) and "imagenet" in str(info.value)


def test_card_from_json_file(tmp_path):
    path = tmp_path / "pets.json"
    path.write_text(json.dumps({"classes": ["cat", "dog"], "templates": ["a photo of a {}, a type of pet."],
                                "sources": {"classes": "me"}}))
    card = load_card(path)
    assert card.name == "pets" and card.classes == ["cat", "dog"] and card.labels == ["cat", "dog"]
    assert build_prompts(card.classes, card.templates)[1] == ["a photo of a dog, a type of pet."]
    assert card.sources == {"classes": "me"}


def test_card_from_json_file_can_reference_shipped_templates(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"name": "mine", "classes": ["x"], "labels": ["X"], "templates": "cifar10"}))
    card = load_card(str(path))
    assert card.name == "mine" and card.labels == ["X"] and card.templates == load_card("cifar10").templates


# ---- build_prompts ---------------------------------------------------------------------------------------------

def test_build_prompts_formats_every_template_per_class():
    assert build_prompts(["cat", "dog"], ["a {}.", "the {} photo"]) == [
        ["a cat.", "the cat photo"], ["a dog.", "the dog photo"]]


@pytest.mark.parametrize("template", [
    "a photo", "a {} and a {}", "a photo of a {c}.", "a photo of a {0}.", "a {x} photo of a {}.", "a {{}}.",
    "a photo of {", "{}{}"])
def test_build_prompts_rejects_bad_templates(template):
    with pytest.raises(ValueError, match="placeholder"):
        build_prompts(["cat", "dog"], ["a photo of a {}.", template])


def test_build_prompts_keeps_escaped_braces_as_text():
    assert build_prompts(["cat"], ["a {} {{literal}}"]) == [["a cat {literal}"]]


@pytest.mark.parametrize("classes, message", [
    (["cat", ""], "empty"), (["cat", "  "], "empty"), (["cat", "dog", "cat"], "duplicate"), ([], "no class")])
def test_build_prompts_rejects_bad_class_names(classes, message):
    with pytest.raises(ValueError, match=message):
        build_prompts(classes, ["a {}."])


def test_build_prompts_rejects_an_empty_template_list():
    with pytest.raises(ValueError, match="template"):
        build_prompts(["cat"], [])


def test_build_prompts_accepts_class_specific_prompts():
    cupl = {"cat": ["a small furry pet", "a cat sleeping"], "dog": ["a loyal dog"], "extra": ["ignored"]}
    assert build_prompts(["dog", "cat"], cupl) == [["a loyal dog"], ["a small furry pet", "a cat sleeping"]]


def test_build_prompts_class_specific_missing_class_raises():
    with pytest.raises(ValueError, match="bird"):
        build_prompts(["cat", "bird"], {"cat": ["a cat"], "bird": []})


# ---- class_embeddings ------------------------------------------------------------------------------------------

CLASSES = ["cat", "dog", "car", "tree"]
TEMPLATES = ["a photo of a {}.", "a blurry photo of the {}.", "art of the {}.", "itap of a {}."]


def test_class_embeddings_are_unit_rows():
    W = class_embeddings(FakeBackbone(), CLASSES, TEMPLATES)
    assert W.shape == (4, 16) and W.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(W, axis=1), 1.0, atol=1e-6)


def test_class_embeddings_normalise_each_template_before_averaging():
    backbone = FakeBackbone()
    W = class_embeddings(backbone, CLASSES, TEMPLATES)
    prompts = [[t.format(c) for t in TEMPLATES] for c in CLASSES]
    np.testing.assert_allclose(W, manual_embeddings(backbone, prompts), atol=1e-6)
    # averaging the raw (unnormalised) vectors gives something else, so the check above can fail
    raw = np.stack([np.mean([backbone.vector(p) for p in group], axis=0) for group in prompts])
    raw /= np.linalg.norm(raw, axis=1, keepdims=True)
    assert np.abs(W - raw).max() > 1e-3
    assert backbone.calls == 1


def test_class_embeddings_default_template():
    backbone = FakeBackbone()
    W = class_embeddings(backbone, ["cat"])
    np.testing.assert_allclose(W[0], backbone.vector("a photo of a cat.") /
                               np.linalg.norm(backbone.vector("a photo of a cat.")), atol=1e-6)


def test_template_order_does_not_change_the_embeddings():
    W = class_embeddings(FakeBackbone(), CLASSES, TEMPLATES)
    W_reordered = class_embeddings(FakeBackbone(), CLASSES, TEMPLATES[::-1])
    np.testing.assert_allclose(W, W_reordered, atol=1e-6)


def test_class_order_permutes_the_rows():
    W = class_embeddings(FakeBackbone(), CLASSES, TEMPLATES)
    W_perm = class_embeddings(FakeBackbone(), CLASSES[::-1], TEMPLATES)
    np.testing.assert_allclose(W_perm, W[::-1], atol=1e-6)


def test_class_specific_prompts_embeddings():
    backbone = FakeBackbone()
    cupl = {"cat": ["a small furry pet", "a cat sleeping", "whiskers"], "dog": ["a loyal dog"]}
    W = class_embeddings(backbone, ["cat", "dog"], cupl)
    np.testing.assert_allclose(W, manual_embeddings(backbone, [cupl["cat"], cupl["dog"]]), atol=1e-6)


def test_class_embeddings_cache_hit_and_miss(tmp_path):
    backbone = FakeBackbone()
    first = class_embeddings(backbone, CLASSES, TEMPLATES, cache_dir=tmp_path)
    assert backbone.calls == 1
    assert list((tmp_path / backbone.fingerprint / "text").glob("*.npy"))
    second = class_embeddings(backbone, CLASSES, TEMPLATES, cache_dir=tmp_path)
    assert backbone.calls == 1  # served from the cache
    np.testing.assert_array_equal(first, second)
    assert second.dtype == np.float32
    class_embeddings(backbone, CLASSES, TEMPLATES[:2], cache_dir=tmp_path)
    assert backbone.calls == 2  # another template list is another key
    class_embeddings(backbone, CLASSES[:3], TEMPLATES, cache_dir=tmp_path)
    assert backbone.calls == 3  # so is another class list


def test_class_embeddings_cache_is_per_backbone(tmp_path):
    a, b = FakeBackbone(fingerprint="aaa"), FakeBackbone(fingerprint="bbb", dim=8)
    Wa = class_embeddings(a, CLASSES, TEMPLATES, cache_dir=tmp_path)
    Wb = class_embeddings(b, CLASSES, TEMPLATES, cache_dir=tmp_path)
    assert (a.calls, b.calls) == (1, 1)
    assert Wa.shape == (4, 16) and Wb.shape == (4, 8)


def test_class_embeddings_with_the_tiny_real_backbone(tiny_backbone):
    templates = ["a photo of a {}.", "a drawing of a {}."]
    W = class_embeddings(tiny_backbone, CLASSES, templates)
    assert W.shape == (len(CLASSES), 32) and W.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(W, axis=1), 1.0, atol=1e-6)
    e = tiny_backbone.encode_texts([t.format(c) for c in CLASSES for t in templates]).astype(np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    m = e.reshape(len(CLASSES), len(templates), -1).mean(axis=1)
    np.testing.assert_allclose(W, m / np.linalg.norm(m, axis=1, keepdims=True), atol=1e-5)
