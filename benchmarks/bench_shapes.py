"""Benchmark make_shapes settings: how much room each leaves the random walk, and whether it uses it.

For each setting (``body_class_strength``, ``distractors``, image size, affinity radius) it
generates ``--n`` training images, trains a CAM classifier (tiny from scratch, ``--cam-epochs``)
and reports, on those training images (the paper's Table 1 setting):

- ``body acc``: how much a body alone tells its class: 3-fold accuracy of a logistic regression
  on each object's body colour histogram (4x4x4 bins, the part's pixels left out); chance is
  ``1 / n_classes``; the same on the parts alone is ``part acc``;
- ``CAM cover``: the share of each object's pixels where its class's CAM is at least 0.5 (a CAM
  that covers a whole object leaves the walk nothing to do);
- ``peak on part``: the share of (image, class) pairs whose CAM peaks on (within 2 px of) a part
  of that class;
- ``CAM``: mIoU of CAM alone (t=0) at its best alpha;
- ``oracle``: the walk with the affinity of the true masks (the ceiling), best (alpha, beta);
- ``feature``: the walk with ``FeatureAffinity`` (ImageNet features, no training), if installed;
- ``learned``: the walk with ``AffinityEstimator`` (tiny, defaults but ``--aff-epochs``), trained
  on the CAMs' labels;
- ``segmenter`` / ``full`` (``--segmenter``): test mIoU of the segmentation network trained on the
  learned walk's masks and of the same network trained on the true masks, as long
  (``--seg-epochs``), on ``--n-test`` new images.

Each walk row takes the best (alpha, beta) of a grid (t = 256), as the paper tunes them on train.
Shared machines are noisy: compare the rows of one run.

Usage::

    # docs/benchmarks.md, "make_shapes: choosing body_class_strength"
    python benchmarks/bench_shapes.py --strength 0 0.25 0.5 0.75 1 --distractors background \
        --rows cam oracle
    # the hard case against the new default, every row
    python benchmarks/bench_shapes.py --strength 0.5 --distractors background \
        --rows cam oracle feature learned --segmenter
    python benchmarks/bench_shapes.py --hard --rows cam oracle feature learned --segmenter
    # image size and radius
    python benchmarks/bench_shapes.py --image-size 128 256 --radius 3 5 --rows cam oracle learned
"""

import argparse
import itertools
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def body_evidence(X, masks, instances, parts, n_classes, seed=0):
    """(body accuracy, part accuracy): 3-fold accuracy of a logistic regression on the colour
    histograms of each object's body alone and of its part alone."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    feats = {"body": [], "part": []}
    ys = []
    for img, m, inst, prt in zip(X, masks, instances, parts):
        q = (img // 64).astype(np.int64)
        code = q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]
        for k in np.unique(inst[inst > 0]):
            obj = inst == k
            body, part = obj & ~prt, obj & prt
            if body.sum() < 20 or part.sum() < 5:
                continue  # mostly covered by a later object
            ys.append(int(np.bincount(m[obj]).argmax()))
            for name, where in (("body", body), ("part", part)):
                h = np.bincount(code[where], minlength=64).astype(np.float64)
                feats[name].append(h / h.sum())
    ys = np.array(ys)
    out = []
    for name in ("body", "part"):
        clf = LogisticRegression(C=10.0, max_iter=2000)
        out.append(cross_val_score(clf, np.array(feats[name]), ys, cv=3).mean())
    return tuple(out)


def cam_statistics(records, masks, parts):
    """(CAM cover, peak on part): see the module docstring."""
    from scipy.ndimage import binary_dilation

    cover, peak = [], []
    for r, m, prt in zip(records.records, masks, parts):
        for i, c in enumerate(r.labels):
            cam = r.cams[i]
            obj = m == c + 1
            if obj.any():
                cover.append(float((cam[obj] >= 0.5).mean()))
            near = binary_dilation(prt & obj, iterations=2)
            y, x = np.unravel_index(np.argmax(cam), cam.shape)
            peak.append(bool(near[y, x]))
    return float(np.mean(cover)), float(np.mean(peak))


def run_setting(args, strength, distractors, image_size, radii, lines):
    """Train the CAM classifier once, then one row per affinity radius."""
    from bench_affinity import _best_walk

    from sklearn_psa import AffinityEstimator, CAMClassifier, FeatureAffinity, RandomWalkRefiner, neighbor_offsets
    from sklearn_psa._affinity_labels import oracle_affinity
    from sklearn_psa._validation import check_random_state_seed, labels_from_masks
    from sklearn_psa.datasets._shapes import _generate

    t0 = time.perf_counter()
    gen = dict(body_class_strength=strength, distractors=distractors)
    seed = check_random_state_seed(args.seed)
    X, masks, instances, parts = _generate(args.n, args.n_classes, image_size, 3, seed, return_parts=True, **gen)
    Y = labels_from_masks(masks, args.n_classes)
    common = {}
    common["body acc"], common["part acc"] = body_evidence(X, masks, instances, parts, args.n_classes)

    cam = CAMClassifier(backbone="tiny", max_epochs=args.cam_epochs, device=args.device, random_state=args.seed,
                        crop_size=min(112, image_size) if image_size <= 128 else 224)
    records = cam.fit_transform(X, Y)
    common["CAM loss"] = cam.loss_curve_[-1]
    common["CAM cover"], common["peak on part"] = cam_statistics(records, masks, parts)
    alphas, betas = tuple(args.alphas), tuple(args.betas)
    cam_scores = {a: RandomWalkRefiner(alpha=a, t=0, device=args.device).score(records, masks) for a in alphas}
    common["CAM"] = max(cam_scores.values())
    for k, radius in enumerate(radii):
        row = {"setting": f"s={strength:g}, {distractors}, {image_size} px, radius {radius}", **common}
        offsets = neighbor_offsets(radius)
        if "oracle" in args.rows:
            oracle = records.with_affinity([oracle_affinity(m, offsets) for m in masks], radius)
            row["oracle"], row["oracle ab"] = _best_walk(oracle, masks, alphas, betas, args.device)
        if "feature" in args.rows:
            try:
                fa = FeatureAffinity(radius=radius, device=args.device).fit(records)
                row["feature"], row["feature ab"] = _best_walk(fa.transform(records), masks, alphas, betas,
                                                               args.device)
            except ImportError as exc:
                print(f"FeatureAffinity not run: {exc}", flush=True)
        if "learned" in args.rows:
            aff = AffinityEstimator(backbone="tiny", radius=radius, max_epochs=args.aff_epochs, device=args.device,
                                    random_state=args.seed)
            walked = aff.fit(records).transform(records)
            row["learned"], ab = _best_walk(walked, masks, alphas, betas, args.device)
            row["learned ab"] = ab
            if args.segmenter and k == 0:
                Xt, _, mt = _make_test(args, image_size, gen)
                net = dict(backbone="tiny", init="scratch", max_epochs=args.seg_epochs, device=args.device,
                           random_state=args.seed)
                row["segmenter"] = _fit_segmenter(X, walked, ab, Xt, mt, net)
                row["full"] = _fit_segmenter(X, None, None, Xt, mt, net, true_masks=masks)
        row["seconds"] = time.perf_counter() - t0
        lines.append(row)
        print(_format(row), flush=True)


def _make_test(args, image_size, gen):
    from sklearn_psa.datasets import make_shapes

    return make_shapes(args.n_test, n_classes=args.n_classes, image_size=image_size, random_state=args.seed + 1000,
                       **gen)


def _fit_segmenter(X, walked, ab, Xt, mt, common, true_masks=None):
    """Test mIoU of a segmentation network trained on the walk's masks (at its best alpha and
    beta on the training images), or on ``true_masks`` (the fully supervised reference, trained
    the same way and as long)."""
    from sklearn_psa import PSASegmenter, RandomWalkRefiner

    masks = true_masks if true_masks is not None else RandomWalkRefiner(alpha=ab[0], beta=ab[1]).predict(walked)
    net = PSASegmenter(supervision="pixel", **common).fit(X, masks)
    return net.score(Xt, mt)


COLUMNS = ["setting", "body acc", "part acc", "CAM loss", "CAM cover", "peak on part", "CAM", "oracle", "feature",
           "learned", "segmenter", "full", "seconds"]


def _format(row):
    cells = []
    for c in COLUMNS:
        v = row.get(c)
        if v is None:
            cells.append("-")
        elif isinstance(v, str):
            cells.append(v)
        elif c in ("oracle", "feature", "learned"):
            cells.append(f"{v:.3f} ({v - row['CAM']:+.3f}) {row.get(c + ' ab', '')}")
        elif c == "seconds":
            cells.append(f"{v:.0f}")
        else:
            cells.append(f"{v:.3f}")
    return "| " + " | ".join(cells) + " |"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strength", type=float, nargs="+", default=[0.5])
    parser.add_argument("--distractors", nargs="+", default=["background"],
                        help="background, bodies or none")
    parser.add_argument("--hard", action="store_true", help="also the hard case (strength 0, bodies)")
    parser.add_argument("--image-size", type=int, nargs="+", default=[128])
    parser.add_argument("--radius", type=int, nargs="+", default=[5])
    parser.add_argument("--rows", nargs="+", default=["cam", "oracle"],
                        choices=["cam", "oracle", "feature", "learned"])
    parser.add_argument("--segmenter", action="store_true", help="segmenter and fully supervised rows")
    parser.add_argument("--n", type=int, default=200, help="training images")
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--n-classes", type=int, default=4)
    parser.add_argument("--cam-epochs", type=int, default=100)
    parser.add_argument("--aff-epochs", type=int, default=8)
    parser.add_argument("--seg-epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.5, 1, 2, 4, 8, 16])
    parser.add_argument("--betas", type=float, nargs="+", default=[8, 16, 32])
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    distractors = [None if d == "none" else d for d in args.distractors]
    settings = list(itertools.product(args.strength, distractors))
    if args.hard:
        settings.append((0.0, "bodies"))
    print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS), flush=True)
    lines = []
    for (s, d), size in itertools.product(settings, args.image_size):
        run_setting(args, s, d, size, args.radius, lines)


if __name__ == "__main__":
    main()
