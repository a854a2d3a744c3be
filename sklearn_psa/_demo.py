"""``sklearn-psa demo``: the whole method on synthetic shapes, with a report.

:func:`run_demo` draws training and test images with
:func:`~sklearn_psa.datasets.make_shapes` (fixed seeds), fits a
:class:`~sklearn_psa.PSASegmenter` on image-level labels only, fits the same
segmentation network on the true masks (the fully supervised reference of the
paper's Table 4), and writes to the output folder:

- ``report.md``: the mean IoU of each stage (CAM and CAM + random walk on the
  training images, as the paper's Table 1 scores the synthesized labels; the
  two segmentation networks on the test images, as its Table 4), then one
  per-class table per stage (:func:`~sklearn_psa.metrics.segmentation_report`)
  and the time each stage took;
- ``grid.png``: training images with their CAMs, the CAM masks, the
  synthesized masks, the two networks' predictions and the true masks
  (where matplotlib is installed);
- ``model.psa``: the fitted weakly supervised :class:`PSASegmenter`, written by
  :func:`~sklearn_psa.io.save_model` (holds no code: ``sklearn-psa predict
  --model model.psa`` reads it).
"""

import contextlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.base import clone

__all__ = ["run_demo", "DEMO_SETTINGS"]

#: Settings of the demo: "pretrained" where the EfficientNet-Lite0 ImageNet weights are
#: installed (the ``pretrained`` extra), "full" (the tiny backbone from scratch) otherwise,
#: "quick" for ``--quick`` (a smoke test in seconds). Measured in docs/benchmarks.md.
_TINY = {"cam__backbone": "tiny", "affinity__backbone": "tiny", "backbone": "tiny"}
_LITE0 = {"backbone": "efficientnet_lite0", "pretrained": True, "backbone_options": {"stages": 5}}
DEMO_SETTINGS = {
    "pretrained": {
        "n_samples": 160, "n_test": 100, "image_size": 128, "grid_rows": 6,
        "params": {
            # EfficientNet-Lite0 with ImageNet weights, its first five stages (the whole
            # network's receptive field dwarfs 128 px images, and costs 2-3x more on a CPU);
            # learning rates "auto": 0.01 with new layers at 10x for the CAM classifier and
            # AffinityNet, 0.1 for the segmentation network (it starts from the CAM backbone).
            **{f"cam__{k}": v for k, v in _LITE0.items()},
            **{f"affinity__{k}": v for k, v in _LITE0.items()},
            # 30 epochs (300 steps): at 10 the classifier had not fitted its training labels
            # (loss still falling, CAM peak on its own object in 61% of the images, 73% at 30)
            "cam__max_epochs": 30,
            # AffinityNet: 16 epochs (320 steps; "auto" would give 400, 20 epochs, +13.2 and 25 s
            # more): at 4 epochs the walk gained +4.5 points over CAM alone, at 16 +13.4 (#17)
            "affinity__max_epochs": 16,
            "max_epochs": 10,  # the segmentation network starts from the CAM backbone
            # chosen without masks (alpha="auto": agreement with the CAMs' confident regions;
            # it chose (4, 32), the best pair on the masks; before session 11's exponents it
            # chose (16, 32) and lost 27 points; docs/benchmarks.md, issue #17)
            "refiner__alpha": "auto",
            "refiner__beta": "auto",
        },
    },
    "full": {
        "n_samples": 160, "n_test": 100, "image_size": 128, "grid_rows": 6,
        "params": {
            **_TINY,
            # 100 epochs: at 30 the tiny classifier from scratch had not converged (loss 0.52,
            # CAM alone 0.30, peak on its own object in 48% of the images; at 100: 0.19, 0.46, 86%)
            "cam__max_epochs": 100,
            "affinity__max_epochs": 6,
            "max_epochs": 20,
            # The paper's alpha 16 / beta 8 suit VOC's ResNet-38 CAMs; these flatter CAMs need a
            # weaker background (docs/benchmarks.md: demo 38% -> 47% weak/full with 2 / 16,
            # 45% with 1 / 16, chosen on the training images as the paper's Figure 8 does).
            "refiner__alpha": 2,
            "refiner__beta": 16,
        },
    },
    "quick": {
        "n_samples": 24, "n_test": 12, "image_size": 64, "grid_rows": 3,
        "params": {
            **_TINY,
            "cam__max_epochs": 1, "cam__scales": (1.0,),
            "affinity__max_epochs": 1, "affinity__crf": False, "affinity__crop_size": 64,
            "max_epochs": 1,
        },
    },
}


def demo_setting(quick=False, backbone="auto"):
    """Name of the :data:`DEMO_SETTINGS` entry the demo runs.

    ``backbone="auto"``: "pretrained" where the EfficientNet-Lite0 ImageNet weights are
    installed, else "full" (tiny from scratch, with a warning saying how to install them);
    ``"tiny"`` or ``"efficientnet_lite0"`` choose. ``quick`` is always "quick".
    """
    from .nn import resolve_backbone

    if quick:
        return "quick"
    if backbone == "auto":
        backbone = resolve_backbone("auto")[0]
    if backbone not in ("tiny", "efficientnet_lite0"):
        raise ValueError(f"demo backbone must be 'auto', 'tiny' or 'efficientnet_lite0', got {backbone!r}")
    return "full" if backbone == "tiny" else "pretrained"


_TEST_SEED_OFFSET = 1000


def _log(out, text):
    if out is not None:
        print(text, file=out, flush=True)


class _Stopwatch:
    """Records the wall and CPU seconds (all threads of this process) of each named stage."""

    def __init__(self):
        self.times = {}
        self.cpu = {}

    @contextlib.contextmanager
    def __call__(self, name):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.times[name] = time.perf_counter() - wall
            self.cpu[name] = time.process_time() - cpu


def _peak_rss_mb():
    """Peak resident memory of this process in MiB (None where unknown)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def _torch_threads():
    import torch

    return torch.get_num_threads()


def _markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


#: The ratios of the report: (key, weak stage's title, reference's title, how it is said).
_RATIOS = [("weak_over_full", "PSASegmenter (", "Fully supervised (", ""),
           ("weak_over_full_crf", "PSASegmenter + dense CRF", "Fully supervised + dense CRF",
            ", both through the dense CRF")]
_RATIO_NOTES = {
    "weak_over_full": (
        " (the paper: 86% with DeepLab, 76% with ResNet-38). Both networks train for the "
        "demo's short budget, and the ratio means something only once the fully supervised "
        "reference has converged: in docs/benchmarks.md (issue #17, sessions 13 and 14), at "
        "four times the demo's epochs the reference reached 79.6 and the segmenter 63.1 "
        "(79%)."),
    "weak_over_full_crf": (
        " (`PSASegmenter(crf=True)`; the paper's fully supervised DeepLab predicts through a "
        "dense CRF too). At four times the demo's epochs: 91.5 and 78.4, 86%; at eight times "
        "89% (docs/benchmarks.md, issue #17, session 14)."),
}


def format_report(stages, class_names, *, times=None, cpu_times=None, settings=None,
                  peak_mb=None, curves=None):
    """The demo's report as Markdown.

    Parameters
    ----------
    stages : list of (title, data, y_true, y_pred)
        One entry per stage: a title, which images were scored ("train" or
        "test"), the true and the predicted masks.
    class_names : list of str
        Names of the classes 1..K.
    times : dict, optional
        Wall seconds per stage name.
    cpu_times : dict, optional
        CPU seconds per stage name (all threads).
    settings : dict, optional
        Printed as the run's settings.
    peak_mb : float, optional
        Peak resident memory.
    curves : dict of str to list of float, optional
        Training loss per epoch of each network (see :func:`format_curves`).

    Returns
    -------
    report : str
    scores : dict
        Mean IoU (a fraction) per stage title.
    ratios : dict
        ``"weak_over_full"``: mean IoU of the "PSASegmenter (...)" stage over that
        of the "Fully supervised (...)" stage; ``"weak_over_full_crf"``: the same
        for the "... + dense CRF" stages, where there are. Nan without the
        stages, or where the reference scores no class (every class IoU 0: it
        predicts background only, say), where the ratio means nothing and the
        report says so.
    """
    from .metrics import segmentation_report

    scores, class_iou, tables = {}, {}, []
    for title, data, y_true, y_pred in stages:
        per_class = segmentation_report(y_true, y_pred, class_names=class_names,
                                        n_classes=len(class_names), output_dict=True)
        scores[title] = per_class["mean"]["iou"]
        class_iou[title] = [per_class[name]["iou"] for name in class_names]
        text = segmentation_report(y_true, y_pred, class_names=class_names,
                                   n_classes=len(class_names))
        tables.append(f"### {title} ({data} images)\n\n```\n{text}\n```")
    lines = ["# sklearn-psa demo report", ""]
    lines.append(
        "AffinityNet (Ahn & Kwak, CVPR 2018) on `make_shapes`: the weakly supervised segmenter "
        "learns from image-level labels only; the fully supervised reference trains the same "
        "network on the true masks. CAM and CAM + random walk are scored on the training images "
        "(the synthesized labels, as in the paper's Table 1), the two networks on held-out test "
        "images (as in its Table 4). CAM is the argmax of the CAMs of the labelled classes "
        "against the background score (1 - max CAM) ** alpha, at the alpha among 1, 2, 4, 8, 16 "
        "and 32 that scores best on the training masks (the CAM alone at its best; the walk "
        "chooses its own alpha and beta). Scores are percentages of mean IoU over background and classes."
    )
    lines += ["", "## Summary", ""]
    rows = [[title, data, f"{100 * scores[title]:.1f}"] for title, data, _, _ in stages]
    lines.append(_markdown_table(["stage", "images", "mIoU (%)"], rows))
    ratios = {}
    for key, weak_prefix, full_prefix, how in _RATIOS:
        weak = next((t for t, *_ in stages if t.startswith(weak_prefix)), None)
        full = next((t for t, *_ in stages if t.startswith(full_prefix)), None)
        if weak is None or full is None:
            if key == "weak_over_full":
                ratios[key] = float("nan")
            continue
        ratios[key] = float("nan")
        if not any(iou > 0 for iou in class_iou[full]):  # nan is not > 0
            lines += ["", f"Weakly / fully supervised mIoU{how}: not meaningful: the fully "
                          "supervised reference scores no class (every class IoU is 0; it "
                          "predicts background only, or nothing right), so it is no reference "
                          "yet: train longer."]
            continue
        ratios[key] = scores[weak] / scores[full]
        lines += ["", f"Weakly / fully supervised mIoU{how}: **{100 * ratios[key]:.0f}%**"
                      + _RATIO_NOTES[key]]
    if curves:
        lines += ["", format_curves(curves)]
    lines += ["", "## Per-class tables", ""]
    lines += ["\n\n".join(tables)]
    if times:
        lines += ["", "## Time", ""]
        cpu_times = cpu_times or {}
        rows = [[name, f"{sec:.1f}", f"{cpu_times[name]:.1f}" if name in cpu_times else "-"]
                for name, sec in times.items()]
        lines.append(_markdown_table(["stage", "wall seconds", "CPU seconds"], rows))
    if peak_mb is not None:
        lines += ["", f"Peak resident memory: {peak_mb:.0f} MiB."]
    if settings:
        lines += ["", "## Settings", ""]
        lines += [f"- `{k}`: `{v!r}`" for k, v in settings.items()]
    return "\n".join(lines) + "\n", scores, ratios


def last_quarter_change(losses):
    """Relative change of a training loss over the last quarter of its epochs (at least the
    last epoch): ``(last - before) / before``; nan with fewer than two epochs or a zero loss."""
    n = len(losses)
    before = losses[max(n - 1 - max(1, n // 4), 0)] if n else 0
    return (losses[-1] - before) / before if n > 1 and before else float("nan")


def format_curves(curves):
    """The training losses as a Markdown section: per network its loss at the first, middle
    and last epoch and how much the last quarter of the epochs still lowered it."""
    rows = []
    for name, losses in curves.items():
        n = len(losses)
        if not n:
            continue
        change = last_quarter_change(losses)
        rows.append([name, str(n), f"{losses[0]:.4f}", f"{losses[n // 2]:.4f}", f"{losses[-1]:.4f}",
                     "-" if math.isnan(change) else f"{100 * change:+.1f}%"])
    lines = ["## Training curves", "",
             "Training loss per epoch (`loss_curve_` of each network; `report.json` holds every "
             "epoch). The last column is the change of the loss over the last quarter of the "
             "epochs: tens of percent mean the network would still gain from more epochs. A few "
             "percent do not prove convergence: the poly schedule lowers the learning rate to 0 "
             "at the last epoch, which flattens the end of any curve; training twice as long "
             "and comparing is the test (docs/benchmarks.md does it for this demo).", ""]
    return "\n".join(lines + [_markdown_table(
        ["network", "epochs", "first", "middle", "last", "last quarter"], rows)])


def _figure(figsize):
    """A matplotlib Figure with the Agg canvas directly: no pyplot, no global backend switch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path):
    """Lay out ``fig`` and write it to ``path`` as a PNG, atomically."""
    from .io import atomic_write

    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)


def plot_curves(path, curves):
    """Write the training losses (one panel per network, log scale) as a PNG."""
    curves = {k: v for k, v in curves.items() if v}
    fig = _figure((3.2 * max(len(curves), 1), 2.6))
    axes = fig.subplots(1, max(len(curves), 1), squeeze=False)[0]
    for ax, (name, losses) in zip(axes, curves.items()):
        ax.plot(np.arange(1, len(losses) + 1), losses, marker=".")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("training loss", fontsize=8)
    _save_png(fig, path)


def report_numbers(scores, ratios, seconds, **settings):
    """The demo's headline numbers, for ``report.json`` (mean IoU as fractions, null for nan).

    ``cam_miou`` and ``walk_miou`` are scored on the training images, ``segmenter_miou`` and
    ``reference_miou`` (the fully supervised network trained as long) on the test images, and
    ``segmenter_crf_miou`` and ``reference_crf_miou`` (the same networks through the dense CRF)
    where the report has them; ``walk_gain`` is ``walk_miou - cam_miou``; ``ratios`` (of
    :func:`format_report`) give ``weak_over_full`` and ``weak_over_full_crf``; ``seconds`` is
    the run's wall time up to the report.
    """
    def first(prefix):  # the stage titled ``prefix``, else the first titled ``prefix (...)``
        value = scores.get(prefix, next((v for k, v in scores.items() if k.startswith(prefix + " (")),
                                        float("nan")))
        return None if math.isnan(value) else round(float(value), 6)

    out = {"cam_miou": first("CAM"), "walk_miou": first("CAM + random walk"),
           "segmenter_miou": first("PSASegmenter"), "reference_miou": first("Fully supervised")}
    crf = {"segmenter_crf_miou": first("PSASegmenter + dense CRF"),
           "reference_crf_miou": first("Fully supervised + dense CRF")}
    out.update({k: v for k, v in crf.items() if v is not None})
    out["walk_gain"] = (None if None in (out["cam_miou"], out["walk_miou"])
                        else round(out["walk_miou"] - out["cam_miou"], 6))
    for key, ratio in ratios.items():
        out[key] = None if math.isnan(ratio) else round(float(ratio), 6)
    out["seconds"] = round(float(seconds), 1)
    out["settings"] = {k: v for k, v in settings.items()}
    return out


def plot_grid(path, columns, n_rows):
    """Write a grid of images and masks as a PNG (matplotlib, Agg backend).

    Parameters
    ----------
    path : path-like
    columns : list of (title, items, kind)
        ``kind`` is ``"image"`` (RGB uint8), ``"heat"`` (float map in [0, 1]) or
        ``"mask"`` (class values, drawn in the VOC palette).
    n_rows : int
    """
    from .io import voc_palette

    palette = voc_palette()
    n_cols = len(columns)
    fig = _figure((1.9 * n_cols, 1.9 * n_rows))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for c, (title, items, kind) in enumerate(columns):
        axes[0, c].set_title(title, fontsize=8)
        for r in range(n_rows):
            ax = axes[r, c]
            ax.set_axis_off()
            item = items[r]
            if kind == "mask":
                ax.imshow(palette[np.asarray(item)], interpolation="nearest")
            elif kind == "heat":
                ax.imshow(item, cmap="jet", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(item, interpolation="nearest")
    _save_png(fig, path)


def demo_estimator(quick=False, *, device="auto", random_state=0, verbose=0, memory=None,
                   setting=None):
    """The :class:`PSASegmenter` the demo fits (its steps' settings made explicit)."""
    from .segmenter import PSASegmenter

    params = dict(DEMO_SETTINGS[setting or demo_setting(quick)]["params"])
    return PSASegmenter(device=device, random_state=random_state, verbose=verbose,
                        memory=memory).set_params(**params)


def _walk_settings(refiner):
    """``(alpha, beta)`` the fitted refiner walks with (what ``"auto"`` chose, else its own)."""
    return (float(getattr(refiner, "alpha_", refiner.alpha)),
            float(getattr(refiner, "beta_", refiner.beta)))


def _best_cam_masks(refiner, records, masks):
    """The CAM alone (the walk with ``t = 0``) at the alpha of :data:`AUTO_ALPHAS` that
    scores best on ``masks``: the baseline at its best, whatever alpha the walk uses."""
    from .metrics import mean_iou
    from ._walk_choice import AUTO_ALPHAS

    best, best_score = None, -1.0
    for alpha in AUTO_ALPHAS:  # (beta is unused at t = 0)
        pred = clone(refiner).set_params(alpha=alpha, beta=8, t=0).predict(records)
        score = mean_iou(masks, pred)
        if score > best_score:
            best, best_score = pred, score
    return best


def _predict_with_crf(model, X):
    """``model.predict(X)`` through the dense CRF (``crf=True``, over the cores), ``model``
    left as it was."""
    import os

    params = model.get_params(deep=False)
    model.set_params(crf=True, n_jobs=min(os.cpu_count() or 1, 4))
    try:
        return model.predict(X)
    finally:
        model.set_params(crf=params["crf"], n_jobs=params["n_jobs"])


def run_demo(output, *, n_samples=None, device="auto", quick=False, random_state=0,
             progress=True, out=sys.stdout, backbone="auto"):
    """Run the whole method on :func:`make_shapes` and write the report.

    Parameters
    ----------
    output : str or path
        Folder for ``report.md``, ``report.json`` (the headline numbers, see
        :func:`report_numbers`), ``grid.png`` and ``model.psa`` (created).
    n_samples : int, optional
        Training images (default 160, or 24 with ``quick``); the test set has
        its own fixed size and seed.
    device : str, default="auto"
        Device of the networks; the report shows what ``"auto"`` resolved to.
    quick : bool, default=False
        Small images and one epoch per network: a smoke test in seconds.
    random_state : int, default=0
        Seed of the data (training images: ``random_state``, test images:
        ``random_state + 1000``) and of every network.
    progress : bool, default=True
        Progress bars (tqdm, on stderr).
    out : file or None, default=sys.stdout
        Where the stage log and the summary are printed.
    backbone : {"auto", "tiny", "efficientnet_lite0"}, default="auto"
        The networks' backbone (see :func:`demo_setting`): EfficientNet-Lite0
        with ImageNet weights where installed, else tiny from scratch.

    Returns
    -------
    summary : dict
        ``scores`` (mean IoU per stage), ``ratio`` and ``ratio_crf`` (weakly /
        fully supervised, as predicted and through the dense CRF; nan where the
        reference scores no class, see :func:`format_report`),
        ``times`` and ``cpu_times`` (wall and CPU seconds per stage),
        ``wall_seconds``, ``cpu_seconds``, ``peak_rss_mb`` and ``files``
        (paths written).
    """
    import tempfile


    from ._device import resolve_device
    from ._optional import installed
    from .datasets import make_shapes
    from .io import atomic_write, save_model

    start, cpu_start = time.perf_counter(), time.process_time()
    setting = demo_setting(quick, backbone)
    settings = DEMO_SETTINGS[setting]
    n_train = int(settings["n_samples"] if n_samples is None else n_samples)
    if n_train < 2:
        raise ValueError(f"--n-samples must be at least 2, got {n_train}")
    used_device = str(resolve_device(device))  # what "auto" means here, for the report
    can_plot = installed("matplotlib")  # the plot extra
    if not can_plot:
        _log(out, "matplotlib is not installed (pip install \"sklearn-psa[plot]\"): the demo writes "
                  "report.md and model.psa, not grid.png")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    size, n_test = settings["image_size"], settings["n_test"]
    watch = _Stopwatch()

    _log(out, f"sklearn-psa demo: {n_train} training and {n_test} test images of "
              f"{size}x{size} px (make_shapes, seeds {random_state} and "
              f"{random_state + _TEST_SEED_OFFSET}), device {used_device}")
    X, Y, M = make_shapes(n_train, image_size=size, random_state=random_state)
    Xt, _, Mt = make_shapes(n_test, image_size=size, random_state=random_state + _TEST_SEED_OFFSET)
    class_names = [f"class {j + 1}" for j in range(Y.shape[1])]

    with tempfile.TemporaryDirectory(prefix="sklearn-psa-demo-") as cache:
        seg = demo_estimator(quick, device=device, random_state=random_state,
                             verbose=int(progress), memory=cache, setting=setting)
        _log(out, "[1/3] weakly supervised: CAMs -> AffinityNet -> random walk -> "
                  "segmentation network (image-level labels only)")
        with watch("PSASegmenter.fit (image labels)"):
            seg.fit(X, Y)
        # The CAMs of the training images' true classes (those the affinity labels came from)
        records = seg.cam_.compute_cams(X, Y)
        cam_masks = _best_cam_masks(seg.refiner_, records, M)
        cam_heat = [r.cams.max(axis=0) if len(r.labels) else np.zeros(r.shape, np.float32)
                    for r in records]
        del records
        with watch("PSASegmenter.predict (test)"):
            pred = seg.predict(Xt)

        _log(out, "[2/3] fully supervised reference: the same network, from the same CAM "
                  "backbone, on the true masks")
        full = clone(seg).set_params(supervision="pixel")  # its CAM step: from the cache
        with watch("fully supervised fit (true masks)"):
            full.fit(X, M)
    for model in (seg, full):  # the cache folder is gone: do not point the models at it
        model.set_params(memory=None)
    pred_full = full.predict(Xt)
    # both networks as the paper's predict: through the dense CRF
    with watch("dense CRF of both networks (test)"):
        pred_crf, pred_full_crf = (_predict_with_crf(model, Xt) for model in (seg, full))

    _log(out, "[3/3] report")
    rows = min(settings["grid_rows"], n_train)
    stages = [
        ("CAM", "train", M, cam_masks),
        ("CAM + random walk (synthesized labels)", "train", M, seg.pseudo_labels_),
        ("PSASegmenter (image-level labels)", "test", Mt, pred),
        ("Fully supervised (true masks)", "test", Mt, pred_full),
        ("PSASegmenter + dense CRF (image-level labels)", "test", Mt, pred_crf),
        ("Fully supervised + dense CRF (true masks)", "test", Mt, pred_full_crf),
    ]
    peak = _peak_rss_mb()
    walk_settings = _walk_settings(seg.refiner_)
    curves = {"CAM classifier": seg.cam_.loss_curve_, "AffinityNet": seg.affinity_.loss_curve_,
              "segmenter (weak)": seg.loss_curve_, "segmenter (full)": full.loss_curve_}
    curves = {k: [round(float(v), 6) for v in losses] for k, losses in curves.items()}
    text, scores, ratios = format_report(
        stages, class_names, times=watch.times, cpu_times=watch.cpu, peak_mb=peak, curves=curves,
        settings={"n_train": n_train, "n_test": n_test, "image_size": size, "device": used_device,
                  "random_state": random_state, "setting": setting, **settings["params"],
                  "walk alpha and beta used": walk_settings,
                  "AffinityNet epochs trained": seg.affinity_.n_epochs_},
    )
    files = {"report": output / "report.md", "report_json": output / "report.json",
             "model": output / "model.psa"}
    with atomic_write(files["report"], "w") as f:
        f.write(text)
    numbers = report_numbers(scores, ratios, time.perf_counter() - start, setting=setting, n_train=n_train,
                             n_test=n_test, image_size=size, device=used_device, random_state=random_state,
                             walk_alpha=walk_settings[0], walk_beta=walk_settings[1],
                             affinity_epochs=int(seg.affinity_.n_epochs_))
    numbers["loss_curves"] = curves
    with atomic_write(files["report_json"], "w") as f:
        json.dump(numbers, f, indent=2)
        f.write("\n")
    save_model(seg, files["model"])
    if can_plot:
        files["grid"] = output / "grid.png"
        plot_grid(files["grid"], [
            ("image", X[:rows], "image"),
            ("CAM (max over classes)", cam_heat[:rows], "heat"),
            ("CAM mask", cam_masks[:rows], "mask"),
            ("synthesized (CAM + walk)", seg.pseudo_labels_[:rows], "mask"),
            ("PSASegmenter", seg.predict(X[:rows]), "mask"),
            ("fully supervised", full.predict(X[:rows]), "mask"),
            ("ground truth", M[:rows], "mask"),
        ], rows)
        files["curves"] = output / "curves.png"
        plot_curves(files["curves"], curves)

    wall = time.perf_counter() - start
    _log(out, "")
    for title, data, *_ in stages:
        _log(out, f"  {title:<46} {data:<5}  mIoU {100 * scores[title]:5.1f}%")
    for key, how in (("weak_over_full", ""), ("weak_over_full_crf", " (dense CRF)")):
        _log(out, f"  weakly / fully supervised{how}: " + (
            "not meaningful (the fully supervised reference scores no class)"
            if np.isnan(ratios[key]) else f"{100 * ratios[key]:.0f}%"))
    cpu = time.process_time() - cpu_start
    threads = _torch_threads()
    _log(out, f"  {wall:.0f} s ({cpu:.0f} CPU seconds, {threads} torch "
              f"thread{'s' if threads != 1 else ''})"
              + (f", peak memory {peak:.0f} MiB" if peak else ""))
    _log(out, f"  written: {', '.join(str(p) for p in files.values())}")
    return {"scores": scores, "ratio": ratios["weak_over_full"],
            "ratio_crf": ratios["weak_over_full_crf"], "times": watch.times, "cpu_times": watch.cpu,
            "wall_seconds": wall, "cpu_seconds": cpu, "peak_rss_mb": peak,
            "files": {k: str(v) for k, v in files.items()}}
