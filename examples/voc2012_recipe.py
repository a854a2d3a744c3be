"""
=====================================================
PASCAL VOC 2012 with the paper's settings (GPU recipe)
=====================================================

AffinityNet on PASCAL VOC 2012 as in Ahn & Kwak (CVPR 2018): a ResNet-38 (or ResNet-50)
backbone initialised from ImageNet weights read from a file, the paper's training settings
for the CAM network (crops of 448 px, batch 16, 15 epochs, learning rate 0.1, weight decay
5e-4) and for AffinityNet (batch 8, 8 epochs, dense CRF on the affinity labels), the random
walk with alpha 16, beta 8, t 256, and a DeepLab-style segmentation network trained on the
synthesized masks, with the dense CRF at inference.

It runs as is where the devkit and a CUDA GPU exist (nothing is downloaded)::

    python examples/voc2012_recipe.py --voc /data/VOCdevkit \\
        --weights /weights/resnet38d_imagenet.pth --backbone resnet38d --output runs/voc

    # the paper trains on SBD's augmented list (10,582 images):
    python examples/voc2012_recipe.py --voc /data/VOCdevkit --train-split /data/train_aug.txt ...

Weights: ``resnet50`` takes torchvision's ImageNet file (``resnet50-*.pth``, its parameter
names); ``resnet38d`` takes the reference code's converted ImageNet weights (its names).
See ``sklearn_psa.nn.make_backbone``.

It writes to ``--output``: checkpoints of the CAM and segmentation training (an interrupted
run resumes from them), ``model.psa`` (the fitted ``PSASegmenter``, written with
``sklearn_psa.io.save_model``: no code, ``sklearn-psa predict --model`` reads it), ``pseudo/`` (the
synthesized training masks, as VOC-palette PNGs), ``val/`` (predictions on the val split,
resumable) and ``report.md`` (per-class tables: the synthesized labels against the training
masks, as in the paper's Table 1, and the predictions on val, as in its Table 2).

Memory: the records that flow between the steps hold every training image's CAMs and
affinities (about 1.5 MB per VOC image), so the 10,582 images of ``train_aug`` take about
16 GB of RAM while the masks are synthesized; the 1,464 of ``train`` about 2 GB.
"""

import argparse
import time
from pathlib import Path

from sklearn_psa import AffinityEstimator, CAMClassifier, PSASegmenter, RandomWalkRefiner
from sklearn_psa.datasets import load_voc
from sklearn_psa.io import atomic_write, load_model, save_mask, save_model
from sklearn_psa.metrics import segmentation_report


def build(backbone, weights, device, output, seg_epochs):
    """The three steps and the segmenter with the paper's settings."""
    cam = CAMClassifier(
        backbone=backbone, pretrained=weights, crop_size=448, batch_size=16, max_epochs=15,
        # "auto" is 0.01 with pretrained weights: our SGD has momentum 0.9, the reference's
        # rate of 0.1 runs without (its momentum slot receives the weight decay)
        learning_rate="auto", weight_decay=5e-4, device=device, random_state=0, verbose=1,
        checkpoint=str(output / "cam.ckpt"),
    )
    affinity = AffinityEstimator(
        backbone=backbone, pretrained=weights, crop_size=448, batch_size=8, max_epochs=8,
        learning_rate="auto", weight_decay=5e-4, crf=True, device=device, random_state=0,
        verbose=1,
    )
    refiner = RandomWalkRefiner(alpha=16, beta=8, t=256, device=device)
    return PSASegmenter(
        cam, affinity, refiner, backbone=backbone, pretrained=weights,
        aspp_rates=(6, 12, 18), head_channels=256, crop_size=448, scale_range=(0.7, 1.3),
        batch_size=8, max_epochs=seg_epochs, learning_rate=0.01, head_lr_mult=10.0,
        weight_decay=5e-4, crf=True,
        device=device, random_state=0, verbose=1, checkpoint=str(output / "seg.ckpt"),
    )


def predict_folder(model, images, ids, folder, batch_size=16):
    """Write one mask per image; masks already written are skipped (resume)."""
    folder.mkdir(parents=True, exist_ok=True)
    todo = [(i, p) for i, p in zip(ids, images) if not (folder / f"{i}.png").exists()]
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        for (image_id, _), mask in zip(chunk, model.predict([p for _, p in chunk])):
            save_mask(folder / f"{image_id}.png", mask)
        print(f"\rpredicted {start + len(chunk)}/{len(todo)}", end="", flush=True)
    print()
    return [str(folder / f"{i}.png") for i in ids]


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[1])
    parser.add_argument("--voc", required=True, help="VOCdevkit or VOC2012 folder")
    parser.add_argument("--weights", required=True, help="ImageNet weights file of the backbone")
    parser.add_argument("--backbone", default="resnet38d", choices=("resnet38d", "resnet50"))
    parser.add_argument("--train-split", default="train",
                        help="split name or list file (SBD's train_aug.txt for the paper's set)")
    parser.add_argument("--val-split", default="val")
    parser.add_argument("--output", default="runs/voc2012")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seg-epochs", type=int, default=20,
                        help="epochs of the segmentation network (about 20k steps of batch 8 "
                             "on train_aug)")
    args = parser.parse_args()

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    train = load_voc(args.voc, split=args.train_split)
    val = load_voc(args.voc, split=args.val_split)
    names = train.class_names
    print(f"{len(train.ids)} training images (image-level labels), {len(val.ids)} val images")

    model_path = output / "model.psa"
    if model_path.exists():
        model = load_model(model_path)
        print(f"loaded {model_path}")
    else:
        model = build(args.backbone, args.weights, args.device, output, args.seg_epochs)
        start = time.perf_counter()
        model.fit(train.images, train.labels)
        print(f"fitted in {(time.perf_counter() - start) / 3600:.1f} h")
        save_model(model, model_path)
    model.set_params(device=args.device)
    model.save_pseudo_labels(output / "pseudo", names=train.ids)

    sections = ["# AffinityNet on PASCAL VOC 2012", ""]
    scored = [i for i, m in enumerate(train.masks) if m is not None]
    if scored:
        report = segmentation_report([train.masks[i] for i in scored],
                                     [str(output / "pseudo" / f"{train.ids[i]}.png")
                                      for i in scored], class_names=names)
        sections += [f"## Synthesized labels, {len(scored)} training images with masks "
                     "(as in the paper's Table 1)", "", "```", report, "```", ""]
    val_ids = [i for i, m in zip(val.ids, val.masks) if m is not None]
    val_images = [p for p, m in zip(val.images, val.masks) if m is not None]
    predicted = predict_folder(model, val_images, val_ids, output / "val")
    report = segmentation_report([m for m in val.masks if m is not None], predicted,
                                 class_names=names)
    sections += [f"## Segmentation on {args.val_split} ({len(val_ids)} images; the paper's "
                 "Table 2: 61.7 mIoU with ResNet-38)", "", "```", report, "```", ""]
    with atomic_write(output / "report.md", "w") as f:
        f.write("\n".join(sections))
    print("\n".join(sections))


if __name__ == "__main__":
    main()
