"""The random walk's transition matrix, and the checks of the tensors it is made of.

:func:`transition_matrix` is public as :func:`sklearn_psa.walk.transition_matrix`;
it lives below :mod:`sklearn_psa.records`, whose records give theirs
(:meth:`~sklearn_psa.records.Record.transition_matrix`), and
:func:`~sklearn_psa.walk.random_walk` checks its inputs with the same functions.
"""

import numpy as np

from ._device import flush_denormal
from ._grid import cached_offsets, radius_for_k
from ._validation import check_scalar_in
from ._walk_kernels import inside_mask, transition_csr

__all__ = ["as_tensor", "check_affinity", "first_bad", "transition_matrix"]


def as_tensor(obj, name):
    """``(tensor, was_tensor)``: a torch tensor view of an array-like of real numbers."""
    import torch

    if isinstance(obj, torch.Tensor):
        tensor = obj.detach()
        if tensor.is_complex():
            raise TypeError(f"{name} must hold real numbers, got a tensor of dtype {tensor.dtype}")
        return tensor, True
    try:
        arr = np.asarray(obj)
    except Exception as exc:
        raise TypeError(f"{name} must be an array of real numbers, got {type(obj).__name__}") from exc
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or (
        np.issubdtype(arr.dtype, np.complexfloating)
    ):
        raise TypeError(f"{name} must be an array of real numbers, got dtype {arr.dtype}")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float32)
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:  # memory-mapped from a store: torch wants writable memory
        arr = arr.copy()
    return torch.from_numpy(arr), False


def first_bad(mask):
    """Index tuple of the first True entry of a boolean tensor."""
    import torch

    return tuple(int(i) for i in torch.nonzero(mask)[0])


def check_affinity(affinity):
    """The offsets of a ``(K, h, w)`` affinity tensor, checked finite and non-negative on the grid."""
    import torch

    if affinity.ndim != 3:
        raise ValueError(f"affinity must be (K, h, w), got shape {tuple(affinity.shape)}")
    offsets = cached_offsets(radius_for_k(affinity.shape[0]))
    inside = inside_mask(offsets, *affinity.shape[1:], device=affinity.device)
    bad = inside & ~torch.isfinite(affinity)
    if bool(bad.any()):
        idx = first_bad(bad)
        raise ValueError(f"affinity{list(idx)} is {float(affinity[idx])}: affinities must be finite")
    bad = inside & (affinity < 0)
    if bool(bad.any()):
        idx = first_bad(bad)
        raise ValueError(f"affinity{list(idx)} is {float(affinity[idx])}: affinities must be >= 0")
    return offsets


def transition_matrix(affinity, *, beta=8):
    """The random walk's transition matrix ``T = D^-1 W ** beta``, sparse.

    For users who run their own propagation (a personalised PageRank, a
    different number of steps per class, an eigen-analysis): ``T`` is the
    matrix :func:`~sklearn_psa.walk.random_walk` applies ``t`` times, ``W`` the symmetric
    affinity matrix of the ``n = h * w`` grid cells with self-loops 1
    (``W[p, p + o_k] = W[p + o_k, p] = affinity[k, p]``, pairs taken at all
    borders, entries whose neighbour is off the grid ignored), raised to the
    power ``beta`` element-wise, and ``D`` its row sums. Each row sums to 1.

    Parameters
    ----------
    affinity : ndarray or torch.Tensor of shape (K, h, w)
        As for :func:`~sklearn_psa.walk.random_walk` (``K = len(neighbor_offsets(radius))``);
        a record's ``affinity`` (:meth:`sklearn_psa.records.Record.transition_matrix`).
    beta : float, default=8
        Power applied to the affinities, >= 0.

    Returns
    -------
    T : scipy.sparse.csr_array of shape (h * w, h * w)
        float64 when ``affinity`` is float64, else float32. Cell ``(y, x)``
        is row and column ``y * w + x`` (``scores.reshape(C, -1)`` order); at
        most ``2K + 1`` non-zeros per row, weights below the dtype's smallest
        normal number dropped (as the walk's kernels do). Being an array,
        ``T @ x`` is the product and ``T ** 2`` element-wise: use
        ``scipy.sparse.linalg.matrix_power(T, k)`` for ``T^k``.

    Raises
    ------
    ValueError
        For a K that matches no radius, NaN, infinite or negative affinities,
        a negative ``beta``, or ``affinity ** beta`` overflowing.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_psa import random_walk, transition_matrix
    >>> affinity = np.ones((4, 1, 4), np.float32)  # radius 2 on a 1 x 4 grid
    >>> T = transition_matrix(affinity, beta=1)
    >>> T.shape, T.format
    ((4, 4), 'csr')
    >>> T.toarray().round(3)[0]  # cell 0: itself and its right neighbour
    array([0.5, 0.5, 0. , 0. ], dtype=float32)
    >>> scores = np.array([[[1.0, 0, 0, 0]]], np.float32)
    >>> walked = (T @ (T @ scores.reshape(1, -1).T)).T.reshape(scores.shape)
    >>> np.allclose(walked, random_walk(scores, affinity, beta=1, t=2))
    True
    """
    import scipy.sparse as sp
    import torch

    check_scalar_in(beta, "beta", low=0)
    A, _ = as_tensor(affinity, "affinity")
    with torch.no_grad():
        A = A.cpu()
        offsets = check_affinity(A)
        dtype = torch.float64 if A.dtype == torch.float64 else torch.float32
        with flush_denormal():
            crow, col, values, _ = transition_csr(A, offsets, float(beta), dtype)
    n = A.shape[1] * A.shape[2]
    return sp.csr_array((values.numpy(), col.numpy(), crow.numpy()), shape=(n, n))
