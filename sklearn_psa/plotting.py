"""Plots: CAM heatmaps (the paper's Figure 2), mask overlays, learned affinities and
synthesized masks (Figure 5).

matplotlib is optional; it is imported when a function here is called.
"""

import numbers

import numpy as np

from ._affinity_labels import affinity_label_map
from ._files import voc_palette
from ._grid import neighbor_offsets, shift_slices
from ._validation import (
    check_classes,
    check_image_item,
    check_images,
    check_mask_item,
    check_masks,
    check_scalar_in,
    describe,
    is_path,
)
from .records import Record, Records, check_records

__all__ = ["affinity_map", "plot_affinity", "plot_cams", "plot_mask", "plot_synthesized"]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "plotting needs matplotlib; install it with `pip install sklearn-psa[plot]`"
        ) from exc
    return plt


def _axes(n, axes, panel_size):
    plt = _pyplot()
    if axes is None:
        _, axes = plt.subplots(1, n, figsize=(panel_size * n, panel_size), squeeze=False)
        axes = axes[0]
    axes = list(np.ravel(axes))
    if len(axes) < n:
        raise ValueError(f"axes: need {n} axes for this plot, got {len(axes)}")
    return axes[:n]


def _check_record(record, *, require_cams=False, require_affinity=False, name="record"):
    """Check that ``record`` is one consistent :class:`~sklearn_psa.records.Record`."""
    if isinstance(record, Records):
        raise TypeError(
            f"{name}: expected one Record, got Records of {len(record)} records; "
            "pass one of them, e.g. `records[0]`"
        )
    if not isinstance(record, Record):
        raise TypeError(
            f"{name}: expected a Record (an item of the Records from CAMClassifier.transform "
            f"or AffinityEstimator.transform), got {describe(record)}"
        )
    if require_cams and record.cams is None:
        raise ValueError(f"{name} has no CAMs (it did not come from CAMClassifier)")
    if require_affinity and record.affinity is None:
        raise ValueError(f"{name} has no affinity: run AffinityEstimator.transform first")
    # the record's own layout (cams and affinity against labels and image size); a
    # one-record Records, with as many classes as its labels need
    n_classes = max(int(record.labels.max(initial=0)) + 1, 1)
    check_records(Records([record], n_classes), require_cams=require_cams,
                  require_affinity=require_affinity, name=name)
    return record


def _check_mask_column(masks, records, name):
    """``masks``: one (H, W) mask per record, at its image's size, values 0..K or 255."""
    return check_masks(masks, len(records), n_classes=records.n_classes,
                       shapes=[r.shape for r in records], name=name, of=("records", "record"))


def plot_cams(record, *, class_names=None, background_alpha=None, axes=None, cmap="jet",
              overlay=0.5, panel_size=3.0):
    """Show an image and its class activation maps, as in Figure 2 of the paper.

    Panels: the image; one heatmap per class present, drawn over the image
    (brighter = more confident object region); and, with
    ``background_alpha``, the background map ``(1 - max_c M_c) ** alpha``
    (darker = more confident background).

    Parameters
    ----------
    record : sklearn_psa.records.Record
        One record (e.g. ``records[0]``) of the Records from
        :meth:`CAMClassifier.transform` or ``fit_transform``.
    class_names : sequence of str, optional
        Names of all class columns, such as a fitted estimator's
        ``class_names_`` (default: ``"class k"`` for column ``k - 1``, named
        after its mask value ``k`` as in the reports).
    background_alpha : float, optional
        Also draw the background CAM with this exponent (non-negative).
    axes : array of matplotlib Axes, optional
        Where to draw (one per panel); new figure by default.
    cmap : str, default="jet"
    overlay : float, default=0.5
        Opacity of the heatmaps over the image, in [0, 1].
    panel_size : float, default=3.0
        Inches per panel of a new figure.

    Returns
    -------
    axes : list of matplotlib Axes

    Examples
    --------
    >>> import numpy as np, matplotlib
    >>> matplotlib.use("Agg")
    >>> from sklearn_psa.records import Record
    >>> from sklearn_psa.plotting import plot_cams
    >>> r = Record(np.zeros((8, 8, 3), np.uint8), [1], np.random.rand(1, 8, 8).astype(np.float32))
    >>> [ax.get_title() for ax in plot_cams(r, class_names=["cat", "dog"], background_alpha=4)]
    ['image', 'dog', 'background (alpha=4)']
    """
    _check_record(record, require_cams=True)
    if background_alpha is not None:
        check_scalar_in(background_alpha, "background_alpha", low=0)
    check_scalar_in(overlay, "overlay", 0, 1)
    labels = np.asarray(record.labels)
    if class_names is not None:
        if isinstance(class_names, str):
            raise TypeError(
                f"class_names is a single string ({class_names!r}): expected a sequence of "
                "names, one per class column"
            )
        class_names = list(class_names)
        if labels.size and labels.max() >= len(class_names):
            raise ValueError(
                f"class_names has {len(class_names)} names but the record has class {int(labels.max())}"
            )
    image = record.load_image()
    n = 1 + len(labels) + (background_alpha is not None)
    axes = _axes(n, axes, panel_size)
    axes[0].imshow(image)
    axes[0].set_title("image")
    for k, c in enumerate(labels):
        ax = axes[1 + k]
        ax.imshow(image)
        ax.imshow(record.cams[k], cmap=cmap, alpha=overlay, vmin=0, vmax=1)
        ax.set_title(class_names[c] if class_names is not None else f"class {int(c) + 1}")
    if background_alpha is not None:
        top = record.cams.max(0) if len(labels) else np.zeros(record.shape, np.float32)
        ax = axes[-1]
        ax.imshow(image)
        ax.imshow((1.0 - top) ** background_alpha, cmap="gray", alpha=overlay + (1 - overlay) / 2,
                  vmin=0, vmax=1)
        ax.set_title(f"background (alpha={background_alpha:g})")
    for ax in axes:
        ax.set_axis_off()
    return axes


def plot_mask(image, mask, *, ax=None, alpha=0.5, title=None, n_classes=None, class_names=None):
    """Draw a segmentation mask in the VOC palette over its image.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8, PIL image or str
        The image (grayscale and RGBA uint8 are converted), or its path.
    mask : ndarray of shape (H, W) or str
        0 background, 1..K classes, 255 ignore (drawn in the palette's colours;
        background is left transparent), or the path of a mask file.
    ax : matplotlib Axes, optional
    alpha : float, default=0.5
        Opacity of the mask colours, in [0, 1].
    title : str, optional
    n_classes : int, optional
        Number of classes K; if given, mask values above it (other than 255)
        are errors.
    class_names : sequence of str, optional
        Names of the classes 1..K (a fitted estimator's ``class_names_``):
        adds a legend of the classes in the mask, in their colours. Implies
        ``n_classes=len(class_names)``.

    Returns
    -------
    ax : matplotlib Axes

    Examples
    --------
    >>> import numpy as np, matplotlib
    >>> matplotlib.use("Agg")
    >>> from sklearn_psa.plotting import plot_mask
    >>> mask = np.zeros((8, 8), np.uint8)
    >>> mask[2:5, 2:5] = 2
    >>> ax = plot_mask(np.zeros((8, 8, 3), np.uint8), mask, class_names=["cat", "dog"])
    >>> [t.get_text() for t in ax.get_legend().get_texts()]
    ['dog']
    """
    if is_path(image):
        image = check_images([image], name="image")[0]
    else:
        image = check_image_item(image, "image")
    if class_names is not None:
        class_names = check_classes(class_names, name="class_names")
        if n_classes is not None and n_classes != len(class_names):
            raise ValueError(
                f"class_names has {len(class_names)} names but n_classes is {n_classes}"
            )
        n_classes = len(class_names)
    if n_classes is not None:
        check_scalar_in(n_classes, "n_classes", low=1, integer=True)
    mask = check_mask_item(mask, "mask", n_classes, image.shape[:2])
    check_scalar_in(alpha, "alpha", 0, 1)
    if ax is None:
        _, ax = _pyplot().subplots()
    palette = np.asarray(voc_palette(), np.uint8).reshape(-1, 3)
    rgba = np.zeros(mask.shape + (4,), np.float32)
    rgba[..., :3] = palette[mask] / 255.0
    rgba[..., 3] = np.where(mask > 0, alpha, 0.0)
    ax.imshow(image)
    ax.imshow(rgba)
    if class_names is not None:
        from matplotlib.patches import Patch

        present = [int(v) for v in np.unique(mask) if 0 < v <= len(class_names)]
        if present:
            ax.legend(handles=[Patch(color=palette[v] / 255.0, label=class_names[v - 1])
                               for v in present], loc="upper right", fontsize="small")
    if title is not None:
        ax.set_title(title)
    ax.set_axis_off()
    return ax


def affinity_map(affinity, offsets):
    """Mean affinity of each grid cell to its neighbours within the radius.

    Every pair stored in ``affinity`` counts for both of its cells; pairs whose
    neighbour lies outside the grid do not count. Low values mark cells on a
    boundary between regions: the picture of the paper's Figure 5(d).

    Parameters
    ----------
    affinity : ndarray of shape (K, h, w)
        ``affinity[k, y, x]`` between ``(y, x)`` and ``(y + dy_k, x + dx_k)``.
    offsets : ndarray of shape (K, 2)
        ``neighbor_offsets(radius)``.

    Returns
    -------
    mean : ndarray of shape (h, w), float64

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_psa.plotting import affinity_map
    >>> offsets = np.array([[0, 1]])              # right neighbour only
    >>> aff = np.array([[[0.5, 0.0], [1.0, 0.0]]])  # column 1 has no right neighbour
    >>> affinity_map(aff, offsets)
    array([[0.5, 0.5],
           [1. , 1. ]])
    """
    affinity = _numeric_array(affinity, "affinity", "a (K, h, w) array")
    offsets = _numeric_array(offsets, "offsets", "a (K, 2) integer array")
    if offsets.ndim == 1 and offsets.shape == (2,):
        offsets = offsets[None]
    if offsets.ndim != 2 or offsets.shape[1] != 2:
        raise ValueError(
            f"offsets: expected a (K, 2) integer array of (dy, dx), got shape {offsets.shape}"
        )
    if not np.all(offsets == np.round(offsets)):
        raise ValueError("offsets: expected integer (dy, dx), got fractional values")
    offsets = offsets.astype(np.int64)
    if affinity.ndim != 3 or affinity.shape[0] != len(offsets):
        raise ValueError(
            f"affinity: expected a (K, h, w) array with K = {len(offsets)} (one map per row "
            f"of offsets), got shape {affinity.shape}"
        )
    _, h, w = affinity.shape
    total = np.zeros((h, w))
    count = np.zeros((h, w))
    for k, (dy, dx) in enumerate(offsets):
        (ys, xs), (yt, xt) = shift_slices(int(dy), int(dx), h, w)
        a = affinity[k, ys, xs]
        total[ys, xs] += a
        count[ys, xs] += 1
        total[yt, xt] += a
        count[yt, xt] += 1
    return np.divide(total, count, out=np.ones((h, w)), where=count > 0)


def _numeric_array(obj, name, expected):
    try:
        arr = np.asarray(obj, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected {expected} of numbers, got {describe(obj)}") from exc
    return arr


def _upsample(grid, shape):
    """Nearest upsampling of a grid map to ``shape`` (each cell covers its 8x8 block)."""
    H, W = shape
    h, w = grid.shape
    ys = np.minimum(np.arange(H) * h // H, h - 1)
    xs = np.minimum(np.arange(W) * w // W, w - 1)
    return grid[ys][:, xs]


def _color_mask(mask):
    return voc_palette()[np.asarray(mask, dtype=np.uint8)]


def _color_cams(image, record):
    """Image blended with each class's CAM in its mask colour."""
    base = image.astype(np.float64) * 0.4
    if record.cams is None or record.cams.shape[0] == 0:
        return base.astype(np.uint8)
    colours = voc_palette()[record.labels + 1].astype(np.float64)  # (L, 3)
    cams = np.clip(record.cams.astype(np.float64), 0, 1)
    top = cams.argmax(axis=0)
    strength = cams.max(axis=0)[..., None]
    return np.clip(base * (1 - strength) + colours[top] * strength, 0, 255).astype(np.uint8)


def plot_affinity(record, ax=None, *, show_image=True):
    """Show a record's learned affinities (Figure 5(d)): dark cells lie on boundaries.

    Parameters
    ----------
    record : Record
        One record (e.g. ``records[0]``) with ``affinity`` and ``radius`` (from
        ``AffinityEstimator.transform``).
    ax : matplotlib Axes, optional
    show_image : bool
        Blend the image under the map.

    Returns
    -------
    ax : matplotlib Axes
    """
    plt = _pyplot()
    _check_record(record, require_affinity=True)
    if ax is None:
        _, ax = plt.subplots()
    amap = _upsample(affinity_map(record.affinity, neighbor_offsets(record.radius)), record.shape)
    if show_image:
        gray = record.load_image().astype(np.float64).mean(axis=2) / 255.0
        ax.imshow(0.75 * amap + 0.25 * gray, cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(amap, cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    return ax


def plot_synthesized(records, masks, true_masks=None, *, indices=None, max_images=4, figsize=None,
                     label_alphas=None):
    """The paper's Figure 5: image, ground truth, CAMs, affinities, synthesized mask.

    Parameters
    ----------
    records : Records
        With CAMs and affinities (``AffinityEstimator.transform``).
    masks : sequence of (H, W) masks or (n, H, W) array
        Synthesized masks (e.g. ``RandomWalkRefiner.predict``), one per record,
        each at its image's size; values 0..K or 255.
    true_masks : sequence of (H, W) masks or (n, H, W) array, optional
        Ground truth column (left out when None), like ``masks``.
    indices : sequence of int, optional
        Records to show (default: the first ``max_images``).
    max_images : int, default=4
        At least 1; used when ``indices`` is None.
    figsize : tuple, optional
    label_alphas : (float, float), optional
        ``(alpha_low, alpha_high)`` of the affinity step (e.g. the fitted
        ``AffinityEstimator``'s): adds a column of the confident labels it
        trains on, on the stride-8 grid without the CRF (object colours,
        black background, cream "ignored"); with ``true_masks`` beside it,
        wrong labels are easy to see (``sklearn_psa.metrics.affinity_report``
        counts them).

    Returns
    -------
    fig : matplotlib Figure
    """
    plt = _pyplot()
    check_records(records, require_cams=label_alphas is not None, require_affinity=True, name="records")
    if label_alphas is not None:
        try:
            alpha_low, alpha_high = (float(a) for a in label_alphas)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"label_alphas: expected (alpha_low, alpha_high), got {label_alphas!r}") from exc
    n = len(records)
    masks = _check_mask_column(masks, records, "masks")
    if true_masks is not None:
        true_masks = _check_mask_column(true_masks, records, "true_masks")
    if indices is None:
        check_scalar_in(max_images, "max_images", low=1, integer=True)
        indices = list(range(min(n, max_images)))
    else:
        if isinstance(indices, numbers.Integral):
            raise TypeError(f"indices is a single int ({indices}): expected a sequence; "
                            f"wrap it in a list")
        try:
            indices = list(indices)
        except TypeError as exc:
            raise TypeError(
                f"indices: expected a sequence of record indices, got {describe(indices)}"
            ) from exc
        if not indices:
            raise ValueError("indices is empty: expected at least one record index")
        for k, i in enumerate(indices):
            check_scalar_in(i, f"indices[{k}]", low=-n, high=n - 1, integer=True)
    columns = ["image"] + (["ground truth"] if true_masks is not None else []) + ["CAMs"] + (
        ["affinity labels"] if label_alphas is not None else []) + ["affinities", "synthesized"]
    fig, axes = plt.subplots(len(indices), len(columns), squeeze=False,
                             figsize=figsize or (2.2 * len(columns), 2.2 * len(indices)))
    for row, i in enumerate(indices):
        record = records[i]
        image = record.load_image()
        panels = [image]
        if true_masks is not None:
            panels.append(_color_mask(true_masks[i]))
        panels.append(_color_cams(image, record))
        if label_alphas is not None:
            grid = affinity_label_map(record.cams, record.labels, alpha_low=alpha_low, alpha_high=alpha_high)
            panels.append(_color_mask(_upsample(grid, record.shape)))
        for col, panel in enumerate(panels):
            axes[row, col].imshow(panel)
            axes[row, col].set_axis_off()
        plot_affinity(record, axes[row, len(panels)], show_image=False)
        axes[row, -1].imshow(_color_mask(masks[i]))
        axes[row, -1].set_axis_off()
    for col, name in enumerate(columns):
        axes[0, col].set_title(name, fontsize=9)
    fig.tight_layout()
    return fig
