"""Benchmark CAMClassifier on make_shapes: quality and speed against the receptive field.

For each tiny-backbone configuration (its depth and dilation at stride 8 set
the receptive field), train on ``--n-train`` images and report:

- classification mAP on ``--n-test`` held-out images (macro average precision);
- CAM mIoU on the training images: CAMs of the true classes
  (``compute_cams(X, Y)``, what ``fit_transform`` returns), background
  ``(1 - max_c M_c) ** alpha``, argmax, mean IoU over background + classes, at
  the best alpha of a sweep (the alpha is reported);
- seconds per training epoch (median; wall and CPU time of this process);
- CAM inference images per second (multi-scale + flip, ``transform``).

Shared machines are noisy: compare the rows of one run, not runs.

Usage::

    python benchmarks/bench_cam.py                 # the table in docs/benchmarks.md
    python benchmarks/bench_cam.py --quick         # a smoke run (seconds)
"""

import argparse
import os
import time

import numpy as np


def _miou_at_alpha(records, masks, n_classes, alphas):
    from sklearn_psa.metrics import mean_iou

    out = {}
    for alpha in alphas:
        preds = []
        for r in records:
            scores = np.zeros((n_classes + 1,) + r.shape, np.float32)
            top = r.cams.max(0) if len(r.labels) else np.zeros(r.shape, np.float32)
            scores[0] = (1.0 - top) ** alpha
            scores[r.labels + 1] = r.cams
            preds.append(scores.argmax(0).astype(np.uint8))
        out[alpha] = mean_iou(list(masks), preds, n_classes=n_classes + 1)
    return out


def _map(Y, P):
    from sklearn.metrics import average_precision_score

    keep = (Y.sum(0) > 0) & (Y.sum(0) < len(Y))
    return average_precision_score(Y[:, keep], P[:, keep], average="macro")


def run(configs, n_train, n_test, image_size, max_epochs, seed, threads):
    import torch

    from sklearn_psa import CAMClassifier
    from sklearn_psa.datasets import make_shapes
    from sklearn_psa.nn.tiny import TinyBackbone

    if threads:
        torch.set_num_threads(threads)
    X, Y, masks = make_shapes(n_train + n_test, image_size=image_size, random_state=seed)
    Xtr, Ytr, Mtr = X[:n_train], Y[:n_train], masks[:n_train]
    Xte, Yte = X[n_train:], Y[n_train:]
    alphas = (0.25, 0.5, 1, 2, 4, 8, 16, 32)
    CAMClassifier(backbone="tiny", max_epochs=1, scales=(1.0,), random_state=seed).fit(Xtr[:16], Ytr[:16])  # warm-up
    rows = []
    for options in configs:
        rf = TinyBackbone(**options).receptive_field
        kw = {} if max_epochs is None else {"max_epochs": max_epochs}
        est = CAMClassifier(backbone="tiny", backbone_options=options, random_state=seed, **kw)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        est.fit(Xtr, Ytr)
        fit_wall, fit_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        mAP = _map(Yte, est.predict_proba(Xte))
        t0 = time.perf_counter()
        est.transform(Xtr)
        infer = len(Xtr) / (time.perf_counter() - t0)
        records = est.compute_cams(Xtr, Ytr)
        mious = _miou_at_alpha(records, Mtr, Y.shape[1], alphas)
        best = max(mious, key=mious.get)
        rows.append({
            "options": options, "rf": rf, "mAP": mAP, "miou": mious[best], "alpha": best,
            "epoch_wall": float(np.median(est.epoch_seconds_)), "epoch_cpu": fit_cpu / est.n_iter_,
            "fit_wall": fit_wall, "infer": infer, "loss": est.loss_curve_[-1],
        })
        print(f"done {options}: {rows[-1]}", flush=True)
    return rows


def table(rows, args):
    lines = [
        f"make_shapes: {args.n_train} training / {args.n_test} held-out images, "
        f"{args.image_size}x{args.image_size}, CAMClassifier defaults"
        + (f" but max_epochs={args.epochs}" if args.epochs else "")
        + f", torch threads={args.threads or 'default'}, seed {args.seed}.",
        "",
        "| tiny options | receptive field (px) | held-out mAP | CAM mIoU (train) | best alpha "
        "| final loss | s/epoch (wall) | CPU s/epoch | fit (s, wall) | CAM images/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items())
        lines.append(
            f"| {opts} | {r['rf']} | {r['mAP']:.3f} | {r['miou']:.3f} | {r['alpha']:g} | {r['loss']:.3f} "
            f"| {r['epoch_wall']:.2f} | {r['epoch_cpu']:.2f} | {r['fit_wall']:.0f} | {r['infer']:.1f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=300)
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=None, help="override max_epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--config", action="append", metavar="DEPTH,DILATION",
                        help="tiny configurations to run (repeatable; default: 1,1 2,1 2,2 4,2)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = parser.parse_args(argv)
    pairs = [c.split(",") for c in (args.config or ["1,1", "2,1", "2,2", "4,2"])]
    configs = [{"depth": int(d), "dilation": int(r)} for d, r in pairs]
    if args.quick:
        args.n_train, args.n_test, args.image_size, args.epochs = 24, 16, 64, 1
        configs = configs[:2]
    rows = run(configs, args.n_train, args.n_test, args.image_size, args.epochs, args.seed, args.threads)
    print()
    print(table(rows, args))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
