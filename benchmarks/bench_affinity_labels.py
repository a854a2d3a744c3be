"""Benchmark the affinity labels under several CRF settings, against the true masks.

For the CAMs of a tiny CAM classifier on ``make_shapes`` training images (cached with
joblib as in ``bench_affinity.py``), prints ``sklearn_psa.metrics.affinity_report``'s
label numbers for alpha_low 4 and 2 (alpha_high 32) without the CRF, with its default
(sxy 80, srgb 13) and with narrower or colour-tolerant kernels.

Usage::

    python benchmarks/bench_affinity_labels.py            # docs/benchmarks.md, issue #17 section
    python benchmarks/bench_affinity_labels.py --n 40 --cam-epochs 5   # a quick run
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SETTINGS = [("no CRF", False), ("CRF default (80, 13)", True), ("sxy 20, srgb 13", {"bilateral_sxy": 20}),
            ("sxy 20, srgb 30", {"bilateral_sxy": 20, "bilateral_srgb": 30}),
            ("sxy 40, srgb 30", {"bilateral_sxy": 40, "bilateral_srgb": 30}),
            ("sxy 80, srgb 30", {"bilateral_sxy": 80, "bilateral_srgb": 30})]


def main(argv=None):
    import torch
    from bench_affinity import _cam_records

    from sklearn_psa.metrics import affinity_report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--cam-epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=os.path.join("scratch", "bench_affinity_cache"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    records, masks = _cam_records(args.n, 128, args.seed, {"device": "cpu", "backbone": "tiny",
                                                          "max_epochs": args.cam_epochs}, args.cache, {})
    print("| labels | confident fg (of cells) | fg precision | confident bg | bg precision | true-fg cells labelled bg "
          "| fg-positive pairs / image (right) | negative pairs / image (right) | s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for alpha_low in (4, 2):
        for name, crf in SETTINGS:
            t = time.perf_counter()
            lab = affinity_report(records, masks, alpha_low=alpha_low, alpha_high=32, crf=crf,
                                  output_dict=True)["labels"]
            fg, neg = lab["pairs"]["fg_positive"], lab["pairs"]["negative"]
            print(f"| alpha {alpha_low}/32, {name} | {lab['fg_cells']:.3f} | {lab['fg_precision']:.3f} "
                  f"| {lab['bg_cells']:.3f} | {lab['bg_precision']:.3f} | {lab['true_fg_as_bg']:.3f} "
                  f"| {fg['per_image']:.0f} ({fg['precision']:.0%}) | {neg['per_image']:.0f} ({neg['precision']:.0%}) "
                  f"| {time.perf_counter() - t:.0f} |", flush=True)


if __name__ == "__main__":
    main()
