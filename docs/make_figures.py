"""Draw the figures of the documentation into ``docs/images/``.

Usage::

    python docs/make_figures.py            # every figure
    python docs/make_figures.py shapes     # only the named ones

To add a figure, write a function that returns a matplotlib ``Figure`` (or
``(figure, save_options)``) and decorate it with ``@figure("name")``: it is
saved as ``docs/images/name.png``.
Figures are drawn from fixed seeds, so rerunning gives the same pictures.
"""

import argparse
import io
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DOCS = Path(__file__).resolve().parent
IMAGES = DOCS / "images"
if str(DOCS.parent) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(DOCS.parent))
FIGURES = {}


def figure(name):
    """Register a function returning a matplotlib Figure as ``docs/images/<name>.png``.

    The function may also return ``(figure, options)``, options being keyword
    arguments of :func:`save`.
    """

    def register(func):
        FIGURES[name] = func
        return func

    return register


def save(fig, path, *, dpi=100, colors=256, keep=()):
    """Save ``fig`` as a PNG, reduced to a ``colors``-colour palette to stay small.

    Noisy photos compress badly; a 256-colour palette keeps them readable at a
    fraction of the size. ``keep`` lists RGB colours that must be in the palette
    exactly (small saturated details that a median cut would blur away). Pass
    ``colors=None`` to keep full colour.
    """
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    plt.close(fig)
    buf.seek(0)
    img = Image.open(buf).convert("RGB")
    if colors:
        keep = np.unique(np.asarray(keep, dtype=np.uint8).reshape(-1, 3), axis=0)
        cut = img.quantize(colors=colors - len(keep), method=Image.Quantize.MEDIANCUT)
        found = np.asarray(cut.getpalette()[: 3 * (colors - len(keep))], dtype=np.uint8)
        palette = np.concatenate([found.reshape(-1, 3), keep]).ravel()
        target = Image.new("P", (1, 1))
        target.putpalette(palette.tolist())
        img = img.quantize(palette=target, dither=Image.Dither.NONE)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG", optimize=True)
    return path


@figure("shapes")
def shapes_figure(n_images=8, random_state=3):
    """make_shapes samples: each image above its mask, and the part that marks each class."""
    from matplotlib.legend_handler import HandlerTuple
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from sklearn_psa.datasets import make_shapes
    from sklearn_psa.datasets._shapes import part_style
    from sklearn_psa.io import voc_palette

    n_classes = 4
    X, Y, masks = make_shapes(n_images, n_classes=n_classes, random_state=random_state)
    palette = voc_palette()
    fig, axes = plt.subplots(2, n_images, figsize=(1.7 * n_images, 4.1))
    for i in range(n_images):
        axes[0, i].imshow(X[i], interpolation="nearest")
        axes[1, i].imshow(palette[masks[i]], interpolation="nearest")
        present = [str(j) for j in np.flatnonzero(Y[i])]
        axes[0, i].set_title("y: " + (", ".join(present) if present else "none"), fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("X", fontsize=10)
    axes[1, 0].set_ylabel("masks", fontsize=10)
    # One legend entry per class: the part that marks it (marker of its shape and
    # colour) and the colour of its mask value in the VOC palette.
    markers = {"disc": "o", "square": "s", "triangle": "^", "cross": "P", "ring": "o"}
    handles, labels = [], []
    for j in range(n_classes):
        shape, colour = part_style(j)
        rgb = np.array(colour) / 255.0
        part = Line2D(
            [], [], linestyle="none", marker=markers[shape], markersize=8,
            markerfacecolor="none" if shape == "ring" else rgb, markeredgecolor=rgb,
            markeredgewidth=2 if shape == "ring" else 0.5,
        )
        handles.append((part, Patch(facecolor=palette[j + 1] / 255.0, edgecolor="black")))
        labels.append(f"class {j}: {shape} part, mask {j + 1}")
    handles.append(Patch(facecolor="black", edgecolor="black"))
    labels.append("background, mask 0")
    fig.legend(
        handles, labels, loc="lower center", ncol=n_classes + 1, fontsize=8, frameon=False,
        handler_map={tuple: HandlerTuple(ndivide=None, pad=0.6)}, handlelength=3,
    )
    fig.subplots_adjust(left=0.03, right=0.995, top=0.93, bottom=0.1, wspace=0.05, hspace=0.06)
    # Keep the part colours and the mask colours exact in the PNG palette.
    keep = [part_style(j)[1] for j in range(n_classes)] + list(palette[: n_classes + 1])
    return fig, {"keep": keep}


@figure("shapes_settings")
def shapes_settings_figure(n_images=6, random_state=1):
    """make_shapes across its knobs: the same seed for every row, so rows show the same scenes."""
    from sklearn_psa.datasets import make_shapes

    settings = [
        ({"body_class_strength": 0.0, "distractors": "bodies"}, "hard case:\nstrength 0, bodies"),
        ({"body_class_strength": 0.0, "distractors": "background"}, "strength 0,\nbackground"),
        ({}, "default:\nstrength 0.25,\nbackground"),
        ({"body_class_strength": 0.5}, "strength 0.5,\nbackground"),
        ({"body_class_strength": 1.0}, "strength 1,\nbackground"),
        ({"distractors": None}, "strength 0.25,\nno clutter"),
    ]
    fig, axes = plt.subplots(len(settings), n_images, figsize=(1.6 * n_images + 0.6, 1.6 * len(settings)))
    for row, (kw, name) in enumerate(settings):
        X, Y, _ = make_shapes(n_images, random_state=random_state, **kw)
        for i in range(n_images):
            ax = axes[row, i]
            ax.imshow(X[i], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            present = [str(j) for j in np.flatnonzero(Y[i])]
            ax.text(2, 2, "y: " + (", ".join(present) if present else "none"), fontsize=7, va="top",
                    bbox={"facecolor": "white", "alpha": 0.7, "pad": 1, "linewidth": 0})
        axes[row, 0].set_ylabel(name, fontsize=8)
    fig.subplots_adjust(left=0.1, right=0.995, top=0.995, bottom=0.005, wspace=0.04, hspace=0.04)
    return fig


@figure("shapes_cams")
def shapes_cams_figure(n_images=6, n_train=160, random_state=0):
    """CAMs of a CAMClassifier trained on make_shapes: they cover the parts, not the bodies."""
    import matplotlib.pyplot as plt
    import numpy as np

    from sklearn_psa import CAMClassifier
    from sklearn_psa.datasets import make_shapes
    from sklearn_psa.io import voc_palette

    X, Y, masks = make_shapes(n_train, random_state=random_state)
    records = CAMClassifier(backbone="tiny", max_epochs=30, random_state=random_state).fit_transform(X, Y)
    # Share of object pixels where the CAM of the object's class exceeds 0.5.
    hit = total = 0
    for r, m in zip(records, masks):
        for j, c in enumerate(r.labels):
            obj = m == c + 1
            hit += int((r.cams[j][obj] > 0.5).sum())
            total += int(obj.sum())
    coverage = hit / max(total, 1)
    picks = [i for i in range(n_train) if Y[i].any()][:n_images]
    palette = voc_palette()
    fig, axes = plt.subplots(3, len(picks), figsize=(1.9 * len(picks), 6.0), squeeze=False)
    for col, i in enumerate(picks):
        r = records[i]
        cam = r.cams.max(axis=0) if len(r.labels) else np.zeros(r.shape)
        axes[0, col].imshow(X[i])
        axes[1, col].imshow(palette[masks[i]])
        axes[2, col].imshow(X[i].mean(axis=2), cmap="gray", vmin=0, vmax=255)
        axes[2, col].imshow(cam, cmap="jet", alpha=0.55, vmin=0, vmax=1)
        for row in range(3):
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
    for row, name in enumerate(["X", "true mask", "CAM (max over\nclasses present)"]):
        axes[row, 0].set_ylabel(name)
    fig.suptitle(f"CAMClassifier (tiny, 30 epochs, {n_train} images): CAM > 0.5 on "
                 f"{coverage:.0%} of object pixels", fontsize=10)
    fig.tight_layout()
    print(f"CAM > 0.5 on {coverage:.1%} of object pixels")
    return fig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="*", help=f"figures to draw (default all: {sorted(FIGURES)})"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(FIGURES))
    if unknown:
        parser.error(f"unknown figure(s) {unknown}; known: {sorted(FIGURES)}")
    for name in args.names or sorted(FIGURES):
        result = FIGURES[name]()
        fig, options = result if isinstance(result, tuple) else (result, {})
        path = save(fig, IMAGES / f"{name}.png", **options)
        print(f"{path}  {path.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    sys.exit(main())
