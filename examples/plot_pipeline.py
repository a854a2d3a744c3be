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

Runs in a few minutes on a laptop CPU.
"""

# %%
# Data: objects whose class shows only in a small part
# ----------------------------------------------------
# :func:`~sklearn_psa.datasets.make_shapes` draws striped bodies that look alike for every
# class, each carrying a small class-specific part, on cluttered backgrounds. The training
# labels ``Y`` say only which classes each image holds.
import tempfile

import matplotlib.pyplot as plt
from sklearn.pipeline import Pipeline

from sklearn_psa import AffinityEstimator, CAMClassifier, PSASegmenter, RandomWalkRefiner
from sklearn_psa.datasets import make_shapes
from sklearn_psa.io import voc_palette
from sklearn_psa.metrics import segmentation_report

X, Y, masks = make_shapes(n_samples=240, random_state=0)
X_test, Y_test, masks_test = make_shapes(n_samples=60, random_state=1000)
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
        ("cam", CAMClassifier(backbone="tiny", max_epochs=100, random_state=0)),
        ("affinity", AffinityEstimator(backbone="tiny", max_epochs=6, random_state=0)),
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
seg = PSASegmenter(backbone="tiny", max_epochs=20, random_state=0, memory=cache)
seg.set_params(cam__backbone="tiny", cam__max_epochs=100, affinity__backbone="tiny",
               affinity__max_epochs=6, refiner__alpha=2, refiner__beta=16)
seg.fit(X, Y)
seg_pred = seg.predict(X_test)
print(segmentation_report(masks_test, seg_pred, class_names=["class 1", "class 2", "class 3",
                                                              "class 4"]))

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
plt.show()
