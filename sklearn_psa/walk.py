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

import contextlib
import math
import numbers

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions, validate_params

from ._affinity_labels import score_stack
from ._device import cpu_threads, flush_denormal, resolve_device
from ._grid import STRIDE, grid_shape, neighbor_offsets
from ._parallel import N_JOBS_CONSTRAINT, map_images
from ._transition import as_tensor, check_affinity, first_bad, transition_matrix
from ._validation import check_score_masks, format_masks
from ._walk_kernels import scipy_walk, torch_walk
from .metrics import mean_iou
from .records import check_records

__all__ = ["neighbor_offsets", "random_walk", "transition_matrix", "RandomWalkRefiner"]

_BACKENDS = {"auto", "torch", "scipy"}
_TORCH_SPARSE_DEVICES = {"cpu", "cuda"}


def _check_walk_inputs(scores, affinity):
    import torch

    if scores.ndim != 3:
        raise ValueError(f"scores must be (C, h, w), got shape {tuple(scores.shape)}")
    if affinity.ndim != 3:
        raise ValueError(f"affinity must be (K, h, w), got shape {tuple(affinity.shape)}")
    if tuple(affinity.shape[1:]) != tuple(scores.shape[1:]):
        raise ValueError(
            f"affinity is on a {tuple(affinity.shape[1:])} grid but scores on "
            f"{tuple(scores.shape[1:])}: both must be (., h, w) on the same grid"
        )
    bad = ~torch.isfinite(scores)
    if bool(bad.any()):
        idx = first_bad(bad)
        raise ValueError(f"scores{list(idx)} is {float(scores[idx])}: scores must be finite")
    return check_affinity(affinity)


def _resolve_backend(backend, device, scores_device):
    """``(backend, compute_device)`` for ``random_walk``."""
    import torch

    explicit = device is not None
    device = resolve_device(device) if explicit else scores_device
    if backend == "auto":
        backend = "torch" if device.type in _TORCH_SPARSE_DEVICES else "scipy"
    if backend == "scipy":
        if explicit and device.type != "cpu":
            raise ValueError(
                f"backend='scipy' computes on the CPU, but device={device!s} was asked for"
            )
        device = torch.device("cpu")
    elif device.type not in _TORCH_SPARSE_DEVICES:
        raise ValueError(
            f"backend='torch' needs sparse CSR products, which torch offers on "
            f"{sorted(_TORCH_SPARSE_DEVICES)}, not on {device!s}; use backend='auto' or 'scipy'"
        )
    return backend, device


#: Walks of more steps than this run in float64 even for float32 scores (then rounded).
FLOAT32_MAX_T = 256


@validate_params(
    {
        "scores": ["array-like"],
        "affinity": ["array-like"],
        "beta": [Interval(numbers.Real, 0, None, closed="neither")],
        "t": [Interval(numbers.Integral, 0, None, closed="left")],
        "backend": [StrOptions(_BACKENDS)],
        "device": "no_validation",  # checked by resolve_device, with a clear message
    },
    prefer_skip_nested_validation=True,
)
def random_walk(scores, affinity, *, beta=8, t=256, backend="auto", device=None):
    """Propagate score maps by ``t`` steps of the affinity random walk.

    With ``W`` the symmetric ``n x n`` affinity matrix of the ``n = h * w`` grid
    cells (``W[p, p + o_k] = W[p + o_k, p] = affinity[k, p]``, self-loops 1,
    zero elsewhere), ``T = D^-1 W ** beta`` (element-wise power, ``D`` the row
    sums) and ``vec(out[c]) = T^t vec(scores[c])`` for every channel ``c``,
    as in the paper (Ahn & Kwak, CVPR 2018, eq. 11-12). Every output is a
    weighted average of the inputs: a constant map stays constant.

    Pairs are taken at all image borders; affinity entries whose neighbour lies
    outside the grid are ignored (they may hold any value).

    The result equals the dense formula to float32 rounding (float64 when
    ``scores`` is float64; walks longer than ``t = 256`` are computed in
    float64 whatever the input, as float32 rounding accumulates over them, and
    rounded at the end) at ``O(n K sqrt(t log(1/eps)))`` time and
    ``O(n K)`` memory: ``T`` is applied as a sparse product (at most
    ``2K + 1`` non-zeros per row), all channels at once, and ``T^t`` as a
    Chebyshev expansion of ``x ** t`` truncated where its error bound is below
    the working precision (96 products instead of 256 for ``t = 256``; see
    :mod:`sklearn_psa._walk_kernels` for the proof and the kernels). On the
    CPU, grids below ``2**24 / (2K + 1)`` multiply-adds per product run on
    one thread (torch's threads cost more than they bring there, and much more
    on a loaded machine).

    Parameters
    ----------
    scores : ndarray or torch.Tensor of shape (C, h, w)
        Score maps on the grid, finite. Computed in float64 when float64,
        else in float32.
    affinity : ndarray or torch.Tensor of shape (K, h, w)
        ``affinity[k, y, x]`` is the affinity between cells ``(y, x)`` and
        ``(y + dy_k, x + dx_k)``, ``(dy_k, dx_k) = neighbor_offsets(radius)[k]``
        (the radius is the one with K offsets: 34 for radius 5). Finite and
        non-negative where the neighbour is on the grid.
    beta : float, default=8
        Power applied to the affinities; larger makes the walk more conservative.
    t : int, default=256
        Number of steps, >= 0; ``t = 0`` returns the scores unchanged.
    backend : {"auto", "torch", "scipy"}, default="auto"
        ``"torch"``: torch, on CPU or CUDA (sparse CSR products; on the CPU a
        stencil of shifted multiply-adds from 64 x 64 cells on, where it is
        faster); ``"scipy"``: scipy CSR products on the CPU; ``"auto"``: torch
        where torch offers sparse products on the device, else scipy.
    device : str, torch.device or None, default=None
        Where torch computes; None means the device of ``scores`` when it is a
        tensor, else the CPU; ``"auto"`` means CUDA when available. With
        ``backend="scipy"`` only the CPU is possible.

    Returns
    -------
    out : ndarray or torch.Tensor of shape (C, h, w)
        Same kind as ``scores`` (a tensor stays on its device), float32 or
        float64 as computed.

    Raises
    ------
    ValueError
        For mismatched shapes, a K that matches no radius, NaN or infinite
        values, negative affinities, or ``affinity ** beta`` overflowing.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_psa import random_walk
    >>> scores = np.zeros((1, 1, 4), np.float32)
    >>> scores[0, 0, 0] = 1
    >>> affinity = np.ones((4, 1, 4), np.float32)  # radius 2: right and lower neighbours
    >>> random_walk(scores, affinity, beta=1, t=1).round(3)  # row sums of W: 2, 3, 3, 2
    array([[[0.5  , 0.333, 0.   , 0.   ]]], dtype=float32)
    >>> random_walk(scores, affinity, beta=1, t=1000).round(3)  # the degree-weighted mean
    array([[[0.2, 0.2, 0.2, 0.2]]], dtype=float32)
    """
    import torch

    S, scores_is_tensor = as_tensor(scores, "scores")
    A, _ = as_tensor(affinity, "affinity")
    work = S.numel() * (2 * A.shape[0] + 1) if A.ndim == 3 else 0
    # Small tensors: one CPU thread for the checks and the kernel (see cpu_threads).
    with torch.no_grad(), cpu_threads(work):
        offsets = _check_walk_inputs(S, A)
        cpu = torch.device("cpu")
        backend, dev = _resolve_backend(backend, device, S.device if scores_is_tensor else cpu)
        dtype = torch.float64 if S.dtype == torch.float64 else torch.float32
        # Long walks accumulate float32 rounding (measured: 6e-5 at t = 4096, 3e-3 at 1e6,
        # everything lost at 1e9): they run in float64 and are rounded to float32 at the end.
        work_dtype = torch.float64 if t > FLOAT32_MAX_T else dtype
        C, h, w = S.shape
        if t == 0 or C == 0 or h * w == 0:
            out = S.to(dtype=dtype, copy=True)
        else:
            kernel = torch_walk if backend == "torch" else scipy_walk
            S_dev, A_dev = S.to(device=dev, dtype=work_dtype), A.to(device=dev)
            # The walk is linear: scores near the float range are walked scaled down by a
            # power of two (exact), as the kernels' recurrences may double them on the way.
            peak = float(S_dev.abs().max())
            scale = 2.0 ** math.floor(math.log2(peak)) if peak > 2.0 ** 64 else 1.0
            with flush_denormal() if dev.type == "cpu" else contextlib.nullcontext():
                out = kernel(S_dev / scale, A_dev, offsets, float(beta), int(t)) * scale
            out = out.to(dtype)
    if scores_is_tensor:
        return out.to(S.device)
    return out.cpu().numpy()


def _average_pool(scores, stride):
    """Mean over each ``stride x stride`` cell of the pixels inside the image.

    ``(C, H, W) -> (C, ceil(H / stride), ceil(W / stride))``; cells at the
    bottom and right borders average only their in-image pixels.
    """
    C, H, W = scores.shape
    h, w = grid_shape((H, W), stride)
    padded = np.zeros((C, h * stride, w * stride), dtype=np.float64)
    padded[:, :H, :W] = scores
    sums = padded.reshape(C, h, stride, w, stride).sum(axis=(2, 4))
    rows = np.minimum(stride, H - stride * np.arange(h))
    cols = np.minimum(stride, W - stride * np.arange(w))
    return (sums / (rows[:, None] * cols[None, :])).astype(np.float32)


def _upsample(grid_scores, shape, stride):
    """Bilinear upsampling of grid scores to an ``(H, W)`` image.

    Cell ``(y, x)`` covers pixels ``[8y, 8y + 8) x [8x, 8x + 8)``: the grid is
    upsampled by ``stride`` (half-pixel centres, ``align_corners=False``) and
    cropped to ``(H, W)``, as the reference implementation does.
    """
    import torch
    import torch.nn.functional as F

    C, h, w = grid_scores.shape
    x = torch.from_numpy(np.ascontiguousarray(grid_scores, dtype=np.float32))[None]
    with cpu_threads(4 * C * h * w * stride * stride):  # 4 multiply-adds per output value
        up = F.interpolate(x, size=(h * stride, w * stride), mode="bilinear", align_corners=False)
    return up[0, :, : shape[0], : shape[1]].numpy().copy()


def _refine(cams, affinity, shape, labels, alpha, beta, t, backend, device, as_mask):
    """One record's refined scores ``(1 + L, H, W)``, or its mask when ``as_mask``.

    Picklable: a task of :func:`sklearn_psa._parallel.map_images`.
    """
    scores = score_stack(cams, alpha)
    if t > 0:
        pooled = _average_pool(scores, STRIDE)
        walked = random_walk(pooled, affinity, beta=beta, t=t, backend=backend, device=device)
        scores = _upsample(walked, shape, STRIDE)
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
    needs no affinity.

    Stateless unless ``alpha`` or ``beta`` is ``"auto"``: ``fit`` then chooses
    them on its records without masks; otherwise it only validates the
    parameters and the records.

    Parameters
    ----------
    alpha : float or "auto", default=16
        Exponent of the background score; larger weakens the background.
        ``"auto"``: chosen by ``fit`` among ``(1, 2, 4, 8, 16, 32)`` as the
        value whose walk agrees best (mean IoU) with the CAMs' confident
        regions, the labels AffinityNet learns from (the class still wins
        against ``(1 - max_c M_c) ** 4``; the background still wins against
        ``** 32``; both refined by the dense CRF; other pixels ignored), on at
        most 100 of the records. No mask is needed; docs/method.md ("Choosing
        alpha and beta without masks") compares it with the best choice on masks.
    beta : float or "auto", default=8
        Power applied to the affinities. ``"auto"``: chosen by ``fit`` among
        ``(8, 16, 32)`` with alpha, as for ``alpha="auto"``.
    t : int, default=256
        Number of random-walk steps; 0 gives the CAM baseline.
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
        The alpha and beta ``transform`` uses: the parameters, or those ``fit``
        chose for ``"auto"``.
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
        "backend": [StrOptions(_BACKENDS)],
        "device": [str, None],
        "verbose": ["verbose"],
        "n_jobs": N_JOBS_CONSTRAINT,
    }

    def __init__(self, alpha=16, beta=8, t=256, backend="auto", device="auto", verbose=0,
                 n_jobs=None):
        self.alpha = alpha
        self.beta = beta
        self.t = t
        self.backend = backend
        self.device = device
        self.verbose = verbose
        self.n_jobs = n_jobs

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
            self.alpha_, self.beta_ = self.alpha, self.beta
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
        device = None if device is None else str(device)  # explicit: a worker never picks CUDA
        stage = "random walk" if self.t > 0 else "CAM baseline (t=0)"
        tasks = ((r.cams, r.affinity if self.t > 0 else None, r.shape, r.labels, alpha,
                  beta, self.t, backend, device, as_mask) for r in records.records)
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
            background score and the CAMs themselves.
        """
        self._validate_params()
        X = self._check_records(X)
        return list(self._refined(X))

    def predict(self, X):
        """One mask per record.

        Parameters
        ----------
        X : Records
            Records with CAMs, and affinities unless ``t == 0``.

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
            Mean IoU in [0, 1].

        Raises
        ------
        sklearn_psa.exceptions.MasksRequiredError
            When ``y`` holds image-level labels. It is no ``Exception``, so
            that ``GridSearchCV(...).fit(X, Y)`` stops with it instead of
            scoring NaN: fit the search on the masks,
            ``GridSearchCV(...).fit(X, masks)``.
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
