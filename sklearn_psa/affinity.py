"""AffinityEstimator: learns semantic affinities between neighbouring pixels from CAMs.

Fitted on the records of :class:`~sklearn_psa.CAMClassifier` (training
images with their CAMs), it derives confident foreground, confident
background and ignored regions from each image's CAMs (docs/method.md, section 2), and
trains AffinityNet (a head on three backbone levels, section 3) so that
pairs of the same confident label get affinity near 1 and pairs of different
labels near 0. ``transform`` adds each image's affinity ``(K, h, w)`` on the
stride-8 grid to its record, for :class:`~sklearn_psa.RandomWalkRefiner`.
"""

import numbers
import os
import warnings
from collections.abc import Sequence

import joblib
import numpy as np
from sklearn.base import BaseEstimator, _fit_context, clone
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions

from ._affinity_labels import (affinity_pairs, combine_confident, confident_regions,
                               confident_scores, pool_index_map, pool_score_stack)
from ._affinity_transform import AffinityTransformerMixin
from ._base import TrainedNetworkMixin, training_parameters_doc
from ._device import resolve_device
from ._grid import IGNORE_INDEX, STRIDE, neighbor_offsets
from ._parallel import N_JOBS_CONSTRAINT, map_images
from ._random_walk import walk_image_maps
from ._store import ArrayStore, StoredArray, image_key, model_key
from ._torch_estimator import images_to_tensor, iter_image_batches
from ._training import TrainResult
from ._validation import keep_params
from .crf import ImageCRF, check_crf_options, placed_crf_options
from .records import Record, Records, check_records

__all__ = ["AffinityEstimator", "auto_epochs", "resolve_label_affinity", "starts_from_weights"]

#: ``max_epochs="auto"``: at least this many SGD steps from random weights (measured:
#: docs/benchmarks.md, issue #17) ...
AUTO_MIN_STEPS = 1600
#: ... or from pretrained weights (ImageNet, or the CAM classifier's with ``init="cam"``) ...
AUTO_MIN_STEPS_PRETRAINED = 400
#: ... and at least the paper's epochs.
AUTO_MIN_EPOCHS = 8


def auto_epochs(n_samples, batch_size=8, pretrained=False):
    """Epochs of ``AffinityEstimator(max_epochs="auto")`` for ``n_samples`` training images.

    The paper's 8 epochs, or more where a small training set would give fewer
    than 1600 SGD steps from random weights, 400 from pretrained ones
    (``ceil(n_samples / batch_size)`` steps per epoch).

    Examples
    --------
    >>> from sklearn_psa.affinity import auto_epochs
    >>> auto_epochs(200), auto_epochs(200, pretrained=True), auto_epochs(10582), auto_epochs(8)
    (64, 16, 8, 1600)
    """
    steps_per_epoch = max(1, -(-int(n_samples) // max(1, int(batch_size))))
    steps = AUTO_MIN_STEPS_PRETRAINED if pretrained else AUTO_MIN_STEPS
    return max(AUTO_MIN_EPOCHS, -(-steps // steps_per_epoch))


def starts_from_weights(backbone="auto", pretrained=None, init="scratch", backbone_options=None):
    """Whether an ``AffinityEstimator`` with these parameters starts from trained weights
    (``init="cam"``, ``pretrained`` weights, or ``"auto"`` resolving to ImageNet weights)."""
    from .nn import resolve_backbone

    if init == "cam" and pretrained in (None, False):
        return True
    return resolve_backbone(backbone, pretrained, backbone_options, warn=False)[1] not in (None, False)


def resolve_label_affinity(label_affinity="auto", device="auto"):
    """``AffinityEstimator(label_affinity=...)`` resolved: ``"auto"`` is
    ``FeatureAffinity(device=device)`` where EfficientNet-Lite0's ImageNet weights are
    installed (``sklearn-psa[pretrained]``), else None; anything else is returned as given."""
    if not (isinstance(label_affinity, str) and label_affinity == "auto"):
        return label_affinity
    from .nn import resolve_backbone

    if resolve_backbone("auto", warn=False)[1] in (None, False):
        return None  # no ImageNet weights installed: labels from the CAMs
    from .feature_affinity import FeatureAffinity

    return FeatureAffinity(device=device)


#: The label maps of a training sample: ``"low"`` and ``"high"`` value maps
#: (``label_pooling="vote"``), or one score map per channel, ``"low:v"`` and ``"high:v"``
#: for the label value ``v`` of the channel (0 background, ``j + 1`` class column ``j``).
_LEVELS = ("low", "high")


def _value_maps(record, alpha_low, alpha_high, crf):
    """Full-resolution low/high argmax maps of one record, as label values (0 bg, j+1 class j)."""
    image = record.load_image() if crf is not None else None
    low, high = confident_regions(record.cams, alpha_low, alpha_high, image=image, crf=crf)
    lut = np.zeros(256, np.uint8)
    lut[1 : record.labels.size + 1] = record.labels + 1
    return lut[low], lut[high]


def _score_maps(record, alpha_low, alpha_high, crf):
    """The low/high score stacks of one record (per-pixel distributions over
    ``[background, *record.labels]``, the CRF's marginals with ``crf``): ``(2, L + 1, H, W)``
    float16."""
    image = record.load_image() if crf is not None else None
    stacks = confident_scores(record.cams, alpha_low, alpha_high, image=image, crf=crf)
    return np.stack(stacks).astype(np.float16)


def _label_stack(record, alpha_low, alpha_high, crf, pooling):
    """One image's label maps as one array, as kept in memory or in ``store``: the value
    maps ``(2, H, W)`` uint8 (``"vote"``) or the score stacks ``(2, L + 1, H, W)`` float16
    (``"mean"``)."""
    if pooling == "mean":
        return _score_maps(record, alpha_low, alpha_high, crf)
    return np.stack(_value_maps(record, alpha_low, alpha_high, crf))


def _sample_maps(stack, labels, pooling):
    """The training sample's maps (see :data:`_LEVELS`) of a :func:`_label_stack`."""
    if pooling != "mean":
        return {"low": stack[0], "high": stack[1]}
    values = [0, *(np.asarray(labels, np.int64).reshape(-1) + 1).tolist()]
    return {f"{level}:{v}": stack[i, c] for i, level in enumerate(_LEVELS) for c, v in enumerate(values)}


def _label_task(image, labels, cams, shape, alpha_low, alpha_high, crf, offsets, pooling="vote"):
    """One image's affinity labels: ``(label stack, cell counts, pair counts)``.

    The stack is :func:`_label_stack`; the counts are the confident
    foreground, background and ignored grid cells and the background-positive,
    foreground-positive and negative pairs. A task of
    :func:`sklearn_psa._parallel.map_images`: it takes the record's arrays, not
    the record, so that a worker never needs the files of a ``store``.
    """
    record = Record(image, labels, np.asarray(cams), shape=shape)
    stack = _label_stack(record, alpha_low, alpha_high, crf, pooling)
    return (stack,) + _label_counts(_sample_maps(stack, record.labels, pooling), offsets, pooling)


def _label_counts(maps, offsets, pooling="vote"):
    """``(cell counts, pair counts)`` of one image's sample maps (see :func:`_label_task`)."""
    grid = _batch_grid_labels({k: np.asarray(v)[None] for k, v in maps.items()}, pooling)[0]
    cells = np.array([np.sum((grid > 0) & (grid != IGNORE_INDEX)), np.sum(grid == 0),
                      np.sum(grid == IGNORE_INDEX)], np.int64)
    pairs = np.array([int(p.sum()) for p in affinity_pairs(grid, offsets)], np.int64)
    return cells, pairs


def _batch_grid_labels(maps, pooling, stride=STRIDE):
    """Label maps on the stride grid of a batch's label maps (``maps``: name ->
    ``(N, H, W)`` numpy arrays, see :data:`_LEVELS`; other names are left alone).

    ``"vote"``: :func:`_grid_labels`. ``"mean"``: each level's score maps, stacked in the
    order of their values (a channel an image lacks is all 0), averaged over each block
    and argmaxed (:func:`~sklearn_psa._affinity_labels.pool_score_stack`; 255 where a
    block holds no score, the padding), then combined as the vote's are.
    """
    if pooling != "mean":
        return _grid_labels(maps["low"], maps["high"], stride)
    pooled = []
    for level in _LEVELS:
        values = sorted(int(k.partition(":")[2]) for k in maps if k.partition(":")[0] == level)
        stack = np.stack([np.asarray(maps[f"{level}:{v}"], np.float32) for v in values], axis=1)
        lut = np.full(256, IGNORE_INDEX, np.uint8)
        lut[: len(values)] = values
        pooled.append(lut[pool_score_stack(stack, stride)])
    n_values = max(int(k.partition(":")[2]) for k in maps if ":" in k) + 1
    return np.stack([combine_confident(lo, hi, np.arange(n_values - 1))
                     for lo, hi in zip(*pooled)])


def _grid_labels(low, high, stride=STRIDE):
    """Label maps on the stride grid from a batch of value maps (padding 255 = no score)."""
    n_values = int(max(low[low != IGNORE_INDEX].max(initial=0), high[high != IGNORE_INDEX].max(initial=0))) + 1
    return np.stack([
        combine_confident(
            pool_index_map(lo, stride, n_values=n_values),
            pool_index_map(hi, stride, n_values=n_values),
            np.arange(n_values - 1),  # values are already class values: identity lookup
        )
        for lo, hi in zip(low, high)
    ])


@training_parameters_doc
class AffinityEstimator(TrainedNetworkMixin, AffinityTransformerMixin, BaseEstimator):
    """Learn pixel affinities from CAM records and add them to the records.

    Read more in docs/method.md (sections 2 and 3).

    Parameters
    ----------
    backbone : str or torch.nn.Module, default="auto"
        A registered backbone name (see :func:`sklearn_psa.nn.available_backbones`)
        or a module (deep-copied).
        ``"auto"`` (with ``pretrained=None`` and no ``backbone_options``) is
        resolved by :func:`sklearn_psa.nn.resolve_backbone`: EfficientNet-Lite0
        with ImageNet weights where ``sklearn-psa[pretrained]`` is installed,
        else ``"tiny"`` from scratch, with a warning.
    pretrained : None, bool or path, default=None
        Backbone weights: None trains from scratch (or from the CAM classifier
        with ``init="cam"``), True loads the installed weights, a path loads a file.
    alpha_low : float, default=4
        Background exponent giving confident foreground (a class wins against
        ``(1 - max_c M_c) ** alpha_low``).
    alpha_high : float, default=32
        Background exponent giving confident background (the background still
        wins against the classes).
    radius : int, default=5
        Pairs of grid cells closer than ``radius`` (on the stride-8 grid) are
        trained and predicted; ``K = len(neighbor_offsets(radius))`` (34 for 5).
    crf : bool or dict, default=True
        Refine both score stacks with the dense CRF before the argmax (the
        paper does); a dict is passed to :func:`sklearn_psa.dense_crf` as options.
        The CRF runs on ``device`` unless the dict names a ``device`` of its own.
    label_pooling : {"vote", "mean"}, default="vote"
        How the confident regions reach the stride-8 grid of the training
        labels. ``"vote"``: the full-resolution argmax maps of both levels (after
        the CRF), each grid cell by majority vote of its pixels; two uint8 maps
        per image. ``"mean"`` (the reference code's): the score stacks of both
        levels (the CRF's soft marginals), as per-pixel distributions, are
        rescaled, cropped and flipped with the image by the training
        augmentation, then averaged over each 8x8 cell and argmaxed; a cell
        with no score (padding outside the image) is ignored. It keeps
        ``2 * (L + 1)`` float16 maps per image (``L`` classes present), in
        memory or in ``store``.
    dropout : float, default=0.0
        Channel dropout (``nn.Dropout2d``) on the backbone's deepest feature
        map before the affinity head, while training only (``transform`` runs
        without it). The reference code's ResNet-38 drops 0.3 and 0.5 in its
        last blocks; 0 adds no dropout layer.
    label_affinity : "auto", affinity estimator or None, default="auto"
        Walk the CAMs over this estimator's affinity before the confident
        labels are drawn from them. ``fit`` fits a clone of it on the records;
        each training image's CAMs, average-pooled to the stride-8 grid, are
        walked ``label_t`` steps with ``label_beta``
        (:func:`~sklearn_psa.random_walk`), upsampled, each class's map divided
        by its maximum, and the labels come from those maps (``alpha_low``,
        ``alpha_high``, the dense CRF) as they would from the CAMs. The walked
        maps cover more of each object than the CAMs, so the training pairs
        do (docs/method.md, section 2). ``"auto"``:
        ``FeatureAffinity(device=device)`` (EfficientNet-Lite0's ImageNet
        features, nothing trained) where its weights are installed
        (``sklearn-psa[pretrained]``), else None. None draws the labels from
        the CAMs, as the paper does. On ``make_shapes`` the walk over
        ``FeatureAffinity`` raised the learned walk's gain over CAM alone from
        +10.5 to +15.4 points (three seeds) and from +6.9 to +13.9 on the hard
        case (docs/benchmarks.md, issue #17).
    label_beta : float, default=8
        The walk's ``beta`` with ``label_affinity`` (unused without).
    label_t : int, default=256
        The walk's number of steps with ``label_affinity`` (unused without).
    init : {"scratch", "cam"}, default="scratch"
        Where the backbone starts when ``pretrained`` is None: ``"scratch"``
        builds ``backbone`` (random weights, or ImageNet weights with
        ``"auto"`` where installed); ``"cam"`` copies the backbone of the CAM
        classifier that made the records (they carry it), whatever
        ``backbone`` says. ``pretrained`` takes precedence.
    backbone_options : dict or None, default=None
        Passed to the backbone factory (e.g. ``{"width": 16, "depth": 2}`` for
        ``"tiny"``). With ``init="cam"`` the CAM classifier's options are used.
    head_widths : tuple of 3 int, default=(64, 128, 256)
        Channels of each level after its 1x1 conv; ``f_aff`` has their sum.
    input_scale : float, default=1.0
        Factor the images are resized by before the backbone (the affinity grid
        stays ``ceil(H/8) x ceil(W/8)``; features are pooled back to it).
    crop_size : int or None, default=128
        Side of the random training crops (a multiple of 8); None uses whole images.
    scale_range : tuple of 2 float, default=(0.9, 1.1)
        Random rescaling of training images before cropping.
    batch_size : int, default=8
    max_epochs : int or "auto", default="auto"
        Training epochs. ``"auto"``: the paper's 8 epochs, or more on small
        training sets, so that training makes at least 1600 SGD steps from
        random weights, 400 from pretrained ones (:func:`auto_epochs`: 64 and
        16 epochs on 200 images, 8 on PASCAL VOC's 10,582). On ``make_shapes``
        (200 images of 128 px) the learned walk gained +0.7 points over CAM
        alone at 200 steps and +10.0 at 1600 with the tiny backbone from
        scratch, +10.9 at 400 steps with EfficientNet-Lite0's ImageNet weights
        (docs/benchmarks.md, issue #17). An int trains exactly that many
        epochs. :attr:`n_epochs_` is what was trained.
    learning_rate : float or "auto", default="auto"
        Base SGD rate (poly decay); the head trains at ``head_lr_mult`` times it
        when the backbone starts from weights (``pretrained`` or ``init="cam"``).
        ``"auto"``: 0.01 when the backbone starts from weights, 0.1 from scratch.
    head_lr_mult : float, default=10.0
    weight_decay : float, default=5e-4
    device : str, default="auto"
        "auto" uses CUDA when available, else the CPU.
    random_state : int, RandomState instance or None, default=None
    verbose : int, default=0
        0: silent; 1: progress bars over the images while ``fit`` derives the
        affinity labels (with the dense CRF when ``crf``), over the training
        steps, and over the images of ``transform`` / ``predict_affinity``,
        each erased when done; 2: the bars stay, one line per stage.
    n_jobs : int or None, default=None
        Processes (or cluster workers) deriving the affinity labels of ``fit``
        (the dense CRF, per image), through joblib: None means 1 unless in a
        ``joblib.parallel_backend`` context (``"dask"`` or ``"ray"`` spread the
        images over a cluster), -1 all cores. Each worker runs torch on one
        thread; a CRF on CUDA runs in this process. The labels are the same as
        with 1, to float rounding (identical where the CRF runs on one thread:
        images below about two megapixels).
    store : str, path or None, default=None
        A folder for the affinities of ``transform``: each image's affinity is
        written there as it is computed (atomically) and the records returned
        hold it memory-mapped (read-only), so memory does not grow with the
        number of images. Affinities already there for the same image, fitted
        network and parameters are not computed again: an interrupted call
        resumes. ``fit`` keeps its training label maps there too (read back
        as training samples them), so a second fit on the same CAMs skips
        the dense CRF. None keeps them in memory.
    {training parameters}

    Attributes
    ----------
    network_ : torch.nn.Module
        The fitted AffinityNet (backbone + head).
    offsets_ : ndarray of shape (K, 2)
        ``neighbor_offsets(radius)``.
    {training attributes}
    n_epochs_ : int
        Epochs trained (``max_epochs``, or what ``"auto"`` chose).
    label_stats_ : dict
        Fractions of training grid cells labelled confident foreground,
        confident background and ignored, and the numbers of pairs per kind.
    n_classes_ : int

    Examples
    --------
    >>> from sklearn_psa import CAMClassifier, AffinityEstimator
    >>> from sklearn_psa.datasets import make_shapes
    >>> X, Y, masks = make_shapes(n_samples=8, image_size=32, random_state=0)
    >>> records = CAMClassifier(max_epochs=1, scales=(1.0,), random_state=0).fit_transform(X, Y)
    >>> aff = AffinityEstimator(max_epochs=1, crf=False, crop_size=32, random_state=0)
    >>> out = aff.fit_transform(records)
    >>> out[0].affinity.shape   # K = 34 offsets on the 4 x 4 grid
    (34, 4, 4)
    """

    _torch_attributes = ("network_",)

    _parameter_constraints = {
        **TrainedNetworkMixin._parameter_constraints,
        "alpha_low": [Interval(numbers.Real, 0, None, closed="neither")],
        "alpha_high": [Interval(numbers.Real, 0, None, closed="neither")],
        "radius": [Interval(numbers.Integral, 2, None, closed="left")],
        "crf": ["boolean", dict],
        "label_pooling": [StrOptions({"vote", "mean"})],
        "dropout": [Interval(numbers.Real, 0, 1, closed="left")],
        "label_affinity": [None, StrOptions({"auto"}), HasMethods(["fit", "transform"])],
        "label_beta": [Interval(numbers.Real, 0, None, closed="neither")],
        "label_t": [Interval(numbers.Integral, 0, None, closed="left")],
        "init": [StrOptions({"scratch", "cam"})],
        "head_widths": [tuple, list],
        "input_scale": [Interval(numbers.Real, 0, None, closed="neither")],
        "scale_range": ["array-like"],
        "max_epochs": [Interval(numbers.Integral, 0, None, closed="left"), StrOptions({"auto"})],
        "head_lr_mult": [Interval(numbers.Real, 0, None, closed="neither")],
        "n_jobs": N_JOBS_CONSTRAINT,
        "store": [str, os.PathLike, None],
    }
    _later_params = {**TrainedNetworkMixin._later_params, "label_pooling": "vote", "dropout": 0.0,
                     "label_affinity": None, "label_beta": 8.0, "label_t": 256}

    def __init__(self, backbone="auto", pretrained=None, alpha_low=4, alpha_high=32, radius=5,
                 crf=True, label_pooling="vote", dropout=0.0, label_affinity="auto",
                 label_beta=8.0, label_t=256, init="scratch",
                 backbone_options=None, head_widths=(64, 128, 256), input_scale=1.0,
                 crop_size=128, scale_range=(0.9, 1.1), batch_size=8,
                 max_epochs="auto", learning_rate="auto", head_lr_mult=10.0, weight_decay=5e-4,
                 device="auto", random_state=None, verbose=0, n_jobs=None,
                 store=None, warm_start=False, checkpoint=None, optimizer="sgd",
                 optimizer_options=None, lr_schedule="poly", callbacks=None, num_workers="auto"):
        keep_params(self, locals())

    # ------------------------------------------------------------------ helpers

    def _check_settings(self):
        """Check the settings that parameter validation cannot (how parameters relate, the
        CRF options); return the scale range. ``PSASegmenter`` calls it before any training."""
        if self.alpha_high < self.alpha_low:
            raise ValueError(
                f"alpha_high ({self.alpha_high}) must be >= alpha_low ({self.alpha_low}): the "
                "high exponent weakens the background to find confident background"
            )
        if self.crop_size is not None and self.crop_size % STRIDE:
            raise ValueError(f"crop_size must be a multiple of {STRIDE}, got {self.crop_size}")
        scale_range = self._checked_scale_range()
        check_crf_options(self.crf)
        self._checked_head_widths()
        return scale_range

    def _checked_head_widths(self):
        try:
            widths = tuple(int(w) for w in np.asarray(self.head_widths).ravel())
        except (TypeError, ValueError):
            widths = ()
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"head_widths must be three positive ints, got {self.head_widths!r}")
        return widths

    def _crf_function(self, device):
        """``(crf(image, scores) -> probs, on_cuda)`` from the ``crf`` parameter.

        ``crf`` is None without a CRF; it is picklable (for the workers of
        ``n_jobs``), runs on ``device`` (the fit's) unless the ``crf`` dict
        names one, and builds each image's lattices once for its two maps;
        ``on_cuda`` says it runs on a GPU, hence in this process.
        """
        options = check_crf_options(self.crf)
        if options is None:
            return None, False
        options, on_cuda = placed_crf_options(options, device)
        return ImageCRF(**options), on_cuda

    def _label_affinity(self):
        """``label_affinity`` with ``"auto"`` resolved (an unfitted estimator, or None)."""
        return resolve_label_affinity(self.label_affinity, self.device)

    def _fitted_label_affinity(self, records):
        """A clone of ``label_affinity`` fitted on ``records`` (None without one)."""
        label_affinity = self._label_affinity()
        return None if label_affinity is None else clone(label_affinity).fit(records)

    def _label_cams(self, records, label_affinity, device, chunk=16):
        """Yield the maps each record's confident labels come from: its CAMs, or with a
        fitted ``label_affinity`` its CAMs walked over that affinity, each class divided by
        its maximum (``chunk`` records' affinities at a time). In a data-parallel fit every
        rank takes every chunk in order (the affinities of a chunk are split over the ranks
        and gathered) and walks all of its records; the labels are then its share's."""
        if label_affinity is None:
            yield from (r.cams for r in records.records)
            return
        for start in range(0, len(records), chunk):
            for r in label_affinity.transform(records[start:start + chunk]).records:
                if not len(r.labels):  # background only: nothing to walk
                    yield r.cams
                    continue
                walked = walk_image_maps(np.asarray(r.cams, np.float32), np.asarray(r.affinity), r.shape,
                                         beta=float(self.label_beta), t=int(self.label_t), device=device)
                yield _max_normalized(walked)

    def _stored_label_maps(self, records, label_affinity=None):
        """The training label maps' place in ``store`` (None without one)."""
        if self.store is None:
            return None
        options = check_crf_options(self.crf)
        if options is not None:
            options.pop("device", None)  # the same maps wherever the CRF runs
        settings = (self.alpha_low, self.alpha_high, options)
        if self.label_pooling != "vote":  # the vote's keys as before the option
            settings += (self.label_pooling,)
        if label_affinity is not None:  # the walk's settings and what its affinity learned
            settings += (float(self.label_beta), int(self.label_t), _fitted_key(label_affinity))
        return _LabelMapStore(self.store, records, settings)

    def _from_cam(self):
        """Whether the backbone starts from the CAM classifier's (``init="cam"``, no ``pretrained``)."""
        return self.init == "cam" and self.pretrained in (None, False)

    def _build_network(self, data):
        from .nn import make_backbone
        from .nn.affinity_head import AffinityNet

        widths = self._checked_head_widths()
        state = None
        if self._from_cam():
            source = getattr(data["records"], "source", None) or {}
            if "state_dict" not in source:
                raise ValueError(
                    "init='cam' needs records made by a fitted CAMClassifier that carry its "
                    "backbone (records.source['state_dict']); these records have none. Use "
                    "init='scratch' or pass pretrained weights."
                )
            import torch

            backbone, pretrained = source.get("backbone", self.backbone), None
            options = dict(source.get("backbone_options") or {})
            state = {k: torch.as_tensor(np.asarray(v)) for k, v in source["state_dict"].items()}
        else:
            backbone, pretrained, options = self._resolved_backbone(warn=True)
            options = dict(options or {})
        bb = make_backbone(backbone, pretrained=pretrained, **options)
        if state is not None:
            from .nn.weights import load_weights

            load_weights(bb, state, source="the CAM classifier's backbone")
            if source.get("pretrained") not in (None, False):
                bb.prepare_pretrained()  # frozen layers, as the CAM classifier's backbone had
        return AffinityNet(bb, widths=widths, input_scale=self.input_scale,
                           dropout=float(self.dropout))

    def _from_weights(self):
        return starts_from_weights(self.backbone, self.pretrained, self.init, self.backbone_options)

    def _rates(self, data):
        from_weights = self._from_weights()
        return self._learning_rate(from_weights), float(self.head_lr_mult) if from_weights else 1.0

    def _desc(self):
        return "AffinityNet"

    def _n_epochs(self, n_samples):
        if self.max_epochs == "auto":
            return auto_epochs(n_samples, self.batch_size, pretrained=self._from_weights())
        return int(self.max_epochs)

    def _data_fingerprint(self, data):
        return [(image_key(r.image), _cams_key(r), r.labels.tolist()) for r in data["records"].records]

    def _training_samples(self, data):
        """The training images with their low/high label maps (the dense CRF's work, per
        image, over ``n_jobs``; value maps or score stacks, by ``label_pooling``), made on
        access; sets ``label_stats_``."""
        records = data["records"]
        crf, on_cuda = self._crf_function(data["device"])
        stats, pairs = np.zeros(3, np.int64), np.zeros(3, np.int64)
        label_affinity = data.get("label_affinity")
        stored = self._stored_label_maps(records, label_affinity)
        todo = [i for i in range(len(records)) if stored is None or not stored.has[i]]
        stage = "AffinityNet labels" + (" (dense CRF)" if crf is not None else "")
        pooling = self.label_pooling
        tasks = ((r.image, r.labels, cams, r.shape, self.alpha_low, self.alpha_high, crf,
                  self.offsets_, pooling)
                 for r, cams in zip((records.records[i] for i in todo),
                                    self._label_cams(records[todo], label_affinity, data["device"])))
        labelled = map_images(_label_task, tasks, n_jobs=self.n_jobs, in_parent=on_cuda,
                              verbose=self.verbose, desc=stage, total=len(records),
                              done=len(records) - len(todo))
        maps = [None] * len(records) if stored is None else stored
        for i, (stack, cells, pair_counts) in zip(todo, labelled):
            if stored is None:
                maps[i] = stack
            else:  # on disk, read back when training samples it
                stored.save(i, stack)
            stats += cells
            pairs += pair_counts
        for i in sorted(set(range(len(records))) - set(todo)):  # found in the store
            counts = _label_counts(_LazySample(records.records[i], stored[i], pooling).maps,
                                   self.offsets_, pooling)
            stats += counts[0]
            pairs += counts[1]
        samples = _Samples(records, maps, pooling)
        total = max(int(stats.sum()), 1)
        self.label_stats_ = {
            "foreground": stats[0] / total, "background": stats[1] / total, "ignored": stats[2] / total,
            "bg_pairs": int(pairs[0]), "fg_pairs": int(pairs[1]), "neg_pairs": int(pairs[2]),
        }
        return samples

    def get_loss(self, net, batch):
        """AffinityNet's loss (docs/method.md, section 3) of ``batch``: the pairs within
        ``radius`` of its label maps (``"low"`` and ``"high"``, or with ``label_pooling="mean"``
        the score maps ``"low:v"`` and ``"high:v"`` of each label value ``v``); see
        :meth:`TrainedNetworkMixin.get_loss <sklearn_psa._base.TrainedNetworkMixin.get_loss>`."""
        import torch

        from .nn.affinity_head import affinity_loss, pairwise_affinity

        feats = net(batch["image"])
        maps = {k: v.cpu().numpy() for k, v in batch.items() if k.partition(":")[0] in _LEVELS}
        grid = _batch_grid_labels(maps, self.label_pooling)
        labels = [np.stack(affinity_pairs(g, self.offsets_)) for g in grid]  # (3, K, h, w) each
        labels = torch.from_numpy(np.stack(labels, axis=1)).to(feats.device)
        aff = pairwise_affinity(feats.float(), self.offsets_)
        loss, _ = affinity_loss(aff, labels[0], labels[1], labels[2])
        return loss

    # ------------------------------------------------------------------ fit

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Train AffinityNet on the confident regions of the records' CAMs.

        Parameters
        ----------
        X : Records
            Output of :meth:`CAMClassifier.fit_transform` (training images with
            their CAMs).
        y : ignored
            Present for pipelines (the labels come with the records).

        Returns
        -------
        self : AffinityEstimator
        """
        records = check_records(X, name="X")
        self._check_settings()
        self.offsets_ = np.asarray(neighbor_offsets(self.radius))
        self._fit_network({"records": records, "n_classes": records.n_classes,
                           "label_affinity": self._fitted_label_affinity(records)})
        self.n_classes_ = records.n_classes
        self.n_epochs_ = self._n_epochs(len(records))
        return self

    def label_records(self, X):
        """The records whose CAMs are the maps ``fit`` draws its confident labels from.

        Without a label walk (``label_affinity`` None, or ``"auto"`` without the
        ImageNet weights) they are ``X`` itself; with one, each record's CAMs are
        replaced by its walked class maps, each divided by its maximum, with
        ``label_affinity`` fitted on ``X`` as ``fit`` fits it (pass the training
        records to see the labels it trained on). Nothing else is needed:
        ``sklearn_psa.metrics.affinity_report(est.label_records(records), masks,
        alpha_low=est.alpha_low, alpha_high=est.alpha_high, crf=est.crf)`` says
        how right the training labels are.

        Parameters
        ----------
        X : Records
            Records with CAMs.

        Returns
        -------
        records : Records
        """
        from dataclasses import replace

        self._validate_params()
        records = check_records(X, name="X")
        label_affinity = self._fitted_label_affinity(records)
        if label_affinity is None:
            return records
        maps = self._label_cams(records, label_affinity, resolve_device(self.device))
        return Records([replace(r, cams=m) for r, m in zip(records.records, maps)], records.n_classes,
                       records.source, from_array=records.from_array)

    def fit_transform(self, X, y=None, **fit_params):
        """Fit, then add each training image's affinity to its record.

        In a data-parallel fit (docs/distributed.md) each process computes the
        affinities of its share of the records and every process returns all.

        Parameters
        ----------
        X : Records
            Output of :meth:`CAMClassifier.fit_transform`.
        y : ignored

        Returns
        -------
        records : Records
            As :meth:`transform` returns them.
        """
        self.fit(X, y, **fit_params)
        with self._split_over_ranks():
            return self.transform(X)

    @property
    def train_result_(self):
        """Deprecated: the loss history and epoch times; use :attr:`history_`."""
        warnings.warn("train_result_ is deprecated: use history_ (one dict per epoch), loss_curve_ "
                      "and epoch_seconds_", FutureWarning, stacklevel=2)
        return TrainResult(history=self.loss_curve_, epoch_seconds=self.epoch_seconds_,
                           start_epoch=self.n_iter_ - len(self.epoch_seconds_), records=self.history_)

    # ------------------------------------------------------------------ transform

    def _store_fitted(self):
        return (self._network("network_"),)

    def _affinity_features(self, records):
        """Yield ``(indices, f_aff)`` batch by batch: AffinityNet's features."""
        device = resolve_device(self.device)
        net = self._network("network_", device)
        shapes = [r.shape for r in records.records]
        for idx in iter_image_batches(shapes, max(1, int(self.batch_size))):
            yield idx, net(images_to_tensor([records[i].load_image() for i in idx], device))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags


class _LazySample:
    """A training sample whose image loads on access (paths stay paths until then), and
    whose label maps too when they are in a store (``stack`` a :class:`StoredArray`; else
    the :func:`_label_stack` itself)."""

    __slots__ = ("record", "_stack", "pooling", "targets")

    def __init__(self, record, stack, pooling="vote"):
        self.record = record
        self._stack = stack
        self.pooling = pooling
        self.targets = {}

    @property
    def image(self):
        return self.record.load_image()

    @property
    def maps(self):
        stack = self._stack
        if isinstance(stack, StoredArray):
            stack = np.load(stack.path, allow_pickle=False)
        return _sample_maps(stack, self.record.labels, self.pooling)


class _Samples(Sequence):
    """The training samples of ``fit``, made on access from the records and their label
    maps (``maps[i]``: a :func:`_label_stack`, or a :class:`StoredArray` of the store), so
    that training holds the samples of one batch, not one object per image."""

    def __init__(self, records, maps, pooling="vote"):
        self.records = records
        self.maps = maps
        self.pooling = pooling

    def __len__(self):
        return len(self.records)

    def shape(self, i):
        """``(H, W)`` of image ``i`` (without reading it)."""
        return tuple(self.records.records[i].shape)

    def __getitem__(self, i):
        return _LazySample(self.records.records[i], self.maps[i], self.pooling)


def _max_normalized(maps):
    """Each map of ``maps`` (L, H, W) divided by its maximum (a map with none above 0 stays 0),
    clipped to [0, 1], float32."""
    maps = np.asarray(maps, np.float32)
    peak = maps.reshape(len(maps), -1).max(axis=1) if maps.size else np.zeros(len(maps), np.float32)
    out = maps / np.where(peak > 0, peak, 1.0)[:, None, None]
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _fitted_key(estimator):
    """What identifies a fitted ``label_affinity`` (a key of the stored label maps)."""
    fitted = estimator._store_fitted() if hasattr(estimator, "_store_fitted") else (joblib.hash(estimator),)
    return model_key(estimator, fitted)


def _cams_key(record):
    """What identifies a record's CAMs: a stored array's file, else the hash of its values."""
    cams = record.__dict__["cams"]
    return getattr(cams, "path", None) or joblib.hash(np.ascontiguousarray(cams))


class _LabelMapStore:
    """The affinity label maps of ``fit`` in a store: a :func:`_label_stack` per image
    (``(2, H, W)`` uint8, or ``(2, L + 1, H, W)`` float16 with ``label_pooling="mean"``),
    keyed by the image, its CAMs and classes, and the label settings, ``label_pooling``
    among them (so a second fit, e.g. with other training parameters, or a resumed one,
    skips the dense CRF)."""

    def __init__(self, folder, records, settings):
        self.store = ArrayStore(folder)
        self.keys = [joblib.hash((image_key(r.image), _cams_key(r), r.labels.tolist(), settings))
                     for r in records.records]
        self.has = [self.store.has("affinity-labels", key) for key in self.keys]

    def save(self, i, stack):
        self.store.save("affinity-labels", self.keys[i], stack)

    def __getitem__(self, i):
        """The maps of image ``i``, as a reference to their file."""
        return self.store.reference("affinity-labels", self.keys[i])
