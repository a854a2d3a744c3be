"""Kernels of the random walk: the transition matrix and ``T^t X``.

The public entry point is :func:`sklearn_psa.walk.random_walk`, which validates
its inputs and calls these functions; they assume valid tensors.

How a product ``T X`` is computed
---------------------------------
``T = D^-1 A`` with ``A = W ** beta`` symmetric (self-loops 1) has at most
``2K + 1`` non-zeros per row, one per offset ``full_offsets(offsets)``; all
channels are multiplied at once. Two kernels, measured against each other in
``benchmarks/bench_random_walk.py``:

* CSR (:func:`transition_csr`): one sparse-dense product per step, ``X`` of
  shape ``(n, C)``; torch's (MKL, cuSPARSE) or scipy's.
* stencil (:func:`stencil_operator`): ``2K + 1`` multiply-adds of shifted views
  of a zero-padded ``(C, h + 2r, w + 2r)`` buffer with the weight maps of
  :func:`transition_weights`: no index gathers, contiguous rows.

On one CPU core the CSR product wins below about 50 x 50 cells and the stencil
above (about 2x faster at 128 x 128 and 256 x 256), so the torch backend switches at
``STENCIL_MIN_CELLS``. On CUDA the CSR product is used: the stencil launches
``2K + 1`` kernels per step.

Instead of ``t`` products, ``T^t X`` is evaluated as ``p(T) X`` where ``p`` is
the Chebyshev expansion of ``x ** t`` truncated at the smallest degree ``m``
whose dropped coefficients sum to at most ``tau`` (``m`` is about
``sqrt(2 t log(2 / tau))``: about 100 products instead of 256 for ``t = 256``).
Why the result is the same to the last bit that matters:

* ``x ** t = 2**-t sum_j binom(t, j) T_{|t - 2j|}(x)``: the coefficients
  ``c_k`` are non-negative and sum to 1, and ``|T_k(x)| <= 1`` on [-1, 1].
* ``M = D^-1/2 A D^-1/2`` is symmetric and similar to the row-stochastic ``T``,
  so its eigenvalues lie in [-1, 1] and ``||M^t - p(M)||_2 <= 2 tau`` (the
  dropped tail, plus the same again for renormalising the kept coefficients to
  sum 1, which keeps ``p(T) 1 = 1``: constant maps stay constant).
* ``T^t - p(T) = D^-1/2 (M^t - p(M)) D^1/2``, hence for every channel ``s``
  ``max|T^t s - p(T) s| <= 2 tau sqrt(sum(D) / min(D)) max|s|``.

``tau`` is chosen per matrix so that this truncation bound is ``eps`` of the
working precision (1.2e-7 for float32) times ``max|s|``. The expansion's own
float32 rounding adds more: measured against the dense float64 formula, up to
about 30 eps of ``max|s|`` (3e-6) on small grids, against about 4 eps for the
plain products; float64 agrees to about 1e-14. On slowly mixing grids float32
loses more, and more with ``t`` (measured on a 4 x 5 grid whose second
eigenvalue is 0.99984: 1.2e-5 of ``max|s|`` at t = 256, 6e-5 at 4096, 3e-3 at
1e6, everything at 1e9), so :func:`~sklearn_psa.walk.random_walk` computes
walks longer than 256 steps in float64 (2e-8 there at every t up to 1e9). Where
the expansion would not save products (small ``t``), plain repeated products
are used.
"""

import contextlib
import functools
import math
import warnings

import numpy as np

__all__ = [
    "average_pool",
    "upsample_grid",
    "chebyshev_power_coefficients",
    "inside_mask",
    "transition_weights",
    "transition_csr",
    "chebyshev_tau",
    "polynomial_walk",
    "stencil_operator",
    "torch_walk",
    "scipy_walk",
    "cpu_threads",
]

#: From this many grid cells on, the torch backend uses the stencil kernel on CPUs (measured
#: crossover: equal at 48 x 48, CSR up to 15% faster at 63 x 47, stencil about 2x faster at
#: 128 x 128).
STENCIL_MIN_CELLS = 4096

# cpu_threads (and its threshold _device.SERIAL_WORK) are shared with the CRF and the other
# per-image CPU kernels; re-exported here, where the walk first used them.
from ._device import cpu_threads  # noqa: E402
from ._grid import grid_shape  # noqa: E402


def _binomial_half(t, j):
    """``binom(t, j) / 2**t`` for the integers ``j`` (an array, all >= (t - k_max) / 2).

    Exact integers, correctly rounded once (log-gamma loses 1e-13 relative at
    t = 1000); beyond t = 20000 the integers get long and scipy's binomial pmf
    (about 1e-14 relative) is used.
    """
    j = np.asarray(j, dtype=np.int64)
    if t > 20000:
        from scipy.stats import binom

        return binom.pmf(j, t, 0.5)
    lo = int(j.min())
    comb, power, values = math.comb(t, lo), 2**t, {}
    for v in range(lo, int(j.max()) + 1):
        values[v] = comb / power  # int / int is correctly rounded
        comb = comb * (t - v) // (v + 1)
    return np.array([values[v] for v in j.tolist()])


@functools.lru_cache(maxsize=128)
def _chebyshev_power_coefficients(t, tau):
    if t <= 1:
        return None
    # Hoeffding: sum_{k > s} c_k = P(|2 B - t| > s) <= 2 exp(-s^2 / (2 t)), B ~ Bin(t, 1/2).
    # Beyond k_max the tail is at most tau / 2: only c_0..c_{k_max} are needed.
    k_max = min(t, math.ceil(math.sqrt(2.0 * t * math.log(4.0 / tau))) + 1)
    beyond = 0.0 if k_max == t else tau / 2.0
    k = np.arange(k_max + 1)
    c = np.where((t - k) % 2 == 0, _binomial_half(t, (t - k) // 2), 0.0)
    c[1:] *= 2.0  # z^k and z^-k both give T_k
    # tail[m] = sum_{k > m} c_k (summed from the small end, no cancellation)
    tail = np.concatenate([np.cumsum(c[::-1])[::-1][1:], [0.0]]) + beyond
    m = int(np.argmax(tail <= tau))
    if m >= t - 1:  # no saving over t products (the expansion of degree t is x**t itself)
        return None
    kept = c[: m + 1] / math.fsum(c[: m + 1])
    kept.flags.writeable = False  # cached: shared between calls
    return kept


def chebyshev_power_coefficients(t, tau):
    """Chebyshev coefficients of ``x ** t`` truncated where the dropped ones sum to ``<= tau``.

    Parameters
    ----------
    t : int
        Power, >= 0.
    tau : float
        Bound on the sum of the dropped coefficients, in (0, 1).

    Returns
    -------
    coefficients : ndarray of shape (m + 1,), float64, or None
        ``c_0..c_m`` (non-negative, renormalised to sum 1), such that
        ``max_{|x| <= 1} |x ** t - sum_k c_k T_k(x)| <= 2 tau``; None when the
        expansion needs as many products as ``t`` itself (use ``t`` products).
    """
    # A power of two at most tau: as safe, and lets the cache serve walks of similar matrices.
    return _chebyshev_power_coefficients(int(t), 2.0 ** math.floor(math.log2(tau)))


def full_offsets(offsets):
    """Both directions of each pair and the self-loop, in raster (column) order.

    ``offsets`` from ``neighbor_offsets`` are sorted lexicographically and all
    point forward; the result is ``[-o_K, ..., -o_1, (0, 0), o_1, ..., o_K]``.
    """
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    return np.concatenate([-offsets[::-1], np.zeros((1, 2), np.int64), offsets])


def inside_mask(offsets, h, w, device=None):
    """``(K, h, w)`` bool tensor: True where the neighbour ``(y + dy_k, x + dx_k)`` is on the grid."""
    import torch

    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    inside = torch.zeros((len(offsets), h, w), dtype=torch.bool, device=device)
    for k, (dy, dx) in enumerate(offsets.tolist()):
        inside[k, max(0, -dy) : max(0, h - dy), max(0, -dx) : max(0, w - dx)] = True
    return inside


def transition_weights(affinity, offsets, beta, dtype):
    """The rows of ``T = D^-1 W ** beta`` as ``2K + 1`` weight maps.

    Parameters
    ----------
    affinity : torch.Tensor of shape (K, h, w)
        Finite, non-negative on the entries whose neighbour is on the grid
        (others are ignored).
    offsets : ndarray of shape (K, 2)
        From ``neighbor_offsets``.
    beta : float
    dtype : torch.dtype
        float32 or float64; the computation runs on ``affinity.device``.

    Returns
    -------
    weights : torch.Tensor of shape (2K + 1, h, w)
        ``weights[j, y, x] = T[(y, x), (y, x) + full_offsets(offsets)[j]]``,
        zero where that neighbour is off the grid; subnormal values are flushed
        to zero (slow on CPUs, and of no weight next to the self-loop).
    degree : torch.Tensor of shape (h, w)
        The row sums ``D`` of ``W ** beta``.

    Raises
    ------
    ValueError
        When ``affinity ** beta`` or a row sum overflows ``dtype``.
    """
    import torch
    import torch.nn.functional as F

    K, h, w = affinity.shape
    device = affinity.device
    tiny = torch.finfo(dtype).tiny
    zero = torch.zeros((), dtype=dtype, device=device)
    offsets = np.asarray(offsets, dtype=np.int64).reshape(K, 2)
    pad = int(np.abs(offsets).max()) if K else 0

    a = affinity.to(dtype)
    if beta != 1:
        a = a ** beta
    inside = inside_mask(offsets, h, w, device)
    a = torch.where(inside & (a >= tiny), a, zero)
    if not bool(torch.isfinite(a).all()):
        raise ValueError(
            f"affinity ** beta overflows {dtype} (largest affinity "
            f"{float(affinity[inside].max())}, beta={beta}); scale the affinities down"
        )
    # back[k, q] = a[k, q - o_k]: the weight of the pair seen from its far end.
    back = a
    if K:
        padded = F.pad(a, (pad, pad, pad, pad))
        back = torch.stack([padded[k, pad - dy : pad - dy + h, pad - dx : pad - dx + w]
                            for k, (dy, dx) in enumerate(offsets.tolist())])
    degree = 1.0 + a.sum(0) + back.sum(0)
    if not bool(torch.isfinite(degree).all()):
        raise ValueError(f"a row sum of affinity ** beta overflows {dtype}; scale the affinities down")
    weights = torch.cat([back.flip(0), torch.ones((1, h, w), dtype=dtype, device=device), a])
    weights = weights / degree
    return torch.where(weights >= tiny, weights, zero), degree


def transition_csr(affinity, offsets, beta, dtype):
    """The CSR arrays of ``T = D^-1 W ** beta`` on the grid of ``affinity``.

    Parameters are those of :func:`transition_weights`. One row per grid cell
    (raster order), its columns sorted, zero weights not stored.

    Returns
    -------
    crow, col : torch.Tensor, int32 (int64 beyond 2**31 - 1 non-zeros)
    values : torch.Tensor of ``dtype``
    degree_ratio : float
        ``sum(D) / min(D)``, for the error bound of the Chebyshev expansion.
    """
    import torch

    K, h, w = affinity.shape
    n = h * w
    device = affinity.device
    weights, degree = transition_weights(affinity, offsets, beta, dtype)
    values = weights.permute(1, 2, 0).reshape(n, 2 * K + 1)
    keep = values > 0
    full = torch.as_tensor(full_offsets(offsets), device=device)
    shift = full[:, 0] * w + full[:, 1]
    col = (torch.arange(n, device=device)[:, None] + shift[None, :])[keep]
    values = values[keep]
    crow = torch.zeros(n + 1, dtype=torch.int64, device=device)
    torch.cumsum(keep.sum(1), 0, out=crow[1:])
    if values.numel() < 2**31 - 1:
        crow, col = crow.to(torch.int32), col.to(torch.int32)
    degree_ratio = float(degree.sum(dtype=torch.float64) / degree.min().to(torch.float64))
    return crow, col, values, degree_ratio


def chebyshev_tau(dtype, degree_ratio):
    """The truncation ``tau`` whose error bound is ``eps(dtype) * max|s|`` (see the module notes)."""
    import torch

    return torch.finfo(dtype).eps / (2.0 * math.sqrt(degree_ratio))


def polynomial_walk(x, t, coefficients, matvec, chebyshev_step):
    """``T^t x`` by ``t`` products, or ``sum_k c_k T_k(T) x`` by the three-term recurrence.

    ``matvec(v)`` is ``T v``; ``chebyshev_step(cur, prev)`` is ``2 T cur - prev``;
    ``coefficients`` come from :func:`chebyshev_power_coefficients` (None: ``t`` products).
    """
    if coefficients is None:
        for _ in range(t):
            x = matvec(x)
        return x
    coefficients = coefficients.tolist()  # Python floats keep the working precision
    prev, cur = x, matvec(x)
    acc = coefficients[0] * prev
    acc += coefficients[1] * cur
    for c in coefficients[2:]:
        prev, cur = cur, chebyshev_step(cur, prev)  # T_{k+1} = 2 T T_k - T_{k-1}
        if c:
            acc += c * cur
    return acc


def _walk_setup(scores, dtype, degree_ratio, t, chebyshev):
    """Chebyshev coefficients (or None) and the scores with subnormals flushed."""
    import torch

    coefficients = None
    if chebyshev:
        coefficients = chebyshev_power_coefficients(t, chebyshev_tau(dtype, degree_ratio))
    tiny = torch.finfo(dtype).tiny
    zero = torch.zeros((), dtype=dtype, device=scores.device)
    return coefficients, torch.where(scores.abs() >= tiny, scores, zero)


def stencil_operator(affinity, offsets, beta, dtype, channels):
    """``(matvec, degree_ratio)``: ``T X`` for ``X`` of shape ``(C, h, w)`` as a stencil.

    ``matvec(x)`` copies ``x`` into the middle of a zero-padded buffer and sums
    ``weights[j] * view_j`` over the ``2K + 1`` shifted views of the buffer
    (weight maps that are zero everywhere, such as offsets longer than the
    grid, are skipped). It returns a new tensor.
    """
    import torch

    K, h, w = affinity.shape
    weights, degree = transition_weights(affinity, offsets, beta, dtype)
    pad = int(np.abs(offsets).max()) if K else 0
    buffer = torch.zeros((channels, h + 2 * pad, w + 2 * pad), dtype=dtype, device=affinity.device)
    terms = [
        (buffer[:, pad + dy : pad + dy + h, pad + dx : pad + dx + w], weights[j])
        for j, (dy, dx) in enumerate(full_offsets(offsets).tolist())
        if j == K or bool(weights[j].any())  # j == K: the self-loop
    ]
    middle = buffer[:, pad : pad + h, pad : pad + w]

    def matvec(x):
        middle.copy_(x)
        out = terms[0][0] * terms[0][1]
        for view, weight in terms[1:]:
            out.addcmul_(view, weight)
        return out

    degree_ratio = float(degree.sum(dtype=torch.float64) / degree.min().to(torch.float64))
    return matvec, degree_ratio


def torch_walk(scores, affinity, offsets, beta, t, *, kernel="auto", chebyshev=True):
    """``T^t`` applied to every channel with torch.

    Parameters
    ----------
    scores : torch.Tensor of shape (C, h, w), float32 or float64
    affinity : torch.Tensor of shape (K, h, w), on the same device
    offsets : ndarray of shape (K, 2)
    beta : float
    t : int, >= 1
    kernel : {"auto", "csr", "stencil"}, default="auto"
        "auto": the stencil on CPUs from ``STENCIL_MIN_CELLS`` cells on, else CSR.
    chebyshev : bool, default=True
        False applies ``t`` products (for the benchmark's comparison).

    Returns
    -------
    torch.Tensor of shape (C, h, w), dtype and device of ``scores``
    """
    import torch

    C, h, w = scores.shape
    dtype = scores.dtype
    if kernel == "auto":
        use_stencil = scores.device.type == "cpu" and h * w >= STENCIL_MIN_CELLS
        kernel = "stencil" if use_stencil else "csr"
    if kernel == "stencil":
        matvec, degree_ratio = stencil_operator(affinity, offsets, beta, dtype, C)
        coefficients, x = _walk_setup(scores, dtype, degree_ratio, t, chebyshev)

        def chebyshev_step(cur, prev):
            return matvec(cur).mul_(2).sub_(prev)

        return polynomial_walk(x, t, coefficients, matvec, chebyshev_step)

    crow, col, values, degree_ratio = transition_csr(affinity, offsets, beta, dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        T = torch.sparse_csr_tensor(crow, col, values, size=(h * w, h * w), check_invariants=False)
    coefficients, x = _walk_setup(scores, dtype, degree_ratio, t, chebyshev)
    out = polynomial_walk(
        x.reshape(C, h * w).T.contiguous(), t, coefficients,
        matvec=lambda v: T @ v,
        chebyshev_step=lambda cur, prev: torch.addmm(prev, T, cur, beta=-1, alpha=2),
    )
    return out.T.reshape(C, h, w)


def scipy_walk(scores, affinity, offsets, beta, t, chebyshev=True):
    """``T^t`` applied to every channel with a scipy CSR matrix (on the CPU).

    Same parameters as :func:`torch_walk` (CPU tensors); returns a CPU tensor.
    """
    import scipy.sparse as sp
    import torch

    C, h, w = scores.shape
    dtype = scores.dtype
    crow, col, values, degree_ratio = transition_csr(affinity, offsets, beta, dtype)
    T = sp.csr_array((values.numpy(), col.numpy(), crow.numpy()), shape=(h * w, h * w))
    coefficients, x = _walk_setup(scores, dtype, degree_ratio, t, chebyshev)
    x = np.ascontiguousarray(x.reshape(C, h * w).numpy().T)

    def chebyshev_step(cur, prev):
        nxt = T @ cur
        nxt *= 2
        nxt -= prev
        return nxt

    out = polynomial_walk(x, t, coefficients, matvec=lambda v: T @ v, chebyshev_step=chebyshev_step)
    return torch.from_numpy(np.ascontiguousarray(out.T).reshape(C, h, w))


def average_pool(scores, stride):
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


def upsample_grid(grid_scores, shape, stride):
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
