"""The random walk that propagates class scores along learned affinities.

- :func:`neighbor_offsets` lists the pairs of grid cells an affinity is given for;
- :func:`random_walk` applies ``T^t``, ``T = D^-1 W ** beta``, to score maps;
- :func:`transition_matrix` gives ``T`` itself, a scipy CSR array, for one's own propagation;
- :class:`RandomWalkRefiner` turns records (CAMs and affinities) into masks.

The reference implementation builds the dense ``n x n`` transition matrix and
squares it ``log2(t)`` times (17 GB for a 256 x 256 grid, CUDA only). Here
``T``, with at most ``2K + 1`` non-zeros per row, is applied as a sparse
product (CSR, or a stencil of shifted multiply-adds) to all channels at once,
and ``T^t`` is evaluated by a Chebyshev expansion of ``x ** t`` whose
truncation error is bounded below the rounding error of the working precision
(see :mod:`sklearn_psa._walk_kernels`): ``O(n K sqrt(t log(1/eps)))`` time,
``O(n K)`` memory, on CPU or CUDA.
"""

import numbers

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions

from ._affinity_labels import score_stack
from ._device import resolve_device
from ._grid import neighbor_offsets
from ._parallel import N_JOBS_CONSTRAINT, map_images
from ._random_walk import BACKENDS, random_walk, walk_image_maps
from ._store import NOT_IN_KEY, ArrayStore, StoredArrays, array_key
from ._transition import transition_matrix
from ._validation import check_score_masks, format_masks, keep_params
from .crf import check_crf_options, placed_crf_options, scaled_crf_options
from .metrics import mean_iou
from .records import check_records

__all__ = ["neighbor_offsets", "random_walk", "transition_matrix", "RandomWalkRefiner"]


def _crf_refined(image, scores, options):
    """The dense CRF's marginals for refined ``scores`` taken as per-pixel distributions
    (each pixel's non-negative scores divided by their sum; uniform where all are 0)."""
    from .crf import dense_crf

    probs = np.maximum(np.asarray(scores, np.float32), 0)
    total = probs.sum(axis=0, keepdims=True)
    probs = np.where(total > 0, probs / np.where(total > 0, total, 1), np.float32(1 / len(probs)))
    return np.asarray(dense_crf(image, probs.astype(np.float32), **scaled_crf_options(options, scores.shape[1:])))


def _refine(image, cams, affinity, shape, labels, alpha, beta, t, backend, device, crf, as_mask):
    """One record's refined scores ``(1 + L, H, W)``, or its mask when ``as_mask``; with
    ``crf`` (dense CRF options, or None) the CRF's marginals over them.

    Picklable: a task of :func:`sklearn_psa._parallel.map_images`.
    """
    scores = score_stack(cams, alpha)
    if t > 0:
        scores = walk_image_maps(scores, affinity, shape, beta=beta, t=t, backend=backend, device=device)
    if crf is not None:
        scores = _crf_refined(image, scores, crf)
    if not as_mask:
        return scores
    values = np.concatenate([[0], np.asarray(labels) + 1]).astype(np.uint8)
    return values[np.argmax(scores, axis=0)]


class RandomWalkRefiner(TransformerMixin, BaseEstimator):
    """Refine class activation maps by the affinity random walk, then take the argmax.

    For each record: the background score ``(1 - max_c M_c) ** alpha`` goes in
    front of the CAMs of the classes present (all ones when there is none),
    the stack is averaged over each 8x8 cell (border cells over their in-image
    pixels) onto the affinity grid, walked ``t`` steps by :func:`random_walk`
    with ``beta``, upsampled bilinearly to the image size, and the argmax over
    background and classes gives the mask. ``t = 0`` skips pooling, walk and
    upsampling: it is exactly the CAM baseline (argmax at full resolution) and
    needs no affinity. With ``crf``, a dense CRF over the image refines the
    walked scores before the argmax.

    Stateless unless ``alpha`` or ``beta`` is ``"auto"``: ``fit`` then chooses
    them on its records without masks; otherwise it only validates the
    parameters and the records.

    Parameters
    ----------
    alpha : float or "auto", default=16
        Exponent of the background score; larger weakens the background.
        ``"auto"``: chosen by ``fit`` among ``(1, 2, 4, 8, 16, 32)`` as the
        value whose walk agrees best (mean IoU) with the CAMs' confident
        regions (the class still wins against ``(1 - max_c M_c) ** 2``; the
        background still wins against ``** 8``; both refined by the dense
        CRF; other pixels ignored), on at most 100 of the records. No mask is
        needed; docs/method.md ("Choosing alpha and beta without masks")
        compares it with the best choice on masks.
    beta : float or "auto", default=8
        Power applied to the affinities. ``"auto"``: chosen by ``fit`` among
        ``(8, 16, 32)`` with alpha, as for ``alpha="auto"``.
    t : int, default=256
        Number of random-walk steps; 0 gives the CAM baseline.
    crf : bool or dict, default=False
        Refine the walked scores with :func:`sklearn_psa.dense_crf` before the
        argmax: each pixel's scores, divided by their sum, are the CRF's unary
        probabilities, and :meth:`transform` returns its marginals. ``True``
        takes the reference code's kernels with the bilateral width scaled to
        the image (80 px for a 500 px side, ``80 * max(H, W) / 500``: 20.5 px
        at 128 px); a dict is passed as options (its ``bilateral_sxy``, if
        any, is not scaled). The CRF runs on ``device`` unless the dict names
        one. On make_shapes it added 10 to 15 points of mIoU to the walk's
        masks (docs/benchmarks.md, "The walk's masks through a dense CRF").
        ``alpha="auto"`` chooses on the walk alone.
    backend : {"auto", "torch", "scipy"}, default="auto"
        Kernel of :func:`random_walk`.
    device : str or None, default="auto"
        Where the torch backend computes; ``"auto"`` (or None) means CUDA when
        available, else CPU. Ignored by ``backend="scipy"``.
    verbose : int, default=0
        0: silent; 1: a progress bar over the records of ``transform`` and
        ``predict``, erased when done; 2: the bar stays.
    n_jobs : int or None, default=None
        Processes (or cluster workers) walking the records, through joblib:
        None means 1 unless in a ``joblib.parallel_backend`` context
        (``"dask"`` or ``"ray"`` spread the records over a cluster), -1 all
        cores. Each worker runs torch on one thread; a walk on CUDA runs in
        this process. Results are those of ``n_jobs=1`` (bit for bit on grids
        below ``2**24 / (2K + 1)`` multiply-adds per product, which walk on one
        thread either way; to float32 rounding above).

    Attributes
    ----------
    alpha_, beta_ : float
        Set by ``fit`` where ``alpha`` or ``beta`` is ``"auto"``: the alpha and
        beta ``transform`` uses (the given value where one was given).
    agreement_ : dict
        With ``"auto"``: ``{(alpha, beta): mean IoU}`` of the walk against the
        confident regions, for every candidate.

    See Also
    --------
    random_walk : the walk on one score stack.
    sklearn_psa.AffinityEstimator : produces the records this step consumes.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_psa import RandomWalkRefiner, neighbor_offsets
    >>> from sklearn_psa.records import Records
    >>> image = np.zeros((32, 32, 3), np.uint8)  # a 4 x 4 grid of 8 x 8 cells
    >>> cams = np.zeros((1, 32, 32), np.float32)
    >>> cams[0, :, :16] = 0.2  # the object fills the left half,
    >>> cams[0, :16, :8] = 1.0  # but its CAM is strong only on a part
    >>> x = np.arange(4)  # grid columns; the affinity is 1 within each half
    >>> affinity = np.array([np.broadcast_to((x < 2) == (x + dx < 2), (4, 4))
    ...                      for dy, dx in neighbor_offsets(5)], np.float32)
    >>> records = Records.from_arrays([image], labels=[[1]], cams=[cams],
    ...                               affinities=[affinity], radius=5)
    >>> RandomWalkRefiner(alpha=4, t=0).predict(records)[0][::8, ::8]  # the CAM alone
    array([[1, 0, 0, 0],
           [1, 0, 0, 0],
           [0, 0, 0, 0],
           [0, 0, 0, 0]], dtype=uint8)
    >>> RandomWalkRefiner(alpha=4, t=256).predict(records)[0][::8, ::8]
    array([[1, 1, 0, 0],
           [1, 1, 0, 0],
           [1, 1, 0, 0],
           [1, 1, 0, 0]], dtype=uint8)
    """

    _parameter_constraints = {
        "alpha": [Interval(numbers.Real, 0, None, closed="neither"), StrOptions({"auto"})],
        "beta": [Interval(numbers.Real, 0, None, closed="neither"), StrOptions({"auto"})],
        "t": [Interval(numbers.Integral, 0, None, closed="left")],
        "crf": ["boolean", dict],
        "backend": [StrOptions(BACKENDS)],
        "device": [str, None],
        "verbose": ["verbose"],
        "n_jobs": N_JOBS_CONSTRAINT,
    }

    def __init__(self, alpha=16, beta=8, t=256, backend="auto", device="auto", verbose=0,
                 n_jobs=None, crf=False):
        keep_params(self, locals())

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Validate the parameters and the records; choose alpha and beta where "auto".

        Parameters
        ----------
        X : Records
            Records with CAMs, and affinities unless ``t == 0``.
        y : ignored
            Accepted for pipelines (image-level labels or masks): ``"auto"``
            uses no masks.

        Returns
        -------
        self : RandomWalkRefiner
        """
        X = self._check_records(X)
        if not self._auto():
            return self
        from ._walk_choice import AUTO_ALPHAS, AUTO_BETAS, walk_agreement

        if self.t == 0:
            raise ValueError("alpha='auto' and beta='auto' choose the walk's settings: they need t > 0")
        alphas = AUTO_ALPHAS if self.alpha == "auto" else (self.alpha,)
        betas = AUTO_BETAS if self.beta == "auto" else (self.beta,)
        _, device = self._walk_settings()
        self.agreement_ = walk_agreement(X, alphas, betas, t=self.t, backend=self.backend,
                                         device=device, n_jobs=self.n_jobs, verbose=self.verbose)
        self.alpha_, self.beta_ = max(self.agreement_, key=self.agreement_.get)
        return self

    def _auto(self):
        return "auto" in (self.alpha, self.beta)

    def _settings(self):
        """``(alpha, beta)`` of the walk: the parameters, or what ``fit`` chose for "auto"."""
        if not self._auto():
            return self.alpha, self.beta
        if not hasattr(self, "alpha_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(
                "This RandomWalkRefiner has alpha or beta 'auto': call fit on records with "
                "affinities first, which chooses them (no masks needed)"
            )
        return self.alpha_, self.beta_

    def check_params(self):
        """Check the parameters as :meth:`fit` does first (``ValueError`` naming the bad one).

        :class:`~sklearn_psa.PSASegmenter` calls it before the first network trains.

        Returns
        -------
        self : RandomWalkRefiner
        """
        self._validate_params()
        check_crf_options(self.crf)
        return self

    def _check_records(self, X):
        return check_records(X, require_affinity=self.t > 0, name="X")

    def _walk_settings(self):
        device = resolve_device(self.device)
        return (self.backend, None) if self.backend == "scipy" else (self.backend, device)

    def _refined(self, records, as_mask=False, done=0):
        """Refined scores (or masks) of each record, in order, with the progress bar (``done``
        records refined earlier, e.g. found in a store, count in it)."""
        alpha, beta = self._settings()
        backend, device = self._walk_settings()
        on_cuda = device is not None and device.type == "cuda"
        crf = check_crf_options(self.crf)
        if crf is not None:
            crf, crf_on_cuda = placed_crf_options(crf, "cpu" if device is None else device)
            on_cuda = on_cuda or crf_on_cuda
        device = None if device is None else str(device)  # explicit: a worker never picks CUDA
        stage = "random walk" if self.t > 0 else "CAM baseline (t=0)"
        if crf is not None:
            stage += " + CRF"
        tasks = ((r.load_image() if crf is not None else None, r.cams,
                  r.affinity if self.t > 0 else None, r.shape, r.labels, alpha, beta, self.t,
                  backend, device, crf, as_mask) for r in records.records)
        return map_images(_refine, tasks, n_jobs=self.n_jobs, in_parent=on_cuda,
                          verbose=self.verbose, desc=stage, total=len(records) + done, done=done)

    def transform(self, X):
        """Refined score maps.

        Parameters
        ----------
        X : Records
            Records with CAMs, and affinities unless ``t == 0``.

        Returns
        -------
        scores : list of ndarray of shape (1 + L, H, W), float32
            Per record: channel 0 the background, channel ``1 + i`` the class
            ``record.labels[i]``, after the walk, at the image's size (not
            normalised: the walk keeps each map's scale). With ``t = 0``, the
            background score and the CAMs themselves. With ``crf``, the dense
            CRF's marginals (probabilities summing to 1 over the channels).
        """
        self._validate_params()
        X = self._check_records(X)
        return list(self._refined(X))

    def predict(self, X):
        """One mask per record: the argmax of :meth:`transform`'s refined scores.

        Parameters
        ----------
        X : Records
            As for :meth:`transform`.

        Returns
        -------
        masks : ndarray of shape (n, H, W) or list of ndarray of shape (H, W), uint8
            0 for background, ``j + 1`` for class column ``j``; an array when
            the records' images came as one ``(n, H, W, 3)`` array
            (``X.from_array``), else a list.
        """
        X = check_records(X, require_affinity=False, name="X")
        return format_masks(list(self.iter_predict(X)), X.images)

    def iter_predict(self, X):
        """Yield the mask of each record, in order, as it is done.

        The same masks as :meth:`predict`, one at a time, so that a caller
        writing them to disk (e.g. with :func:`sklearn_psa.io.save_mask`) holds
        one mask at a time whatever the number of records.

        Parameters
        ----------
        X : Records

        Yields
        ------
        mask : ndarray of shape (H, W), uint8

        Examples
        --------
        >>> import numpy as np
        >>> from sklearn_psa import RandomWalkRefiner
        >>> from sklearn_psa.records import Records
        >>> cams = [np.linspace(0, 1, 16 * 24, dtype=np.float32).reshape(1, 16, 24)] * 3
        >>> records = Records.from_arrays([np.zeros((16, 24, 3), np.uint8)] * 3,
        ...                               labels=[[1]] * 3, cams=cams)
        >>> for mask in RandomWalkRefiner(alpha=1, t=0).iter_predict(records):
        ...     print(mask.shape, mask[[0, -1], [0, -1]])  # the corners
        (16, 24) [0 1]
        (16, 24) [0 1]
        (16, 24) [0 1]
        """
        self._validate_params()
        X = self._check_records(X)
        if X.n_classes > 254:
            raise ValueError(
                f"X has {X.n_classes} classes: uint8 masks hold at most 254 (255 is ignore)"
            )
        yield from self._refined(X, as_mask=True)

    def score(self, X, y):
        """Mean IoU (background and classes, 255 ignored) of ``predict(X)`` against ``y``.

        Parameters
        ----------
        X : Records
        y : sequence of (H, W) integer masks or mask paths
            0 background, ``j + 1`` class column ``j``, 255 ignored. A class
            beyond the records' ``n_classes`` (one absent from a
            cross-validation training fold) counts as missed.

        Returns
        -------
        score : float
            Mean IoU in [0, 1] of the masks of :meth:`predict`.

        Raises
        ------
        sklearn_psa.exceptions.MasksRequiredError
            When ``y`` holds image-level labels (no ``Exception``: it stops a
            grid search instead of scoring NaN; fit the search on the masks).
        """
        X = check_records(X, require_affinity=False, name="X")
        # a true class beyond X's (absent from a cross-validation training fold) is a miss
        masks = check_score_masks(y, len(X), shapes=[r.shape for r in X.records],
                                  scorer=f"{type(self).__name__}.score")
        return mean_iou(masks, self.predict(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.non_deterministic = False
        return tags


def stored_masks(folder, refiner, records):
    """The masks of ``refiner.predict(records)``, written to ``folder`` as each is done.

    A mask already there for the same CAMs, affinity and refiner parameters is
    not computed again. Any refiner with ``predict`` works; a
    :class:`RandomWalkRefiner` (which has checked the records at ``fit``) walks
    the rest with a progress bar that counts the masks found too. Returns
    :class:`~sklearn_psa._store.StoredArrays` (``pseudo-labels/<key>.npy``).
    """
    import joblib

    store = ArrayStore(folder)
    params = {k: v for k, v in refiner.get_params(deep=False).items() if k not in NOT_IN_KEY}
    for name in ("alpha", "beta"):  # what "auto" chose, when it did
        if name in params:
            params[name] = getattr(refiner, name + "_", params[name])
    crf = params.pop("crf", False)
    if crf is not False:  # keys without a CRF stay those of earlier versions
        params["crf"] = crf
    setting = (type(refiner).__name__, params)
    keys = [joblib.hash((setting, r.labels.tolist(), r.shape, array_key(r.__dict__["cams"]),
                         array_key(r.__dict__["affinity"]))
                        + ((joblib.hash(r.load_image()),) if crf is not False else ()))
            for r in records.records]
    def walk(todo):
        """Walk and write the masks of the records ``todo`` (in a data-parallel fit: this
        process's share of those not there)."""
        if isinstance(refiner, RandomWalkRefiner):
            masks = refiner._refined(records[todo], as_mask=True, done=len(records) - len(todo))
        else:
            masks = refiner.predict(records[todo])
        for i, mask in zip(todo, masks):
            store.save("pseudo-labels", keys[i], mask)

    store.fill("pseudo-labels", keys, walk)
    return StoredArrays(store.path("pseudo-labels", key) for key in keys)
