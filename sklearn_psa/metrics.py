"""Segmentation metrics: confusion matrix, mean IoU, per-class report, scorer.

All metrics count pixels over every mask given (one confusion matrix for the
whole set, as in the PASCAL VOC evaluation and the paper's tables), over
background (value 0) and the classes 1..K; truth pixels equal to
``ignore_index`` (255, VOC's object boundaries) are skipped. Scores are
fractions in [0, 1]; :func:`segmentation_report` prints percentages.
"""

import math
import numbers

import numpy as np
from sklearn.utils._param_validation import Interval, validate_params

from ._affinity_labels import affinity_label_map, affinity_pairs, downsample_mask
from ._grid import IGNORE_INDEX, neighbor_offsets, shifted_pairs
from ._validation import check_masks, check_score_masks
from .crf import check_crf_options, dense_crf
from .records import check_records

__all__ = ["affinity_report", "confusion_matrix", "mean_iou", "mean_iou_scorer", "segmentation_report"]

# Largest number of classes: values 0..254 are labels, 255 is reserved for "ignore".
_MAX_CLASSES = IGNORE_INDEX - 1
# Pixels per np.bincount call (about): bounds its temporary arrays to ~2**24 * 12 bytes.
_CHUNK = 1 << 24

_COMMON_CONSTRAINTS = {
    "y_true": ["array-like"],
    "y_pred": ["array-like"],
    "n_classes": [Interval(numbers.Integral, 0, _MAX_CLASSES, closed="both"), None],
    "ignore_index": [Interval(numbers.Integral, 0, 255, closed="both"), None],
}


def _joint_histogram(pairs):
    """256 x 256 counts of (true value, predicted value) over all pixels.

    One ``np.bincount`` of ``true * 256 + pred`` per chunk: the confusion matrix
    is its top-left block, and its row and column sums tell which values occur
    (for validation) without another pass over the pixels. Masks are
    concatenated in chunks of about ``_CHUNK`` pixels, so that one call covers
    many small masks and memory stays bounded for large sets.
    """
    hist = np.zeros(256 * 256, dtype=np.int64)
    chunk_t, chunk_p, size = [], [], 0

    def flush():
        t = np.concatenate(chunk_t).astype(np.uint16)
        p = np.concatenate(chunk_p)
        hist[:] += np.bincount((t << 8) | p, minlength=256 * 256)
        chunk_t.clear()
        chunk_p.clear()

    for t, p in pairs:
        chunk_t.append(t.ravel())
        chunk_p.append(p.ravel())
        size += t.size
        if size >= _CHUNK:
            flush()
            size = 0
    if chunk_t:
        flush()
    return hist.reshape(256, 256)


def _first_item_with(masks, bad_values):
    """Index and offending value of the first mask holding one of ``bad_values``."""
    for i, m in enumerate(masks):
        found = np.intersect1d(np.unique(m), bad_values)
        if found.size:
            return i, int(found[0])
    raise AssertionError("unreachable: a bad value was counted but not found")  # pragma: no cover


def _labels_text(n_classes):
    if n_classes == 0:
        return "0 (background; there are no classes)"
    if n_classes == 1:
        return "0 (background) or 1"
    return f"0 (background) or a class 1..{n_classes}"


def _confusion(y_true, y_pred, n_classes, ignore_index, verbose=0):
    """Validate both sets of masks and return the (K+1, K+1) int64 confusion matrix.

    Mask files are read one pair at a time (``check_masks(lazy=True)``), so that
    scoring a folder of any size holds a chunk of masks, not all of them;
    ``verbose`` shows a progress bar over the pairs.
    """
    from ._training import progress

    true = check_masks(y_true, name="y_true", lazy=True)
    pred = check_masks(y_pred, name="y_pred", lazy=True)
    if len(pred) != len(true):
        raise ValueError(f"y_pred has {len(pred)} masks but y_true has {len(true)}")

    def pairs():
        for i in progress(range(len(true)), verbose=verbose, desc="masks", unit="mask"):
            t, p = true[i], pred[i]
            if t.shape != p.shape:
                raise ValueError(
                    f"y_pred[{i}] has shape {p.shape} but y_true[{i}] has shape {t.shape}: "
                    "each prediction must have the size of its true mask"
                )
            yield t, p

    hist = _joint_histogram(pairs())
    true_seen = np.flatnonzero(hist.sum(axis=1))
    pred_seen = np.flatnonzero(hist.sum(axis=0))

    if n_classes is None:
        labels = np.union1d(true_seen[true_seen != ignore_index], pred_seen)
        labels = labels[labels != IGNORE_INDEX]
        n_classes = int(labels.max(initial=0))

    bad_true = true_seen[true_seen > n_classes]
    if ignore_index is not None:
        bad_true = bad_true[bad_true != ignore_index]
    if bad_true.size:
        i, value = _first_item_with(true, bad_true)
        ignore = "no ignore_index" if ignore_index is None else f"ignore_index={ignore_index}"
        raise ValueError(
            f"y_true[{i}]: value {value} is beyond the {n_classes} classes "
            f"(expected {_labels_text(n_classes)}, or the ignored value; {ignore})"
        )

    bad_pred = pred_seen[pred_seen > n_classes]
    if bad_pred.size:
        i, value = _first_item_with(pred, bad_pred)
        hint = (
            f" ({IGNORE_INDEX} marks ignored pixels in the truth, it is not a label)"
            if value == IGNORE_INDEX
            else ""
        )
        raise ValueError(
            f"y_pred[{i}]: predicted value {value} is not a label: predictions must be "
            f"{_labels_text(n_classes)}{hint}"
        )
    if ignore_index is not None:
        hist[ignore_index, :] = 0
    k1 = n_classes + 1
    return np.ascontiguousarray(hist[:k1, :k1])


@validate_params(_COMMON_CONSTRAINTS, prefer_skip_nested_validation=True)
def confusion_matrix(y_true, y_pred, *, n_classes=None, ignore_index=IGNORE_INDEX):
    """Pixel confusion matrix over background and classes, summed over all masks.

    Parameters
    ----------
    y_true : sequence of (H, W) integer arrays or mask file paths, or (n, H, W) array
        True masks: 0 background, 1..K classes, ``ignore_index`` ignored.
        Sizes may differ between masks.
    y_pred : sequence of (H, W) integer arrays or mask file paths, or (n, H, W) array
        Predicted masks, each the size of its true mask. Values must be labels
        (0..n_classes); 255 is never a valid prediction.
    n_classes : int, default=None
        Number of classes K (background excluded). Defaults to the largest
        value seen in ``y_true`` or ``y_pred``, ``ignore_index`` and 255 aside.
    ignore_index : int or None, default=255
        True value whose pixels are skipped. None counts every pixel (then 255
        in ``y_true`` is an error).

    Returns
    -------
    cm : ndarray of shape (n_classes + 1, n_classes + 1), dtype int64
        ``cm[i, j]`` is the number of pixels of true value ``i`` predicted as
        ``j`` (rows true, columns predicted; row and column 0 are background).

    Raises
    ------
    ValueError
        When the numbers of masks differ, a prediction's shape differs from its
        true mask's, a prediction is not a label, or a true value is beyond the
        classes; the message names the item (``y_pred[i]``).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_psa.metrics import confusion_matrix
    >>> y_true = [np.array([[0, 1], [1, 255]]), np.array([[2, 2, 0]])]
    >>> y_pred = [np.array([[0, 1], [0, 2]]), np.array([[2, 1, 0]])]
    >>> confusion_matrix(y_true, y_pred)
    array([[2, 0, 0],
           [1, 1, 0],
           [0, 1, 1]])
    """
    return _confusion(y_true, y_pred, n_classes, ignore_index)


def _per_class(cm):
    """IoU, precision, recall (float64, nan for classes absent from truth and prediction)."""
    cm = np.asarray(cm, dtype=np.int64)
    if cm.sum() == 0:
        raise ValueError(
            "no pixel to score: every pixel of y_true is ignored (ignore_index); "
            "the scores are undefined"
        )
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    union = support + predicted - tp
    present = union > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(present, tp / union, np.nan)
        precision = np.where(present, tp / np.maximum(predicted, 1), np.nan)
        recall = np.where(present, tp / np.maximum(support, 1), np.nan)
    return iou, precision, recall, cm.sum(axis=1)


def _mean(values):
    """Mean of the non-nan values, correctly rounded (independent of order and of nan entries)."""
    values = values[~np.isnan(values)]
    return math.fsum(values.tolist()) / len(values)


@validate_params(_COMMON_CONSTRAINTS, prefer_skip_nested_validation=True)
def mean_iou(y_true, y_pred, *, n_classes=None, ignore_index=IGNORE_INDEX):
    """Mean intersection over union over background and classes.

    For each class c (background included), ``IoU_c = TP / (TP + FP + FN)``
    counted over the pixels of all masks together; the score is the mean of
    ``IoU_c`` over the classes that occur in the truth or in the prediction.
    A class in neither (union 0) has no IoU and is left out of the mean, as
    the reference evaluation does with ``nanmean``: the score does not depend
    on ``n_classes``, which only bounds the valid values.

    Parameters
    ----------
    y_true : sequence of (H, W) integer arrays or mask file paths, or (n, H, W) array
        True masks: 0 background, 1..K classes, ``ignore_index`` ignored.
    y_pred : sequence of (H, W) integer arrays or mask file paths, or (n, H, W) array
        Predicted masks, each the size of its true mask; values 0..n_classes.
    n_classes : int, default=None
        Number of classes K (background excluded); defaults to the largest
        value seen.
    ignore_index : int or None, default=255
        True value whose pixels are skipped.

    Returns
    -------
    score : float
        Mean IoU, a fraction in [0, 1].

    Raises
    ------
    ValueError
        On mismatched or invalid masks (see :func:`confusion_matrix`), or when
        every true pixel is ignored (nothing to score).

    See Also
    --------
    segmentation_report : IoU, precision and recall per class.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_psa.metrics import mean_iou
    >>> y_true = [np.array([[0, 0, 1, 1]]), np.array([[0, 255, 2]])]
    >>> y_pred = [np.array([[0, 1, 1, 1]]), np.array([[0, 2, 2]])]
    >>> round(mean_iou(y_true, y_pred), 4)  # background 2/3, class 1 2/3, class 2 1
    0.7778
    """
    iou = _per_class(_confusion(y_true, y_pred, n_classes, ignore_index))[0]
    return _mean(iou)


def mean_iou_scorer(estimator, X, y):
    """Mean IoU of ``estimator.predict(X)`` against the masks ``y``: a scorer.

    A plain callable with scikit-learn's scorer signature, for
    ``GridSearchCV(..., scoring=mean_iou_scorer)`` and ``cross_validate``.
    ``predict`` may return an ``(n, H, W)`` array or a list of masks of
    different sizes; ``y`` holds the true masks (255 ignored). Estimators of
    this package already score with mean IoU, so ``scoring=None`` gives the
    same numbers for them.

    Parameters
    ----------
    estimator : object
        Fitted estimator with a ``predict`` method returning masks.
    X : sequence of images or (n, H, W, 3) array
        Images passed to ``predict``.
    y : sequence of (H, W) masks or (n, H, W) array
        True masks.

    Returns
    -------
    score : float
        Mean IoU in [0, 1] (greater is better).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_psa.metrics import mean_iou_scorer
    >>> class Bright:  # a stand-in segmenter: class 1 where the red channel is bright
    ...     def predict(self, X):
    ...         return [(x[..., 0] > 127).astype(np.uint8) for x in X]
    >>> X = [np.zeros((2, 3, 3), np.uint8), np.full((4, 4, 3), 200, np.uint8)]
    >>> y = [np.zeros((2, 3), np.uint8), np.ones((4, 4), np.uint8)]
    >>> mean_iou_scorer(Bright(), X, y)
    1.0
    """
    n = len(X) if hasattr(X, "__len__") else None
    if n is not None:  # image-level labels stop a search (MasksRequiredError), not NaN
        y = check_score_masks(y, n, scorer="mean_iou_scorer")
    return mean_iou(y, estimator.predict(X))


def _class_names(class_names, n_classes):
    if class_names is None:
        return ["background"] + [str(c) for c in range(1, n_classes + 1)]
    names = [str(n) for n in class_names]
    if len(names) != n_classes:
        raise ValueError(
            f"class_names has {len(names)} names but there are {n_classes} classes: give one "
            "name per class 1..K (background is added as 'background')"
        )
    names = ["background"] + names
    seen = set()
    for n in names + ["mean"]:
        if n in seen:
            raise ValueError(
                f"class_names: name {n!r} is repeated or reserved ('background' and 'mean' "
                "are added by the report)"
            )
        seen.add(n)
    return names


@validate_params(
    {
        **_COMMON_CONSTRAINTS,
        "class_names": ["array-like", None],
        "output_dict": ["boolean"],
        "digits": [Interval(numbers.Integral, 0, None, closed="left")],
        "verbose": ["verbose"],
    },
    prefer_skip_nested_validation=True,
)
def segmentation_report(
    y_true,
    y_pred,
    *,
    class_names=None,
    n_classes=None,
    ignore_index=IGNORE_INDEX,
    output_dict=False,
    digits=1,
    verbose=0,
):
    """Per-class IoU, precision and recall, like the paper's tables.

    Pixels of all masks are counted together. For each class c (background
    first): ``IoU = TP / (TP + FP + FN)``, ``precision = TP / (TP + FP)``,
    ``recall = TP / (TP + FN)`` and ``support`` = number of true pixels of c
    (ignored pixels aside). A class that occurs in the truth or the prediction
    counts in every mean; where its precision or recall has a zero denominator
    (never predicted, or absent from the truth) the value is 0, as with
    scikit-learn's ``zero_division=0``. A class in neither has no scores
    (nan, printed "-") and is left out of the means, so the mean IoU row
    equals :func:`mean_iou`.

    Parameters
    ----------
    y_true, y_pred : sequence of (H, W) integer arrays or mask file paths, or (n, H, W) array
        True and predicted masks, as for :func:`mean_iou`.
    class_names : sequence of str, default=None
        Names of the classes 1..K (background excluded: it is added as
        "background"). Defaults to the class values ``"1"``, ``"2"``, ...
    n_classes : int, default=None
        Number of classes K; defaults to ``len(class_names)`` when given, else
        to the largest value seen.
    ignore_index : int or None, default=255
        True value whose pixels are skipped.
    output_dict : bool, default=False
        Return a dict of fractions instead of a printable table.
    digits : int, default=1
        Decimals of the percentages in the table (ignored with ``output_dict``).
    verbose : int, default=0
        1: a progress bar over the masks, erased when done; 2: it stays. Mask
        files are read one pair at a time whatever the setting.

    Returns
    -------
    report : str or dict
        The table, one row per class and a final "mean" row, in percentages:
        one row per class rather than one column per class (the paper's wide
        layout), so that the 21 VOC classes fit an 80-column terminal and any
        number of classes stays readable. With ``output_dict=True``:
        ``{name: {"iou", "precision", "recall", "support"}, ..., "mean": {...}}``
        with fractions in [0, 1] (nan for an absent class) and integer
        supports; the "mean" support is the total number of pixels scored.

    See Also
    --------
    mean_iou : the mean IoU alone.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_psa.metrics import segmentation_report
    >>> y_true = [np.array([[0, 0, 1, 1]]), np.array([[0, 255, 1]])]
    >>> y_pred = [np.array([[0, 1, 1, 1]]), np.array([[0, 1, 0]])]
    >>> print(segmentation_report(y_true, y_pred, class_names=["cat"]))
                  IoU  Precision  Recall  Support
    <BLANKLINE>
    background   50.0       66.7    66.7        3
    cat          50.0       66.7    66.7        3
    <BLANKLINE>
    mean         50.0       66.7    66.7        6
    >>> report = segmentation_report(y_true, y_pred, class_names=["cat"], output_dict=True)
    >>> report["cat"]["iou"], report["mean"]["support"]
    (0.5, 6)
    """
    if n_classes is None and class_names is not None:
        n_classes = len(class_names)
        if n_classes > _MAX_CLASSES:
            raise ValueError(f"class_names has {n_classes} names; at most {_MAX_CLASSES}")
    cm = _confusion(y_true, y_pred, n_classes, ignore_index, verbose)
    names = _class_names(class_names, cm.shape[0] - 1)
    iou, precision, recall, support = _per_class(cm)
    columns = {"iou": iou, "precision": precision, "recall": recall}
    means = {key: _mean(values) for key, values in columns.items()}
    means["support"] = int(support.sum())

    if output_dict:
        report = {
            name: {
                "iou": float(iou[c]),
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "support": int(support[c]),
            }
            for c, name in enumerate(names)
        }
        report["mean"] = means
        return report

    headers = ["IoU", "Precision", "Recall", "Support"]
    name_width = max(len(n) for n in names + ["mean"])
    value_width = digits + 4 if digits else 3  # "100.0" with digits=1
    widths = [max(len(h), value_width) for h in headers[:3]]
    widths.append(max(len(headers[3]), len(str(means["support"]))))

    def fmt(value):
        return "-" if np.isnan(value) else f"{100 * value:.{digits}f}"

    def line(first, cells):
        return f"{first:<{name_width}}" + "".join(
            f"  {cell:>{width}}" for cell, width in zip(cells, widths)
        )

    lines = [line("", headers), ""]
    for c, name in enumerate(names):
        lines.append(line(name, [fmt(iou[c]), fmt(precision[c]), fmt(recall[c]), support[c]]))
    lines.append("")
    lines.append(line("mean", [fmt(means["iou"]), fmt(means["precision"]),
                               fmt(means["recall"]), means["support"]]))
    return "\n".join(lines)


def _auc(same, score):
    """ROC AUC of ``score`` at telling ``same`` pairs from the others (nan with one kind)."""
    if same.size == 0 or same.all() or not same.any():
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(same, score))


def affinity_report(records, masks, *, alpha_low=4, alpha_high=32, crf=False, output_dict=False):
    """How good the affinity labels and the learned affinities of records are, against true masks.

    Reads the two things that decide the walk's gain: the pair labels an
    :class:`~sklearn_psa.AffinityEstimator` trains on (derived from the
    records' CAMs, as it derives them) and the affinities it predicted. Both
    are judged on the stride-8 grid against the true masks brought there by
    majority vote, over the pairs within the records' radius.

    - **labels**: the share of grid cells labelled confident foreground and
      confident background, how many of them the truth agrees with (a
      confident-foreground cell is right when the truth holds that class
      there, a background cell when it holds background), and for each kind
      of pair (background-positive, foreground-positive, negative) its number
      per image and the share whose truth agrees (same label for positives,
      different labels for negatives);
    - **affinity** (records with affinities): the ROC AUC of the affinity at
      telling pairs of one true label from pairs across labels, and the mean
      affinity of each kind, over every pair within the radius.

    Parameters
    ----------
    records : Records
        From ``CAMClassifier.transform`` (labels only) or
        ``AffinityEstimator.transform`` (labels and affinities).
    masks : sequence of (H, W) masks or (n, H, W) array
        True masks, one per record (0 background, ``j + 1`` class ``j``, 255
        ignored).
    alpha_low, alpha_high : float, default=4, 32
        The confident regions' background powers, as in ``AffinityEstimator``
        (pass the fitted estimator's values).
    crf : bool or dict, default=False
        The dense CRF on the confident regions, as ``AffinityEstimator(crf=...)``
        (its default is True; False is faster and shows the CAMs' own labels).
    output_dict : bool, default=False
        Return a dict instead of a text table.

    Returns
    -------
    report : str or dict
        With ``output_dict``: ``{"labels": {"fg_cells", "fg_precision",
        "bg_cells", "bg_precision", "true_fg_as_bg", "pairs": {kind: {"per_image",
        "precision"}}}, "affinity": {"pair_auc", "same_mean",
        "different_mean"} or None, "radius", "n_images"}``; shares are fractions.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_psa.metrics import affinity_report
    >>> from sklearn_psa.records import Records
    >>> mask = np.zeros((32, 32), np.uint8); mask[8:24, 8:24] = 1
    >>> cams = [mask[None].astype(np.float32)]            # a CAM exactly on the object
    >>> records = Records.from_arrays(np.zeros((1, 32, 32, 3), np.uint8), [[1]], cams)
    >>> report = affinity_report(records, [mask], output_dict=True)
    >>> report["labels"]["fg_precision"], report["labels"]["bg_precision"]
    (1.0, 1.0)
    """
    records = check_records(records, require_cams=True, require_affinity=False, name="records")
    masks = check_masks(masks, len(records), shapes=[r.shape for r in records])
    options = check_crf_options(crf)
    crf_fn = None if options is None else (lambda image, scores: dense_crf(image, scores, **options))
    radius = next((r.radius for r in records if r.radius is not None), 5)
    offsets = neighbor_offsets(radius)
    cells = fg = fg_ok = bg = bg_ok = true_fg = true_fg_bg = 0
    pairs, pairs_ok = np.zeros(3), np.zeros(3)
    same_all, score_all = [], []
    with_affinity = all(r.affinity is not None for r in records)
    for r, m in zip(records, masks):
        image = r.load_image() if crf_fn is not None else None
        g = affinity_label_map(r.cams, r.labels, alpha_low=alpha_low, alpha_high=alpha_high, image=image,
                               crf=crf_fn)
        t = downsample_mask(np.asarray(m))
        known = t != IGNORE_INDEX
        frm, to, inside = shifted_pairs(t, offsets)
        inside = inside & (frm != IGNORE_INDEX) & (to != IGNORE_INDEX)
        for i, kind in enumerate(affinity_pairs(g, offsets)):
            kind = kind & inside
            right = (frm == to)[kind] if i < 2 else (frm != to)[kind]
            pairs[i] += kind.sum()
            pairs_ok[i] += right.sum()
        is_fg, is_bg = (g > 0) & (g != IGNORE_INDEX) & known, (g == 0) & known
        cells += int(known.sum())
        fg += int(is_fg.sum()); fg_ok += int((is_fg & (g == t)).sum())  # noqa: E702
        bg += int(is_bg.sum()); bg_ok += int((is_bg & (t == 0)).sum())  # noqa: E702
        true_fg += int(((t > 0) & known).sum()); true_fg_bg += int(((t > 0) & known & is_bg).sum())  # noqa: E702
        if with_affinity:
            if r.affinity.shape != inside.shape:
                raise ValueError(f"records[{len(same_all)}]: affinity of shape {r.affinity.shape} does not match "
                                 f"its grid {inside.shape[1:]} and radius {radius}")
            same_all.append((frm == to)[inside])
            score_all.append(np.asarray(r.affinity)[inside])
    n = len(records)

    def share(a, b):
        return float(a / b) if b else float("nan")

    out = {
        "n_images": n,
        "radius": int(radius),
        "labels": {
            "fg_cells": share(fg, cells), "fg_precision": share(fg_ok, fg),
            "bg_cells": share(bg, cells), "bg_precision": share(bg_ok, bg),
            "true_fg_as_bg": share(true_fg_bg, true_fg),
            "pairs": {kind: {"per_image": float(pairs[i] / n), "precision": share(pairs_ok[i], pairs[i])}
                      for i, kind in enumerate(("bg_positive", "fg_positive", "negative"))},
        },
        "affinity": None,
    }
    if with_affinity:
        same, score = np.concatenate(same_all), np.concatenate(score_all).astype(np.float64)
        out["affinity"] = {"pair_auc": _auc(same, score),
                           "same_mean": float(score[same].mean()) if same.any() else float("nan"),
                           "different_mean": float(score[~same].mean()) if (~same).any() else float("nan")}
    if output_dict:
        return out
    lab = out["labels"]
    lines = [f"Affinity labels (alpha {alpha_low:g} / {alpha_high:g}, CRF {'on' if crf_fn else 'off'}) against "
             f"the true masks, {n} images, radius {radius}:",
             f"  confident foreground: {lab['fg_cells']:.1%} of the cells, {lab['fg_precision']:.1%} right",
             f"  confident background: {lab['bg_cells']:.1%} of the cells, {lab['bg_precision']:.1%} right "
             f"({lab['true_fg_as_bg']:.1%} of the object cells called background)",
             f"  {'pairs':<22}{'per image':>10}{'right':>9}"]
    for kind, v in lab["pairs"].items():
        lines.append(f"  {kind.replace('_', '-'):<22}{v['per_image']:>10.1f}{v['precision']:>9.1%}")
    if out["affinity"] is not None:
        a = out["affinity"]
        lines.append(f"Affinity: pair AUC {a['pair_auc']:.3f} (same-label pairs against the others); mean "
                     f"{a['same_mean']:.3f} within a label, {a['different_mean']:.3f} across labels")
    return "\n".join(lines)
