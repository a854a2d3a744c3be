"""``python -m sklearn_psa``: the ``sklearn-psa`` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
