"""scikit-learn's estimator checks over every registered head. A check that cannot apply to a head is listed here
as an expected failure with the reason, and must fail (a listed check that starts passing fails its test, so the list
stays true); any other failure, or a new check of a newer scikit-learn that fails, is a named test failure."""
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from zeroshot.heads import HEADS

# Every check that fits the estimator on (X, y) alone: a head that needs more at fit fails all of them.
FITTING_CHECKS = (
    "check_classifier_data_not_an_array", "check_complex_data", "check_dict_unchanged",
    "check_dont_overwrite_parameters", "check_dtype_object", "check_estimator_sparse_array",
    "check_estimator_sparse_matrix", "check_estimator_sparse_tag", "check_estimators_dtypes",
    "check_estimators_empty_data_messages", "check_estimators_fit_returns_self", "check_estimators_nan_inf",
    "check_estimators_overwrite_params", "check_estimators_pickle", "check_f_contiguous_array_estimator",
    "check_fit2d_1feature", "check_fit2d_1sample", "check_fit2d_predict1d", "check_fit_check_is_fitted",
    "check_fit_idempotent", "check_fit_score_takes_y", "check_methods_sample_order_invariance",
    "check_methods_subset_invariance", "check_n_features_in", "check_n_features_in_after_fitting",
    "check_pipeline_consistency", "check_positive_only_tag_during_fit", "check_readonly_memmap_input",
)
CLASSIFIER_FITTING_CHECKS = ("check_classifiers_classes", "check_classifiers_regression_target",
                             "check_classifiers_train", "check_decision_proba_consistency", "check_requires_y_none",
                             "check_supervised_y_2d")
OUTLIER_FITTING_CHECKS = ("check_outliers_fit_predict", "check_outliers_train")

NEEDS_TEXT = "fit needs the class text embeddings (class_embeddings=W), which the checks do not pass"
NEEDS_BASE = "fit needs base_classes= or class_embeddings=, which the checks do not pass"
NEEDS_NO_TEXT = "fit needs the 'yes' and 'no' class embeddings, which the checks do not pass"
NEEDS_TWO_CLASSES = "fit needs labels of at least two classes; the outlier checks fit without y"
LOGITS = ("decision_function returns (N, C) logits for two classes too (scikit-learn: an (N,) margin); predict and "
          "predict_proba follow scikit-learn")
FLOAT32 = "scores are float32, like the features (scikit-learn expects float64)"
DIRECTIONS = "features are directions: the checks' all-zero rows have none and are refused"
LEAVE_ONE_OUT = ("offset_ comes from leave-one-out scores, so that new ID samples are accepted at 95 %; a training "
                 "row is its own nearest neighbour and is always accepted, where the check expects outliers")
ONE_FEATURE = "with one feature every unit row is +1 or -1: the covariance is singular, and the error says so"
LOGIT_COLUMNS = ("calibrators take (N, C) logits with y as column indices; the checks' labels do not index their "
                 "columns, and messages speak of logits")


def _all(checks, reason: str) -> dict[str, str]:
    return dict.fromkeys(checks, reason)


EXPECTED_FAILURES = {
    **{name: _all(FITTING_CHECKS + CLASSIFIER_FITTING_CHECKS, NEEDS_TEXT)
       for name in ("ZeroShotClassifier", "TipAdapter", "TipAdapterF", "GDA", "CapSAdapter")},
    "ZLaP": _all(FITTING_CHECKS + tuple(c for c in CLASSIFIER_FITTING_CHECKS if c != "check_decision_proba_consistency")
                 + ("check_non_transformer_estimators_n_iter",), NEEDS_TEXT),  # no predict_proba to be consistent with
    "TEEN": _all(FITTING_CHECKS + CLASSIFIER_FITTING_CHECKS, NEEDS_BASE),
    **{name: _all(FITTING_CHECKS + OUTLIER_FITTING_CHECKS, NEEDS_TEXT) for name in ("MCM", "MaxLogit", "Energy")},
    "CLIPN": _all(FITTING_CHECKS + OUTLIER_FITTING_CHECKS, NEEDS_NO_TEXT),
    "LinearProbe": _all(("check_classifiers_classes", "check_classifiers_train"), LOGITS),
    "Mahalanobis": {"check_estimators_dtypes": DIRECTIONS, "check_outliers_train": FLOAT32,
                    "check_fit2d_1feature": ONE_FEATURE},
    "RelativeMahalanobis": {"check_estimators_dtypes": DIRECTIONS, "check_fit2d_1feature": ONE_FEATURE,
                            **_all(("check_fit_score_takes_y", *OUTLIER_FITTING_CHECKS), NEEDS_TWO_CLASSES)},
    "KNN": {"check_estimators_dtypes": DIRECTIONS, **_all(OUTLIER_FITTING_CHECKS, LEAVE_ONE_OUT)},
    "TemperatureScaling": {**_all(("check_estimators_overwrite_params", "check_estimators_fit_returns_self",
                                   "check_readonly_memmap_input", "check_n_features_in_after_fitting",
                                   "check_dtype_object", "check_estimators_nan_inf", "check_fit2d_1feature"),
                                  LOGIT_COLUMNS),
                           "check_transformer_preserve_dtypes": FLOAT32},
    "PriorCorrection": {"check_n_features_in_after_fitting": LOGIT_COLUMNS,
                        "check_transformer_preserve_dtypes": FLOAT32},
}


def expected_failure(head, check) -> str | None:
    """Why ``check`` cannot pass on ``head``, or None when it must pass."""
    return EXPECTED_FAILURES.get(type(head).__name__, {}).get(check.func.__name__)


def test_every_head_is_checked():
    assert set(EXPECTED_FAILURES) <= set(HEADS)


@parametrize_with_checks([cls() for cls in HEADS.values()])
def test_scikit_learn_estimator_checks(estimator, check):
    reason = expected_failure(estimator, check)
    if reason is None:
        check(estimator)
    else:
        with pytest.raises(Exception):  # noqa: B017 - any failure of the check is the expected one
            check(estimator)
