"""Training throughput (images per second) of the three networks, on one device or data-parallel.

For each network (the CAM classifier, AffinityNet, the segmentation network) it
trains ``--epochs`` epochs on ``make_shapes`` images of ``--image-size`` px,
randomly cropped to ``--crop`` px (the paper's 448), and reports the images
per second of the last epoch (the first warms up: cuDNN's algorithm search,
the allocator). Run it as is for one process per device, or under ``torchrun``
for data-parallel training: the fits run DistributedDataParallel by
themselves, rank 0 prints, and the rate is that of all processes together.

Usage::

    python benchmarks/bench_ddp.py --device cpu               # the CPU row
    python benchmarks/bench_ddp.py --device cuda              # the 1-GPU row
    torchrun --standalone --nproc_per_node 4 benchmarks/bench_ddp.py --device cuda   # 4 GPUs
    python benchmarks/bench_ddp.py --quick                    # smoke run (tiny, 64 px crops)

``--backbone`` defaults to the paper's ResNet-38 (``resnet38d``). A network's
speed does not depend on its weights, so every network starts from scratch
(no weights package needed). Shared machines are noisy: compare rows of one
run, and read the CPU row with the torch threads it used (printed).
"""

import argparse
import os
import sys

import torch

from sklearn_psa import AffinityEstimator, CAMClassifier, PSASegmenter
from sklearn_psa._distributed import process_group
from sklearn_psa._device import resolve_device
from sklearn_psa.datasets import make_shapes


def _rate(est, n_images):
    """Images per second of the estimator's last epoch."""
    return n_images / est.history_[-1]["seconds"]


def run(args):
    device = resolve_device(args.device)
    group = process_group(device)  # under torchrun: data-parallel (rank 0 prints)
    world = 1 if group is None else group.world_size
    main = group is None or group.rank == 0
    n = args.batch_size * args.steps
    X, Y, masks = make_shapes(n, image_size=args.image_size, random_state=0)
    common = dict(backbone=args.backbone, crop_size=args.crop, batch_size=args.batch_size,
                  max_epochs=args.epochs, device=args.device, random_state=0,
                  num_workers=args.num_workers)
    rows = []
    cam = CAMClassifier(**common, scales=(1.0,)).fit(X, Y)
    rows.append(("CAM classifier", _rate(cam, n)))
    records = CAMClassifier(**dict(common, max_epochs=0), scales=(1.0,)).fit_transform(X, Y)
    aff = AffinityEstimator(**common, crf=False).fit(records)
    rows.append(("AffinityNet", _rate(aff, n)))
    seg = PSASegmenter(**common, supervision="pixel", init="scratch").fit(X, masks)
    rows.append(("segmentation network", _rate(seg, n)))
    if main:
        where = str(device) if group is None else f"{world} x {group.device.type} ({group.backend})"
        threads = f", {torch.get_num_threads()} torch threads" if device.type == "cpu" else ""
        print(f"backbone {args.backbone}, {args.crop} px crops of {args.image_size} px images, "
              f"batch {args.batch_size}, {n} images per epoch, {where}{threads}")
        print("| network | device | processes | images/s |")
        print("| --- | --- | --- | --- |")
        for name, rate in rows:
            print(f"| {name} | {device.type} | {world} | {rate:.1f} |")
    if group is not None:
        torch.distributed.destroy_process_group()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--backbone", default="resnet38d",
                   help="the paper's ResNet-38 by default; any backbone name")
    p.add_argument("--crop", type=int, default=448)
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8, help="the global batch")
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per epoch")
    p.add_argument("--epochs", type=int, default=2, help="the last one is timed")
    p.add_argument("--num-workers", default="auto",
                   type=lambda s: s if s == "auto" else int(s))
    p.add_argument("--quick", action="store_true", help="tiny backbone, 64 px crops, CPU")
    args = p.parse_args(argv)
    if args.quick:
        args.backbone, args.crop, args.image_size = "tiny", 64, 72
        args.batch_size, args.steps = 4, 2
        if args.device == "auto":
            args.device = "cpu"
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
