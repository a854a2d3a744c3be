"""
==================================================
AffinityNet as a scikit-learn Pipeline, end to end
==================================================

Image-level labels in, pixel masks out. The three steps of AffinityNet chain in a
:class:`~sklearn.pipeline.Pipeline`:

1. :class:`~sklearn_psa.CAMClassifier` learns to tell which classes an image holds and gives
   class activation maps (CAMs), which cover only the most discriminative part of each object;
2. :class:`~sklearn_psa.AffinityEstimator` learns which neighbouring pixels belong together
   from the confident parts of those CAMs;
3. :class:`~sklearn_psa.RandomWalkRefiner` spreads the CAMs along the learned affinities and
   takes the argmax.

Then :class:`~sklearn_psa.PSASegmenter` does the same and trains a segmentation network on the
masks it synthesized, which then predicts new images on its own.

Runs in a few minutes on a laptop CPU (``--quick``: under a minute, small data and few
epochs, to check that it runs; its figures show little). It writes the figures a user looks
at to ``--output`` (default ``gallery/plot_pipeline``): ``cams.png`` (CAMs), ``figure5.png``
(image, truth, CAMs, affinities, synthesized mask, as the paper's Figure 5),
``walk_steps.png`` (the mask after t = 0, 4, 16, 64, 256 steps of the walk) and
``predictions.png`` (predictions against the truth)::

    python examples/plot_pipeline.py [--quick] [--output DIR]
"""

# %%
# Data: objects whose class shows only in a small part
# ----------------------------------------------------
# :func:`~sklearn_psa.datasets.make_shapes` draws textured bodies, each carrying a small
# class-specific part (the body's look says a little about the class too), on cluttered
# backgrounds. The training labels ``Y`` say only which classes each image holds.
import argparse
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
from sklearn.pipeline import Pipeline

from sklearn_psa import AffinityEstimator, CAMClassifier, PSASegmenter, RandomWalkRefiner
from sklearn_psa.datasets import make_shapes
from sklearn_psa.io import voc_palette
from sklearn_psa.metrics import segmentation_report
from sklearn_psa.plotting import plot_cams, plot_synthesized

parser = argparse.ArgumentParser(description="AffinityNet as a Pipeline, with its figures")
parser.add_argument("--quick", action="store_true", help="small data, few epochs: < 1 minute")
parser.add_argument("--output", default="gallery/plot_pipeline", help="folder for the figures")
args, _ = parser.parse_known_args()  # (a notebook's kernel adds arguments of its own)
out = Path(args.output)
out.mkdir(parents=True, exist_ok=True)
# full settings, and the quick ones
n_train, n_test, size = (240, 60, 128) if not args.quick else (48, 12, 64)
cam_epochs, affinity_epochs, seg_epochs = (100, 6, 20) if not args.quick else (8, 1, 2)

X, Y, masks = make_shapes(n_samples=n_train, image_size=size, random_state=0)
X_test, Y_test, masks_test = make_shapes(n_samples=n_test, image_size=size, random_state=1000)
classes = ["disc", "square", "triangle", "cross"]  # make_shapes' class parts, in order
print(X.shape, Y.shape, "labels of the first image:", Y[0])

# %%
# The pipeline
# ------------
# ``memory`` caches the fitted CAM and affinity steps: changing the walk's parameters later
# does not retrain them. ``y`` holds image-level labels only. The small networks train from
# scratch (``backbone="tiny"``), so the CAM classifier needs many epochs (100, as the demo's
# fallback: at 30 it has not converged). The paper's walk (alpha 16, beta 8) suits VOC's CAMs;
# these flatter ones want a weaker background and a sharper affinity (alpha 2, beta 16, chosen
# on the training images as ``plot_grid_search.py`` shows).
cache = tempfile.mkdtemp()
pipe = Pipeline(
    [
        ("cam", CAMClassifier(backbone="tiny", max_epochs=cam_epochs, classes=classes,
                              random_state=0)),
        ("affinity", AffinityEstimator(backbone="tiny", max_epochs=affinity_epochs,
                                       random_state=0)),
        ("rw", RandomWalkRefiner(alpha=2, beta=16, t=256)),
    ],
    memory=cache,
)
pipe.fit(X, Y)
pred = pipe.predict(X_test)  # CAMs of the predicted classes, affinities, the walk
print(f"CAM + random walk on test images: mIoU {pipe.score(X_test, masks_test):.3f}")

# %%
# The walk's contribution: ``t=0`` is the CAM alone. The walk learns nothing, so its
# parameters can change on the fitted pipeline without any retraining. On ``make_shapes`` the
# affinity AffinityNet learns from these CAMs gains little, and on test images (CAMs of the
# predicted classes) it can lose: docs/benchmarks.md measures why.
pipe.set_params(rw__t=0)
cam_only = pipe.predict(X_test)
print(f"CAM alone on test images:           mIoU {pipe.score(X_test, masks_test):.3f}")
pipe.set_params(rw__t=256)

# %%
# What the steps see
# ------------------
# The records of the test images (CAMs of the predicted classes, then affinities), for the
# pictures: each class's CAM, the paper's Figure 5, and the walk step by step (``t = 0`` is
# the CAM alone). Class names come from the fitted CAM step (``class_names_``).
records = pipe[:-1].transform(X_test[:4])
names = pipe["cam"].class_names_
columns = 2 + max(max(len(r.labels) for r in records), 1)  # image, CAMs, background
fig, axes = plt.subplots(3, columns, figsize=(2.5 * columns, 7.5))
for row, record in zip(axes, records):
    for ax in row:
        ax.set_axis_off()
    plot_cams(record, class_names=names, background_alpha=2, axes=row[:2 + len(record.labels)])
fig.tight_layout()
fig.savefig(out / "cams.png", dpi=80)

fig = plot_synthesized(records, pipe["rw"].predict(records), masks_test[:4])
fig.savefig(out / "figure5.png", dpi=80)

steps = [0, 4, 16, 64, 256]
fig, axes = plt.subplots(1, len(steps) + 2, figsize=(2.2 * (len(steps) + 2), 2.6))
axes[0].imshow(X_test[0])
axes[0].set_title("image")
axes[-1].imshow(voc_palette()[masks_test[0]], interpolation="nearest")
axes[-1].set_title("truth")
for ax, t in zip(axes[1:], steps):
    walked = pipe["rw"].set_params(t=t).predict(records[:1])[0]
    ax.imshow(voc_palette()[walked], interpolation="nearest")
    ax.set_title(f"t = {t}")
pipe.set_params(rw__t=256)
for ax in axes:
    ax.set_axis_off()
fig.tight_layout()
fig.savefig(out / "walk_steps.png", dpi=80)

# %%
# An affinity with no training
# ----------------------------
# :class:`~sklearn_psa.FeatureAffinity` compares EfficientNet-Lite0's early ImageNet features
# instead of training AffinityNet (it needs the ``pretrained`` extra). Thanks to ``memory`` the
# CAM step is not fitted again. docs/benchmarks.md measures where it helps (the synthesized
# masks) and where it does not (the segmenter trained on them).
from sklearn.base import clone

from sklearn_psa import FeatureAffinity
from sklearn_psa.nn import pretrained_weights_installed

if pretrained_weights_installed("efficientnet_lite0"):
    pipe_features = clone(pipe).set_params(affinity=FeatureAffinity())
    pipe_features.fit(X, Y)
    print(f"CAM + walk, FeatureAffinity:        mIoU {pipe_features.score(X_test, masks_test):.3f}")

# %%
# A segmentation network trained on the synthesized masks
# --------------------------------------------------------
# :class:`~sklearn_psa.PSASegmenter` runs the same three steps on the training images (with
# their true image-level labels, as the paper does), keeps the synthesized masks in
# ``pseudo_labels_`` and trains a DeepLab-style network on them; ``predict`` then needs
# neither CAMs nor the walk. Nested parameters work as in a pipeline.
# The segmenter's ``backbone`` is its steps' too, and ``classes`` names the classes for the
# report.
seg = PSASegmenter(backbone="tiny", max_epochs=seg_epochs, classes=classes, random_state=0,
                   memory=cache)
seg.set_params(cam__max_epochs=cam_epochs, affinity__max_epochs=affinity_epochs,
               refiner__alpha=2, refiner__beta=16)
seg.fit(X, Y)
seg_pred = seg.predict(X_test)
print(segmentation_report(masks_test, seg_pred, class_names=seg.class_names_))

# %%
# Pictures
# --------
palette = voc_palette()
columns = [("image", X_test, None), ("CAM alone", cam_only, True),
           ("CAM + walk", pred, True), ("PSASegmenter", seg_pred, True),
           ("truth", masks_test, True)]
fig, axes = plt.subplots(4, len(columns), figsize=(2 * len(columns), 8))
for c, (title, items, is_mask) in enumerate(columns):
    axes[0, c].set_title(title)
    for r in range(4):
        axes[r, c].imshow(palette[items[r]] if is_mask else items[r], interpolation="nearest")
        axes[r, c].set_axis_off()
fig.tight_layout()
fig.savefig(out / "predictions.png", dpi=80)
print("figures written to", out)
