"""Affinity labels from CAMs, and the oracle affinity from true masks.

Pure numpy functions, each usable and tested alone:

- :func:`score_stack` puts a background score ``(1 - max_c M_c) ** alpha`` in
  front of an image's CAMs;
- :func:`confident_scores` gives the two such stacks (``alpha_low`` and
  ``alpha_high``, optionally through a dense CRF) as per-pixel distributions,
  and :func:`confident_regions` their full-resolution argmax maps;
- :func:`pool_index_map` brings an argmax map to the stride-8 grid by a
  majority vote in each ``stride x stride`` block (``label_pooling="vote"``);
  :func:`pool_score_stack` brings a score stack there by averaging each block
  before the argmax (``label_pooling="mean"``, the reference's);
- :func:`combine_confident` gives the label map (0 background, ``j + 1`` for
  class column ``j``, 255 ignored);
- :func:`affinity_label_map` chains these for one record;
- :func:`affinity_pairs` lists, for each offset of ``neighbor_offsets(radius)``
  and each grid cell, whether the pair is background-positive,
  foreground-positive or negative;
- :func:`oracle_affinity` builds the affinity a perfect AffinityNet would
  predict from a true mask (the ceiling of the affinity stage).

The reference implementation (``VOC12AffDataset`` and ``imutils.AvgPool2d``)
averages the score maps (the CRF's soft marginals) over each 8x8 block and
takes the argmax. A majority vote of the full-resolution argmax maps is not the
same: the CRF's outputs are soft, and a block whose pixels a class wins by a
small margin while the background wins others by a large one goes to the
class by vote and to the background by mean. ``AffinityEstimator`` does either
(``label_pooling``): the vote, its default, stores two uint8 maps per image;
the mean stores the score stacks (float16), which the training augmentation
rescales, crops and flips with the image before they are pooled.
"""

import numpy as np

from ._grid import IGNORE_INDEX, STRIDE, grid_shape, shifted_pairs

__all__ = [
    "score_stack",
    "confident_scores",
    "confident_regions",
    "pool_index_map",
    "pool_score_stack",
    "combine_confident",
    "affinity_label_map",
    "affinity_pairs",
    "pair_counts",
    "downsample_mask",
    "oracle_affinity",
]


def score_stack(cams, alpha):
    """Background score in front of the class maps.

    Parameters
    ----------
    cams : ndarray of shape (L, H, W)
        Class activation maps in [0, 1] of the classes present (L may be 0).
    alpha : float
        Exponent of the background score ``(1 - max_c M_c) ** alpha``; a large
        alpha weakens the background.

    Returns
    -------
    scores : ndarray of shape (L + 1, H, W), float32
        ``scores[0]`` is the background, ``scores[1 + i]`` is ``cams[i]``.
    """
    cams = np.asarray(cams, dtype=np.float32)
    if cams.ndim != 3:
        raise ValueError(f"cams must be (L, H, W), got shape {cams.shape}")
    if cams.shape[0]:
        top = np.clip(cams.max(axis=0), 0.0, 1.0)
    else:
        top = np.zeros(cams.shape[1:], dtype=np.float32)
    bg = np.power(1.0 - top, alpha, dtype=np.float32)
    return np.concatenate([bg[None], cams], axis=0)


def _level_scores(cams, alpha, image, crf):
    """One score stack of :func:`confident_regions`: :func:`score_stack`, through ``crf``
    (on the stack divided by its per-pixel sum) when given."""
    scores = score_stack(cams, alpha)
    if crf is not None and scores.shape[0] > 1:
        if image is None:
            raise ValueError("crf needs the image")
        # the CRF wants per-pixel distributions; its result depends only on the ratios
        scores = np.asarray(crf(image, scores / scores.sum(axis=0, keepdims=True)))
        if scores.shape[1:] != cams.shape[1:]:
            raise ValueError(f"crf returned shape {scores.shape}, expected (L+1,) + {cams.shape[1:]}")
    return scores


def confident_scores(cams, alpha_low=4, alpha_high=32, *, image=None, crf=None):
    """The low- and high-alpha score stacks as per-pixel distributions.

    The stacks whose argmax :func:`confident_regions` takes, each divided by
    its per-pixel sum: with ``crf``, the CRF's marginals.

    Parameters
    ----------
    cams : ndarray of shape (L, H, W)
    alpha_low, alpha_high : float
    image : ndarray of shape (H, W, 3), uint8, optional
        Needed by ``crf``.
    crf : callable, optional
        ``crf(image, probs) -> probs``, as in :func:`confident_regions`.

    Returns
    -------
    low, high : ndarray of shape (L + 1, H, W), float32
        ``[background, *classes present]`` scores summing to 1 at each pixel.

    Examples
    --------
    >>> import numpy as np
    >>> low, high = confident_scores(np.full((1, 2, 2), 0.5, np.float32))
    >>> low[:, 0, 0].round(3), high[:, 0, 0].round(3)
    (array([0.111, 0.889], dtype=float32), array([0., 1.], dtype=float32))
    """
    cams = np.asarray(cams, dtype=np.float32)
    out = []
    for alpha in (alpha_low, alpha_high):
        scores = np.asarray(_level_scores(cams, alpha, image, crf), dtype=np.float32)
        total = scores.sum(axis=0, keepdims=True)
        out.append(scores / np.where(total > 0, total, 1))
    return out[0], out[1]


def confident_regions(cams, alpha_low=4, alpha_high=32, *, image=None, crf=None):
    """Full-resolution argmax maps of the low- and high-alpha score stacks.

    Parameters
    ----------
    cams : ndarray of shape (L, H, W)
    alpha_low, alpha_high : float
        ``alpha_low`` (strong background) gives confident foreground where a
        class still wins; ``alpha_high`` (weak background) gives confident
        background where the background still wins.
    image : ndarray of shape (H, W, 3), uint8, optional
        Needed by ``crf``.
    crf : callable, optional
        ``crf(image, probs) -> probs`` applied to each ``(L + 1, H, W)`` stack,
        divided by its per-pixel sum, before the argmax (the paper uses a dense
        CRF here).

    Returns
    -------
    low, high : ndarray of shape (H, W), uint8
        Argmax index into ``[background, *classes present]``.
    """
    cams = np.asarray(cams, dtype=np.float32)
    out = [np.argmax(_level_scores(cams, alpha, image, crf), axis=0).astype(np.uint8)
           for alpha in (alpha_low, alpha_high)]
    return out[0], out[1]


def pool_index_map(index_map, stride=STRIDE, *, n_values=None, ignore=IGNORE_INDEX):
    """Majority vote of an index map in each ``stride x stride`` block.

    The grid is ``ceil(H / stride) x ceil(W / stride)``; blocks at the bottom
    and right borders vote over the pixels they hold. Pixels equal to
    ``ignore`` do not vote; a block with no voting pixel gets ``ignore``. Ties go
    to the smallest value (background first, as an argmax of pooled scores).

    Parameters
    ----------
    index_map : ndarray of shape (H, W), integer
    stride : int
    n_values : int, optional
        Values are ``0 .. n_values - 1`` (besides ``ignore``); found when None.
    ignore : int

    Returns
    -------
    grid : ndarray of shape (ceil(H / stride), ceil(W / stride)), uint8
    """
    index_map = np.asarray(index_map)
    H, W = index_map.shape
    h, w = grid_shape((H, W), stride)
    padded = np.full((h * stride, w * stride), ignore, dtype=index_map.dtype)
    padded[:H, :W] = index_map
    blocks = padded.reshape(h, stride, w, stride)
    if n_values is None:
        valid = index_map[index_map != ignore]
        n_values = int(valid.max()) + 1 if valid.size else 0
    grid = np.full((h, w), ignore, dtype=np.uint8)
    if n_values == 0:
        return grid
    counts = np.stack([(blocks == v).sum(axis=(1, 3)) for v in range(n_values)])
    best = counts.argmax(axis=0)
    grid[counts.max(axis=0) > 0] = best[counts.max(axis=0) > 0]
    return grid


def pool_score_stack(scores, stride=STRIDE, *, eps=1e-5, ignore=IGNORE_INDEX):
    """Argmax of the mean scores in each ``stride x stride`` block.

    The reference code's pooling of the affinity labels (``imutils.AvgPool2d``,
    then the argmax): the grid is ``ceil(H / stride) x ceil(W / stride)``,
    blocks at the bottom and right borders are padded with zeros (the mean is
    over ``stride ** 2`` pixels), and a block whose mean scores are all below
    ``eps`` (padding: no pixel of the image) gets ``ignore``.

    Parameters
    ----------
    scores : ndarray of shape (..., C, H, W)
        Non-negative scores (per-pixel distributions; 0 on padding), any
        leading dimensions (a batch).
    stride : int
    eps : float
    ignore : int

    Returns
    -------
    grid : ndarray of shape (..., ceil(H / stride), ceil(W / stride)), uint8
        The channel of the largest mean, or ``ignore``.

    Examples
    --------
    >>> import numpy as np
    >>> scores = np.zeros((2, 2, 4))
    >>> scores[0, :, :2] = 1.0                        # background on the left block
    >>> scores[1, 0, 2], scores[0, 0, 3] = 0.9, 0.1   # one pixel of the right one
    >>> pool_score_stack(scores, 2)
    array([[0, 1]], dtype=uint8)
    >>> pool_score_stack(scores, 2, eps=0.3)          # the right block is all but empty
    array([[  0, 255]], dtype=uint8)
    """
    scores = np.asarray(scores)
    *lead, C, H, W = scores.shape
    h, w = grid_shape((H, W), stride)
    padded = np.zeros((*lead, C, h * stride, w * stride), np.float64)
    padded[..., :H, :W] = scores
    means = padded.reshape(*lead, C, h, stride, w, stride).mean(axis=(-3, -1))
    grid = np.argmax(means, axis=-3).astype(np.uint8)
    grid[means.max(axis=-3, initial=0.0) < eps] = ignore
    return grid


def combine_confident(low, high, labels, *, ignore=IGNORE_INDEX):
    """Label map from the two argmax maps.

    Confident foreground where ``low`` picks a class (value ``labels[i] + 1``),
    confident background where ``high`` picks the background (0), everything
    else (and ``ignore`` in either map) ``ignore``.

    Parameters
    ----------
    low, high : ndarray of shape (h, w)
        Argmax indices into ``[background, *classes present]`` (or ``ignore``).
    labels : ndarray of shape (L,)
        Class columns of the classes present.

    Returns
    -------
    label_map : ndarray of shape (h, w), uint8
    """
    low = np.asarray(low)
    high = np.asarray(high)
    lut = np.full(256, ignore, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    lut[1 : labels.size + 1] = labels + 1
    out = lut[low.astype(np.intp)]
    out[high == 0] = 0
    out[(low == ignore) | (high == ignore)] = ignore
    return out


def affinity_label_map(cams, labels, *, alpha_low=4, alpha_high=32, image=None, crf=None,
                       stride=STRIDE, pooling="vote"):
    """Confident labels of one image on the stride grid.

    Parameters
    ----------
    cams : ndarray of shape (L, H, W)
        The CAMs of the classes present, in [0, 1].
    labels : ndarray of shape (L,)
        Their class columns.
    alpha_low, alpha_high : float
        See :func:`confident_regions`.
    image : ndarray of shape (H, W, 3), optional
        For ``crf``.
    crf : callable, optional
        ``crf(image, scores) -> probs``.
    stride : int
        1 keeps the image's resolution.
    pooling : {"vote", "mean"}, default="vote"
        How each level reaches the grid: ``"vote"`` pools its argmax map by
        majority (:func:`pool_index_map`), ``"mean"`` its score stack by
        averaging before the argmax (:func:`pool_score_stack`, the reference's).

    Returns
    -------
    label_map : ndarray of shape (ceil(H / stride), ceil(W / stride)), uint8
        0 confident background, ``j + 1`` confident class column ``j``, 255
        ignored.

    Examples
    --------
    >>> import numpy as np
    >>> cams = np.zeros((1, 16, 16), np.float32)
    >>> cams[0, :8, :8] = 1.0      # a confident object in the top-left block
    >>> cams[0, 8:, 8:] = 0.1      # a weak activation: neither fg nor bg
    >>> affinity_label_map(cams, [2])
    array([[  3,   0],
           [  0, 255]], dtype=uint8)
    """
    cams = np.asarray(cams, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if cams.ndim != 3 or cams.shape[0] != labels.size:
        raise ValueError(f"cams of shape {cams.shape} do not match {labels.size} labels")
    if pooling == "mean":
        stacks = confident_scores(cams, alpha_low, alpha_high, image=image, crf=crf)
        low, high = (pool_score_stack(s, stride) for s in stacks)
        return combine_confident(low, high, labels)
    if pooling != "vote":
        raise ValueError(f"pooling must be 'vote' or 'mean', got {pooling!r}")
    low, high = confident_regions(cams, alpha_low, alpha_high, image=image, crf=crf)
    if stride > 1:
        n = labels.size + 1
        low = pool_index_map(low, stride, n_values=n)
        high = pool_index_map(high, stride, n_values=n)
    return combine_confident(low, high, labels)


def affinity_pairs(label_map, offsets, *, ignore=IGNORE_INDEX):
    """Pair labels of a label map, laid out like an affinity ``(K, h, w)``.

    Entry ``[k, y, x]`` is the pair of cells ``(y, x)`` and
    ``(y + dy_k, x + dx_k)``. A pair counts only when both cells lie inside the
    grid and neither is ``ignore``.

    Parameters
    ----------
    label_map : ndarray of shape (h, w)
        0 background, 1..K classes, ``ignore`` ignored.
    offsets : ndarray of shape (K, 2)
        ``(dy, dx)`` from ``neighbor_offsets(radius)``.

    Returns
    -------
    bg_pos, fg_pos, neg : ndarray of shape (K, h, w), bool
        Both background; both the same class; different labels.
    """
    frm, to, inside = shifted_pairs(label_map, offsets)
    valid = inside & (frm != ignore) & (to != ignore)
    same = frm == to
    bg_pos = valid & same & (frm == 0)
    fg_pos = valid & same & (frm != 0)
    neg = valid & ~same
    return bg_pos, fg_pos, neg


def pair_counts(label_map, offsets, *, ignore=IGNORE_INDEX):
    """Numbers of background-positive, foreground-positive and negative pairs."""
    return tuple(int(p.sum()) for p in affinity_pairs(label_map, offsets, ignore=ignore))


def downsample_mask(mask, stride=STRIDE, *, ignore=IGNORE_INDEX):
    """A mask on the stride grid by majority vote (``ignore`` pixels abstain)."""
    mask = np.asarray(mask)
    valid = mask[mask != ignore]
    n = int(valid.max()) + 1 if valid.size else 0
    return pool_index_map(mask, stride, n_values=n, ignore=ignore)


def oracle_affinity(mask, offsets, *, stride=STRIDE, ignore=IGNORE_INDEX):
    """The affinity a perfect AffinityNet would predict, from a true mask.

    The mask is brought to the stride grid by majority vote; two cells have
    affinity 1 when they carry the same value and 0 otherwise (also when either
    is ``ignore`` or the neighbour is outside the grid).

    Parameters
    ----------
    mask : ndarray of shape (H, W)
        0 background, 1..K classes, ``ignore`` ignored.
    offsets : ndarray of shape (K, 2)
        From ``neighbor_offsets(radius)``.
    stride : int

    Returns
    -------
    affinity : ndarray of shape (K, ceil(H / stride), ceil(W / stride)), float32
    """
    grid = downsample_mask(mask, stride, ignore=ignore)
    frm, to, inside = shifted_pairs(grid, offsets)
    same = inside & (frm == to) & (frm != ignore)
    return same.astype(np.float32)
