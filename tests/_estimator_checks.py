"""Shared by the estimator tests: scikit-learn checks that cannot apply to image/records input."""

from sklearn.base import BaseEstimator, clone
from sklearn.utils.estimator_checks import check_estimator, estimator_checks_generator


def sklearn_check_cases(estimator, expected_failed_checks):
    """Arguments of ``pytest.mark.parametrize`` running every scikit-learn check on ``estimator``.

    ``parametrize_with_checks`` would mark the expected failures xfail, and pytest then spends
    about a second formatting each traceback; the same generator with ``mark="skip"`` lists
    them as skipped with their reason, and :func:`assert_inapplicable_checks_fail_on_input`
    proves that each fails on the estimator's input check only.
    """
    cases = list(estimator_checks_generator(estimator, legacy=True, mark="skip",
                                            expected_failed_checks=expected_failed_checks))
    return {"argnames": "estimator, check", "argvalues": cases, "ids": _case_id}


def _case_id(obj):
    if isinstance(obj, BaseEstimator):
        return type(obj).__name__
    return getattr(getattr(obj, "func", obj), "__name__", repr(obj))


def assert_inapplicable_checks_fail_on_input(estimator, expected_failed_checks, names_input):
    """Run every scikit-learn check on ``estimator`` and assert that exactly the checks in
    ``expected_failed_checks`` fail, each with an error whose message (or one in its chain)
    satisfies ``names_input`` (the estimator's own input-type error)."""
    failed = set()
    for r in check_estimator(clone(estimator), on_fail=None):
        if r["status"] != "failed":
            continue
        failed.add(r["check_name"])
        chain, exc = [], r["exception"]
        while exc is not None:
            chain.append(str(exc))
            exc = exc.__cause__ or exc.__context__
        assert any(names_input(m) for m in chain), (r["check_name"], chain)
    # check_estimator names partial checks without their arguments
    assert failed == {name.split("(")[0] for name in expected_failed_checks}


# The checks that feed 2-D float feature matrices, for the estimators whose X is Records (the output
# of CAMClassifier.transform), rejected by check_records with a TypeError.
_RECORDS = "X must be Records (CAMClassifier.transform output), not a 2-D feature matrix"
RECORDS_INPUT_FAILED_CHECKS = {
    name: _RECORDS
    for name in [
        "check_complex_data",
        "check_dict_unchanged",
        "check_dont_overwrite_parameters",
        "check_dtype_object",
        "check_estimator_sparse_array",
        "check_estimator_sparse_matrix",
        "check_estimator_sparse_tag",
        "check_estimators_dtypes",
        "check_estimators_empty_data_messages",
        "check_estimators_fit_returns_self",
        "check_estimators_nan_inf",
        "check_estimators_overwrite_params",
        "check_estimators_pickle",
        "check_estimators_pickle(readonly_memmap=True)",
        "check_f_contiguous_array_estimator",
        "check_fit1d",
        "check_fit2d_1feature",
        "check_fit2d_1sample",
        "check_fit2d_predict1d",
        "check_fit_idempotent",
        "check_fit_score_takes_y",
        "check_fit_check_is_fitted",
        "check_methods_sample_order_invariance",
        "check_methods_subset_invariance",
        "check_n_features_in",
        "check_n_features_in_after_fitting",
        "check_pipeline_consistency",
        "check_positive_only_tag_during_fit",
        "check_readonly_memmap_input",
        "check_transformer_data_not_an_array",
        "check_transformer_general",
        "check_transformer_general(readonly_memmap=True)",
        "check_transformer_preserve_dtypes",
    ]
}
