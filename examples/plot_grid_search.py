"""
=======================================================
Tuning the random walk with GridSearchCV (the paper's Figure 8)
=======================================================

The random walk has three parameters: ``alpha`` (how weak the background score is),
``beta`` (the power applied to the affinities) and ``t`` (the number of steps). The paper's
Figure 8 plots the quality of the synthesized masks against beta and t, and against alpha.

The walk learns nothing, so a search over its parameters need not retrain the two networks:
``Pipeline(memory=...)`` caches the fitted CAM and affinity steps per training fold, and every
candidate that differs only in ``rw__*`` loads them from the cache. With one train/test split,
the whole search below trains each network once; every candidate still runs CAM and affinity
inference and the walk on the held-out images to be scored. ``GridSearchCV(...).fit(X, masks)``
trains on the image-level labels derived from the masks and scores on the masks (mean IoU).

The search is fitted on the masks (``.fit(X, masks)``): on the image-level labels
(``.fit(X, Y)``) there would be nothing to score, and it stops with
:class:`~sklearn_psa.exceptions.MasksRequiredError`.

Takes a few minutes on a laptop CPU (``--quick``: under a minute, small data, few epochs and
a smaller grid, to check that it runs). It writes ``figure8.png`` to ``--output`` (default
``gallery/plot_grid_search``)::

    python examples/plot_grid_search.py [--quick] [--output DIR]
"""

# %%
import argparse
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from joblib import Memory
from sklearn.model_selection import GridSearchCV, ShuffleSplit
from sklearn.pipeline import Pipeline

from sklearn_psa import AffinityEstimator, CAMClassifier, RandomWalkRefiner
from sklearn_psa.datasets import make_shapes

parser = argparse.ArgumentParser(description="Figure 8: the walk's alpha, beta and t")
parser.add_argument("--quick", action="store_true", help="small data, few epochs: < 1 minute")
parser.add_argument("--output", default="gallery/plot_grid_search", help="folder for the figure")
args, _ = parser.parse_known_args()  # (a notebook's kernel adds arguments of its own)
out = Path(args.output)
out.mkdir(parents=True, exist_ok=True)
n_samples, size, cam_epochs, affinity_epochs = (
    (240, 128, 100, 6) if not args.quick else (40, 64, 8, 1))

X, Y, masks = make_shapes(n_samples=n_samples, image_size=size, random_state=0)

pipe = Pipeline(
    [
        ("cam", CAMClassifier(backbone="tiny", max_epochs=cam_epochs, random_state=0)),
        ("affinity", AffinityEstimator(backbone="tiny", max_epochs=affinity_epochs,
                                       random_state=0)),
        ("rw", RandomWalkRefiner()),
    ],
    memory=Memory(tempfile.mkdtemp(), verbose=0),
)

# %%
# Two grids searched together: beta x t at the paper's alpha, and alpha at the paper's beta
# and t. ``refit=False``: the figures need the scores only.
betas, ts, alphas = [2, 4, 8, 16], [4, 16, 64, 256, 1024], [1, 2, 4, 8, 16, 32, 64]
if args.quick:
    betas, ts, alphas = [4, 8], [16, 256], [2, 16]
grid = [
    {"rw__alpha": [16], "rw__beta": betas, "rw__t": ts},
    {"rw__alpha": alphas, "rw__beta": [8], "rw__t": [256]},
]
search = GridSearchCV(pipe, grid, cv=ShuffleSplit(n_splits=1, test_size=0.25, random_state=0),
                      refit=False)
start = time.perf_counter()
search.fit(X, masks)
res = search.cv_results_
print(f"{len(res['params'])} candidates in {time.perf_counter() - start:.0f} s; "
      f"fit time per candidate: first {res['mean_fit_time'].max():.0f} s (trains the networks), "
      f"median {np.median(res['mean_fit_time']):.1f} s (cache)")
print("best:", search.best_params_, f"mIoU {search.best_score_:.3f}")


# %%
# Figure 8 from ``cv_results_``
# -----------------------------
def score(alpha, beta, t):
    for params, value in zip(res["params"], res["mean_test_score"]):
        if (params["rw__alpha"], params["rw__beta"], params["rw__t"]) == (alpha, beta, t):
            return value
    raise KeyError((alpha, beta, t))


fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
for beta in betas:
    left.plot(ts, [score(16, beta, t) for t in ts], marker="o", label=f"beta = {beta}")
left.set(xscale="log", xlabel="t (random-walk steps)", ylabel="mIoU",
         title="(a) accuracy versus beta and t (alpha = 16)")
left.set_xticks(ts, [str(t) for t in ts])
left.legend()
right.plot(alphas, [score(a, 8, 256) for a in alphas], marker="o")
right.set(xscale="log", xlabel="alpha", ylabel="mIoU",
          title="(b) accuracy versus alpha (beta = 8, t = 256)")
right.set_xticks(alphas, [str(a) for a in alphas])
fig.tight_layout()
fig.savefig(out / "figure8.png", dpi=80)
print("figure written to", out / "figure8.png")
