"""Plots: CAM heatmaps over the image (Figure 2 of the paper) and mask overlays.

matplotlib is optional; it is imported when a function here is called.
"""

import numpy as np

__all__ = ["plot_cams", "plot_mask"]


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
        raise ValueError(f"need {n} axes for this plot, got {len(axes)}")
    return axes[:n]


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
        A record from :meth:`CAMClassifier.transform` or ``fit_transform``.
    class_names : sequence of str, optional
        Names of all class columns (default ``"class j"``).
    background_alpha : float, optional
        Also draw the background CAM with this exponent.
    axes : array of matplotlib Axes, optional
        Where to draw (one per panel); new figure by default.
    cmap : str, default="jet"
    overlay : float, default=0.5
        Opacity of the heatmaps over the image.
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
    if record.cams is None:
        raise ValueError("the record has no CAMs (it did not come from CAMClassifier)")
    labels = np.asarray(record.labels)
    if class_names is not None:
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
        ax.set_title(class_names[c] if class_names is not None else f"class {int(c)}")
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


def plot_mask(image, mask, *, ax=None, alpha=0.5, title=None):
    """Draw a segmentation mask in the VOC palette over its image.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8
    mask : ndarray of shape (H, W)
        0 background, 1..K classes, 255 ignore (drawn in the palette's colours;
        background is left transparent).
    ax : matplotlib Axes, optional
    alpha : float, default=0.5
    title : str, optional

    Returns
    -------
    ax : matplotlib Axes
    """
    from .io import voc_palette

    mask = np.asarray(mask)
    image = np.asarray(image)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask has shape {mask.shape} but the image is {image.shape[:2]}")
    if ax is None:
        _, ax = _pyplot().subplots()
    palette = np.asarray(voc_palette(), np.uint8).reshape(-1, 3)
    rgba = np.zeros(mask.shape + (4,), np.float32)
    rgba[..., :3] = palette[mask.astype(np.uint8)] / 255.0
    rgba[..., 3] = np.where(mask > 0, alpha, 0.0)
    ax.imshow(image)
    ax.imshow(rgba)
    if title is not None:
        ax.set_title(title)
    ax.set_axis_off()
    return ax
