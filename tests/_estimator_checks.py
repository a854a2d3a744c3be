"""Shared by the estimator tests: scikit-learn checks that cannot apply to image/records input."""

from sklearn.base import clone
from sklearn.utils.estimator_checks import check_estimator


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
