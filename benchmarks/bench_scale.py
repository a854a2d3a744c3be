"""Peak memory and images per second of CAM -> affinity -> walk, with and without a store.

Issue 18, item 5. The images are ``make_shapes`` images of 320 x 240 px written
as PNG files (read from disk as a real dataset is, so the images themselves are
never all in memory); a tiny ``CAMClassifier`` and ``AffinityEstimator`` are
fitted once on 16 of them and saved. Then, for each number of images and each
setting, a fresh subprocess loads the two models and runs

- **store**: ``CAMClassifier(store=...).compute_cams(paths, Y)`` (the CAMs of
  the true classes, as for the training images), ``AffinityEstimator(store=
  ...).transform``, and ``RandomWalkRefiner.iter_predict`` writing each mask
  to a PNG as it is done;
- **memory**: the same with ``store=None`` and ``RandomWalkRefiner.predict``
  (all masks returned), then written.

It prints the peak resident set size of the subprocess (VmHWM), its growth
over the resident size once the models are loaded, the wall time of each stage
and images per second, and the store's size on disk. A last subprocess times
the walk (``RandomWalkRefiner.predict``) and the affinity labels with the dense
CRF (``AffinityEstimator.fit`` with ``max_epochs=0``: two CRFs per image) on
the first ``--jobs-images`` records with ``n_jobs`` 1 and 2. From these
measurements it projects the time and disk of the same stages on PASCAL VOC
train_aug and COCO train (per-pixel and per-class scaling, linear in the
workers; see :func:`projection`).

Usage::

    nice -n 10 python benchmarks/bench_scale.py [--sizes 200 2000] [--workdir DIR] [--device cuda]
"""

import argparse
import json
import os
import shutil
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
    if store:
        shutil.rmtree(store, ignore_errors=True)  # every image computed, none found
    cam.set_params(store=store, device=args.device)
    aff.set_params(store=store, device=args.device)
    refiner = RandomWalkRefiner(alpha=4, beta=8, t=256, device=args.device)
    base = rss_mb("VmRSS")
    times = [time.perf_counter()]
    records = cam.compute_cams(paths, Y)
    times.append(time.perf_counter())
    records = aff.transform(records)
    times.append(time.perf_counter())
    masks = refiner.iter_predict(records) if args.store else refiner.predict(records)
    for i, mask in enumerate(masks):
        save_mask(os.path.join(out, f"{i:06d}.png"), mask)
    times.append(time.perf_counter())
    disk = {}
    if store:
        for kind in os.listdir(store):
            folder = os.path.join(store, kind)
            disk[kind] = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    print(json.dumps({"peak": rss_mb("VmHWM"), "base": base, "stages": np.diff(times).tolist(),
                      "seconds": times[-1] - times[0], "disk": disk,
                      "classes": int(sum(r.labels.size for r in records.records))}))


def jobs_child(args):
    """Images per second of the walk and of the CRF labels with n_jobs 1 and 2."""
    import joblib

    from sklearn_psa import AffinityEstimator, RandomWalkRefiner

    cam, aff = joblib.load(args.models)
    paths = [os.path.join(args.images, f"{i:06d}.png") for i in range(args.n)]
    store = os.path.join(args.workdir, "store-jobs")
    cam.set_params(store=store)
    aff.set_params(store=store)
    records = aff.transform(cam.compute_cams(paths, np.load(args.labels)[: args.n]))
    stages = {
        "walk": lambda n_jobs: RandomWalkRefiner(alpha=4, t=256, device="cpu",
                                                 n_jobs=n_jobs).predict(records),
        "crf": lambda n_jobs: AffinityEstimator(backbone="tiny", max_epochs=0, crf=True,
                                                device="cpu", n_jobs=n_jobs).fit(records),
    }
    for run in stages.values():  # start loky's workers (and their imports) before timing
        run(2)
    best = {}
    for _ in range(args.rounds):
        for name, run in stages.items():
            for n_jobs in (1, 2):
                start = time.perf_counter()
                run(n_jobs)
                key = f"{name} {n_jobs}"
                best[key] = min(best.get(key, np.inf), time.perf_counter() - start)
    print(json.dumps({"best": best, "classes": int(sum(r.labels.size for r in records.records))}))


#: Datasets of the projection: (name, images, height, width, mean classes per image).
DATASETS = [
    ("VOC train_aug", 10_582, 375, 500, 1.5),
    ("COCO train2017", 118_287, 480, 640, 2.9),
]
#: Neighbour offsets at radius 5, the affinity's channels.
K = 34


def disk_per_image(height, width, n_classes):
    """Bytes a store holds per image: float32 CAMs and affinity, the two uint8 label maps of
    ``AffinityEstimator.fit`` and the uint8 pseudo-label (128-byte .npy headers)."""
    pixels, cells = height * width, -(-height // 8) * -(-width // 8)
    return 4 * n_classes * pixels + 128 + 4 * K * cells + 128 + 2 * pixels + 128 + pixels + 128


def projection(per_image, n_classes, workers):
    """Rows of the projection from the per-image seconds measured at 320 x 240.

    ``per_image``: seconds per image of each stage here (``cam``, ``affinity``,
    ``walk``, ``crf``) at ``n_classes`` classes per image on average. Network
    inference scales with the pixels, the walk with the grid cells times the
    score channels (``1 + classes``), the CRF with the pixels times its labels;
    workers divide the time (linear scaling, an assumption).
    """
    pixels0, cells0 = HEIGHT * WIDTH, -(-HEIGHT // 8) * -(-WIDTH // 8)
    rows = []
    for name, n, h, w, classes in DATASETS:
        px, cells = h * w / pixels0, -(-h // 8) * -(-w // 8) / cells0
        channels = (1 + classes) / (1 + n_classes)
        seconds = {"cam": per_image["cam"] * px, "affinity": per_image["affinity"] * px,
                   "walk": per_image["walk"] * cells * channels,
                   "crf": per_image["crf"] * px * channels}
        hours = {k: v * n / 3600 for k, v in seconds.items()}
        rows.append((name, n, h, w, classes, n * disk_per_image(h, w, classes) / 1e9, hours))
    print("| dataset | images | size, classes | store on disk (GB) | CAM inference (tiny, CPU) "
          "core-h | AffinityNet inference (tiny, CPU) core-h | walk core-h | CRF labels core-h | "
          "total core-h | " + " | ".join(f"on {n} CPU workers (h)" for n in workers)
          + " | walk + CRF on a 16-core GPU host (h) |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|" + "---:|" * (len(workers) + 1))
    for name, n, h, w, classes, disk, hours in rows:
        total = sum(hours.values())
        print(f"| {name} | {n:,} | {w} x {h}, {classes} | {disk:.0f} | {hours['cam']:.2f} | "
              f"{hours['affinity']:.2f} | {hours['walk']:.2f} | {hours['crf']:.2f} | {total:.2f} | "
              + " | ".join(f"{total / k:.2f}" for k in workers)
              + f" | {(hours['walk'] + hours['crf']) / 16:.2f} |")


def run_child(mode_args, env):
    cmd = [sys.executable, __file__, "--child"] + mode_args
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--jobs-images", type=int, default=48,
                        help="images of the n_jobs table (0: skip it and the projection)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the n_jobs table (best kept)")
    parser.add_argument("--workers", type=int, nargs="+", default=[16, 64],
                        help="CPU workers of the projection")
    parser.add_argument("--device", default="cpu",
                        help="device of the networks and the walk in the memory table (the n_jobs "
                             "table is about CPU workers: always the CPU)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--jobs", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--store", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--images", help=argparse.SUPPRESS)
    parser.add_argument("--labels", help=argparse.SUPPRESS)
    parser.add_argument("--models", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return jobs_child(args) if args.jobs else child(args)
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-scale-")
    images, labels, models = prepare(workdir, max(args.sizes + [args.jobs_images]))
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, niceness "
          f"{os.nice(0)}; work folder {workdir}\n")
    print("| images | setting | peak RSS (MB) | growth over models loaded (MB) | CAMs (s) | "
          "affinity (s) | walk + PNG (s) | total (s) | images/s | store on disk (MB) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    common = ["--images", images, "--labels", labels, "--models", models, "--workdir", workdir,
              "--device", args.device]
    results = {}
    for n in args.sizes:
        for store in (True, False):
            r = run_child(["--n", str(n)] + (["--store"] if store else []) + common, env)
            results[n, store] = r
            disk = f"{sum(r['disk'].values()) / 1e6:.0f}" if store else "-"
            print(f"| {n} | {'store' if store else 'memory'} | {r['peak']:.0f} | "
                  f"{r['peak'] - r['base']:.0f} | "
                  + " | ".join(f"{t:.1f}" for t in r["stages"])
                  + f" | {r['seconds']:.1f} | {n / r['seconds']:.1f} | {disk} |", flush=True)
    small, large = min(args.sizes), max(args.sizes)
    if small != large:
        for store in (True, False):
            ratio = results[large, store]["peak"] / results[small, store]["peak"]
            print(f"\npeak at {large} / peak at {small} images, "
                  f"{'store' if store else 'memory'}: {ratio:.2f}x", end="")
        print()
    big = results[large, True]
    pixels = HEIGHT * WIDTH
    measured = sum(big["disk"].values()) / large
    formula = (4 * big["classes"] / large * pixels + 128 + 4 * K * (-(-HEIGHT // 8)) * (-(-WIDTH // 8))
               + 128)
    print(f"\nstore per image: {measured / 1e6:.3f} MB measured (CAMs + affinity), "
          f"{formula / 1e6:.3f} MB by the formula of the projection; "
          f"{big['classes'] / large:.2f} classes per image")
    if args.jobs_images:
        r = run_child(["--jobs", "--n", str(args.jobs_images), "--rounds", str(args.rounds)]
                      + common, env)
        n = args.jobs_images
        print(f"\n| stage ({n} images of {WIDTH} x {HEIGHT}) | n_jobs=1 (images/s) | "
              "n_jobs=2 (images/s) | speed-up |")
        print("|---|---:|---:|---:|")
        names = {"walk": "random walk (RandomWalkRefiner.predict, t = 256)",
                 "crf": "affinity labels with the dense CRF (AffinityEstimator.fit, max_epochs=0)"}
        for key, name in names.items():
            one, two = n / r["best"][f"{key} 1"], n / r["best"][f"{key} 2"]
            print(f"| {name} | {one:.1f} | {two:.1f} | {two / one:.2f} |")
        cam_s, aff_s, _ = (t / large for t in big["stages"])
        per_image = {"cam": cam_s, "affinity": aff_s, "walk": r["best"]["walk 1"] / n,
                     "crf": r["best"]["crf 1"] / n}
        print("\nper image at 320 x 240 (s): " + ", ".join(f"{k} {v:.4f}" for k, v in per_image.items()))
        print()
        projection(per_image, r["classes"] / n, args.workers)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
