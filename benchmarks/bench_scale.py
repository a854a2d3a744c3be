"""Peak memory and images per second of CAM -> affinity -> walk, with and without a store.

Issue 18, item 5. The images are ``make_shapes`` images of 320 x 240 px written
as PNG files (so the images themselves are never all in memory); a tiny
``CAMClassifier`` and ``AffinityEstimator`` are fitted once on 16 of them and
saved. Then, for each number of images and each setting, a fresh subprocess
loads the two models and runs

- **store**: ``CAMClassifier(store=...).compute_cams(paths, Y)`` (the CAMs of
  the true classes, as for the training images), ``AffinityEstimator(store=
  ...).transform``, and ``RandomWalkRefiner.iter_predict`` writing each mask
  to a PNG as it is done;
- **memory**: the same with ``store=None`` and ``RandomWalkRefiner.predict``
  (all masks returned), then written.

It prints the peak resident set size of the subprocess (VmHWM), its growth
over the resident size once the models are loaded, the wall time and images
per second, and the store's size on disk.

Usage::

    python benchmarks/bench_scale.py [--sizes 100 1000] [--workdir DIR]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HEIGHT, WIDTH = 240, 320


def rss_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def prepare(workdir, n):
    """Write n images and their labels; fit and save the two models (once)."""
    import joblib

    from sklearn_psa import AffinityEstimator, CAMClassifier
    from sklearn_psa.datasets import make_shapes

    images = os.path.join(workdir, "images")
    os.makedirs(images, exist_ok=True)
    labels_file = os.path.join(workdir, "labels.npy")
    if not os.path.exists(labels_file) or len(np.load(labels_file)) < n:
        from PIL import Image

        Y = []
        for start in range(0, n, 100):  # in chunks: the writer's memory stays small too
            X, Yc, _ = make_shapes(min(100, n - start), image_size=WIDTH, random_state=start)
            for i, image in enumerate(X):
                Image.fromarray(image[:HEIGHT]).save(os.path.join(images, f"{start + i:06d}.png"))
            Y.append(Yc)
        np.save(labels_file, np.concatenate(Y))
    models = os.path.join(workdir, "models.joblib")
    if not os.path.exists(models):
        paths = [os.path.join(images, f"{i:06d}.png") for i in range(16)]
        Y = np.load(labels_file)[:16]
        cam = CAMClassifier(backbone="tiny", max_epochs=2, scales=(1.0, 0.5), crop_size=112,
                            device="cpu", random_state=0)
        records = cam.fit_transform(paths, Y)
        aff = AffinityEstimator(backbone="tiny", max_epochs=1, crop_size=112, crf=False,
                                device="cpu", random_state=0).fit(records)
        joblib.dump((cam, aff), models)
    return images, labels_file, models


def child(args):
    import joblib

    from sklearn_psa import RandomWalkRefiner
    from sklearn_psa.io import save_mask

    cam, aff = joblib.load(args.models)
    paths = [os.path.join(args.images, f"{i:06d}.png") for i in range(args.n)]
    Y = np.load(args.labels)[: args.n]
    out = tempfile.mkdtemp(dir=args.workdir)
    store = os.path.join(args.workdir, f"store-{args.n}") if args.store else None
    cam.set_params(store=store)
    aff.set_params(store=store)
    refiner = RandomWalkRefiner(alpha=4, beta=8, t=256, device="cpu")
    base = rss_mb("VmRSS")
    start = time.perf_counter()
    records = aff.transform(cam.compute_cams(paths, Y))
    masks = refiner.iter_predict(records) if args.store else refiner.predict(records)
    for i, mask in enumerate(masks):
        save_mask(os.path.join(out, f"{i:06d}.png"), mask)
    seconds = time.perf_counter() - start
    disk = 0
    if store:
        for root, _, files in os.walk(store):
            disk += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    print(json.dumps({"peak": rss_mb("VmHWM"), "base": base, "seconds": seconds, "disk": disk}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--store", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--images", help=argparse.SUPPRESS)
    parser.add_argument("--labels", help=argparse.SUPPRESS)
    parser.add_argument("--models", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-scale-")
    images, labels, models = prepare(workdir, max(args.sizes))
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; work folder {workdir}\n")
    print("| images | setting | peak RSS (MB) | growth over models loaded (MB) | time (s) | images/s | store on disk (MB) |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    for n in args.sizes:
        for store in (True, False):
            cmd = [sys.executable, __file__, "--child", "--n", str(n), "--images", images,
                   "--labels", labels, "--models", models, "--workdir", workdir]
            if store:
                cmd.append("--store")
            result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True,
                                               env=env).stdout.strip().splitlines()[-1])
            print(f"| {n} | {'store' if store else 'memory'} | {result['peak']:.0f} | "
                  f"{result['peak'] - result['base']:.0f} | {result['seconds']:.1f} | "
                  f"{n / result['seconds']:.1f} | "
                  f"{result['disk'] / 1e6:.0f} |" if store else
                  f"| {n} | memory | {result['peak']:.0f} | {result['peak'] - result['base']:.0f} | "
                  f"{result['seconds']:.1f} | {n / result['seconds']:.1f} | - |", flush=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
