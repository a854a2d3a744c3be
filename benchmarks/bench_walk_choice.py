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
    python benchmarks/bench_walk_choice.py --demo --seed 1 # the demo's data and steps
    python benchmarks/bench_walk_choice.py --pairs 2,8 4,16 # "auto" with other confident regions
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


def _demo_records(seed, cache, setting="pretrained"):
    """The demo's training images (``setting`` of ``DEMO_SETTINGS``; "pretrained":
    EfficientNet-Lite0 CAMs), their CAM records, the demo's AffinityNet's records and the
    masks."""
    import joblib

    def make(seed, setting):
        from sklearn_psa._demo import DEMO_SETTINGS, demo_estimator
        from sklearn_psa.datasets import make_shapes

        n, size = (DEMO_SETTINGS[setting][k] for k in ("n_samples", "image_size"))
        X, Y, masks = make_shapes(n, image_size=size, random_state=seed)
        steps = demo_estimator(device="cpu", random_state=seed, setting=setting)._fit_steps()
        records = steps["cam"].fit_transform(X, Y)
        return records, steps["affinity"].fit_transform(records), masks

    if cache:
        make = joblib.Memory(cache, verbose=0).cache(make)
    return make(seed, setting)


def _learned_records(records, seed, max_epochs, cache):
    """``AffinityEstimator(backbone="tiny")``'s records, cached under its parameters."""
    from sklearn_psa import AffinityEstimator

    params = {"backbone": "tiny", "device": "cpu", "random_state": seed, "max_epochs": max_epochs}

    def learned(records, params):  # params in the key: a changed default is a new entry
        return AffinityEstimator(**params).fit(records).transform(records)

    if cache:  # cached: a rerun (e.g. after a change of the choice rule) skips the training
        import joblib

        learned = joblib.Memory(cache, verbose=0).cache(learned)
    full = AffinityEstimator(**params).get_params(deep=False)
    return learned(records, {k: v for k, v in full.items() if not hasattr(v, "fit")})


def _choices(records, masks, pairs):
    """``(grid on the masks, {pair: (alpha, beta) chosen with those exponents})``."""
    import sklearn_psa._walk_choice as choice
    from sklearn_psa import RandomWalkRefiner

    grid = {(float(a), float(b)): RandomWalkRefiner(alpha=a, beta=b, device="cpu").score(records, masks)
            for a in choice.AUTO_ALPHAS for b in choice.AUTO_BETAS}
    chosen, library = {}, choice.AUTO_LABEL_ALPHAS
    try:
        for pair in pairs:
            choice.AUTO_LABEL_ALPHAS = pair
            auto = RandomWalkRefiner(alpha="auto", beta="auto", device="cpu").fit(records)
            chosen[pair] = (auto.alpha_, auto.beta_)
    finally:
        choice.AUTO_LABEL_ALPHAS = library
    return grid, chosen


def _walk_sources(args):
    """``(CAM records, true masks, {name: records with an affinity})`` for ``args`` (``--demo``
    or make_shapes with ``--hard``, ``--n``, ...): the oracle affinity of the true masks,
    ``FeatureAffinity`` (where its weights are installed) and AffinityNet, in that order."""
    import bench_affinity as B
    from sklearn_psa import FeatureAffinity, neighbor_offsets
    from sklearn_psa._affinity_labels import oracle_affinity

    if args.demo:
        records, learned, masks = _demo_records(args.seed, args.cache)
        learned_name = "AffinityNet (the demo's)"
    else:
        shapes = {"body_class_strength": 0.0, "distractors": "bodies"} if args.hard else {}
        cam_params = {"device": "cpu", "backbone": "tiny", "max_epochs": args.cam_epochs}
        records, masks = B._cam_records(args.n, args.image_size, args.seed, cam_params, args.cache, shapes)
        learned = _learned_records(records, args.seed, args.affinity_epochs, args.cache)
        learned_name = f"AffinityNet (tiny, {args.affinity_epochs} epochs)"
    affinities = {"oracle (true masks)": records.with_affinity(
        [oracle_affinity(m, neighbor_offsets(5)) for m in masks], 5)}
    try:
        affinities["FeatureAffinity"] = FeatureAffinity(input_scale=2.0, device="cpu").fit(records).transform(records)
    except ImportError as exc:
        print(f"FeatureAffinity left out: {exc}")
    affinities[learned_name] = learned
    return records, masks, affinities


def run(args):
    import torch

    from sklearn_psa import RandomWalkRefiner
    from sklearn_psa._walk_choice import AUTO_ALPHAS, AUTO_LABEL_ALPHAS

    torch.set_num_threads(args.threads)
    pairs = [tuple(p) for p in args.pairs] if args.pairs else [tuple(AUTO_LABEL_ALPHAS)]
    t0 = time.perf_counter()
    records, masks, affinities = _walk_sources(args)
    print(f"records: {time.perf_counter() - t0:.0f} s", flush=True)

    head = " | ".join(f"`\"auto\"` with regions {p}" for p in pairs)
    lines = [f"| affinity | CAM alone (best alpha) | best on the masks | {head} |",
             "|---|---:|---|" + "---|" * len(pairs)]
    cam = max(RandomWalkRefiner(alpha=a, t=0, device="cpu").score(records, masks) for a in AUTO_ALPHAS)
    for name, recs in affinities.items():
        grid, chosen = _choices(recs, masks, pairs)
        best = max(grid, key=grid.get)
        cells = " | ".join(f"{chosen[p]}, {grid[chosen[p]]:.3f} ({grid[chosen[p]] - grid[best]:+.3f})"
                           for p in pairs)
        lines.append(f"| {name} | {cam:.3f} | {best}, {grid[best]:.3f} | {cells} |")
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
    parser.add_argument("--pairs", type=lambda v: tuple(float(x) for x in v.split(",")), nargs="+",
                        default=None, metavar="LOW,HIGH",
                        help="background exponents of the confident regions \"auto\" agrees with, one "
                             "column each (default: the library's)")
    parser.add_argument("--demo", action="store_true",
                        help="the demo's data and steps (EfficientNet-Lite0 CAMs, the demo's AffinityNet)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.image_size, args.cam_epochs, args.affinity_epochs = 16, 64, 1, 1
    lines = run(args)
    print()
    if args.demo:
        print(f"The demo's training images and steps (pretrained setting), seed {args.seed}; walk t=256.")
    else:
        print(f"make_shapes({'hard case' if args.hard else 'default'}): {args.n} training images, "
              f"{args.image_size} px, seed {args.seed}; tiny CAM classifier {args.cam_epochs} epochs; "
              "walk t=256.")
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
