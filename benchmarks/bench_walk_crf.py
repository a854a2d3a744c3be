"""The walk's masks through a dense CRF: ``RandomWalkRefiner(crf=...)`` against the walk alone.

For the CAM alone (``t=0``) and the walk over each affinity (the oracle of the true masks,
``FeatureAffinity``, AffinityNet), at the (alpha, beta) that scores best on the masks without
the CRF: mIoU of the masks on the training images, without the CRF and with it at several
bilateral widths (``crf=True`` scales it with the image: 20.5 px at 128 px).

Usage::

    python benchmarks/bench_walk_crf.py --demo --seed 0   # the demo's data and steps
    python benchmarks/bench_walk_crf.py                   # make_shapes default, tiny CAMs
    python benchmarks/bench_walk_crf.py --quick           # smoke run

Records come from ``bench_walk_choice``'s cache (``--cache``): a run after it with the same
settings trains nothing.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def run(args):
    import torch

    import bench_walk_choice as C
    from sklearn_psa import RandomWalkRefiner
    from sklearn_psa._walk_choice import AUTO_ALPHAS, AUTO_BETAS

    torch.set_num_threads(args.threads)
    records, masks, walks = C._walk_sources(args)
    crfs = [True] + [{"bilateral_sxy": float(s)} for s in args.sxy]
    head = " | ".join("`crf=True`" if c is True else f"sxy {c['bilateral_sxy']:g}" for c in crfs)
    lines = [f"| masks | (alpha, beta) | without CRF | {head} | seconds per image (`crf=True`) |",
             "|---|---|---:|" + "---:|" * len(crfs) + "---:|"]

    def row(name, recs, t, pairs):
        grid = {p: RandomWalkRefiner(alpha=p[0], beta=p[1], t=t, device="cpu").score(recs, masks)
                for p in pairs}
        best = max(grid, key=grid.get)
        cells, seconds = [], 0.0
        for crf in crfs:
            start = time.perf_counter()
            cells.append(RandomWalkRefiner(alpha=best[0], beta=best[1], t=t, device="cpu", crf=crf)
                         .score(recs, masks))
            if crf is True:
                seconds = (time.perf_counter() - start) / len(recs)
        text = " | ".join(f"{c:.3f} ({c - grid[best]:+.3f})" for c in cells)
        lines.append(f"| {name} | {best if t else (best[0], '-')} | {grid[best]:.3f} | {text} | {seconds:.3f} |")
        print(lines[-1], flush=True)

    row("CAM alone (t=0)", records, 0, [(a, 8) for a in AUTO_ALPHAS])
    for name, recs in walks.items():
        row(f"walk, {name}", recs, 256, [(a, b) for a in AUTO_ALPHAS for b in AUTO_BETAS])
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="store_true",
                        help="the demo's data and steps (EfficientNet-Lite0 CAMs, the demo's AffinityNet)")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--hard", action="store_true", help="make_shapes' hard case")
    parser.add_argument("--cam-epochs", type=int, default=100)
    parser.add_argument("--affinity-epochs", default="auto", type=lambda v: v if v == "auto" else int(v))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sxy", type=float, nargs="*", default=[10, 40, 80],
                        help="other bilateral widths (px) to compare")
    parser.add_argument("--cache", default=os.path.join("scratch", "bench_affinity_cache"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.image_size, args.cam_epochs, args.affinity_epochs, args.sxy = 16, 64, 1, 1, [10]
    lines = run(args)
    print()
    print("The demo's training images and steps" if args.demo else
          f"make_shapes({'hard case' if args.hard else 'default'}): {args.n} training images of "
          f"{args.image_size} px, tiny CAMs {args.cam_epochs} epochs", f"(seed {args.seed}); walk t=256.")
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
