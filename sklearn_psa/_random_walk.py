"""The random walk on score maps: :func:`random_walk`, public as ``sklearn_psa.random_walk``.

Its checks and the choice of backend and precision; the kernels it runs are in
:mod:`sklearn_psa._walk_kernels`. A module of its own, below
:mod:`sklearn_psa.walk` (the refiner) and :mod:`sklearn_psa._walk_choice` (the
automatic alpha and beta), which both walk.
"""

import contextlib
import math
import numbers

from sklearn.utils._param_validation import Interval, StrOptions, validate_params

from ._device import cpu_threads, flush_denormal, resolve_device
from ._transition import as_tensor, check_affinity, first_bad
from ._grid import STRIDE
from ._walk_kernels import average_pool, scipy_walk, torch_walk, upsample_grid

__all__ = ["BACKENDS", "FLOAT32_MAX_T", "random_walk", "walk_image_maps"]

#: The ``backend`` values of :func:`random_walk` and ``RandomWalkRefiner``.
BACKENDS = {"auto", "torch", "scipy"}
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
        "backend": [StrOptions(BACKENDS)],
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


def walk_image_maps(maps, affinity, shape, *, beta=8, t=256, backend="auto", device=None):
    """Score maps ``(C, H, W)`` at an image's size, walked on its stride-8 grid.

    Each map is averaged over each 8x8 cell (border cells over their in-image
    pixels), walked ``t`` steps by :func:`random_walk` with ``beta``, and
    upsampled bilinearly back to ``shape``: how
    :class:`~sklearn_psa.RandomWalkRefiner` walks a record's score stack and
    ``AffinityEstimator(label_affinity=...)`` its CAMs.
    """
    walked = random_walk(average_pool(maps, STRIDE), affinity, beta=beta, t=t, backend=backend, device=device)
    return upsample_grid(walked, shape, STRIDE)
