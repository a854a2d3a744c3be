"""The walk's alpha and beta chosen without masks: agreement with the CAMs' confident regions.

A user of weak supervision has no masks to tune the walk on. What every
training image does have is the confident regions of its CAMs (docs/method.md,
section 2): pixels whose class still wins against the background score
``(1 - max_c M_c) ** 2`` (confident foreground) and pixels where the
background still wins against ``** 8`` (confident background), both refined
by the dense CRF. A walk whose alpha is too small loses the confident
foreground to the background; one whose alpha is too large floods the
confident background. :func:`walk_agreement` scores each ``(alpha, beta)`` by
the mean IoU of the walk's masks against those regions (pixels in neither are
ignored) and ``RandomWalkRefiner(alpha="auto")`` takes the best.

The exponents were chosen by measurement (docs/benchmarks.md, "Alpha and beta
without masks, again"): over eighteen walks (EfficientNet-Lite0 and tiny CAMs;
learned, ImageNet-feature and oracle affinities; make_shapes' default and hard
case) ``(2, 8)`` chose a pair at most 9.0 points (2.6 on average) below the best
on the masks, where ``(4, 16)``, the exponents before, lost up to 26.7 (8.4 on average): on
flat CAMs, which spill over the objects, the confident foreground at ``** 4``
takes in the spill and rewards a walk that floods the background.

The walk is linear and acts on each channel alone, so the background maps of
every alpha are walked together with the CAMs in one walk per beta.
"""

import numpy as np

from ._affinity_labels import affinity_label_map, score_stack
from ._grid import IGNORE_INDEX, STRIDE

__all__ = ["AUTO_ALPHAS", "AUTO_BETAS", "AUTO_LABEL_ALPHAS", "AUTO_MAX_IMAGES", "walk_agreement"]

#: The grids ``alpha="auto"`` and ``beta="auto"`` search.
AUTO_ALPHAS = (1, 2, 4, 8, 16, 32)
AUTO_BETAS = (8, 16, 32)
#: The confident regions' background exponents (foreground, background).
AUTO_LABEL_ALPHAS = (2, 8)
#: At most this many training images (evenly spaced) are walked for the choice.
AUTO_MAX_IMAGES = 100


def _agreement_task(image, cams, affinity, shape, labels, alphas, betas, t, backend, device,
                    crf, n_values):
    """Confusion matrices ``(len(betas), len(alphas), n_values, n_values)`` of one image's walk
    against its confident regions (rows: region, columns: walk). Picklable: a task of
    :func:`sklearn_psa._parallel.map_images`."""
    from ._random_walk import random_walk
    from ._walk_kernels import average_pool, upsample_grid

    cams = np.asarray(cams, dtype=np.float32)
    lo, hi = AUTO_LABEL_ALPHAS
    region = affinity_label_map(cams, labels, alpha_low=lo, alpha_high=hi,
                                image=None if crf is None else image, crf=crf, stride=1)
    values = np.concatenate([[0], np.asarray(labels, dtype=np.int64) + 1])
    keep = region != IGNORE_INDEX
    out = np.zeros((len(betas), len(alphas), n_values, n_values), np.int64)
    if not keep.any():
        return out
    n_alphas = len(alphas)
    backgrounds = np.stack([score_stack(cams, a)[0] for a in alphas])
    pooled = average_pool(np.concatenate([backgrounds, cams]), STRIDE)
    truth = region[keep].astype(np.int64)
    for i, beta in enumerate(betas):
        walked = upsample_grid(random_walk(pooled, affinity, beta=beta, t=t, backend=backend,
                                       device=device), shape, STRIDE)
        walked_cams = walked[n_alphas:]
        for j in range(n_alphas):
            scores = np.concatenate([walked[j][None], walked_cams])
            pred = values[np.argmax(scores, axis=0)[keep]]
            out[i, j] = np.bincount(truth * n_values + pred,
                                    minlength=n_values * n_values).reshape(n_values, n_values)
    return out


def _mean_iou(confusion):
    """Mean IoU over the values present in the regions or the predictions."""
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
    seen = union > 0
    return float(np.mean(tp[seen] / union[seen])) if seen.any() else 0.0


def walk_agreement(records, alphas=AUTO_ALPHAS, betas=AUTO_BETAS, *, t=256, crf=True,
                   backend="auto", device=None, max_images=AUTO_MAX_IMAGES, n_jobs=None,
                   verbose=0):
    """Mean IoU of the walk against the CAMs' confident regions, for each ``(alpha, beta)``.

    Parameters
    ----------
    records : Records
        With CAMs and affinities (``AffinityEstimator.transform``).
    alphas, betas : sequence of float
    t : int, default=256
    crf : bool or dict, default=True
        Refine the confident regions with the dense CRF (a dict: its options),
        as ``AffinityEstimator(crf=True)`` does for its labels.
    backend, device :
        Of :func:`~sklearn_psa.random_walk`.
    max_images : int, default=100
        Score at most this many records, evenly spaced.
    n_jobs : int or None, default=None
        Joblib workers over the records.
    verbose : int, default=0

    Returns
    -------
    scores : dict
        ``{(alpha, beta): mean IoU}``.
    """
    from ._parallel import map_images
    from .crf import ImageCRF, check_crf_options, placed_crf_options

    alphas, betas = [float(a) for a in alphas], [float(b) for b in betas]
    n = len(records)
    picked = np.unique(np.linspace(0, n - 1, min(n, int(max_images))).round().astype(int)) if n else []
    options = check_crf_options(crf)
    crf_fn, on_cuda = None, False
    if options is not None:
        options, on_cuda = placed_crf_options(options, "cpu" if device is None else device)
        crf_fn = ImageCRF(**options)
    on_cuda = on_cuda or (device is not None and str(device).startswith("cuda"))
    device = None if device is None else str(device)
    n_values = records.n_classes + 1
    tasks = ((r.load_image() if crf_fn is not None else None, r.cams, r.affinity, r.shape, r.labels,
              alphas, betas, int(t), backend, device, crf_fn, n_values)
             for r in (records.records[i] for i in picked))
    total = np.zeros((len(betas), len(alphas), n_values, n_values), np.int64)
    for confusion in map_images(_agreement_task, tasks, n_jobs=n_jobs, in_parent=on_cuda,
                                verbose=verbose, desc="choosing alpha and beta", total=len(picked)):
        total += confusion
    return {(a, b): _mean_iou(total[i, j]) for i, b in enumerate(betas) for j, a in enumerate(alphas)}
