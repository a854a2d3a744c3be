"""ClassifierCAM: class activation maps from a classifier trained elsewhere, with no training."""

import copy
import numbers
import os

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from ._cam_maps import cam_records, checked_scales, multiscale_cams, sigmoid
from ._torch_estimator import TorchEstimatorMixin, device_type, images_to_tensor, module_type
from ._validation import check_classes, check_images, check_targets, class_names_of, keep_params

__all__ = ["ClassifierCAM"]


class ClassifierCAM(TorchEstimatorMixin, TransformerMixin, BaseEstimator):
    """Class activation maps from a classifier you already trained, without refitting it.

    Any ``torch.nn.Module`` whose features feed a global average pooling and a
    linear layer (a torchvision ResNet, say: ``feature_layer="layer4"``,
    ``linear_layer="fc"``) gives CAMs ``M_c = ReLU(w_c . f(x, y))`` as the
    paper's (Ahn & Kwak, CVPR 2018, section 3.1): ``f`` the feature layer's
    output, ``w_c`` the linear layer's row of class ``c`` (its bias left
    out), at every scale of ``scales`` and flipped, upsampled, summed and
    divided by each class's maximum, as :class:`~sklearn_psa.CAMClassifier`
    does. :meth:`transform` returns the same records as
    ``CAMClassifier.transform``, so the result feeds
    :class:`~sklearn_psa.AffinityEstimator` (``init="scratch"``) and
    :class:`~sklearn_psa.RandomWalkRefiner`, in a Pipeline too.

    Nothing is trained: :meth:`fit` copies the module, checks the two layers
    on the first image and records the number of classes (the linear layer's
    outputs). The classifier is taken to be multilabel, like the paper's:
    :meth:`transform` keeps the classes whose sigmoid of the logit reaches
    ``threshold``; ``fit_transform(X, y)`` keeps the classes ``y`` says are
    present (the training images' CAMs, as the paper uses).

    Parameters
    ----------
    module : torch.nn.Module
        The trained classifier; its ``forward`` takes a float ``(N, 3, H, W)``
        batch normalised as ``(x / 255 - input_mean) / input_std``. Not
        modified (a copy is used).
    feature_layer : str
        Name of the submodule whose output, an ``(N, C, h, w)`` map, the
        classifier pools (``module.get_submodule`` names, e.g. ``"layer4"``).
    linear_layer : str
        Name of the ``nn.Linear`` (``C`` inputs, one output per class) fed by
        the pooled features (e.g. ``"fc"``).
    input_mean, input_std : tuple of 3 float, default=ImageNet's
        Per-channel normalisation the classifier was trained with, on the
        0..1 scale.
    scales : tuple of float, default=(1.0, 0.5, 1.5, 2.0)
        Image scales of the CAMs (the paper's).
    flip : bool, default=True
        Also take each scale horizontally flipped.
    threshold : float, default=0.5
        Sigmoid score from which a class counts as present in :meth:`transform`.
    batch_size : int, default=16
        Most images per inference batch.
    device : str or torch.device, default="auto"
        ``"auto"`` uses CUDA when available, else the CPU.
    verbose : int, default=0
        Progress bar over the images when > 0.
    classes : sequence of str or None, default=None
        Names of the class columns (column ``j`` is mask value ``j + 1``);
        None: ``"class 1"``, ``"class 2"``, ...
    store : str, path or None, default=None
        A folder for the CAMs of ``transform`` and ``fit_transform``, as
        ``CAMClassifier``'s ``store``: each image's CAMs are written there as
        they are computed and the records hold them memory-mapped; CAMs
        already there for the same image, classifier weights, parameters
        (``classes`` aside) and classes asked for are not computed again.
        None keeps the CAMs in memory.

    Attributes
    ----------
    network_ : torch.nn.Module
        The copy of ``module`` with the hook that reads the features.
    n_classes_ : int
        Outputs of the linear layer.
    classes_ : ndarray of shape (n_classes,)
        Class columns ``0 .. n_classes - 1``.
    class_names_ : ndarray of shape (n_classes,), object

    See Also
    --------
    sklearn_psa.CAMClassifier : trains the classifier itself.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sklearn_psa import ClassifierCAM
    >>> class Net(nn.Module):  # features, global pooling, a linear layer
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    ...         self.fc = nn.Linear(8, 2)
    ...     def forward(self, x):
    ...         return self.fc(self.body(x).mean(dim=(2, 3)))
    >>> X = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    >>> cam = ClassifierCAM(Net(), feature_layer="body", linear_layer="fc", device="cpu")
    >>> records = cam.fit_transform(X, np.array([[1, 0], [0, 1], [1, 1]]))
    >>> records[2].labels, records[2].cams.shape
    (array([0, 1]), (2, 16, 16))
    """

    _torch_attributes = ("network_",)

    _parameter_constraints = {
        "module": [module_type()],
        "feature_layer": [str],
        "linear_layer": [str],
        "input_mean": ["array-like"],
        "input_std": ["array-like"],
        "scales": ["array-like"],
        "flip": ["boolean"],
        "threshold": [Interval(numbers.Real, 0, 1, closed="both")],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "device": [str, device_type()],
        "verbose": ["verbose"],
        "classes": [None, "array-like"],
        "store": [str, os.PathLike, None],
    }

    def __init__(self, module, feature_layer, linear_layer, *,
                 input_mean=(0.485, 0.456, 0.406), input_std=(0.229, 0.224, 0.225),
                 scales=(1.0, 0.5, 1.5, 2.0), flip=True, threshold=0.5, batch_size=16,
                 device="auto", verbose=0, classes=None, store=None):
        keep_params(self, locals())

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.non_deterministic = False
        return tags

    def _checked_normalisation(self):
        out = []
        for name in ("input_mean", "input_std"):
            value = np.asarray(getattr(self, name), dtype=float).ravel()
            if value.shape != (3,) or not np.all(np.isfinite(value)):
                raise ValueError(f"{name} must be 3 finite numbers (R, G, B), got "
                                 f"{getattr(self, name)!r}")
            out.append(tuple(float(v) for v in value))
        if min(out[1]) <= 0:
            raise ValueError(f"input_std must be positive, got {self.input_std!r}")
        return out

    def _submodule(self, name, what):
        try:
            return self.module.get_submodule(name)
        except AttributeError:
            names = [n for n, _ in self.module.named_modules() if n]
            shown = ", ".join(repr(n) for n in names[:12]) + (", ..." if len(names) > 12 else "")
            raise ValueError(
                f"{what}={name!r}: the module has no such submodule; its submodules are {shown}"
            ) from None

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Check the classifier's layers on the first image; nothing is trained.

        Parameters
        ----------
        X : sequence of images or paths, or ndarray of shape (n, H, W, 3)
        y : ndarray of shape (n, n_classes) or sequence of masks, optional
            Checked against the number of classes when given.

        Returns
        -------
        self : ClassifierCAM
        """
        self._fit(check_images(X), y)
        return self

    def _fit(self, images, y):
        from torch import nn

        checked_scales(self.scales)
        mean, std = self._checked_normalisation()
        self._submodule(self.feature_layer, "feature_layer")
        linear = self._submodule(self.linear_layer, "linear_layer")
        if not isinstance(linear, nn.Linear):
            raise ValueError(
                f"linear_layer={self.linear_layer!r} is a {type(linear).__name__}: expected the "
                "nn.Linear that maps the pooled features to one score per class"
            )
        n_classes = linear.out_features
        classes = check_classes(self.classes)
        labels = None
        if y is not None:
            labels = check_targets(y, len(images), n_classes=n_classes,
                                   shapes=images.shapes).labels
        self.class_names_ = class_names_of(classes, n_classes, y)
        from .nn.heads import HookedClassifier

        net = HookedClassifier(copy.deepcopy(self.module), self.feature_layer, self.linear_layer,
                               mean, std)
        net.eval()
        self.network_ = net
        self.n_classes_ = n_classes
        self.classes_ = np.arange(n_classes)
        self._check_features(images, linear.in_features)
        return labels

    def _check_features(self, images, in_features):
        """Run the first image through: the feature map must have the linear layer's inputs."""
        import torch

        net = self._network()
        device = next(net.parameters()).device
        with torch.inference_mode():
            (feats,) = net.features(images_to_tensor([images[0]], device))
        if feats.shape[1] != in_features:
            raise ValueError(
                f"feature_layer={self.feature_layer!r} gives {feats.shape[1]} channels but "
                f"linear_layer={self.linear_layer!r} takes {in_features} inputs: name the layer "
                "whose output the classifier pools"
            )

    def _records(self, images, labels=None):
        net = self._network()  # the device resolved once per call

        def run(images, labels, emit=None, done=0):
            return multiscale_cams(
                net, images, n_classes=self.n_classes_,
                scales=checked_scales(self.scales), flip=self.flip, threshold=self.threshold,
                batch_size=self.batch_size, verbose=self.verbose, desc="ClassifierCAM CAMs",
                labels=labels, emit=emit, done=done)

        return cam_records(self, net, images, labels, run)

    def transform(self, X):
        """CAMs of the classes the classifier finds in each image.

        Parameters
        ----------
        X : sequence of images or paths, or ndarray of shape (n, H, W, 3)

        Returns
        -------
        records : sklearn_psa.records.Records
            One record per image: the classes whose sigmoid score reaches
            ``threshold`` and their CAMs, float32 ``(L, H, W)`` in [0, 1].
        """
        check_is_fitted(self, "network_")
        return self._records(check_images(X))

    @_fit_context(prefer_skip_nested_validation=True)
    def fit_transform(self, X, y=None, **fit_params):
        """Fit, then the CAMs of the classes ``y`` marks present (predicted ones without ``y``).

        Parameters
        ----------
        X : sequence of images or paths, or ndarray of shape (n, H, W, 3)
        y : ndarray of shape (n, n_classes) or sequence of masks, optional

        Returns
        -------
        records : sklearn_psa.records.Records
        """
        images = check_images(X)
        labels = self._fit(images, y)
        return self._records(images, labels)

    def predict_proba(self, X):
        """Sigmoid of the classifier's scores at scale 1: its linear layer on the average-pooled
        features (its own logits where it pools by averaging, as the CAMs assume).

        Parameters
        ----------
        X : sequence of images or paths, or ndarray of shape (n, H, W, 3)

        Returns
        -------
        proba : ndarray of shape (n, n_classes)
        """
        check_is_fitted(self, "network_")
        images = check_images(X)
        logits, _ = multiscale_cams(
            self._network(), images, n_classes=self.n_classes_, scales=(1.0,), flip=False,
            threshold=self.threshold, batch_size=self.batch_size, verbose=self.verbose,
            desc="ClassifierCAM scores", cams=False)
        return sigmoid(logits)
