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

Each row also gives the masks' own quality on the training images: mIoU (ignored pixels
counted as background), the share of pixels kept and how many of those are right.

Usage::

    python benchmarks/bench_segmenter_masks.py --seeds 0 1 2 3   # network seeds
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


def run(args):
    import numpy as np
    import torch

    from sklearn_psa._demo import demo_estimator

    torch.set_num_threads(args.threads)
    X, masks, Xt, Mt, learned, setting = _data(args)
    pair, sets = _mask_sets(learned, masks)
    print(f"walk at (alpha, beta) = {pair} (alpha=\"auto\")", flush=True)
    seeds = " | ".join(f"seed {s}" for s in args.seeds)
    lines = [f"| masks | mIoU (train) | kept | kept right | {seeds} | mean | seconds per fit |",
             "|---|---:|---:|---:|" + "---:|" * len(args.seeds) + "---:|---:|"]
    for name in args.variants:
        score, kept, right = _quality(sets[name], masks)
        tests, start = [], time.perf_counter()
        for seed in args.seeds:
            seg = demo_estimator(device="cpu", random_state=seed, setting=setting,
                                 memory=os.path.join(args.cache, "segmenter_cam"))
            seg.set_params(supervision="pixel", max_epochs=args.epochs).fit(X, sets[name])
            tests.append(seg.score(Xt, Mt))
        seconds = (time.perf_counter() - start) / len(args.seeds)
        cells = " | ".join(f"{t:.3f}" for t in tests)
        lines.append(f"| {name} | {score:.3f} | {kept:.1%} | {right:.1%} | {cells} | "
                     f"**{np.mean(tests):.3f}** | {seconds:.0f} |")
        print(lines[-1], flush=True)
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of the records")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="network seeds")
    parser.add_argument("--epochs", type=int, default=20, help="segmentation network's epochs")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default=os.path.join("scratch", "bench_affinity_cache"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs = [0], 1
    lines = run(args)
    print()
    print(f"The demo's {'quick ' if args.quick else ''}data (seed {args.seed}); the segmentation "
          f"network {args.epochs} epochs from the CAM backbone, scored on the test images.")
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
