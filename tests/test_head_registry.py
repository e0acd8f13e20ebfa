"""Every registered head, swept: build, fit on what the registry says it needs, score, save, load, clone."""
from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from zeroshot.features import normalise_rows
from zeroshot.heads import HEADS, REGISTRY, load_head, spec_for
from zeroshot.heads.registry import INPUTS, KINDS, canonical_name

N_PER_CLASS, C, D = 20, 3, 16


@pytest.fixture(scope="module")
def inputs() -> dict:
    """Unit-row features around three class directions, and every input a registered fit can take."""
    rng = np.random.default_rng(0)
    W = normalise_rows(rng.standard_normal((C, D))).astype(np.float32)
    y = np.repeat(np.arange(C), N_PER_CLASS)
    X = normalise_rows(W[y] + 0.6 * rng.standard_normal((len(y), D))).astype(np.float32)
    return {"features": X, "labels": y, "class_embeddings": W, "class_names": ["a", "b", "c"],
            "no_class_embeddings": normalise_rows(rng.standard_normal((C, D))).astype(np.float32),
            "captions": normalise_rows(W[y] + 0.3 * rng.standard_normal((len(y), D))).astype(np.float32),
            "logits": 10 * X @ W.T}


def _outputs(head, kind: str, inputs: dict) -> np.ndarray:
    if kind == "ood":
        return head.score_samples(inputs["features"])
    if kind == "calibrator":
        return head.transform(inputs["logits"])
    return head.decision_function(inputs["features"])


@pytest.mark.filterwarnings("ignore:shots per class differ")
@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_registered_head_fits_scores_saves_loads_and_clones(name, inputs, tmp_path):
    spec = REGISTRY[name]
    head = spec.fit(spec.build(random_state=0, logit_scale=40.0), **inputs)
    scores = _outputs(head, spec.kind, inputs)
    assert np.isfinite(scores).all() and len(scores) == len(inputs["features"])
    if spec.kind == "classifier":
        assert head.predict(inputs["features"]).shape == (len(inputs["features"]),)
    head.save(tmp_path / name, fingerprint="fp")
    loaded = load_head(tmp_path / name, fingerprint="fp")
    assert type(loaded) is spec.cls and loaded.get_params() == head.get_params()
    np.testing.assert_array_equal(_outputs(loaded, spec.kind, inputs), scores)
    fresh = clone(head)
    assert fresh.get_params() == head.get_params()
    with pytest.raises(NotFittedError):
        check_is_fitted(fresh)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_a_missing_input_is_named(name, inputs):
    spec = REGISTRY[name]
    required = spec.needs[-1]
    with pytest.raises(ValueError, match=f"{name} needs {required}"):
        spec.fit(spec.build(), **{k: v for k, v in inputs.items() if k != required})


def test_entries_are_well_formed_and_old_spellings_resolve():
    assert all(n == canonical_name(n) for n in REGISTRY)
    assert all(s.kind in KINDS and set(s.needs + s.optional) <= set(INPUTS) for s in REGISTRY.values())
    assert {s.class_name for s in REGISTRY.values()} == set(HEADS)
    assert spec_for("clipn_atd").name == "clipn-atd" and spec_for(" Relative_Mahalanobis ").kind == "ood"
    with pytest.raises(ValueError, match="unknown classifier 'mcm'"):
        spec_for("mcm", "classifier")


def test_build_passes_only_the_settings_a_head_takes():
    assert REGISTRY["tip"].build(logit_scale=39.6, random_state=3).get_params()["logit_scale"] == 39.6
    assert REGISTRY["clipn-ctw"].build(logit_scale=39.6).get_params() == {"inference": "ctw", "logit_scale": 39.6}
    assert REGISTRY["mcm"].build(logit_scale=39.6).get_params() == {"temperature": 1.0}


def test_the_readme_table_is_the_registry():
    """The README lists the heads from the registry (scripts/heads_table.py), so the docs cannot drift from it."""
    root = Path(__file__).resolve().parents[1]
    table = runpy.run_path(str(root / "scripts" / "heads_table.py"))["heads_table"]()
    assert table in (root / "README.md").read_text()
