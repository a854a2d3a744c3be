"""Threads of the per-image CPU kernels, and throughput with n_jobs (issue 18, items 4 and 5).

Two markdown tables, measured in one process, in interleaved rounds (each
configuration's fastest time over ``--rounds``), so that load from other
processes hits the configurations alike; compare the ratios, not the seconds:

1. **Threads of one call** (item 4): ``dense_crf`` on one image (CAM-like
   unaries, 10 iterations) and ``RandomWalkRefiner.predict`` on one record (the
   walk, t = 256, and the upsampling), each

   - on one torch thread (``torch.set_num_threads(1)``);
   - with torch's default thread count and no rule ("before": the CRF and the
     upsampling used torch's threads whatever their size; ``SERIAL_WORK`` and
     ``CRF_SERIAL_WORK`` set to 0 here);
   - with torch's default thread count and the rule ("after": one thread
     below the work thresholds of ``sklearn_psa._device``, the default now).

2. **Images per second with n_jobs** (item 5): ``RandomWalkRefiner.predict``
   over ``--images`` records and the affinity labels of
   ``AffinityEstimator.fit`` (the dense CRF on two score maps per image;
   ``max_epochs=0``, so no training) over ``--images`` images
   (``make_shapes``, 320 x 240 px, with CAM-like maps), with ``n_jobs`` 1 and
   2 (joblib's default backend, loky processes; each stage runs once with 2
   before timing, so that the workers have started and imported torch).

3. **Lattices shared by an image's two CRF maps**: the affinity labels of
   ``AffinityEstimator.fit`` (``max_epochs=0``) over ``--images`` images with
   the CRF called through ``dense_crf`` for each map (before) and through
   ``crf.ImageCRF``, which builds an image's lattices once (after).

Usage::

    python benchmarks/bench_threads.py [--rounds 2] [--images 24] [--skip-large]
                                       [--tables threads n_jobs lattices]
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def crf_inputs(height, width, n_labels, seed=0):
    """(image, probs) of ``bench_crf.make_inputs`` resized to ``height x width``."""
    import torch
    from PIL import Image

    from bench_crf import make_inputs

    image, probs = make_inputs(n_labels, seed=seed)
    image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    probs = torch.nn.functional.interpolate(torch.from_numpy(probs)[None], size=(height, width),
                                            mode="bilinear", align_corners=False)[0].numpy()
    return np.ascontiguousarray(image), probs / probs.sum(0, keepdims=True)


def walk_records(n, height=240, width=320, radius=5, seed=0):
    """Records of ``make_shapes`` images (320 px, cropped to 240 rows) with CAM-like maps
    (each class's true mask shifted and blurred; an image without a class gets one
    blurred blob) and random affinities in [0.5, 1]."""
    from scipy import ndimage

    from sklearn_psa import neighbor_offsets
    from sklearn_psa.datasets import make_shapes
    from sklearn_psa.records import Records

    rng = np.random.default_rng(seed)
    X, Y, masks = make_shapes(n, image_size=width, random_state=seed)
    X, masks = X[:, :height], masks[:, :height]
    K, h, w = len(neighbor_offsets(radius)), -(-height // 8), -(-width // 8)
    cams, affinities, labels = [], [], []
    for i in range(n):
        present = np.flatnonzero(Y[i])
        if present.size == 0:
            present = np.array([0])
        maps = np.stack([np.roll(masks[i] == c + 1, (9, -7), axis=(0, 1)) for c in present])
        maps = ndimage.gaussian_filter(maps.astype(np.float32), sigma=(0, 12, 12))
        maps += 0.02 * rng.random(maps.shape, dtype=np.float32)
        cams.append(maps / maps.max(axis=(1, 2), keepdims=True))
        affinities.append(rng.uniform(0.5, 1.0, (K, h, w)).astype(np.float32))
        label = np.zeros(Y.shape[1], np.uint8)
        label[present] = 1
        labels.append(label)
    return Records.from_arrays(list(X), labels, cams, affinities, radius=radius)


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def thread_table(rounds, skip_large):
    import torch

    from sklearn_psa import RandomWalkRefiner, _device
    from sklearn_psa.crf import dense_crf

    default_threads = torch.get_num_threads()
    thresholds = (_device.SERIAL_WORK, _device.CRF_SERIAL_WORK)
    sizes = [(240, 320, 3), (375, 500, 21), (750, 1000, 3)] + ([] if skip_large else [(750, 1000, 21)])
    kernels = []
    for h, w, n in sizes:
        image, probs = crf_inputs(h, w, n)
        kernels.append((f"dense_crf {w} x {h}, {n} labels",
                        lambda image=image, probs=probs: dense_crf(image, probs, device="cpu")))
    records = walk_records(1)[:1]
    refiner = RandomWalkRefiner(alpha=4, beta=8, t=256, device="cpu")
    kernels.append(("RandomWalkRefiner.predict, 320 x 240 (40 x 30 grid)",
                    lambda: refiner.predict(records)))

    configs = {
        "1 thread": (1, thresholds),
        f"{default_threads} threads, no rule (before)": (default_threads, (0, 0)),
        f"{default_threads} threads, rule (after, default)": (default_threads, thresholds),
    }
    best = {}
    for name, fn in kernels:  # warm-up: lazy imports, allocator
        fn()
    for _ in range(rounds):
        for name, fn in kernels:
            for config, (threads, (serial, crf_serial)) in configs.items():
                torch.set_num_threads(threads)
                _device.SERIAL_WORK, _device.CRF_SERIAL_WORK = serial, crf_serial
                seconds = timed(fn)
                best[name, config] = min(best.get((name, config), np.inf), seconds)
    torch.set_num_threads(default_threads)
    _device.SERIAL_WORK, _device.CRF_SERIAL_WORK = thresholds

    header = list(configs)
    print("| kernel | " + " | ".join(f"{c} (s)" for c in header) + " | before / 1 thread | after / 1 thread |")
    print("|---|" + "---:|" * (len(header) + 2))
    for name, _ in kernels:
        times = [best[name, c] for c in header]
        print(f"| {name} | " + " | ".join(f"{t:.3f}" for t in times)
              + f" | {times[1] / times[0]:.2f} | {times[2] / times[0]:.2f} |")


def n_jobs_table(rounds, n_images):
    from sklearn_psa import AffinityEstimator, RandomWalkRefiner

    records = walk_records(n_images)
    stages = {
        "random walk (RandomWalkRefiner.predict, t = 256)":
            lambda n_jobs: RandomWalkRefiner(alpha=4, t=256, device="cpu", n_jobs=n_jobs).predict(records),
        "affinity labels with the dense CRF (AffinityEstimator.fit, max_epochs=0)":
            lambda n_jobs: AffinityEstimator(backbone="tiny", max_epochs=0, device="cpu",
                                             n_jobs=n_jobs).fit(records),
    }
    for run in stages.values():  # start loky's workers (and their imports) before timing
        run(2)
    best = {}
    for _ in range(rounds):
        for name, run in stages.items():
            for n_jobs in (1, 2):
                best[name, n_jobs] = min(best.get((name, n_jobs), np.inf), timed(lambda: run(n_jobs)))
    print(f"| stage ({n_images} images of 320 x 240) | n_jobs=1 (images/s) | n_jobs=2 (images/s) | speed-up |")
    print("|---|---:|---:|---:|")
    for name in stages:
        one, two = n_images / best[name, 1], n_images / best[name, 2]
        print(f"| {name} | {one:.1f} | {two:.1f} | {two / one:.2f} |")


def lattice_table(rounds, n_images):
    import functools

    from sklearn_psa import AffinityEstimator
    from sklearn_psa.crf import dense_crf

    records = walk_records(n_images)
    shared = AffinityEstimator._crf_function
    settings = {
        "dense_crf per map (before)": lambda self: (functools.partial(dense_crf, device="cpu"), False),
        "ImageCRF, lattices built once per image (after)": shared,
    }
    best = {}
    try:
        for _ in range(rounds):
            for name, crf_function in settings.items():
                AffinityEstimator._crf_function = crf_function
                fit = AffinityEstimator(backbone="tiny", max_epochs=0, device="cpu").fit
                best[name] = min(best.get(name, np.inf), timed(lambda: fit(records)))
    finally:
        AffinityEstimator._crf_function = shared
    before = best["dense_crf per map (before)"]
    print(f"| affinity labels with the dense CRF ({n_images} images of 320 x 240) | time (s) | images/s | speed-up |")
    print("|---|---:|---:|---:|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds:.2f} | {n_images / seconds:.1f} | {before / seconds:.2f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--skip-large", action="store_true", help="leave out 1000 x 750 with 21 labels")
    parser.add_argument("--tables", nargs="+", default=["threads", "n_jobs", "lattices"],
                        choices=["threads", "n_jobs", "lattices"])
    args = parser.parse_args()
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}\n")
    tables = {"threads": lambda: thread_table(args.rounds, args.skip_large),
              "n_jobs": lambda: n_jobs_table(args.rounds, args.images),
              "lattices": lambda: lattice_table(args.rounds, args.images)}
    for name in args.tables:
        tables[name]()
        print()
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
