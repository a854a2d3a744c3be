"""What ``PSASegmenter.fit`` will do, said before it does it, and which stage it is in.

At ``verbose >= 1`` the segmenter prints its plan first (each stage with the
backbone ``"auto"`` resolved to, the weights it starts from, its epochs and its
device), then one line as each stage starts, with the time spent so far; the
steps' own progress bars run under those lines. The ``sklearn-psa fit`` command
prints the same plan.
"""

import os
import sys
import time

from ._device import resolve_device
from .affinity import (AUTO_MIN_EPOCHS, AUTO_MIN_STEPS, AUTO_MIN_STEPS_PRETRAINED, auto_epochs,
                       resolve_label_affinity)

__all__ = ["StageLog", "describe_network", "describe_step", "epochs"]


def _device(est):
    return str(resolve_device(est.get_params(deep=False).get("device", "auto")))


def _weights(pretrained):
    if pretrained is None or pretrained is False:
        return "from scratch"
    if pretrained is True:
        return "with its pretrained weights"
    return f"with the weights {os.fspath(pretrained)!r}"


def describe_network(backbone, pretrained, options, *, auto=False):
    """``"tiny backbone from scratch"``: a resolved backbone and where its weights come from.

    ``auto``: the backbone was ``"auto"`` (said, so the choice is visible).
    """
    name = backbone if isinstance(backbone, str) else f"{type(backbone).__name__} (a module)"
    text = f"{name} backbone"
    if options:
        text += f" {options!r}"
    if auto:
        text += " (backbone='auto')"
    return f"{text} {_weights(pretrained)}"


def epochs(n):
    """``"1 epoch"``, ``"20 epochs"``, ``"epochs auto (at least 8, and 1600 steps ...)"``."""
    if isinstance(n, str) and n == "auto":
        return (f"epochs auto (at least {AUTO_MIN_EPOCHS}, and {AUTO_MIN_STEPS} steps from scratch or "
                f"{AUTO_MIN_STEPS_PRETRAINED} from weights)")
    return f"{n} epoch{'' if n == 1 else 's'}"


def describe_step(name, step, n_images=None):
    """One line on what step ``name`` (``"cam"``, ``"affinity"``, ``"refiner"``) will do
    (``max_epochs="auto"`` resolved where ``n_images``, the training images, is given)."""
    params = step.get_params(deep=False) if hasattr(step, "get_params") else {}
    kind = type(step).__name__
    if name == "refiner":
        walk = ", ".join(f"{k} {params[k]}" for k in ("alpha", "beta", "t") if k in params)
        return f"{kind}: random walk ({walk}) on {_device(step)}"
    title = {"CAMClassifier": "CAM classifier", "AffinityEstimator": "AffinityNet"}.get(kind, kind)
    if "max_epochs" not in params and "feature_layer" in params:  # ClassifierCAM
        return (f"{title}: the given classifier's {params['feature_layer']!r} and "
                f"{params.get('linear_layer')!r} layers, nothing trained, on {_device(step)}")
    if "max_epochs" not in params:  # nothing trained (FeatureAffinity)
        backbone = describe_network(params.get("backbone"), params.get("pretrained"),
                                    params.get("backbone_options"))
        return f"{title}: features of the {backbone}, nothing trained, on {_device(step)}"
    from_weights = params.get("init") == "cam" and params.get("pretrained") in (None, False)
    if from_weights:
        network = "the CAM classifier's backbone"
    elif "backbone" in params:
        from .nn import resolve_backbone

        backbone = params["backbone"]
        auto = isinstance(backbone, str) and backbone == "auto"
        resolved = resolve_backbone(backbone, params.get("pretrained"),
                                    params.get("backbone_options"), warn=False)
        network = describe_network(*resolved, auto=auto)
        from_weights = resolved[1] not in (None, False)
    else:
        network = "its own network"
    label_affinity = resolve_label_affinity(params["label_affinity"], params.get("device", "auto")) \
        if "label_affinity" in params else None
    labels = "" if label_affinity is None else \
        f", labels from the CAMs walked over {type(label_affinity).__name__}"
    n_epochs = params["max_epochs"]
    if isinstance(n_epochs, str) and n_epochs == "auto" and n_images:
        n_epochs = auto_epochs(n_images, params.get("batch_size", 8), pretrained=from_weights)
        steps = AUTO_MIN_STEPS_PRETRAINED if from_weights else AUTO_MIN_STEPS
        return (f"{title}: {network}, {epochs(n_epochs)} (auto: at least {steps} steps){labels}, "
                f"on {_device(step)}")
    return f"{title}: {network}, {epochs(n_epochs)}{labels}, on {_device(step)}"


class StageLog:
    """Print a fit's plan, then a line as each stage starts (nothing at ``verbose=0``).

    Parameters
    ----------
    verbose : int
    title : str
        First line, e.g. ``"PSASegmenter: 4 stages on 10 images"``.
    stages : list of (str, str)
        ``(short name, description)`` of each stage, in order.
    file : file object, optional
        Default ``sys.stderr`` (where the progress bars go).
    """

    def __init__(self, verbose, title, stages, file=None):
        from ._distributed import is_main_process

        self.verbose = verbose if is_main_process() else 0  # data-parallel: rank 0 says it
        self.stages = list(stages)
        self.file = file
        self.started = time.perf_counter()
        self.current = 0
        if self.verbose:
            self._print(title)
            for k, (_, text) in enumerate(self.stages, 1):
                self._print(f"  {k}/{len(self.stages)} {text}")

    def _print(self, text):
        print(text, file=self.file or sys.stderr, flush=True)

    def _elapsed(self):
        return f"{time.perf_counter() - self.started:.0f} s"

    def start(self, short):
        """Announce the stage called ``short`` (one of the plan's)."""
        names = [s for s, _ in self.stages]
        self.current = names.index(short) + 1
        if self.verbose:
            self._print(f"[{self.current}/{len(self.stages)}] {short} ({self._elapsed()} so far)")

    def done(self):
        if self.verbose:
            n = len(self.stages)
            self._print(f"done: {n} stage{'' if n == 1 else 's'} in {self._elapsed()}")
