"""Tiny from scratch against EfficientNet-Lite0 with ImageNet weights, through the whole method.

Issue #8, item 5. For each backbone setting, on ``make_shapes`` (training images, seed 0;
test images, seed 1000), the chain of the demo, one network at a time:

1. ``CAMClassifier`` on the image-level labels; CAM mIoU on the training images
   (``RandomWalkRefiner(t=0)``, best alpha of a small grid, as the paper's Table 1);
2. ``AffinityEstimator`` on those CAMs; CAM + walk mIoU on the training images (best
   ``(alpha, beta)`` of the grid: these are the synthesized labels);
3. the segmentation network (``PSASegmenter``'s) trained on the synthesized labels of the
   refiner with the demo's alpha/beta, and the same network trained on the true masks; their
   mIoU on the test images and the ratio.

Each stage reports seconds per epoch (wall; with ``--threads 1`` on an idle core, CPU time) and
the wall seconds of the CAM + affinity fits and of the whole run.

Usage::

    python benchmarks/bench_backbones.py                      # all settings, 160 images
    python benchmarks/bench_backbones.py --settings tiny --n 160 --threads 1
    python benchmarks/bench_backbones.py --quick              # smoke run (a minute)
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np


# Per setting: PSASegmenter parameters (nested ones for its steps). "tiny" and
# "efficientnet_lite0_stages5" are the demo's settings (sklearn_psa._demo.DEMO_SETTINGS "full"
# and "pretrained"); the others change one thing.
def _settings():
    from sklearn_psa._demo import DEMO_SETTINGS

    pre = DEMO_SETTINGS["pretrained"]["params"]
    return {
        "tiny": dict(DEMO_SETTINGS["full"]["params"]),
        "efficientnet_lite0_stages5": dict(pre),
        # the whole network (1280-channel head): fewer epochs, each costs ~4x more
        "efficientnet_lite0": {
            **{k: v for k, v in pre.items() if not k.endswith("backbone_options")},
            "cam__max_epochs": 6, "affinity__max_epochs": 3, "max_epochs": 6,
        },
        # the demo's tiny CAMs and affinity, a segmentation network from ImageNet weights
        "tiny+lite0_stages5_segmenter": {
            **DEMO_SETTINGS["full"]["params"],
            "init": "scratch", "backbone": "efficientnet_lite0", "pretrained": True,
            "backbone_options": {"stages": 5}, "max_epochs": 10,
        },
    }


SETTINGS = ("tiny", "efficientnet_lite0", "efficientnet_lite0_stages5", "tiny+lite0_stages5_segmenter")
QUICK = {"n": 12, "n_test": 8, "image_size": 64,
         "params": {"cam__max_epochs": 1, "cam__scales": (1.0,), "cam__crop_size": 64,
                    "affinity__max_epochs": 1, "affinity__crf": False, "affinity__crop_size": 64,
                    "max_epochs": 1}}
ALPHAS = (0.5, 1, 2, 4, 8, 16)
BETAS = (8, 16, 32)


class _Clock:
    def __init__(self):
        self.wall, self.cpu = {}, {}

    def __call__(self, name, fn):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        self.wall[name] = time.perf_counter() - w
        self.cpu[name] = time.process_time() - c
        return out


def run_setting(name, n, n_test, image_size, quick, seed=0, out=sys.stderr):
    from sklearn.base import clone

    from sklearn_psa import PSASegmenter, RandomWalkRefiner
    from sklearn_psa.datasets import make_shapes
    from sklearn_psa.metrics import mean_iou

    params = {**_settings()[name], **(QUICK["params"] if quick else {})}
    X, Y, M = make_shapes(n, image_size=image_size, random_state=seed)
    Xt, _, Mt = make_shapes(n_test, image_size=image_size, random_state=seed + 1000)
    clock = _Clock()
    row = {"setting": name, "params": params}
    with tempfile.TemporaryDirectory(prefix="bench-backbones-") as cache:
        seg = PSASegmenter(random_state=seed, memory=cache).set_params(**params)
        # steps 1 and 2 (through the segmenter's cache, so that its fit reuses them)
        records, cam_f, _ = clock("cam+affinity", lambda: seg._fit_records(X, Y))
        print(f"[{name}] CAM + affinity fitted in {clock.wall['cam+affinity']:.0f} s", file=out)
        row["cam_epoch_wall"] = float(np.mean(cam_f.epoch_seconds_))
        best_cam = max((mean_iou(M, RandomWalkRefiner(alpha=a, t=0).predict(records)), a)
                       for a in ALPHAS)
        best_walk = max((mean_iou(M, RandomWalkRefiner(alpha=a, beta=b).predict(records)), (a, b))
                        for a in ALPHAS for b in BETAS)
        used = mean_iou(M, RandomWalkRefiner(alpha=params.get("refiner__alpha", 16),
                                             beta=params.get("refiner__beta", 8)).predict(records))
        row.update(cam=best_cam, walk=best_walk, walk_used=used)
        print(f"[{name}] CAM {best_cam}, walk {best_walk}, walk as the demo {used:.3f}", file=out)
        clock("weak fit", lambda: seg.fit(X, Y))
        row["seg_epoch_wall"] = float(np.mean(seg.epoch_seconds_))
        row["weak"] = mean_iou(Mt, seg.predict(Xt))
        full = clone(seg).set_params(supervision="pixel")
        clock("full fit", lambda: full.fit(X, M))
        row["full"] = mean_iou(Mt, full.predict(Xt))
        print(f"[{name}] weak {row['weak']:.3f} full {row['full']:.3f}", file=out)
    row["wall"], row["cpu"] = dict(clock.wall), dict(clock.cpu)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--n", type=int, default=160, help="training images")
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the training images and networks (test images: seed + 1000)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.n_test, args.image_size = QUICK["n"], QUICK["n_test"], QUICK["image_size"]
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [run_setting(name, args.n, args.n_test, args.image_size, args.quick, seed=args.seed)
            for name in args.settings]
    print(f"\nmake_shapes: {args.n} training images (seed {args.seed}), {args.n_test} test images "
          f"(seed {args.seed + 1000}), "
          f"{args.image_size} px; torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{os.cpu_count()} CPUs\n")
    print("| backbone | CAM mIoU (train) | CAM + walk (train) | segmenter (test) | fully supervised "
          "(test) | weak / full | CAM s/epoch | CAM + affinity (s) | segmenter s/epoch | "
          "total (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        cam, a = r["cam"]
        walk, (wa, wb) = r["walk"]
        total = sum(r["wall"].values())
        print(f"| {r['setting']} | {cam:.3f} (alpha {a}) | {walk:.3f} (alpha {wa}, beta {wb}); "
              f"{r['walk_used']:.3f} as the demo | {r['weak']:.3f} | {r['full']:.3f} | "
              f"{100 * r['weak'] / r['full']:.0f}% | {r['cam_epoch_wall']:.1f} | "
              f"{r['wall']['cam+affinity']:.0f} | {r['seg_epoch_wall']:.1f} | {total:.0f} |")
    print()
    for r in rows:
        print(f"- {r['setting']}: {r['params']}")


if __name__ == "__main__":
    main()
