"""The demo's segmentation network trained on different synthesized masks (issue #17).

On the demo's training images (EfficientNet-Lite0 CAMs, the demo's AffinityNet, the walk at the
(alpha, beta) that ``"auto"`` chooses), the network of ``sklearn-psa demo`` is trained with
``supervision="pixel"`` on each set of masks and scored (mIoU) on the demo's test images:

- ``walk``: the walk's masks (what ``PSASegmenter`` trains on);
- ``crf``: the same walk through the dense CRF (``RandomWalkRefiner(crf=True)``);
- ``agree``: the walk's masks where the CRF's agree, the other pixels ignored (255);
- ``union``: the walk's masks where they mark an object, the CRF's elsewhere (the CRF adds
  object pixels and removes none);
- ``true``: the true masks (the fully supervised reference, trained as long).

With ``--crf`` each network is also scored through the dense CRF at inference
(``PSASegmenter(crf=True)``, as the paper's segmentation networks are scored).
Each row also gives the masks' own quality on the training images: mIoU (ignored pixels
counted as background), the share of pixels kept and how many of those are right.

Usage::

    python benchmarks/bench_segmenter_masks.py --seeds 0 1 2 3   # network seeds
    python benchmarks/bench_segmenter_masks.py --seeds 0 1 2 3 --epochs 40 --variants walk true --crf
    python benchmarks/bench_segmenter_masks.py --quick            # smoke run

The CAM and affinity records come from ``bench_walk_choice``'s cache (``--cache``); the
segmenters' CAM step is cached there too. Shared machines are noisy and the networks vary
by several points between seeds: compare means over seeds.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

VARIANTS = ("walk", "crf", "agree", "union", "true")


def _data(args):
    """``(X, true masks, test X, test masks, learned records, setting)``."""
    import bench_walk_choice as C
    from sklearn_psa._demo import _TEST_SEED_OFFSET, DEMO_SETTINGS
    from sklearn_psa.datasets import make_shapes

    setting = "quick" if args.quick else "pretrained"
    n, n_test, size = (DEMO_SETTINGS[setting][k] for k in ("n_samples", "n_test", "image_size"))
    X, _, masks = make_shapes(n, image_size=size, random_state=args.seed)
    Xt, _, Mt = make_shapes(n_test, image_size=size, random_state=args.seed + _TEST_SEED_OFFSET)
    _, learned, _ = C._demo_records(args.seed, args.cache, setting)
    return X, masks, Xt, Mt, learned, setting


def _mask_sets(learned, masks):
    """``{variant: masks}``: the walk's at the pair ``"auto"`` chooses, through the CRF, their
    agreement, their union (the walk's objects, the CRF's elsewhere) and the true masks."""
    import numpy as np

    from sklearn_psa import RandomWalkRefiner

    auto = RandomWalkRefiner(alpha="auto", beta="auto", device="cpu").fit(learned)
    pair = (auto.alpha_, auto.beta_)
    walk = RandomWalkRefiner(alpha=pair[0], beta=pair[1], device="cpu").predict(learned)
    crf = RandomWalkRefiner(alpha=pair[0], beta=pair[1], device="cpu", crf=True).predict(learned)
    agree = [np.where(w == c, w, 255).astype(np.uint8) for w, c in zip(walk, crf)]
    union = [np.where(w > 0, w, c).astype(np.uint8) for w, c in zip(walk, crf)]
    return pair, {"walk": list(walk), "crf": list(crf), "agree": agree, "union": union,
                  "true": [np.asarray(m) for m in masks]}


def _quality(found, masks):
    """``(mIoU with ignored pixels as background, share kept, accuracy of the kept)``."""
    import numpy as np

    from sklearn_psa.metrics import mean_iou

    kept = np.concatenate([(f != 255).ravel() for f in found])
    right = np.concatenate([(f == m).ravel() for f, m in zip(found, masks)])
    score = mean_iou(masks, [np.where(f == 255, 0, f) for f in found])
    return score, kept.mean(), right[kept].mean()


def _flattening(losses):
    """The training loss at the last epoch and its change over the last quarter of the epochs
    (the demo report's measure)."""
    from sklearn_psa._demo import last_quarter_change

    return f"loss {losses[-1]:.4f}, {100 * last_quarter_change(losses):+.1f}% over the last quarter"


def _table(args, rows):
    """Markdown lines of ``rows`` (``(name, masks' quality, test scores, seconds)``), with each
    mean's share of the true masks' network where that was trained."""
    import numpy as np

    full = {name: np.mean(tests) for name, _, tests, _ in rows}.get("true")
    seeds = " | ".join(f"seed {s}" for s in args.seeds)
    lines = [f"| masks | mIoU (train) | kept | kept right | {seeds} | mean | weak / full | "
             "seconds per fit |",
             "|---|---:|---:|---:|" + "---:|" * len(args.seeds) + "---:|---:|---:|"]
    for name, (score, kept, right), tests, seconds in rows:
        cells = " | ".join(f"{t:.3f}" for t in tests)
        share = "" if full is None or name == "true" else f"{np.mean(tests) / full:.0%}"
        lines.append(f"| {name} | {score:.3f} | {kept:.1%} | {right:.1%} | {cells} | "
                     f"**{np.mean(tests):.3f}** | {share} | {seconds:.0f} |")
    return lines


def run(args):
    """``{"plain": rows, "crf": rows}`` (``"crf"`` with ``--crf``): each network scored as it
    predicts, and through the dense CRF (``crf=True``)."""
    import torch

    from sklearn_psa._demo import demo_estimator

    torch.set_num_threads(args.threads)
    X, masks, Xt, Mt, learned, setting = _data(args)
    pair, sets = _mask_sets(learned, masks)
    print(f"walk at (alpha, beta) = {pair} (alpha=\"auto\")", flush=True)
    results = {"plain": [], "crf": []} if args.crf else {"plain": []}
    for name in args.variants:
        quality = _quality(sets[name], masks)
        tests = {kind: [] for kind in results}
        seconds = 0.0
        for seed in args.seeds:
            seg = demo_estimator(device="cpu", random_state=seed, setting=setting,
                                 memory=os.path.join(args.cache, "segmenter_cam"))
            start = time.perf_counter()
            seg.set_params(supervision="pixel", max_epochs=args.epochs).fit(X, sets[name])
            seconds += time.perf_counter() - start
            tests["plain"].append(seg.score(Xt, Mt))
            if args.crf:
                tests["crf"].append(seg.set_params(crf=True).score(Xt, Mt))
            print(f"{name}, seed {seed}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in tests.items())
                  + f"; {_flattening(seg.loss_curve_)}", flush=True)
        for kind, rows in results.items():
            rows.append((name, quality, tests[kind], seconds / len(args.seeds)))
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of the records")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="network seeds")
    parser.add_argument("--epochs", type=int, default=20, help="segmentation network's epochs")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default=os.path.join("scratch", "bench_affinity_cache"))
    parser.add_argument("--crf", action="store_true",
                        help="also score each network through the dense CRF (crf=True)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs = [0], 1
    results = run(args)
    for kind, rows in results.items():
        how = ("through the dense CRF (`crf=True`, bilateral width scaled to the image)"
               if kind == "crf" else "as it predicts")
        print()
        print(f"The demo's {'quick ' if args.quick else ''}data (seed {args.seed}); the "
              f"segmentation network {args.epochs} epochs from the CAM backbone, scored on the "
              f"test images {how}.")
        print()
        print("\n".join(_table(args, rows)))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
