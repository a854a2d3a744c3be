"""Geometry of the stride-8 grid on which affinities live.

A leaf of the package (it imports nothing of it), so that every module may use
it: the stride and the ignore value, the neighbour offsets within a radius,
and the slices that pair each grid cell with its neighbour at an offset.
"""

import functools
import numbers

import numpy as np

__all__ = [
    "STRIDE",
    "IGNORE_INDEX",
    "grid_shape",
    "neighbor_offsets",
    "cached_offsets",
    "radius_for_k",
    "shift_slices",
    "shifted_pairs",
]

#: The affinity grid of an ``(H, W)`` image is ``(ceil(H / 8), ceil(W / 8))``.
STRIDE = 8

#: Mask value of pixels that count nowhere (not scored, no affinity pair).
IGNORE_INDEX = 255


def grid_shape(shape, stride=STRIDE):
    """The ``(h, w)`` grid of an image of shape ``(H, W)``: the size over ``stride``, rounded up."""
    H, W = shape
    return -(-H // stride), -(-W // stride)


@functools.lru_cache(maxsize=32)
def cached_offsets(radius):
    """:func:`neighbor_offsets` of a valid radius, read-only and computed once per radius."""
    out = [
        (dy, dx)
        for dy in range(radius)
        for dx in range(-radius + 1, radius)
        if 0 < dy * dy + dx * dx < radius * radius and (dy > 0 or dx > 0)
    ]
    arr = np.array(out, dtype=np.int64).reshape(-1, 2)
    arr.flags.writeable = False
    return arr


def neighbor_offsets(radius):
    """Offsets ``(dy, dx)`` of the neighbours within ``radius``, one per unordered pair.

    The offsets satisfy ``0 < dy**2 + dx**2 < radius**2`` and point forward
    (``dy > 0``, or ``dy == 0 and dx > 0``); the pair seen from the other end,
    ``(-dy, -dx)``, is not listed. They are sorted by ``dy``, then ``dx``.

    Parameters
    ----------
    radius : int
        Radius on the stride-8 grid, >= 1 (the paper uses 5).

    Returns
    -------
    offsets : ndarray of shape (K, 2), int64
        K = 34 for radius 5 (and 0 for radius 1: no neighbour).

    Examples
    --------
    >>> from sklearn_psa import neighbor_offsets
    >>> neighbor_offsets(2)
    array([[ 0,  1],
           [ 1, -1],
           [ 1,  0],
           [ 1,  1]])
    >>> len(neighbor_offsets(5))
    34
    """
    if isinstance(radius, bool) or not isinstance(radius, numbers.Integral):
        raise TypeError(f"radius must be an integer, got {radius!r}")
    if radius < 1:
        raise ValueError(f"radius must be >= 1, got {radius}")
    return cached_offsets(int(radius)).copy()


def radius_for_k(K, name="affinity"):
    """The radius whose ``neighbor_offsets`` has ``K`` entries (a clear error when none has)."""
    radius, counts = 1, []
    while True:
        count = len(cached_offsets(radius))
        counts.append(count)
        if count == K:
            return radius
        if count > K:
            shown = ", ".join(f"{c} (radius {r})" for r, c in enumerate(counts, 1) if r > 1)
            raise ValueError(
                f"{name} has {K} channels, which matches no neighbourhood: "
                f"len(neighbor_offsets(radius)) is {shown}, ..."
            )
        radius += 1


def shift_slices(dy, dx, h, w):
    """Slices ``(source, target)`` of an ``(h, w)`` grid such that each source cell
    ``(y, x)`` is paired with the target cell ``(y + dy, x + dx)``, both inside."""
    ys = slice(max(0, -dy), max(0, min(h, h - dy)))
    xs = slice(max(0, -dx), max(0, min(w, w - dx)))
    yt = slice(max(0, dy), max(0, min(h, h + dy)))
    xt = slice(max(0, dx), max(0, min(w, w + dx)))
    if ys.stop <= ys.start or xs.stop <= xs.start:
        empty = slice(0, 0)
        return (empty, empty), (empty, empty)
    return (ys, xs), (yt, xt)


def shifted_pairs(grid, offsets):
    """For each offset, the (from, to, inside) arrays of shape (K, h, w)."""
    grid = np.asarray(grid)
    h, w = grid.shape
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    K = len(offsets)
    to = np.zeros((K, h, w), dtype=grid.dtype)
    inside = np.zeros((K, h, w), dtype=bool)
    for k, (dy, dx) in enumerate(offsets):
        (ys, xs), (yt, xt) = shift_slices(int(dy), int(dx), h, w)
        to[k, ys, xs] = grid[yt, xt]
        inside[k, ys, xs] = True
    return np.broadcast_to(grid, (K, h, w)), to, inside
