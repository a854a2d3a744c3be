"""Alpha and beta without masks: ``RandomWalkRefiner(alpha="auto", beta="auto")`` against the
best choice on the true masks (issue #17, item 4).

For each affinity (AffinityNet trained with the estimator's defaults on the CAM records,
``FeatureAffinity``, the oracle affinity of the true masks) the table gives the best
``(alpha, beta)`` of the grid on the true masks and its mIoU, and the pair that ``"auto"``
chooses (agreement with the CAMs' confident regions, no masks) with its mIoU on the masks.
Both on the training images, as the paper tunes them.

Usage::

    python benchmarks/bench_walk_choice.py                 # make_shapes default, 200 images
    python benchmarks/bench_walk_choice.py --hard          # its hard case
    python benchmarks/bench_walk_choice.py --quick         # smoke run

The CAM records come from ``bench_affinity``'s cache (``--cache``), so a run after
``bench_affinity.py`` with the same ``--n``, ``--seed`` and ``--cam-epochs`` skips the CAM
classifier.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def run(args):
    import torch

    import bench_affinity as B
    from sklearn_psa import AffinityEstimator, FeatureAffinity, RandomWalkRefiner, neighbor_offsets
    from sklearn_psa._affinity_labels import oracle_affinity
    from sklearn_psa._walk_choice import AUTO_ALPHAS, AUTO_BETAS

    torch.set_num_threads(args.threads)
    if args.label_alphas:  # another definition of the confident regions "auto" agrees with
        import sklearn_psa._walk_choice as choice

        choice.AUTO_LABEL_ALPHAS = tuple(args.label_alphas)
    shapes = {"body_class_strength": 0.0, "distractors": "bodies"} if args.hard else {}
    cam_params = {"device": "cpu", "backbone": "tiny", "max_epochs": args.cam_epochs}
    records, masks = B._cam_records(args.n, args.image_size, args.seed, cam_params, args.cache, shapes)
    affinities = {"oracle (true masks)": records.with_affinity(
        [oracle_affinity(m, neighbor_offsets(5)) for m in masks], 5)}
    try:
        affinities["FeatureAffinity"] = FeatureAffinity(input_scale=2.0, device="cpu").fit(records).transform(records)
    except ImportError as exc:
        print(f"FeatureAffinity left out: {exc}")
    t0 = time.perf_counter()

    def learned(records, seed, max_epochs):
        est = AffinityEstimator(backbone="tiny", device="cpu", random_state=seed, max_epochs=max_epochs)
        return est.fit(records).transform(records)

    if args.cache:  # cached: a rerun (e.g. after a change of the choice rule) skips the training
        import joblib

        learned = joblib.Memory(args.cache, verbose=0).cache(learned)
    affinities[f"AffinityNet (tiny, {args.affinity_epochs} epochs)"] = learned(records, args.seed,
                                                                               args.affinity_epochs)
    print(f"AffinityNet: {time.perf_counter() - t0:.0f} s", flush=True)

    lines = ["| affinity | best on the masks: (alpha, beta), mIoU | `\"auto\"`: (alpha, beta), mIoU "
             "| CAM alone (best alpha) |", "|---|---|---|---|"]
    cam = max(RandomWalkRefiner(alpha=a, t=0, device="cpu").score(records, masks) for a in AUTO_ALPHAS)
    for name, recs in affinities.items():
        grid = {(float(a), float(b)): RandomWalkRefiner(alpha=a, beta=b, device="cpu").score(recs, masks)
                for a in AUTO_ALPHAS for b in AUTO_BETAS}
        best = max(grid, key=grid.get)
        auto = RandomWalkRefiner(alpha="auto", beta="auto", device="cpu").fit(recs)
        chosen = (auto.alpha_, auto.beta_)
        lines.append(f"| {name} | {best}, {grid[best]:.3f} | {chosen}, {grid[chosen]:.3f} | {cam:.3f} |")
        print(lines[-1], flush=True)
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--hard", action="store_true", help="make_shapes' hard case")
    parser.add_argument("--cam-epochs", type=int, default=100)
    parser.add_argument("--affinity-epochs", default="auto",
                        type=lambda v: v if v == "auto" else int(v))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", default=os.path.join("scratch", "bench_affinity_cache"))
    parser.add_argument("--label-alphas", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="background exponents of the confident regions (default: the library's)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.image_size, args.cam_epochs, args.affinity_epochs = 16, 64, 1, 1
    lines = run(args)
    print()
    print(f"make_shapes({'hard case' if args.hard else 'default'}): {args.n} training images, "
          f"{args.image_size} px, seed {args.seed}; tiny CAM classifier {args.cam_epochs} epochs; walk t=256.")
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
