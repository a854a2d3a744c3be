"""Benchmarks of issue #7: the demo's quality table and the cost of tuning the walk.

Two measurements, each printed as a table (Markdown):

``demo``
    Runs ``sklearn-psa demo`` (the whole method on ``make_shapes``) and prints the mean IoU
    of each stage, the ratio weakly / fully supervised (target: at least 85%), the wall time
    and the peak memory (target: under 5 minutes and 4 GB on 2 cores).

``grid``
    The cost of a 12-candidate ``GridSearchCV`` over ``rw__alpha`` (3 values), ``rw__beta``
    (2) and ``rw__t`` (2) on ``Pipeline([cam, affinity, rw], memory=...)`` against one
    ``fit`` of the same pipeline (target: less than 1.5x). The search uses a single
    train/test split (``ShuffleSplit(n_splits=1, test_size=0.25)``) and ``refit=False``, so
    that the CAM and affinity networks are trained once (on the training part) and every
    candidate loads them from the cache; each candidate still runs CAM and affinity
    inference and the walk on the test part. The networks have the demo's settings. The
    grid search with ``refit=True`` adds one full fit (on all images) on top; with k-fold
    cross-validation the networks train once per fold.

Usage::

    python benchmarks/bench_segmenter.py demo [--output DIR] [--device cpu]
    python benchmarks/bench_segmenter.py grid [--n-samples 240] [--device cpu]
    python benchmarks/bench_segmenter.py all

Machines shared with other jobs vary a lot in speed: compare the ratios measured in one run,
and prefer the CPU-second ratio (process time, all threads) where the load changed during it.
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np


def bench_demo(output, device, random_state=0):
    from sklearn_psa._demo import run_demo

    summary = run_demo(output, device=device, random_state=random_state, progress=False,
                       out=sys.stderr)
    print("\n## Demo (`sklearn-psa demo`)\n")
    print("| stage | images | mIoU (%) |")
    print("| --- | --- | --- |")
    for title, score in summary["scores"].items():
        data = "train" if title.startswith("CAM") else "test"
        print(f"| {title} | {data} | {100 * score:.1f} |")
    print(f"\nWeakly / fully supervised: **{100 * summary['ratio']:.0f}%** (target >= 85%).")
    print(f"Wall time {summary['wall_seconds']:.0f} s, peak resident memory "
          f"{summary['peak_rss_mb']:.0f} MiB (targets: 300 s, 4096 MiB).\n")
    print("| stage | seconds |")
    print("| --- | --- |")
    for name, sec in summary["times"].items():
        print(f"| {name} | {sec:.1f} |")
    return summary


def bench_grid(n_samples, device, random_state=0):
    from joblib import Memory
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV, ShuffleSplit
    from sklearn.pipeline import Pipeline

    from sklearn_psa._demo import DEMO_SETTINGS, demo_estimator
    from sklearn_psa.datasets import make_shapes

    X, Y, masks = make_shapes(n_samples, image_size=DEMO_SETTINGS["full"]["image_size"],
                              random_state=random_state)
    seg = demo_estimator(device=device, random_state=random_state, setting="full")
    steps = [("rw" if name == "refiner" else name, step) for name, step in seg._fit_steps().items()]
    grid = {"rw__alpha": [4, 16, 32], "rw__beta": [4, 8], "rw__t": [64, 256]}
    n_candidates = int(np.prod([len(v) for v in grid.values()]))
    cv = ShuffleSplit(n_splits=1, test_size=0.25, random_state=random_state)

    t0, c0 = time.perf_counter(), time.process_time()
    one = Pipeline([(name, clone(step)) for name, step in steps]).fit(X, masks)
    one_fit, one_cpu = time.perf_counter() - t0, time.process_time() - c0

    with tempfile.TemporaryDirectory(prefix="bench-grid-") as cache:
        pipe = Pipeline([(name, clone(step)) for name, step in steps],
                        memory=Memory(cache, verbose=0))
        search = GridSearchCV(pipe, grid, cv=cv, refit=False, n_jobs=1)
        t0, c0 = time.perf_counter(), time.process_time()
        search.fit(X, masks)
        grid_time, grid_cpu = time.perf_counter() - t0, time.process_time() - c0
    res = search.cv_results_
    fit_times, score_times = res["mean_fit_time"], res["mean_score_time"]

    print(f"\n## GridSearchCV over the walk ({n_candidates} candidates, {n_samples} images "
          f"of {X.shape[1]} px)\n")
    print("| run | wall s | x one fit | CPU s | x one fit |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| one `Pipeline.fit` (all {n_samples} images, no cache) | {one_fit:.1f} | 1.00 "
          f"| {one_cpu:.1f} | 1.00 |")
    print(f"| `GridSearchCV`, {n_candidates} candidates, 1 split (75/25), refit=False, "
          f"memory | {grid_time:.1f} | {grid_time / one_fit:.2f} | {grid_cpu:.1f} "
          f"| {grid_cpu / one_cpu:.2f} |")
    print(f"\nPer candidate: fit {fit_times.min():.1f}-{fit_times.max():.1f} s (the first "
          f"trains the networks, the rest load them from the cache), scoring "
          f"{score_times.mean():.1f} s on average (CAM and affinity inference and the walk "
          "on the test part).")
    best = int(np.argmax(res["mean_test_score"]))
    print(f"Best candidate: {res['params'][best]}, mIoU {100 * res['mean_test_score'][best]:.1f}% "
          f"(one fit's default alpha 16, beta 8, t 256 on its own training images: "
          f"{100 * one.score(X, masks):.1f}%).")
    return {"one_fit": one_fit, "grid": grid_time, "ratio": grid_time / one_fit,
            "one_cpu": one_cpu, "grid_cpu": grid_cpu, "cpu_ratio": grid_cpu / one_cpu}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("demo", "grid", "all"))
    parser.add_argument("--output", default=None, help="demo output folder (default: a temp dir)")
    parser.add_argument("--n-samples", type=int, default=240, help="images of the grid search")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, device {args.device}")
    if args.what in ("demo", "all"):
        if args.output:
            bench_demo(args.output, args.device)
        else:
            with tempfile.TemporaryDirectory() as out:
                bench_demo(out, args.device)
    if args.what in ("grid", "all"):
        bench_grid(args.n_samples, args.device)


if __name__ == "__main__":
    main()
