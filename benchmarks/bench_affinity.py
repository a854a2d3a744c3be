"""Benchmark AffinityEstimator on make_shapes training images (the paper's Table 1 setting).

Rows (mIoU of the synthesized masks on the training images, as the paper reports):

- ``CAM alone (t=0)``: argmax of background ``(1 - max M_c) ** alpha`` and the CAMs;
- ``oracle affinity``: the walk with the affinity of the true masks (1 within a
  label, 0 across): the ceiling of this stage for these CAMs;
- ``learned: <ablation>``: the walk with AffinityNet trained on the CAM labels,
  for each ablation (CRF on the labels, initialisation, input resolution,
  augmentation, training length), plus ``learned on true labels`` (labels from the
  masks: the ceiling of learning, free of CAM label noise).

Each walk row takes the best (alpha, beta) of a small grid (t = 256), as the
paper tunes them on train; the table also lists the AUC of the affinity at
telling same-label from different-label pairs of the true masks, and the
quality of the confident labels (precision of confident foreground/background
cells against the true masks, with and without the CRF).

CAM records are cached with joblib under ``--cache`` (the CAM network dominates
the run time otherwise). Shared machines are noisy: compare rows of one run.

Usage::

    python benchmarks/bench_affinity.py                # docs/benchmarks.md (AffinityEstimator) table
    python benchmarks/bench_affinity.py --quick        # smoke run (a minute)
    python benchmarks/bench_affinity.py --ablation base --ablation init_cam

    # docs/benchmarks.md (AffinityEstimator) run: cached CAM records (pickle with "records" and "masks"),
    # no CRF unless the ablation sets it, one torch thread, wide walk grid
    python benchmarks/bench_affinity.py --records REC.pkl --epochs 4 --base-crf off \
        --no-crf-quality --threads 1 --alphas 1 2 4 8 16 --betas 8 16 32 \
        --ablation base --ablation input_scale_2 --ablation crf

``--threads`` defaults to 1: on a shared 2-core machine, two torch threads competing with
another process made one AffinityNet fit take 181 s instead of 8 s. The default walk grid
reaches down to alpha 0.5 because CAM alone does best near alpha 1 on make_shapes (a grid
starting at 4 understates the CAM baseline).
"""

import argparse
import contextlib
import os
import time

import numpy as np

ABLATIONS = {
    "base": {},
    "no_crf": {"crf": False},
    "init_cam": {"init": "cam"},
    "input_scale_2": {"input_scale": 2.0},
    "no_augmentation": {"crop_size": None, "scale_range": (1.0, 1.0)},
    "epochs_x2": {"max_epochs": "x2"},
    "epochs_x4": {"max_epochs": "x4"},
    "epochs_x8": {"max_epochs": "x8"},
    "crf_sxy20_x4": {"crf": {"bilateral_sxy": 20}, "max_epochs": "x4"},
    "radius_3_x4": {"radius": 3, "max_epochs": "x4"},
    "init_cam_x4": {"init": "cam", "max_epochs": "x4"},
    "radius_3": {"radius": 3},
    "crf_sxy20": {"crf": {"bilateral_sxy": 20}},
    "crf_sxy40": {"crf": {"bilateral_sxy": 40}},
    "alpha_4_64": {"alpha_high": 64},
    "alpha_8_64_x2": {"alpha_low": 8, "alpha_high": 64, "max_epochs": "x2"},
    "radius_4": {"radius": 4},
    "radius_3_x2": {"radius": 3, "max_epochs": "x2"},
    "lr_0.03": {"learning_rate": 0.03},
    "head_lr_1": {"head_lr_mult": 1.0},
    "head_lr_1_alpha_1": {"head_lr_mult": 1.0, "alpha_low": 1},
    "head_lr_1_x4": {"head_lr_mult": 1.0, "max_epochs": "x4"},
    "efficientnet_lite0": {"backbone": "efficientnet_lite0", "pretrained": True, "backbone_options": None,
                           "learning_rate": 0.01},
    "crf": {"crf": True},
    # confident-label thresholds: a SMALLER alpha_low (stronger background) shrinks the confident
    # foreground, a LARGER alpha_high shrinks the confident background
    "alpha_2_32": {"alpha_low": 2},
    "alpha_1_32": {"alpha_low": 1},
    "alpha_8_64": {"alpha_low": 8, "alpha_high": 64},
    "alpha_2_32_crf": {"alpha_low": 2, "crf": True},
    "alpha_2_32_x2": {"alpha_low": 2, "max_epochs": "x2"},
    "alpha_2_32_x4": {"alpha_low": 2, "max_epochs": "x4"},
    "alpha_1_32_x4": {"alpha_low": 1, "max_epochs": "x4"},
    "alpha_1_32_x2": {"alpha_low": 1, "max_epochs": "x2"},
    "wide_head": {"head_widths": (64, 128, 256)},
    "scale2_crf_alpha2_x2": {"input_scale": 2.0, "crf": True, "alpha_low": 2, "max_epochs": "x2"},
    "scale2_crf_x4": {"input_scale": 2.0, "crf": True, "max_epochs": "x4"},
    "scale2_x4": {"input_scale": 2.0, "max_epochs": "x4"},
    "rf155": {"backbone_options": {"depth": 4, "dilation": 2}},
    # a receptive field smaller than the objects: local appearance, not the distance to a part
    "rf27": {"backbone_options": {"depth": 0}},
    "rf43": {"backbone_options": {"depth": 1}},
    "rf27_alpha_1": {"backbone_options": {"depth": 0}, "alpha_low": 1},
    "rf27_x2": {"backbone_options": {"depth": 0}, "max_epochs": "x2"},
    # levers of issue #17: SGD momentum (the reference runs ~0); "_freeze_bn" (not a parameter:
    # BatchNorm in eval mode with fixed affine weights, as the reference)
    "momentum_0_x8": {"optimizer_options": {"momentum": 0.0}, "max_epochs": "x8"},
    "momentum_0_lr1_x8": {"optimizer_options": {"momentum": 0.0}, "learning_rate": 1.0, "max_epochs": "x8"},
    "momentum_0.5_x8": {"optimizer_options": {"momentum": 0.5}, "max_epochs": "x8"},
    "lr_0.03_x8": {"learning_rate": 0.03, "max_epochs": "x8"},
    "lr_0.3_x8": {"learning_rate": 0.3, "max_epochs": "x8"},
    "lite0_x8": {"backbone": "efficientnet_lite0", "pretrained": True, "backbone_options": None,
                 "learning_rate": 0.01, "max_epochs": "x8"},
    "lite0_frozen_bn_x8": {"backbone": "efficientnet_lite0", "pretrained": True, "backbone_options": None,
                           "learning_rate": 0.01, "_freeze_bn": True, "max_epochs": "x8"},
    "lite0_frozen_bn_m0_x8": {"backbone": "efficientnet_lite0", "pretrained": True, "backbone_options": None,
                              "learning_rate": 0.1, "_freeze_bn": True, "optimizer_options": {"momentum": 0.0},
                              "max_epochs": "x8"},
    "lite0_x4": {"backbone": "efficientnet_lite0", "pretrained": True, "backbone_options": None,
                 "learning_rate": 0.01, "max_epochs": "x4"},
    "lite0_frozen_bn_x2": {"backbone": "efficientnet_lite0", "pretrained": True, "backbone_options": None,
                           "learning_rate": 0.01, "_freeze_bn": True, "max_epochs": "x2"},
    "lite0_x2": {"backbone": "efficientnet_lite0", "pretrained": True, "backbone_options": None,
                 "learning_rate": 0.01, "max_epochs": "x2"},
    "lite0_s5_x2": {"backbone": "efficientnet_lite0", "pretrained": True, "backbone_options": {"stages": 5},
                    "learning_rate": 0.01, "max_epochs": "x2"},
    "lite0_s5_x1": {"backbone": "efficientnet_lite0", "pretrained": True, "backbone_options": {"stages": 5},
                    "learning_rate": 0.01},
    "lite0_s5_x4": {"backbone": "efficientnet_lite0", "pretrained": True, "backbone_options": {"stages": 5},
                    "learning_rate": 0.01, "max_epochs": "x4"},
    "lite0_stages5_scale2": {"backbone": "efficientnet_lite0", "pretrained": True, "backbone_options": {"stages": 5},
                             "input_scale": 2.0, "learning_rate": "auto"},
}


def _cam_records(n, image_size, seed, cam_params, cache, shapes=None):
    """CAM records and masks of make_shapes training images (``shapes``: its keyword
    arguments, e.g. the hard case ``{"body_class_strength": 0, "distractors": "bodies"}``)."""
    import joblib

    def make(n, image_size, seed, cam_params, shapes):
        from sklearn_psa import CAMClassifier
        from sklearn_psa.datasets import make_shapes
        from sklearn_psa.records import Records

        X, Y, masks = make_shapes(n, image_size=image_size, random_state=seed, **shapes)
        cam = CAMClassifier(random_state=seed, **cam_params)
        records = cam.fit_transform(X, Y)
        if not (getattr(records, "source", None) or {}).get("state_dict"):
            bb = cam.network_.backbone
            records = Records(records.records, records.n_classes, {
                "backbone": cam.backbone, "backbone_options": dict(cam.backbone_options or {}),
                "state_dict": {k: v.detach().cpu() for k, v in bb.state_dict().items()}})
        return records, masks

    if cache:
        make = joblib.Memory(cache, verbose=0).cache(make)
    return make(n, image_size, seed, cam_params, dict(shapes or {}))


def _true_label_records(records, masks, weight=1.0):
    """Records whose CAMs are the one-hot true masks (labels free of CAM noise); with
    ``weight < 1``, ``weight * mask + (1 - weight) * CAM`` (labels of a chosen quality)."""
    from sklearn_psa.records import Record, Records

    out = []
    for r, m in zip(records.records, masks):
        cams = np.stack([(m == c + 1).astype(np.float32) for c in r.labels]) if r.labels.size else \
            np.zeros((0,) + r.shape, np.float32)
        if weight < 1:
            cams = (weight * cams + (1.0 - weight) * r.cams).astype(np.float32)
        out.append(Record(r.image, r.labels, cams, shape=r.shape))
    return Records(out, records.n_classes, records.source)


def _clutter_maps(masks, n_classes, image_size, seed, shapes=None):
    """The distractor maps of make_shapes for these masks, or None if they are not its output."""
    from sklearn_psa._validation import check_random_state_seed
    from sklearn_psa.datasets._shapes import _generate

    _, drawn, clutter = _generate(len(masks), n_classes, image_size, 3, check_random_state_seed(seed),
                                  return_clutter=True, **(shapes or {}))
    return clutter if np.array_equal(drawn, np.asarray(masks)) else None


def _pair_auc(records, masks, radius):
    """Pair AUC of the records' affinities against the true masks (``metrics.affinity_report``)."""
    from sklearn_psa.metrics import affinity_report

    assert all(r.radius == radius for r in records.records), "records of another radius"
    return affinity_report(records, masks, output_dict=True)["affinity"]["pair_auc"]


def _walk_grid(records, masks, alphas, betas, device, t=256):
    """{(alpha, beta): mean IoU of the walk} over the grid."""
    from sklearn_psa import RandomWalkRefiner

    return {(a, b): RandomWalkRefiner(alpha=a, beta=b, t=t, device=device).score(records, masks)
            for a in alphas for b in betas}


def _best_walk(records, masks, alphas, betas, device):
    """(best mean IoU, (alpha, beta)) of the walk over the grid (the first best on ties)."""
    grid = _walk_grid(records, masks, alphas, betas, device)
    best = max(grid, key=grid.get)
    return grid[best], best


def _label_quality(records, masks, crf, alpha_low=4, alpha_high=32):
    """The affinity labels against the true masks (``metrics.affinity_report``), as the table's
    columns; ``crf``: True for the dense CRF's defaults, else None."""
    from sklearn_psa.metrics import affinity_report

    t0 = time.perf_counter()
    lab = affinity_report(records, masks, alpha_low=alpha_low, alpha_high=alpha_high, crf=bool(crf),
                          output_dict=True)["labels"]
    kinds = ("bg_positive", "fg_positive", "negative")
    return {"fg_frac": lab["fg_cells"], "fg_prec": lab["fg_precision"], "bg_frac": lab["bg_cells"],
            "bg_prec": lab["bg_precision"], "true_fg_as_bg": lab["true_fg_as_bg"],
            "sec": (time.perf_counter() - t0) / len(records),
            "pair_prec": np.array([lab["pairs"][k]["precision"] for k in kinds]),
            "pairs_per_image": np.array([lab["pairs"][k]["per_image"] for k in kinds])}


def _label_walk_params(args):
    """The ``AffinityEstimator`` parameters of ``--label-walk``: its labels from the CAMs walked
    over ``FeatureAffinity(input_scale=--label-walk-scale)`` with beta ``--label-walk``."""
    from sklearn_psa import FeatureAffinity

    return {"label_affinity": FeatureAffinity(input_scale=args.label_walk_scale, device=args.device),
            "label_beta": args.label_walk}


@contextlib.contextmanager
def _levers(freeze_bn=False):
    """Freeze the backbone's BatchNorm layers (eval mode, affine weights fixed) for the
    AffinityEstimator fits inside the block (not an estimator parameter)."""
    from unittest import mock

    from torch import nn

    from sklearn_psa import AffinityEstimator

    if not freeze_bn:
        yield
        return
    build = AffinityEstimator._build_network

    def frozen(self, data):
        net = build(self, data)
        bb = net.backbone
        norms = [m for m in bb.modules() if isinstance(m, nn.BatchNorm2d)]
        for m in norms:
            m.requires_grad_(False)
        train = bb.train

        def train_frozen(mode=True):
            train(mode)
            for m in norms:
                m.eval()
            return bb

        bb.train = train_frozen
        return net

    with mock.patch.object(AffinityEstimator, "_build_network", frozen):
        yield


def _shapes_kwargs(args):
    """make_shapes' keyword arguments from --body-class-strength, --distractors and --hard."""
    if args.hard:
        return {"body_class_strength": 0.0, "distractors": "bodies"}
    out = {}
    if args.body_class_strength is not None:
        out["body_class_strength"] = args.body_class_strength
    if args.distractors is not None:
        out["distractors"] = None if args.distractors == "none" else args.distractors
    return out


def run(args):
    import torch

    from sklearn_psa import AffinityEstimator, FeatureAffinity, RandomWalkRefiner, neighbor_offsets
    from sklearn_psa._affinity_labels import oracle_affinity

    if args.threads:
        torch.set_num_threads(args.threads)
    cam_params = {"device": "cpu", "backbone": "tiny"}
    if args.cam_epochs:
        cam_params["max_epochs"] = args.cam_epochs
    if args.cam_learning_rate:
        cam_params["learning_rate"] = args.cam_learning_rate
    if args.cam_scale_range is not None:  # rescale augmentation of the CAM classifier's training
        cam_params["scale_range"] = tuple(args.cam_scale_range)
    if args.cam_depth is not None:  # the CAM classifier's receptive field (tiny: 27 + 16 * depth px)
        cam_params["backbone_options"] = {"depth": args.cam_depth}
    cam_params.update(args.cam_set)
    t0 = time.perf_counter()
    if args.records:
        import pickle

        with open(args.records, "rb") as f:
            saved = pickle.load(f)
        records, masks = saved["records"], saved["masks"]
    else:
        records, masks = _cam_records(args.n, args.image_size, args.seed, cam_params, args.cache, _shapes_kwargs(args))
    if args.subset:
        records, masks = records[:args.subset], masks[:args.subset]
    train_masks = masks
    print(f"CAM records: {len(records)} images, {time.perf_counter() - t0:.0f} s", flush=True)
    train_records = records  # AffinityNet trains on all of them; the rows score the first --eval-first
    if args.eval_first:
        records, masks = records[:args.eval_first], masks[:args.eval_first]
    alphas, betas = tuple(args.alphas), tuple(args.betas)

    lines = []
    qualities = [(f"no CRF, alpha {lo}/{hi}", _label_quality(records, masks, None, lo, hi))
                 for lo, hi in ((0.25, 32), (1, 32), (2, 32), (4, 32), (8, 64))]
    if args.crf_quality:
        qualities.append(("dense CRF, alpha 4/32", _label_quality(records, masks, True)))
    if args.label_walk:  # the maps AffinityNet's labels come from with --label-walk
        walked = AffinityEstimator(**_label_walk_params(args), device=args.device).label_records(records)
        qualities.append((f"label walk (beta {args.label_walk}), no CRF, alpha 4/32",
                          _label_quality(walked, masks, None)))
        if args.crf_quality:
            qualities.append((f"label walk (beta {args.label_walk}), dense CRF, alpha 4/32",
                              _label_quality(walked, masks, True)))
    lines += [
        "Confident labels on the stride-8 grid against the true masks:",
        "",
        "| labels | confident fg (of cells) | fg precision | confident bg | bg precision "
        "| true-fg cells labelled bg | fg-positive pairs / image (right) | negative pairs / image (right) | s/image |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, q in qualities:
        (_, n_fg, n_neg), (_, ok_fg, ok_neg) = q["pairs_per_image"], q["pair_prec"]
        lines.append(f"| {name} | {q['fg_frac']:.3f} | {q['fg_prec']:.3f} | {q['bg_frac']:.3f} "
                     f"| {q['bg_prec']:.3f} | {q['true_fg_as_bg']:.3f} | {n_fg:.0f} ({ok_fg:.0%}) "
                     f"| {n_neg:.0f} ({ok_neg:.0%}) | {q['sec']:.2f} |")
    lines += ["", "| row | mIoU | gain over CAM | best (alpha, beta) | pair AUC | fit (s) |",
              "|---|---:|---:|---|---:|---:|"]

    cam_scores = {a: RandomWalkRefiner(alpha=a, t=0, device=args.device).score(records, masks) for a in alphas}
    cam_alpha = max(cam_scores, key=cam_scores.get)
    cam = cam_scores[cam_alpha]
    lines.append(f"| CAM alone (t=0) | {cam:.3f} | - | ({cam_alpha}, -) | - | - |")
    print(lines[-1], flush=True)

    def add_row(label, out, fit=None):
        """Walk ``out`` (records with affinities) on the grid and add its row to the table."""
        s, ab = _best_walk(out, masks, alphas, betas, args.device)
        fit = "-" if fit is None else f"{fit:.0f}"
        lines.append(f"| {label} | {s:.3f} | {s - cam:+.3f} | {ab} | {_pair_auc(out, masks, out.records[0].radius):.3f} | {fit} |")
        print(lines[-1], flush=True)

    def add_fitted_row(label, estimator, fit_records):
        """Fit an affinity estimator, then its row (or a "not run" row saying why)."""
        t0 = time.perf_counter()
        try:
            estimator.fit(fit_records)
        except (ImportError, ValueError) as exc:
            lines.append(f"| {label} | not run: {exc} | | | | |")
            print(lines[-1], flush=True)
            return
        fit = time.perf_counter() - t0
        add_row(label, estimator.transform(records), fit)

    offsets = neighbor_offsets(args.radius)
    add_row("oracle affinity (true masks)",
            records.with_affinity([oracle_affinity(m, offsets) for m in masks], args.radius))
    clutter = _clutter_maps(masks, records.n_classes, args.image_size, args.seed, _shapes_kwargs(args))
    if clutter is not None:
        # the same, but each body-like distractor its own segment: an affinity that knows the
        # boundaries of bodies, not that distractors are background
        segments = np.where(clutter > 0, 100 + clutter, masks).astype(np.uint8)
        add_row("texture oracle (distractors their own segments)",
                records.with_affinity([oracle_affinity(m, offsets) for m in segments], args.radius))

    for scale in args.feature_affinity or ():
        # no training: ImageNet features of the stride-8 stage (sklearn_psa.FeatureAffinity)
        add_fitted_row(f"FeatureAffinity (lite0 ImageNet, stage 3, no training), input_scale {scale}",
                       FeatureAffinity(input_scale=scale, radius=args.radius, device=args.device), train_records)

    base = dict(backbone="tiny", learning_rate=0.1, max_epochs=args.epochs, head_widths=tuple(args.head_widths),
                device=args.device, random_state=args.seed, crf=args.crf, radius=args.radius)
    runs = [(name, ABLATIONS[name], train_records) for name in args.ablation]
    if args.true_labels:
        true_records = _true_label_records(train_records, train_masks)
        for name in args.true_labels_ablation or ["base"]:
            runs.append((f"learned on TRUE labels: {name}", {**ABLATIONS[name], "crf": False}, true_records))
    for w in args.label_blend or ():
        runs.append((f"learned on blended labels, w = {w}: base", {"crf": False},
                     _true_label_records(train_records, train_masks, weight=w)))
    for name, change, recs in runs:
        params = dict(base)
        levers = {k[1:]: v for k, v in change.items() if k.startswith("_")}
        for k, v in change.items():
            if not k.startswith("_"):
                params[k] = args.epochs * int(v[1:]) if isinstance(v, str) and v[:1] == "x" else v
        params.update(args.set)
        label = name if name.startswith("learned") else f"learned: {name}"
        label += "".join(f" {k}={v}" for k, v in args.set.items())
        if args.label_walk:  # labels from the CAMs walked over ImageNet features first
            params.update(_label_walk_params(args))
            label += f" label_affinity=FeatureAffinity(input_scale={args.label_walk_scale}) label_beta={args.label_walk}"
        with _levers(**levers):
            add_fitted_row(label, AffinityEstimator(**params), recs)
    return lines


def _parsed_setting(item):
    """``"name=json"`` of ``--set`` as ``(name, value)`` (a bare word stays a string)."""
    import json

    name, sep, value = item.partition("=")
    if not sep:
        raise SystemExit(f"--set wants NAME=VALUE, got {item!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="training images")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--hard", action="store_true",
                        help="make_shapes' hard case (body_class_strength 0, distractors 'bodies'; the first generator)")
    parser.add_argument("--body-class-strength", type=float, default=None, help="make_shapes' (default: its default)")
    parser.add_argument("--distractors", choices=("background", "bodies", "none"), default=None,
                        help="make_shapes' (default: its default)")
    parser.add_argument("--radius", type=int, default=5, help="AffinityNet's radius and the oracle's")
    parser.add_argument("--epochs", type=int, default=4, help="AffinityNet epochs (base)")
    parser.add_argument("--cam-epochs", type=int, default=None, help="override CAMClassifier max_epochs")
    parser.add_argument("--cam-learning-rate", type=float, default=None,
                        help="override CAMClassifier learning_rate")
    parser.add_argument("--cam-scale-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="CAMClassifier scale_range (random rescaling of its training images)")
    parser.add_argument("--cam-depth", type=int, default=None,
                        help="the tiny CAM classifier's depth at stride 8 (receptive field 27 + 16 * depth px)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    parser.add_argument("--cache", default=os.path.join("scratch", "bench_affinity_cache"))
    parser.add_argument("--ablation", action="append", choices=sorted(ABLATIONS),
                        help="ablations to run (repeatable; default: all)")
    parser.add_argument("--no-true-labels", dest="true_labels", action="store_false")
    parser.add_argument("--true-labels-ablation", action="append", choices=sorted(ABLATIONS),
                        help="settings of the 'learned on TRUE labels' rows (repeatable; default: base)")
    parser.add_argument("--label-blend", type=float, nargs="+", default=None, metavar="W",
                        help="add rows trained on labels from W * true mask + (1 - W) * CAM")
    parser.add_argument("--feature-affinity", type=float, nargs="*", default=None, metavar="SCALE",
                        help="add FeatureAffinity rows (no training) at these input scales (default 2)")
    parser.add_argument("--no-learned", action="store_true",
                        help="no AffinityNet rows (CAM alone, oracles, label table, FeatureAffinity rows)")
    parser.add_argument("--records", default=None,
                        help="pickle with 'records' (CAM Records) and 'masks' instead of fitting CAMs")
    parser.add_argument("--subset", type=int, default=0, help="use only the first N images of the records")
    parser.add_argument("--eval-first", type=int, default=0,
                        help="train AffinityNet on all images but score every row on the first N")
    parser.add_argument("--head-widths", type=int, nargs=3, default=[32, 32, 64],
                        help="AffinityNet head widths of the learned rows (the estimator's default: 64 128 256)")
    parser.add_argument("--device", default="cpu", help="device of AffinityNet and the walk ('cuda' on a GPU)")
    parser.add_argument("--base-crf", dest="crf", choices=("on", "off"), default="on",
                        help="crf of every learned row unless the ablation sets it")
    parser.add_argument("--no-crf-quality", dest="crf_quality", action="store_false",
                        help="skip the (slow) dense-CRF confident-label quality row")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.5, 1, 2, 4, 8, 16],
                        help="walk alpha grid (each row reports its best; CAM alone peaks near 1)")
    parser.add_argument("--betas", type=float, nargs="+", default=[8, 16, 32], help="walk beta grid")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=JSON",
                        help="an AffinityEstimator parameter for every learned row, e.g. "
                             "label_pooling=mean or dropout=0.3 (repeatable)")
    parser.add_argument("--cam-set", action="append", default=[], metavar="NAME=JSON",
                        help="a CAMClassifier parameter of the CAM records, e.g. dropout=0.5 (repeatable)")
    parser.add_argument("--label-walk", type=float, default=None, metavar="BETA",
                        help="learned rows draw their labels from the CAMs walked over FeatureAffinity "
                             "with this beta (AffinityEstimator's label_affinity, label_beta)")
    parser.add_argument("--label-walk-scale", type=float, default=2.0,
                        help="FeatureAffinity input_scale of --label-walk")
    parser.add_argument("--quick", action="store_true", help="smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.image_size, args.epochs, args.cam_epochs = 16, 64, 1, 1
        args.ablation = args.ablation or ["base", "no_crf"]
    if args.no_learned:
        args.ablation, args.true_labels = [], False
    if args.feature_affinity == [] or (args.quick and args.feature_affinity is None):
        args.feature_affinity = [2.0]
    args.ablation = list(ABLATIONS) if args.ablation is None else args.ablation
    args.crf = args.crf == "on"
    args.set = dict(_parsed_setting(item) for item in args.set)
    args.cam_set = dict(_parsed_setting(item) for item in args.cam_set)
    lines = run(args)
    print()
    print(f"make_shapes({_shapes_kwargs(args)}): {args.subset or args.n} training images, {args.image_size} px, "
          f"seed {args.seed}; "
          f"AffinityNet {args.epochs} epochs (tiny backbone unless stated), walk t=256.")
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
