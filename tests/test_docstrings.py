"""The examples in the estimators' docstrings run as written, in a fresh namespace.

Each module's examples run with empty globals (not the module's), so an example
that forgets an import fails here as it would when pasted into a new session.
"""

import doctest
import importlib

import pytest

MODULES = ["_grid", "_transition", "_random_walk", "records", "walk", "cam", "classifier_cam", "affinity", "feature_affinity", "segmenter",
           "exceptions", "crf", "callbacks"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    torch = pytest.importorskip("torch")
    module = importlib.import_module(f"sklearn_psa.{name}")
    threads = torch.get_num_threads()
    try:
        result = doctest.testmod(module, globs={}, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    finally:
        torch.set_num_threads(threads)
    assert result.attempted > 0, f"sklearn_psa.{name} has no examples"
    assert result.failed == 0


def test_plotting_examples():
    pytest.importorskip("matplotlib")
    module = importlib.import_module("sklearn_psa.plotting")
    result = doctest.testmod(module, globs={}, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
