"""Errors of sklearn-psa that are not plain ``ValueError`` / ``TypeError``."""

__all__ = ["MasksRequiredError"]


class MasksRequiredError(BaseException):
    """A segmentation was scored against image-level labels instead of pixel masks.

    ``score`` (mean IoU) of :class:`~sklearn_psa.RandomWalkRefiner` (so of a
    Pipeline ending in it) and of :class:`~sklearn_psa.PSASegmenter` raises it
    when ``y`` is an ``(n_samples, n_classes)`` indicator: the mean IoU needs
    the true masks.

    It derives from :class:`BaseException`, as :class:`KeyboardInterrupt` does,
    not from :class:`Exception`: scikit-learn's model selection
    (``GridSearchCV``, ``cross_val_score``, with their default
    ``error_score=np.nan``) turns an ``Exception`` raised while scoring into a
    NaN score and a warning, so ``GridSearchCV(pipe, grid).fit(X, Y)`` with
    image-level labels ``Y`` would report success with NaN scores and an
    arbitrary ``best_params_``. This error stops the search instead and says
    how to fit it: on the masks, ``GridSearchCV(pipe, grid).fit(X, masks)``
    (every step then trains on the image-level labels derived from them), or
    with a ``scoring=`` of one's own that takes image-level labels.

    Examples
    --------
    >>> from sklearn_psa.exceptions import MasksRequiredError
    >>> issubclass(MasksRequiredError, Exception)
    False
    """
