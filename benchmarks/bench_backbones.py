"""Tiny from scratch against EfficientNet-Lite0 with ImageNet weights, through the whole method.

Issue #8, item 5. For each backbone setting, on ``make_shapes`` (training images, seed 0;
test images, seed 1000), the chain of the demo, one network at a time:

1. ``CAMClassifier`` on the image-level labels; CAM mIoU on the training images
   (``RandomWalkRefiner(t=0)``, best alpha of a small grid, as the paper's Table 1);
2. ``AffinityEstimator`` on those CAMs; CAM + walk mIoU on the training images (best
   ``(alpha, beta)`` of the grid: these are the synthesized labels);
3. the segmentation network (``PSASegmenter``'s, started from the CAM backbone) trained on
   the synthesized labels of the refiner with the demo's alpha/beta, and the same network
   trained on the true masks; their mIoU on the test images and the ratio.

Each stage reports seconds per epoch (wall; with ``--threads 1`` on an idle core, CPU time) and
the wall seconds of the CAM + affinity fits and of the whole run.

Usage::

    python benchmarks/bench_backbones.py                      # both settings, 160 images
    python benchmarks/bench_backbones.py --settings tiny --n 160 --threads 1
    python benchmarks/bench_backbones.py --quick              # smoke run (a minute)
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

# Per setting: the parameters of each step (the refiner's alpha/beta for the synthesized labels).
SETTINGS = {
    # the demo's (sklearn_psa._demo.DEMO_SETTINGS["full"])
    "tiny": {
        "cam": {"backbone": "tiny", "max_epochs": 30},
        "affinity": {"backbone": "tiny", "max_epochs": 6},
        "segmenter": {"max_epochs": 20},
        "refiner": {"alpha": 2, "beta": 16},
    },
    # ImageNet weights: the paper's smaller rates for pretrained layers (new layers at 10x),
    # fewer epochs (each costs far more on a CPU)
    "efficientnet_lite0": {
        "cam": {"backbone": "efficientnet_lite0", "pretrained": True, "learning_rate": 0.01,
                "max_epochs": 6},
        "affinity": {"backbone": "efficientnet_lite0", "pretrained": True, "learning_rate": 0.01,
                     "max_epochs": 3},
        "segmenter": {"max_epochs": 6, "learning_rate": 0.01, "head_lr_mult": 10.0},
        "refiner": {"alpha": 2, "beta": 16},
    },
    # the first five stages only (no head): a smaller receptive field, ~1/4 of the cost
    "efficientnet_lite0_stages5": {
        "cam": {"backbone": "efficientnet_lite0", "pretrained": True,
                "backbone_options": {"stages": 5}, "learning_rate": 0.01, "max_epochs": 10},
        "affinity": {"backbone": "efficientnet_lite0", "pretrained": True,
                     "backbone_options": {"stages": 5}, "learning_rate": 0.01, "max_epochs": 4},
        "segmenter": {"max_epochs": 10, "learning_rate": 0.01, "head_lr_mult": 10.0},
        "refiner": {"alpha": 2, "beta": 16},
    },
    # the demo's CAMs and affinity (tiny), a segmentation network from ImageNet weights
    "tiny+lite0_stages5_segmenter": {
        "cam": {"backbone": "tiny", "max_epochs": 30},
        "affinity": {"backbone": "tiny", "max_epochs": 6},
        "segmenter": {"init": "scratch", "backbone": "efficientnet_lite0", "pretrained": True,
                      "backbone_options": {"stages": 5}, "max_epochs": 10,
                      "learning_rate": 0.01, "head_lr_mult": 10.0},
        "refiner": {"alpha": 2, "beta": 16},
    },
}
QUICK = {"n": 12, "n_test": 8, "image_size": 64,
         "cam": {"max_epochs": 1, "scales": (1.0,), "crop_size": 64},
         "affinity": {"max_epochs": 1, "crf": False, "crop_size": 64},
         "segmenter": {"max_epochs": 1}}
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

    from sklearn_psa import AffinityEstimator, CAMClassifier, PSASegmenter, RandomWalkRefiner
    from sklearn_psa.datasets import make_shapes
    from sklearn_psa.metrics import mean_iou

    s = SETTINGS[name]
    q = QUICK if quick else {}
    cam_p = {**s["cam"], **q.get("cam", {})}
    aff_p = {**s["affinity"], **q.get("affinity", {})}
    seg_p = {**s["segmenter"], **q.get("segmenter", {})}
    X, Y, M = make_shapes(n, image_size=image_size, random_state=seed)
    Xt, _, Mt = make_shapes(n_test, image_size=image_size, random_state=seed + 1000)
    clock = _Clock()
    row = {"setting": name}
    with tempfile.TemporaryDirectory(prefix="bench-backbones-") as cache:
        cam = CAMClassifier(random_state=seed, **cam_p)
        aff = AffinityEstimator(random_state=seed, **aff_p)
        seg = PSASegmenter(cam=cam, affinity=aff, refiner=RandomWalkRefiner(**s["refiner"]),
                           random_state=seed, memory=cache, **seg_p)
        # steps 1 and 2 (through the segmenter's cache, so that its fit reuses them)
        records, cam_f, aff_f = clock("cam+affinity", lambda: seg._fit_records(X, Y))
        print(f"[{name}] CAM + affinity fitted in {clock.wall['cam+affinity']:.0f} s", file=out)
        row["cam_epoch_wall"] = float(np.mean(cam_f.epoch_seconds_))
        best_cam = max((mean_iou(M, RandomWalkRefiner(alpha=a, t=0).predict(records)), a)
                       for a in ALPHAS)
        best_walk = max((mean_iou(M, RandomWalkRefiner(alpha=a, beta=b).predict(records)), (a, b))
                        for a in ALPHAS for b in BETAS)
        used = mean_iou(M, RandomWalkRefiner(**s["refiner"]).predict(records))
        row.update(cam=best_cam, walk=best_walk, walk_used=used)
        print(f"[{name}] CAM {best_cam}, walk {best_walk}, walk at {s['refiner']} {used:.3f}",
              file=out)
        clock("weak fit", lambda: seg.fit(X, Y))
        row["seg_epoch_wall"] = float(np.mean(seg.epoch_seconds_))
        row["weak"] = mean_iou(Mt, seg.predict(Xt))
        full = clone(seg).set_params(supervision="pixel")
        clock("full fit", lambda: full.fit(X, M))
        row["full"] = mean_iou(Mt, full.predict(Xt))
        print(f"[{name}] weak {row['weak']:.3f} full {row['full']:.3f}", file=out)
    row["wall"], row["cpu"] = dict(clock.wall), dict(clock.cpu)
    row["params"] = {"cam": cam_p, "affinity": aff_p, "segmenter": seg_p, "refiner": s["refiner"]}
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--n", type=int, default=160, help="training images")
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.n_test, args.image_size = QUICK["n"], QUICK["n_test"], QUICK["image_size"]
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [run_setting(name, args.n, args.n_test, args.image_size, args.quick)
            for name in args.settings]
    print(f"\nmake_shapes: {args.n} training images (seed 0), {args.n_test} test images (seed 1000), "
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
              f"{r['walk_used']:.3f} at the refiner's | {r['weak']:.3f} | {r['full']:.3f} | "
              f"{100 * r['weak'] / r['full']:.0f}% | {r['cam_epoch_wall']:.1f} | "
              f"{r['wall']['cam+affinity']:.0f} | {r['seg_epoch_wall']:.1f} | {total:.0f} |")
    print()
    for r in rows:
        print(f"- {r['setting']}: {r['params']}")


if __name__ == "__main__":
    main()
