"""Heads as scikit-learn users use them: string labels, a Pipeline, GridSearchCV over a head's hyperparameter, and
the class text embeddings routed to fit as metadata, on real CIFAR-10 features of the shipped default model."""
import warnings

import numpy as np
import pytest
import sklearn
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from conftest import shared, unit_rows
from zeroshot import class_embeddings, extract, load_backbone, load_card
from zeroshot.evaluation.fewshot import split_per_class
from zeroshot.heads import LinearProbe, TipAdapter, ZeroShotClassifier

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """(train features, train labels as class names, test features, test names, W, class names): 20 + 20 real
    images per class of CIFAR-10's train split, encoded by the default model."""
    folder = tmp_path_factory.mktemp("sklearn_pipeline")
    with np.load(shared("cifar10", "train.npz"), allow_pickle=False) as z:
        rows = split_per_class(z["labels"], 40)[0]
        np.savez(folder / "slice.npz", images=z["images"][rows], labels=z["labels"][rows], ids=z["ids"][rows])
    (folder / "classes.json").write_text(shared("cifar10", "classes.json").read_text())
    backbone = load_backbone(device="cpu")
    features = extract(backbone, folder / "slice.npz", cache_dir=folder / "cache", progress=False)
    card = load_card("cifar10").select(features.classes)
    W = class_embeddings(backbone, card.classes, card.templates, cache_dir=folder / "cache")
    names = np.asarray(card.classes)
    train, test = split_per_class(features.labels, 20)
    X = np.asarray(features.features)
    return X[train], names[features.labels[train]], X[test], names[features.labels[test]], W, list(names)


def test_grid_search_over_a_head_in_a_pipeline_with_string_labels_and_routed_class_embeddings(cifar):
    X, y, X_test, y_test, W, names = cifar
    with sklearn.config_context(enable_metadata_routing=True):
        head = TipAdapter(alpha=1.0).set_fit_request(class_embeddings=True, class_names=True)
        pipe = make_pipeline(FunctionTransformer(unit_rows), head)
        search = GridSearchCV(pipe, {"tipadapter__beta": [1.0, 5.5, 20.0]}, cv=4)  # 15 shots per class in each fold
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)  # the new keyword is the one routed: no deprecation
            search.fit(X, y, class_embeddings=W, class_names=names)
    best = search.best_estimator_[-1]
    assert best.classes_.tolist() == names  # label values, in the order of the class embeddings
    assert search.best_params_["tipadapter__beta"] in (1.0, 5.5, 20.0) and len(search.cv_results_["params"]) == 3
    predicted = search.predict(X_test)
    assert predicted.dtype.kind == "U" and set(predicted) <= set(names)
    zero_shot = ZeroShotClassifier().fit(X, y, class_embeddings=W, class_names=names).predict(X_test)
    assert (predicted == y_test).mean() > 0.3 and (zero_shot == y_test).mean() > 0.2  # chance: 0.1


def test_predictions_follow_the_labels_not_their_spelling(cifar):
    """The same probe fitted on class indices, class names and non-contiguous integers predicts the same classes."""
    X, y, X_test, _, W, names = cifar
    index = np.array([names.index(v) for v in y])
    by_index = LinearProbe(C=1.0).fit(X, index).predict(X_test)
    by_name = LinearProbe(C=1.0).fit(X, y, class_names=names).predict(X_test)
    sparse = np.arange(10) * 7 + 3
    by_sparse = LinearProbe(C=1.0).fit(X, sparse[index]).predict(X_test)
    np.testing.assert_array_equal(np.asarray(names)[by_index], by_name)
    np.testing.assert_array_equal(sparse[by_index], by_sparse)


def test_the_old_keyword_still_fits_with_a_future_warning(cifar):
    X, y, X_test, _, W, names = cifar
    with pytest.warns(FutureWarning, match=r"fit\(classes=\.\.\.\) is deprecated .* class_embeddings="):
        old = TipAdapter(alpha=1.0, beta=5.5).fit(X, y, classes=W, class_names=names)
    new = TipAdapter(alpha=1.0, beta=5.5).fit(X, y, class_embeddings=W, class_names=names)
    np.testing.assert_array_equal(old.predict(X_test), new.predict(X_test))
    with pytest.raises(TypeError, match="give class_embeddings= only"):
        TipAdapter().fit(X, y, classes=W, class_embeddings=W)
