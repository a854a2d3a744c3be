"""PSASegmenter: AffinityNet's whole method as one estimator.

CAMs, learned affinities and the random walk synthesize masks for the
training images; a segmentation network trained on those masks then predicts
new images alone (Ahn & Kwak, CVPR 2018, section 3.5).
"""

import numbers
import os
import warnings
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, _fit_context, clone
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._base import TrainedNetworkMixin, training_parameters_doc
from ._device import autocast, resolve_device
from ._files import output_mark, save_mask
from ._grid import IGNORE_INDEX
from ._parallel import N_JOBS_CONSTRAINT, map_images
from ._torch_estimator import images_to_tensor, iter_image_batches
from ._training import ImageSamples, weights_hash
from ._validation import (
    check_classes,
    check_images,
    check_score_masks,
    check_targets,
    class_names_of,
    default_class_names,
    format_masks,
    keep_params,
)
from .crf import check_crf_options, dense_crf, placed_crf_options, scaled_crf_options
from .metrics import mean_iou
from .walk import stored_masks

__all__ = ["PSASegmenter"]

#: The steps, in the order the data flows through them: CAMs -> affinities -> random walk
#: (then the segmentation network, trained on the walk's masks).
_STEPS = ("cam", "affinity", "refiner")
#: The parameters a step shares with the segmenter, each with the value by which a step leaves
#: it to the segmenter (the segmenter's own default): a step at that value takes the
#: segmenter's at fit (FeatureAffinity's named backbone, for one, stays its own).
_SHARED = {"backbone": "auto", "device": "auto", "random_state": None, "verbose": 0,
           "n_jobs": None, "num_workers": "auto"}
#: How the progress lines (verbose) call each stage of fit.
_STAGE_NAMES = {"cam": "CAM classifier", "affinity": "affinity", "refiner": "random walk",
                "network": "segmentation network"}


def _default_step(name):
    """A new step ``name`` of the default kind, at its own defaults."""
    if name == "cam":
        from .cam import CAMClassifier

        return CAMClassifier()
    if name == "affinity":
        from .affinity import AffinityEstimator

        return AffinityEstimator()
    from .walk import RandomWalkRefiner

    return RandomWalkRefiner()


def _left_to_segmenter(key, value):
    """Whether a step's shared parameter ``key`` holds the value that leaves it to the segmenter."""
    unset = _SHARED[key]
    if unset is None:
        return value is None
    return isinstance(value, type(unset)) and value == unset


@training_parameters_doc
class PSASegmenter(TrainedNetworkMixin, BaseEstimator):
    """Weakly supervised semantic segmentation: AffinityNet end to end.

    ``fit(X, y)`` with image-level labels ``y``:

    1. trains the CAM classifier (``cam``) and takes the CAMs of the training
       images for the classes they are labelled with;
    2. trains AffinityNet (``affinity``) on the confident parts of those CAMs
       and predicts each training image's affinities;
    3. synthesizes a mask per training image by the random walk (``refiner``):
       :attr:`pseudo_labels_`;
    4. trains a segmentation network on the synthesized masks: a backbone at
       output stride 8 with a DeepLab-style head
       (:class:`~sklearn_psa.nn.seg_head.ASPPHead`), cross-entropy with 255
       ignored, by the shared training loop.

    :meth:`predict` then needs only the segmentation network (and optionally
    the dense CRF). With ``supervision="pixel"`` the same network trains on
    the true masks instead: the fully supervised reference of the paper's
    Table 4.

    The three steps are parameters, each an estimator or None. ``fit`` fits
    clones of them, in the data's order, each in a one-step
    :class:`~sklearn.pipeline.Pipeline`: None makes a step of the default kind
    there. A step's ``backbone``, ``device``, ``random_state``, ``verbose`` and
    ``n_jobs`` left at ``"auto"``, None or 0 (the defaults) take this
    estimator's, on the clone: the steps given are never changed. Nested
    parameters read and set as ``cam__max_epochs``, ``refiner__beta`` ...:
    those of a step that is set go to it, as in a Pipeline; those of a step
    left at None are held by this estimator (``PSASegmenter(refiner__beta=4)``
    too; ``clone`` and ``GridSearchCV`` pass them on) and given to the step
    made at ``fit``. ``get_params()`` shows each step's parameters as ``fit``
    will fit it. ``memory`` caches the fitted CAM and affinity steps, so that
    fits that differ only in the refiner's or the segmentation network's
    parameters do not retrain them.

    Read more in docs/method.md (section 5).

    Parameters
    ----------
    cam : CAMClassifier, ClassifierCAM or None, default=None
        Step 1, CAMs; None: a ``CAMClassifier()`` made at ``fit``, which takes
        ``backbone``, ``device``, ``random_state`` and ``verbose``.
    affinity : AffinityEstimator, FeatureAffinity or None, default=None
        Step 2, affinities; None: an ``AffinityEstimator()`` made at ``fit``,
        which takes ``backbone``, ``device``, ``random_state``, ``verbose`` and
        ``n_jobs``. Any transformer that adds affinities to records fits here,
        such as :class:`~sklearn_psa.FeatureAffinity` (no training; its named
        backbone stays its own).
    refiner : RandomWalkRefiner or None, default=None
        Step 3, the random walk; None: a ``RandomWalkRefiner()`` made at ``fit``
        (alpha 16, beta 8, t 256: the paper's), which takes ``device``,
        ``verbose`` and ``n_jobs``. A step that has a ``check_params()``
        method (this package's do) is checked before the first network trains.
    supervision : {"image", "pixel"}, default="image"
        "image": learn from image-level labels through the three steps.
        "pixel": train the segmentation network on the true masks ``y`` (the
        steps are not used).
    init : {"cam", "scratch"}, default="cam"
        Where the segmentation network's backbone starts when ``pretrained``
        is None: a copy of the fitted CAM classifier's backbone (architecture
        and weights; it already recognises the classes, as ImageNet weights do
        for the paper's networks), or random weights of ``backbone``. With
        ``supervision="pixel"`` and ``"cam"``, the CAM step is fitted on the
        labels derived from the masks first (with ``memory``, a CAM step
        fitted on the same images and labels is loaded from the cache), so
        that both supervisions train the same network from the same start.
    backbone : str or torch.nn.Module, default="auto"
        Backbone of every network: the CAM and affinity steps take it
        (``get_params()["cam__backbone"]`` shows it), unless a step sets its
        own (``cam__backbone="resnet50"``, or a step passed with a backbone
        other than ``"auto"``); the segmentation network starts from the fitted CAM
        classifier's backbone (``init="cam"``), else builds this one. A name from
        :func:`sklearn_psa.nn.available_backbones` or a module (see
        :func:`sklearn_psa.nn.make_backbone`).
        ``"auto"`` (with ``pretrained=None`` and no ``backbone_options``) is
        resolved by :func:`sklearn_psa.nn.resolve_backbone`: EfficientNet-Lite0
        with ImageNet weights where ``sklearn-psa[pretrained]`` is installed,
        else ``"tiny"`` from scratch, with a warning.
    pretrained : None, bool or path, default=None
        Backbone weights: None/False random (or the CAM's with
        ``init="cam"``), True the installed weights (where the backbone has a
        weights package), a path a weight file. Whenever the backbone starts
        from weights, the head learns at ``head_lr_mult`` times the rate.
    backbone_options : dict or None, default=None
        Options for the named backbone, e.g. ``{"depth": 4, "dilation": 2}``
        for ``"tiny"``.
    aspp_rates : tuple of int, default=(2, 4, 6)
        Dilation rates of the head's 3x3 branches, in cells of the stride-8
        grid. DeepLab v3 uses (6, 12, 18) for 300-500 px images; the default
        suits ~128 px images.
    head_channels : int, default=64
        Channels of each head branch.
    crf : bool or dict, default=False
        Refine predicted probabilities with :func:`sklearn_psa.dense_crf`, as
        the paper's segmentation networks are scored. ``True`` takes the
        reference code's kernels with the bilateral width scaled to each image
        (80 px for a 500 px side, ``80 * max(H, W) / 500``: 20.5 px at 128 px),
        as ``RandomWalkRefiner(crf=True)`` does; a dict is passed as options
        (its ``bilateral_sxy``, if any, is not scaled). The CRF runs on
        ``device`` unless the dict names a ``device`` of its own. On the demo's
        images (40 epochs, four seeds) it raised the network from 63.1 to 78.4
        points of mIoU and the fully supervised one from 79.6 to 91.5
        (docs/benchmarks.md, "The segmenter through a dense CRF").
    crop_size : int or None, default=None
        Side of the random training crops; None trains on whole images
        (padded to the largest in a batch).
    scale_range : tuple of 2 float, default=(0.9, 1.1)
        Random rescaling of the training images before cropping.
    batch_size : int, default=8
        Training batch size and the most images per inference batch.
    max_epochs : int, default=20
        Training epochs of the segmentation network.
    learning_rate : float or "auto", default="auto"
        Base SGD rate, decayed as ``(1 - step / max_step) ** 0.9``. ``"auto"``:
        0.01 when the network's own backbone loads pretrained weights (ImageNet
        or a file: DeepLab's recipe), else 0.1: from scratch, and from the
        fitted CAM classifier's backbone (``init="cam"``, already fitted to the
        task), where 0.1 trained better than 0.01 even when that classifier
        started from ImageNet weights (``docs/benchmarks.md``).
    head_lr_mult : float or "auto", default="auto"
        Rate multiplier of the head when the backbone starts from weights
        (``pretrained``, or ``init="cam"``). ``"auto"``: 10 with pretrained
        weights (DeepLab's recipe, with the small base rate), else 1.
    weight_decay : float, default=5e-4
        L2 penalty on convolution weights.
    memory : str, joblib.Memory or None, default=None
        Caches the fitted CAM and affinity steps (and the records they
        return), as ``Pipeline(memory=...)`` does. The cache holds joblib
        pickles, which run code when loaded: use only a folder that nobody
        untrusted can write to, and never a cache from elsewhere.
    device : str or torch.device, default="auto"
        ``"auto"`` uses CUDA when available, else the CPU.
    random_state : int, RandomState instance or None, default=None
        Seeds the segmentation network (initial weights, data order,
        augmentation) and the steps that leave theirs at None.
    verbose : int, default=0
        0: silent. 1: ``fit`` first prints its plan to stderr (each stage
        with the backbone ``"auto"`` resolved to, its weights, epochs and
        device), then a line as each stage starts, with the time so far,
        above the steps' progress bars (erased when done). 2: the bars stay.
        Steps that leave theirs at 0 take it.
    n_jobs : int or None, default=None
        Processes (or cluster workers) for the per-image CPU work, through
        joblib: the dense CRF of :meth:`predict` and, for steps that leave
        theirs at None, the affinity labels and the random walk. None means 1 unless in
        a ``joblib.parallel_backend`` context (``"dask"``, ``"ray"``), -1 all
        cores. Each worker runs torch on one thread; work on CUDA stays in
        this process.
    classes : sequence of str or None, default=None
        Names of the class columns, in order (column ``j`` is mask value
        ``j + 1``; for a VOC set, ``load_voc(...).class_names``). Their
        number fixes the number of classes, also when ``y`` holds masks.
        None: the columns of ``y`` when it is a pandas DataFrame, else
        ``"class 1"``, ``"class 2"``, ... A CAM step whose own ``classes``
        is None takes the same names.
    {training parameters}
    **step_params : dict
        Parameters of the steps, named ``<step>__<parameter>``
        (``cam__max_epochs=5``, ``refiner__beta=4``), held by this estimator:
        ``fit`` gives them to the step it makes where the step is None, or to
        its clone of the step given.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class columns ``0 .. n_classes - 1`` (column ``j`` is mask value ``j + 1``).
    class_names_ : ndarray of shape (n_classes,), object
        Name of each class column (see ``classes``): what ``sklearn-psa
        evaluate --model``, ``segmentation_report(...,
        class_names=seg.class_names_)`` and ``plot_cams(...,
        class_names=seg.class_names_)`` print.
    n_classes_ : int
    network_ : sklearn_psa.nn.heads.Network
        The segmentation network (backbone + ASPP head), ``n_classes + 1`` outputs.
    cam_, affinity_, refiner_ : estimators
        The fitted steps (``supervision="image"``; with ``"pixel"`` only
        ``cam_``, when ``init="cam"`` used it).
    pseudo_labels_ : list of ndarray of shape (H, W), uint8
        The masks synthesized for the training images (``supervision="image"``
        only): 0 background, ``j + 1`` class column ``j``. When the affinity
        step has a ``store``, a sequence of masks kept in that folder and
        memory-mapped when used (the segmentation network's training reads
        them from there); after :func:`sklearn_psa.io.load_model`, a sequence
        that reads each from the model file when indexed.
    pseudo_label_names_ : list of str
        File names (without ``.png``) :meth:`save_pseudo_labels` uses: the
        training images' file stems when they were paths with distinct
        stems, else ``"000000"``, ``"000001"``, ...
    {training attributes}

    See Also
    --------
    sklearn_psa.CAMClassifier, sklearn_psa.AffinityEstimator, sklearn_psa.RandomWalkRefiner

    Notes
    -----
    The training parameters (``max_epochs``, ``optimizer``, ``callbacks``,
    ``warm_start``, ``checkpoint`` ...) and the history are the segmentation
    network's; each step has its own (``cam__callbacks``). With
    ``checkpoint``, the steps before the network train again on resume (or
    load from ``memory``), so resuming needs them to give the same masks: set
    ``random_state`` (a warning says so otherwise); on a GPU, ``memory``
    keeps the fitted steps themselves.

    ``GridSearchCV`` over ``refiner__*`` with ``memory`` set trains the CAM
    and affinity networks once per training fold, but the segmentation
    network once per candidate (its training masks change with the walk's
    parameters). To tune the walk alone, search over a
    ``Pipeline([("cam", ...), ("affinity", ...), ("rw", RandomWalkRefiner())],
    memory=...)``, which scores the synthesized masks directly.

    Examples
    --------
    >>> from sklearn_psa import PSASegmenter
    >>> from sklearn_psa.datasets import make_shapes
    >>> X, Y, masks = make_shapes(16, image_size=32, random_state=0)
    >>> seg = PSASegmenter(max_epochs=1, device="cpu", random_state=0).set_params(
    ...     cam__max_epochs=1, cam__scales=(1.0,), affinity__max_epochs=1,
    ...     affinity__crf=False, affinity__crop_size=32)
    >>> seg.cam is None                        # made at fit, with these parameters
    True
    >>> params = seg.get_params()
    >>> params["cam__max_epochs"], params["cam__device"], params["refiner__beta"]
    (1, 'cpu', 8)
    >>> seg = seg.fit(X, Y)                    # image-level labels only
    >>> len(seg.pseudo_labels_), seg.pseudo_labels_[0].shape
    (16, (32, 32))
    >>> seg.predict(X[:2]).shape
    (2, 32, 32)
    """

    _torch_attributes = ("network_",)

    _parameter_constraints = {
        **TrainedNetworkMixin._parameter_constraints,
        "cam": [None, HasMethods(["fit_transform", "transform"])],
        "affinity": [None, HasMethods(["fit_transform", "transform"])],
        "refiner": [None, HasMethods(["fit", "predict"])],
        "supervision": [StrOptions({"image", "pixel"})],
        "init": [StrOptions({"cam", "scratch"})],
        "aspp_rates": ["array-like"],
        "head_channels": [Interval(numbers.Integral, 1, None, closed="left")],
        "crf": ["boolean", dict],
        "scale_range": ["array-like"],
        "head_lr_mult": [Interval(numbers.Real, 0, None, closed="neither"), StrOptions({"auto"})],
        "memory": [None, str, os.PathLike, HasMethods(["cache"])],
        "n_jobs": N_JOBS_CONSTRAINT,
        "classes": [None, "array-like"],
    }
    _fingerprint_ignores = ("cam", "affinity", "refiner", "memory", "crf")

    def __init__(
        self,
        cam=None,
        affinity=None,
        refiner=None,
        *,
        supervision="image",
        init="cam",
        backbone="auto",
        pretrained=None,
        backbone_options=None,
        aspp_rates=(2, 4, 6),
        head_channels=64,
        crf=False,
        crop_size=None,
        scale_range=(0.9, 1.1),
        batch_size=8,
        max_epochs=20,
        learning_rate="auto",
        head_lr_mult="auto",
        weight_decay=5e-4,
        memory=None,
        device="auto",
        random_state=None,
        verbose=0,
        checkpoint=None,
        n_jobs=None,
        classes=None,
        warm_start=False,
        optimizer="sgd",
        optimizer_options=None,
        lr_schedule="poly",
        callbacks=None,
        num_workers="auto",
        **step_params,
    ):
        keep_params(self, locals())
        for key, value in step_params.items():
            name, _, sub = key.partition("__")
            if name not in _STEPS or not sub:
                raise TypeError(
                    f"PSASegmenter() got an unexpected keyword argument {key!r}: besides its own "
                    "parameters it takes those of its steps, named <step>__<parameter> "
                    f"with a step among {', '.join(_STEPS)} (e.g. refiner__beta=4)"
                )
            setattr(self, key, value)

    # ------------------------------------------------------------------ steps and parameters

    def _held_params(self):
        """``{"cam__max_epochs": 5, ...}``: the nested parameters this estimator holds
        (given to ``__init__``, or set while their step was None)."""
        return {key: value for key, value in vars(self).items()
                if "__" in key and key.partition("__")[0] in _STEPS}

    def _fit_steps(self, names=_STEPS, classes=None):
        """``{name: step}``: the steps ``names`` as :meth:`fit` fits them, in the data's order.

        Each is a clone of the step given, or a new one of the default kind where the
        parameter is None. It takes this estimator's shared parameters (``backbone``,
        ``device``, ``random_state``, ``verbose``, ``n_jobs``) that it has and leaves at
        ``"auto"``, None or 0, then the nested parameters this estimator holds for it;
        ``classes`` (names) go to a CAM step whose own are None. Neither the parameters
        nor the steps given change.
        """
        held = {}
        for key, value in self._held_params().items():
            name, _, sub = key.partition("__")
            held.setdefault(name, {})[sub] = value
        steps = {}
        for name in names:
            step = getattr(self, name)
            if step is None:
                step = _default_step(name)
            elif hasattr(step, "get_params"):
                step = clone(step)
            else:  # not an estimator: fit's parameter validation says so
                steps[name] = step
                continue
            own = step.get_params(deep=False)
            update = {key: str(getattr(self, key)) if key == "device" else getattr(self, key)
                      for key in _SHARED if key in own and _left_to_segmenter(key, own[key])}
            if name == "cam" and classes is not None and "classes" in own and own["classes"] is None:
                update["classes"] = list(classes)
            update.update(held.get(name, {}))
            steps[name] = step.set_params(**update)
        return steps

    def get_params(self, deep=True):
        """Parameters of this estimator and, with ``deep``, of its three steps.

        Parameters
        ----------
        deep : bool, default=True
            Also return ``<step>__<parameter>`` for ``cam``, ``affinity`` and
            ``refiner``: the parameters of each step as :meth:`fit` will fit
            it (a step left at None: the default one it makes; shared
            parameters a step leaves to this estimator: this estimator's).

        Returns
        -------
        params : dict
            Without ``deep``, the nested parameters held for steps left at None
            are included (``clone`` passes them on).
        """
        params = super().get_params(deep=False)
        params.update(self._held_params())
        if deep:
            for name, step in self._fit_steps().items():
                if hasattr(step, "get_params"):
                    params.update((f"{name}__{key}", value)
                                  for key, value in step.get_params(deep=True).items())
        return params

    def set_params(self, **params):
        """Set parameters, nested ones (``refiner__beta=4``) included.

        A nested parameter of a step that is set goes to that step, as in a
        :class:`~sklearn.pipeline.Pipeline` (replacing one this estimator held
        for it). One of a step left at None is held by this estimator (no step
        is made here) and given to the default step that :meth:`fit` makes;
        ``get_params`` shows it.

        Parameters
        ----------
        **params : dict
            Parameter names mapped to their new values.

        Returns
        -------
        self : PSASegmenter
        """
        for key in [k for k in params if "__" in k]:
            name, _, sub = key.partition("__")
            if name not in _STEPS:
                continue  # BaseEstimator.set_params names the valid parameters
            if params.get(name, getattr(self, name)) is None:
                default = _default_step(name)
                valid = default.get_params(deep=True)
                if sub not in valid:
                    raise ValueError(
                        f"Invalid parameter {sub!r} for the {name} step, which is None: the "
                        f"default {type(default).__name__} made at fit has the parameters "
                        f"{sorted(valid)}"
                    )
                setattr(self, key, params.pop(key))
            else:  # to the step, as in a Pipeline; a value held before is replaced
                self.__dict__.pop(key, None)
        return super().set_params(**params)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.target_tags.required = True
        tags.non_deterministic = self.random_state is None
        return tags

    # ------------------------------------------------------------------ fit

    def _fit_records(self, X, labels, steps=None, log=None):
        """Fit ``steps`` (``{name: step}``, CAM then affinity; default: this estimator's, as
        :meth:`_fit_steps` makes them) in turn; return ``(records, fitted steps...)``.

        The records hold the training images' CAMs (of their true classes) and
        affinities. With ``memory`` set, a second call on the same images,
        labels and step parameters loads the steps and records from the cache
        (the CAM step's entry is the same whether or not the affinity step
        follows it). ``X`` is passed as the caller gave it (an array or a
        list), so that the entries are those a ``Pipeline(memory=...)`` of the
        same steps fitted on ``(X, labels)`` writes and reads: each step runs
        in a Pipeline of its own, whose cache entry (the step, its input and
        the labels) is the one it has in a Pipeline of all the steps; so
        ``log`` (a :class:`~sklearn_psa._stages.StageLog`) can announce each.

        Data-parallel (under ``torchrun``), the steps of this package split
        their inference over the training images (CAMs, affinities) over the
        ranks: all of them here, also those whose own fit is not data-parallel
        (:class:`~sklearn_psa.ClassifierCAM`, ``FeatureAffinity``).
        """
        from sklearn.pipeline import Pipeline

        if steps is None:
            steps = self._fit_steps(("cam", "affinity"))
        records, fitted = X, []
        with self._split_over_ranks():
            for name, step in steps.items():
                if log is not None:
                    log.start(_STAGE_NAMES[name])
                # A Pipeline ending in "passthrough": fit_transform fits (or loads from
                # ``memory``) the step and returns its records.
                pipe = Pipeline([(name, step), ("records", "passthrough")], memory=self.memory)
                records = pipe.fit_transform(records, labels)
                fitted.append(pipe.named_steps[name])
        return (records,) + tuple(fitted)

    def _fit_stages(self, n_images, steps):
        """A :class:`~sklearn_psa._stages.StageLog` of this fit (``steps``: those it fits
        before the segmentation network): its plan, printed at ``verbose >= 1``, with
        ``"auto"`` resolved (backbone, weights, device)."""
        from ._stages import StageLog, describe_network, describe_step, epochs

        stages = [(_STAGE_NAMES[name], describe_step(name, step, n_images))
                  for name, step in steps.items()]
        if self._from_cam():
            network = "the fitted CAM classifier's backbone"
        else:
            auto = isinstance(self.backbone, str) and self.backbone == "auto"
            network = describe_network(*self._resolved_backbone(), auto=auto)
        on = "the synthesized masks" if self.supervision == "image" else "the true masks"
        stages.append((_STAGE_NAMES["network"],
                       f"segmentation network on {on}: {network}, {epochs(self.max_epochs)}, "
                       f"on {self._fit_device()}"))
        title = (f"PSASegmenter: {len(stages)} stage{'' if len(stages) == 1 else 's'} on "
                 f"{n_images} images "
                 f"({self.supervision}-level labels)")
        if self.memory is not None and steps:
            title += "; memory: fitted steps load from the cache"
        return StageLog(self.verbose, title, stages)

    def _from_cam(self):
        return self.init == "cam" and self.pretrained in (None, False)

    def _from_pretrained(self):
        """Whether the network's own backbone loads pretrained weights (ImageNet, a file).

        False when it starts from the fitted CAM classifier's backbone (``init="cam"``),
        which is already fitted to the task, whatever that classifier started from.
        """
        return not self._from_cam() and self._resolved_backbone()[1] not in (None, False)

    def _build_network(self, data):
        from .nn import make_backbone
        from .nn.heads import Network
        from .nn.seg_head import ASPPHead

        if self._from_cam():
            backbone = make_backbone(self.cam_.network_.backbone)  # a copy, moved to CPU
            backbone.to("cpu")
        else:
            name, pretrained, options = self._resolved_backbone(warn=True)
            backbone = make_backbone(name, pretrained=pretrained, **(options or {}))
        head = ASPPHead(backbone.out_channels[2], data["n_classes"] + 1, channels=self.head_channels,
                        rates=self._checked_aspp_rates())
        return Network(backbone, head)

    def _training_samples(self, data):
        return ImageSamples(data["images"], maps={"label": data["masks"]})

    def get_loss(self, net, batch):
        """Cross-entropy of the network's upsampled logits against ``batch["label"]``
        (255 ignored); see
        :meth:`TrainedNetworkMixin.get_loss <sklearn_psa._base.TrainedNetworkMixin.get_loss>`."""
        from torch.nn import functional as F

        labels = batch["label"]
        logits = F.interpolate(net(batch["image"]).float(), size=labels.shape[-2:],
                               mode="bilinear", align_corners=False)
        if not bool((labels != IGNORE_INDEX).any()):  # every pixel ignored: no gradient
            return logits.sum() * 0.0
        return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)

    def _rates(self, data):
        pretrained = self._from_pretrained()
        head_lr_mult = self.head_lr_mult
        if head_lr_mult == "auto":
            head_lr_mult = 10.0 if pretrained else 1.0
        return self._learning_rate(pretrained), head_lr_mult if pretrained or self._from_cam() else 1.0

    def _data_fingerprint(self, data):
        """The images, the masks and, from the CAM classifier's backbone, its weights."""
        import joblib

        start = weights_hash(self.cam_.network_.backbone) if self._from_cam() else None
        sources = [s if isinstance(s, str) else joblib.hash(s) for s in data["images"].sources]
        return sources, [joblib.hash(m) for m in data["masks"]], start

    def _desc(self):
        return "segmentation" if self.supervision == "image" else "segmentation (masks)"

    def _checked_aspp_rates(self):
        try:
            values = np.asarray(self.aspp_rates, dtype=float).ravel()
        except (TypeError, ValueError):
            values = np.array([0.0])
        if not np.all((values >= 1) & (values == np.round(values))):
            raise ValueError(
                f"aspp_rates must be positive integers (dilations), got {self.aspp_rates!r}")
        return tuple(int(r) for r in values)

    def _check_settings(self):
        self._crf_options()
        self._checked_scale_range()
        self._checked_aspp_rates()
        self._checked_callbacks()

    def check_params(self):
        """Check the parameters of this estimator and of its steps, as :meth:`fit` does first.

        Each step that has a ``check_params`` method (those of this package)
        is checked as :meth:`fit` will fit it, its errors prefixed with its
        name (``affinity__pretrained=...``); then this estimator's own CRF
        options, scale range, ASPP rates, backbone and weights file. A typo
        in a late stage thus fails before the earlier stages train.

        Returns
        -------
        self : PSASegmenter

        Raises
        ------
        ValueError
            Naming the parameter that is wrong.
        FileNotFoundError
            When a ``pretrained`` weights file does not exist.
        """
        self._validate_params()
        self._check_before_training(self._fit_steps(self._steps_to_fit()))
        return self

    def _steps_to_fit(self):
        """Names of the steps this estimator fits before its network."""
        if self.supervision == "pixel":
            return ("cam",) if self._from_cam() else ()
        return _STEPS

    def _check_before_training(self, steps):
        """Fail on a bad setting of any stage before the first network trains.

        ``steps``: ``{name: step}`` as :meth:`fit` fits them. See :meth:`check_params`.
        """
        from sklearn.utils._param_validation import InvalidParameterError

        self._check_settings()
        cam = steps.get("cam")
        if self._from_cam() and cam is not None and "backbone" not in cam.get_params(deep=False):
            raise ValueError(
                f"init='cam' starts the segmentation network from the CAM step's backbone, and "
                f"the cam step, {type(cam).__name__}, has no backbone of ours: use "
                "init='scratch' (the network then builds `backbone`)"
            )
        for name, step in steps.items():
            if not hasattr(step, "check_params"):
                continue
            try:
                step.check_params()
            except InvalidParameterError:
                raise  # it names the estimator and the parameter
            except FileNotFoundError as exc:
                raise FileNotFoundError(f"{name}__{exc}") from exc
            except ValueError as exc:
                raise ValueError(f"{name}__{exc}") from exc
        if not self._from_cam():  # this estimator's own backbone and weights
            self._check_backbone()
        if self.checkpoint is not None and self.random_state is None and steps:
            warnings.warn(
                "checkpoint: an interrupted fit resumes only if the steps before the "
                "segmentation network give the same masks again, and with random_state=None "
                "they train differently each time; set random_state",
                UserWarning,
                stacklevel=3,
            )

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y):
        """Synthesize masks for the training images and train the segmentation network.

        Parameters
        ----------
        X : sequence of images or paths, or ndarray of shape (n, H, W, 3)
            Training images.
        y : ndarray of shape (n, n_classes) or sequence of (H, W) masks
            ``supervision="image"``: the 0/1 indicator of the classes present,
            or masks from which it is derived (only the classes present are
            used, so ``GridSearchCV(...).fit(X, masks)`` learns from image-level
            information and scores on the masks). ``supervision="pixel"``: the
            true masks (0 background, ``j + 1`` class column ``j``, 255 ignored).

        Returns
        -------
        self : PSASegmenter
        """
        images = check_images(X)
        classes = check_classes(self.classes)
        targets = check_targets(y, len(images), shapes=images.shapes,
                                n_classes=None if classes is None else len(classes))
        labels = targets.labels
        n_classes = labels.shape[1]
        class_names = class_names_of(classes, n_classes, y)
        # names of the user's (classes, DataFrame columns) reach the CAM step; default
        # ones do not, so that its cache entry is a Pipeline's of the same steps
        step_classes = (None if list(class_names) == default_class_names(n_classes)
                        else list(class_names))
        # the steps as they will be fitted (clones, shared parameters passed on): checked,
        # announced, then fitted in the data's order
        steps = self._fit_steps(self._steps_to_fit(), classes=step_classes)
        self._check_before_training(steps)
        log = self._fit_stages(len(images), steps)
        steps_X = X if isinstance(X, (np.ndarray, list, tuple)) else images
        for name in ("cam_", "affinity_", "refiner_", "pseudo_labels_", "pseudo_label_names_"):
            self.__dict__.pop(name, None)
        if self.supervision == "pixel":
            if targets.masks is None:
                raise ValueError(
                    "supervision='pixel' trains on the true masks: y must be a sequence of "
                    "(H, W) masks, not image-level labels"
                )
            masks = targets.masks
            if "cam" in steps:
                _, self.cam_ = self._fit_records(steps_X, labels, steps, log)
        else:
            records, self.cam_, self.affinity_ = self._fit_records(
                steps_X, labels, {"cam": steps["cam"], "affinity": steps["affinity"]}, log)
            log.start(_STAGE_NAMES["refiner"])
            self.refiner_ = steps["refiner"].fit(records)
            # data-parallel (torchrun): each rank walks its share of the images
            with self._split_over_ranks():
                masks = self._pseudo_labels(records)
            del records
            self.pseudo_labels_ = masks
            self.pseudo_label_names_ = _image_names(images)
        log.start(_STAGE_NAMES["network"])
        self._fit_network({"images": images, "masks": masks, "n_classes": n_classes})
        log.done()
        self.classes_ = np.arange(n_classes)
        self.class_names_ = class_names
        self.n_classes_ = n_classes
        # an indicator (or `classes`) declares every class; masks give a lower bound (a
        # fold may lack one)
        self._classes_declared = targets.masks is None or classes is not None
        return self

    # ------------------------------------------------------------------ inference

    def _pseudo_labels(self, records):
        """The refiner's masks of the training records: a list, or, when the affinity step has
        a ``store``, written there one by one and read back (memory-mapped) as used."""
        store = getattr(self.affinity_, "store", None)
        if store is None:
            return list(self.refiner_.predict(records))
        return stored_masks(store, self.refiner_, records)

    def _crf_options(self):
        return check_crf_options(self.crf)

    def _iter_proba(self, images):
        """Yield ``(index, probabilities (K+1, H, W) float32)`` per image, in order.

        The network runs batch by batch in this process; the dense CRF (with
        ``crf``) per image, over ``n_jobs`` workers where it runs on the CPU.
        Both run on ``device``, resolved once here.
        """
        device = resolve_device(self.device)
        crf = self._crf_options()
        if crf is None:
            yield from ((i, p) for i, _, p in self._iter_network_proba(images, device))
            return
        crf, on_cuda = placed_crf_options(crf, device)
        tasks = ((i, image, p, crf) for i, image, p in self._iter_network_proba(images, device))
        yield from map_images(_crf_task, tasks, n_jobs=self.n_jobs, in_parent=on_cuda,
                              verbose=self.verbose, desc="dense CRF", total=len(images))

    def _iter_network_proba(self, images, device):
        """Yield ``(index, image, softmax of the network (K+1, H, W) float32)``, batch by batch,
        the network on ``device``."""
        import torch
        from torch.nn import functional as F

        net = self._network("network_", device)
        for idx in iter_image_batches(images.shapes, self.batch_size):
            batch = [images[i] for i in idx]
            with torch.inference_mode(), autocast(device):
                x = images_to_tensor(batch, device)
                logits = F.interpolate(net(x).float(), size=x.shape[-2:], mode="bilinear",
                                       align_corners=False)
                proba = torch.softmax(logits, dim=1).float().cpu().numpy()
            for j, i in enumerate(idx):
                yield i, batch[j], proba[j]

    def predict_proba(self, X):
        """Per-pixel probabilities of background and each class.

        Parameters
        ----------
        X : sequence of images or paths, or ndarray of shape (n, H, W, 3)

        Returns
        -------
        proba : list of ndarray of shape (n_classes + 1, H, W), float32
            Channel 0 background, channel ``j + 1`` class column ``j``; after
            the dense CRF when ``crf`` is set.
        """
        check_is_fitted(self, "network_")
        images = check_images(X)
        out = [None] * len(images)
        for i, p in self._iter_proba(images):
            out[i] = p
        return out

    def predict(self, X):
        """Predict a mask per image with the segmentation network.

        Parameters
        ----------
        X : sequence of images or paths, or ndarray of shape (n, H, W, 3)

        Returns
        -------
        masks : ndarray of shape (n, H, W) or list of (H, W) arrays, uint8
            An array when ``X`` was an array, else a list (sizes may differ):
            0 background, ``j + 1`` class column ``j``.
        """
        check_is_fitted(self, "network_")
        images = check_images(X)
        masks = [None] * len(images)
        for i, p in self._iter_proba(images):
            masks[i] = np.argmax(p, axis=0).astype(np.uint8)
        return format_masks(masks, images)

    def score(self, X, y, sample_weight=None):
        """Mean IoU of :meth:`predict` over background and classes (255 ignored).

        Parameters
        ----------
        X : sequence of images or paths, or ndarray of shape (n, H, W, 3)
        y : sequence of (H, W) masks or mask paths, or ndarray of shape (n, H, W)
            True masks. A class the estimator was not fitted on (one absent
            from a cross-validation training fold, where ``fit`` derived the
            classes from masks) counts as missed; where ``fit`` was given an
            indicator of ``n_classes_`` classes, or ``classes`` named them, a
            mask value above it (255 aside) is a ``ValueError``: no class the
            model knows.
        sample_weight : None
            Not supported (mean IoU counts pixels over all images).

        Returns
        -------
        score : float
            Mean IoU in [0, 1].

        Raises
        ------
        sklearn_psa.exceptions.MasksRequiredError
            When ``y`` is an image-level indicator; a ``BaseException``, so
            that ``GridSearchCV(...).fit(X, Y)`` stops instead of scoring NaN:
            fit the search on the masks.
        """
        if sample_weight is not None:
            raise ValueError("sample_weight is not supported: mean IoU counts pixels")
        check_is_fitted(self, "network_")
        images = check_images(X)
        # a true class beyond the fitted ones (absent from a cross-validation training
        # fold) is a miss, not an error; beyond the classes of a fitting indicator (or of
        # `classes`), it is a class this model cannot know
        declared = getattr(self, "_classes_declared", False)
        masks = check_score_masks(y, len(images), shapes=images.shapes,
                                  n_classes=self.n_classes_ if declared else None,
                                  scorer=f"{type(self).__name__}.score")
        return mean_iou(masks, self.predict(images))

    # ------------------------------------------------------------------ output

    def save_pseudo_labels(self, folder, names=None, *, overwrite=False):
        """Write the synthesized training masks as VOC-palette PNGs.

        Each file is written atomically (a reader never sees half a file) and
        files already in ``folder`` are skipped, so an interrupted call
        resumes where it stopped. Only masks that sklearn-psa wrote as outputs
        (:func:`sklearn_psa.io.output_mark`) are skipped or replaced: any other
        file of a name to write (an image, a true mask) is a ``ValueError``
        before anything is written.

        Parameters
        ----------
        folder : str or path
            Created when missing.
        names : sequence of str, optional
            File names without ``.png`` (no folders), one per training image
            (default: :attr:`pseudo_label_names_`).
        overwrite : bool, default=False
            Rewrite the masks of an earlier call that exist.

        Returns
        -------
        written : list of str
            Paths written by this call (skipped files are not listed).
        """
        check_is_fitted(self, "network_")
        if not hasattr(self, "pseudo_labels_"):
            raise ValueError(
                "no pseudo-labels: this PSASegmenter was fitted with supervision='pixel', "
                "which trains on the true masks"
            )
        names = self.pseudo_label_names_ if names is None else [str(n) for n in names]
        if len(names) != len(self.pseudo_labels_):
            raise ValueError(
                f"names has {len(names)} items but there are {len(self.pseudo_labels_)} "
                "pseudo-labels (one per training image)"
            )
        if len(set(names)) != len(names):
            raise ValueError("names must be distinct: each names one PNG file")
        for i, name in enumerate(names):
            if not name or name in (".", "..") or "/" in name or "\\" in name:
                raise ValueError(f"names[{i}] = {name!r}: expected a file name without folders")
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"folder {os.fspath(folder)!r} is a file: expected a folder")
        foreign = [folder / f"{n}.png" for n in names if (folder / f"{n}.png").exists()]
        foreign = [p for p in foreign if output_mark(p) is None]
        if foreign:
            raise ValueError(
                f"{len(foreign)} file(s) in {os.fspath(folder)!r} are not masks that sklearn-psa "
                f"wrote (first: {os.fspath(foreign[0])!r}); they are never replaced or taken for "
                "finished masks: choose an empty folder or move them"
            )
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for name, mask in zip(names, self.pseudo_labels_):
            path = folder / f"{name}.png"
            if not overwrite and path.exists():
                continue
            save_mask(path, mask, output_of="pseudo-labels")
            written.append(str(path))
        return written


def _crf_task(index, image, proba, options):
    """``(index, the dense CRF of proba)`` with ``options`` scaled to the image
    (:func:`~sklearn_psa.crf.scaled_crf_options`): a task of ``_parallel.map_images``."""
    options = scaled_crf_options(options, np.shape(image))
    return index, np.asarray(dense_crf(image, proba, **options), dtype=np.float32)


def _image_names(images):
    """File stems of path images when distinct, else zero-padded indices."""
    sources = images.sources
    if all(isinstance(s, str) for s in sources):
        stems = [Path(s).stem for s in sources]
        if len(set(stems)) == len(stems):
            return stems
    return [f"{i:06d}" for i in range(len(sources))]
