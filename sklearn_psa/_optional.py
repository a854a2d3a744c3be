"""Optional dependencies: whether a package can be imported, without importing it."""

import importlib.util
import sys

__all__ = ["installed"]


def installed(module):
    """Whether ``module`` can be imported; a module already imported (or blocked by a
    ``None`` entry in ``sys.modules``, as tests do) counts as it stands."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
