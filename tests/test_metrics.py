"""Classification metrics checked against scikit-learn, plus the tie rule, the most confused pairs and the
confusion-matrix PNG."""
import warnings

import numpy as np
import pytest
import sklearn.metrics as skm
from PIL import Image

from zeroshot.metrics import (classification_metrics, confusion_matrix, mean_per_class_recall,
                              plot_confusion_matrix, top_confusions, top_k_accuracy, true_class_rank)


def _random_problem(rng, n=300, c=12):
    scores = rng.standard_normal((n, c))  # continuous: no ties
    y = rng.integers(0, c, n)
    return scores, y


@pytest.mark.parametrize("k", [1, 5])
def test_top_k_accuracy_matches_sklearn(rng, k):
    scores, y = _random_problem(rng)
    expected = skm.top_k_accuracy_score(y, scores, k=k, labels=np.arange(scores.shape[1]))
    assert top_k_accuracy(scores, y, k) == pytest.approx(expected, abs=1e-12)


def test_top_k_accuracy_is_not_trivial(rng):
    scores, y = _random_problem(rng)
    acc1, acc5 = top_k_accuracy(scores, y, 1), top_k_accuracy(scores, y, 5)
    assert 0 < acc1 < acc5 < 1


def test_acc5_is_nan_with_fewer_than_five_classes(rng):
    scores, y = _random_problem(rng, n=50, c=4)
    assert np.isnan(top_k_accuracy(scores, y, 5))
    assert not np.isnan(top_k_accuracy(scores, y, 4))
    assert np.isnan(classification_metrics(scores, y)["acc5"])


def test_ties_go_to_the_lower_class_index():
    scores = np.array([[0.2, 0.9, 0.9, 0.1],
                       [0.2, 0.9, 0.9, 0.1],
                       [0.5, 0.5, 0.5, 0.5]])
    y = np.array([1, 2, 3])
    np.testing.assert_array_equal(true_class_rank(scores, y), [0, 1, 3])
    # rank 0 is exactly argmax (numpy's argmax also takes the first maximum)
    assert (true_class_rank(scores, y) == 0).tolist() == (scores.argmax(axis=1) == y).tolist()
    assert top_k_accuracy(scores, y, 1) == pytest.approx(1 / 3)
    assert classification_metrics(scores, y)["acc1"] == pytest.approx(1 / 3)


def test_rank_zero_equals_argmax_on_quantised_scores(rng):
    scores = rng.integers(0, 3, (500, 6)).astype(float)  # many ties
    y = rng.integers(0, 6, 500)
    np.testing.assert_array_equal(true_class_rank(scores, y) == 0, scores.argmax(axis=1) == y)


def test_mean_per_class_recall_matches_balanced_accuracy(rng):
    n, c = 400, 7
    y = rng.choice(c, n, p=[0.4, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05])  # imbalanced
    pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, c, n))
    expected = skm.balanced_accuracy_score(y, pred)
    assert mean_per_class_recall(y, pred, c) == pytest.approx(expected, abs=1e-12)
    assert mean_per_class_recall(y, pred, c) != pytest.approx((y == pred).mean(), abs=1e-3)


def test_mean_per_class_recall_ignores_classes_absent_from_y():
    y = np.array([0, 0, 1, 1])
    pred = np.array([0, 2, 1, 1])  # class 2 predicted but never true
    with warnings.catch_warnings():  # sklearn warns about the absent class, then drops it too
        warnings.simplefilter("ignore")
        expected = skm.balanced_accuracy_score(y, pred)
    assert mean_per_class_recall(y, pred, 3) == pytest.approx(expected) == pytest.approx(0.75)


def test_confusion_matrix_matches_sklearn(rng):
    c = 6
    y, pred = rng.integers(0, c, 200), rng.integers(0, c, 200)
    np.testing.assert_array_equal(confusion_matrix(y, pred, c), skm.confusion_matrix(y, pred, labels=np.arange(c)))


def test_classification_metrics_ignores_unlabelled_rows(rng):
    scores, y = _random_problem(rng, n=120, c=8)
    y_partial = y.copy()
    y_partial[::3] = -1
    keep = y_partial >= 0
    got = classification_metrics(scores, y_partial)
    want = classification_metrics(scores[keep], y[keep])
    assert got == want
    assert got["n"] == keep.sum()
    assert got["acc1"] == pytest.approx(skm.accuracy_score(y[keep], scores[keep].argmax(axis=1)))
    np.testing.assert_array_equal(got["confusion_matrix"],
                                  skm.confusion_matrix(y[keep], scores[keep].argmax(axis=1), labels=np.arange(8)))


def test_classification_metrics_all_unlabelled_raises():
    with pytest.raises(ValueError, match="-1"):
        classification_metrics(np.zeros((3, 4)), np.full(3, -1))


def test_classification_metrics_label_out_of_range_raises():
    with pytest.raises(ValueError, match="only 4 classes"):
        classification_metrics(np.zeros((3, 4)), np.array([0, 1, 4]))


@pytest.mark.parametrize("n_classes, normalize", [(3, "rows"), (3, "none"), (50, "rows")])
def test_plot_confusion_matrix_labels_every_class(tmp_path, rng, saved_figures, n_classes, normalize):
    y = rng.integers(0, n_classes, 1000)
    cm = confusion_matrix(y, np.where(rng.random(1000) < 0.5, y, 0), n_classes)
    names = [f"class {i}" for i in range(n_classes)]
    path = tmp_path / "cm.png"
    plot_confusion_matrix(cm, names, path, title="test", normalize=normalize)
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.load()
        assert img.width >= n_classes and img.height >= n_classes
    ax = saved_figures[0].axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == names  # 50 classes too: every row can be found
    texts = [t.get_text() for t in ax.texts]
    if n_classes == 3:  # a number in every non-empty cell: % of the true class, or images
        cell = 100 * cm[1, 0] / cm[1].sum() if normalize == "rows" else cm[1, 0]
        assert len(texts) == np.count_nonzero(cm) and f"{cell:.0f}" in texts
    else:  # cells too small for numbers: the most frequent mistakes are listed instead
        first = top_confusions(cm, names, 1)[0]
        assert len(texts) == 1 and f"{first['true']} → {first['predicted']}: {first['images']} (" in texts[0]
    with pytest.raises(ValueError, match="normalize"):
        plot_confusion_matrix(cm, names, path, normalize="columns")


def test_top_confusions_ranks_off_diagonal_cells_by_images():
    cm = np.array([[5, 3, 0],
                   [1, 6, 0],
                   [4, 3, 1]])
    assert top_confusions(cm, ["a", "b", "c"]) == [
        {"true": "c", "predicted": "a", "images": 4, "share_of_true": 0.5},
        {"true": "a", "predicted": "b", "images": 3, "share_of_true": 0.375},
        {"true": "c", "predicted": "b", "images": 3, "share_of_true": 0.375},
        {"true": "b", "predicted": "a", "images": 1, "share_of_true": 1 / 7}]
    assert len(top_confusions(cm, ["a", "b", "c"], k=2)) == 2
    assert top_confusions(np.diag([3, 4]), ["a", "b"]) == []  # no mistakes, no rows


def test_per_class_recall_by_class_name_matches_sklearn(rng):
    scores, y = _random_problem(rng, c=5)
    y[y == 3] = 0  # class 3 has no labelled row: recall None, left out of the mean
    names = ["a", "b", "c", "d", "e"]
    got = classification_metrics(scores, y, names)
    present = [0, 1, 2, 4]
    expected = skm.recall_score(y, scores.argmax(axis=1), labels=present, average=None, zero_division=0)
    assert list(got["per_class_recall"]) == names and got["per_class_recall"]["d"] is None
    assert [got["per_class_recall"][names[c]] for c in present] == pytest.approx(expected, abs=1e-12)
    assert got["mean_per_class_recall"] == pytest.approx(expected.mean(), abs=1e-12)
    assert list(classification_metrics(scores, y)["per_class_recall"]) == ["0", "1", "2", "3", "4"]
    with pytest.raises(ValueError, match="class names"):
        classification_metrics(scores, y, names[:4])
