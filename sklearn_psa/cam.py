"""CAMClassifier: a multilabel image classifier whose transform gives class activation maps."""

import numbers
import os

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from ._base import TrainedNetworkMixin, training_parameters_doc
from ._cam_maps import cam_records, checked_scales, multiscale_cams, sigmoid
from ._training import ImageSamples
from ._validation import (check_classes, check_images, check_targets, class_names_of,
                          keep_params)

__all__ = ["CAMClassifier"]


@training_parameters_doc
class CAMClassifier(TrainedNetworkMixin, ClassifierMixin, TransformerMixin, BaseEstimator):
    """Multilabel image classifier producing class activation maps (CAMs).

    The first step of AffinityNet (Ahn & Kwak, CVPR 2018, section 3.1): a
    backbone at output stride 8 and a 1x1 convolution without bias, trained
    with global average pooling and the multilabel soft-margin loss on
    image-level labels. The CAM of class ``c`` is ``ReLU(w_c . f(x, y))``; at
    inference every scale in ``scales`` (and its horizontal flip) goes through
    the network, the maps are upsampled to the image size and summed, and each
    class is divided by its maximum (+1e-5), so CAMs lie in [0, 1].

    Read more in docs/method.md (section 1).

    Parameters
    ----------
    backbone : str or torch.nn.Module, default="auto"
        A name from :func:`sklearn_psa.nn.available_backbones` (``"tiny"``,
        ``"resnet50"``, ``"resnet38d"``, ``"efficientnet_lite0"`` ...) or a
        module returning feature maps (see :func:`sklearn_psa.nn.make_backbone`).
        ``"auto"`` (with ``pretrained=None`` and no ``backbone_options``) is
        resolved by :func:`sklearn_psa.nn.resolve_backbone`: EfficientNet-Lite0
        with ImageNet weights where ``sklearn-psa[pretrained]`` is installed,
        else ``"tiny"`` from scratch, with a warning.
    pretrained : None, bool or path, default=None
        Backbone weights: None/False random, True the installed weights (where
        the backbone has a weights package), or a path to a weight file. With
        pretrained weights the classifier layer learns at 10x the rate, as in
        the reference code.
    scales : tuple of float, default=(1.0, 0.5, 1.5, 2.0)
        Image scales of CAM inference (the paper's).
    flip : bool, default=True
        Also run each scale horizontally flipped at inference.
    threshold : float, default=0.5
        Probability above which :meth:`predict` (and :meth:`transform`) call a
        class present.
    crop_size : int or None, default=112
        Side of the random training crops; None trains on whole images.
    scale_range : tuple of 2 float, default=(1.0, 1.0)
        Random rescaling of training images before cropping (uniform in the
        range); the reference code rescales by about 0.5-1.0 (long side 256 to
        512 px). (1, 1) keeps the images' size.
    batch_size : int, default=16
        Training batch size, and the most images per inference batch.
    max_epochs : int, default=50
        Training epochs.
    learning_rate : float or "auto", default="auto"
        Base SGD learning rate, decayed as ``(1 - step / max_step) ** 0.9``.
        ``"auto"``: 0.01 when the backbone starts from weights (ImageNet or a
        file), 0.1 when it trains from scratch.
    weight_decay : float, default=1e-4
        L2 penalty on convolution weights.
    device : str or torch.device, default="auto"
        ``"auto"`` uses CUDA when available, else the CPU.
    random_state : int, RandomState instance or None, default=None
        Seeds the initial weights, data order and augmentation: the same
        value gives the same fitted weights on the CPU.
    verbose : int, default=0
        0: silent; 1: progress bars over the training steps and over the
        images of CAM inference (``transform``, ``compute_cams``, the CAMs of
        ``fit_transform``, ``predict``), each erased when done; 2: the bars
        stay, one line per stage.
    backbone_options : dict or None, default=None
        Options for the named backbone, e.g. ``{"width": 16, "depth": 2,
        "dilation": 1}`` for ``"tiny"``, whose depth and dilation at stride 8
        set its receptive field (27 + 16 * depth * dilation pixels; without
        ImageNet weights it decides where the CAMs land, see
        ``benchmarks/bench_cam.py``).
    store : str, path or None, default=None
        A folder for the CAMs of ``transform``, ``fit_transform`` and
        ``compute_cams``: each image's CAMs are written there as they are
        computed (atomically) and the records returned hold them
        memory-mapped (read-only), so memory does not grow with the number
        of images. CAMs already there for the same image, fitted network,
        parameters (``classes``, names only, aside) and classes asked for are
        not computed again: an interrupted call resumes. Records pickle (and ``Pipeline(memory=...)`` caches them) as
        references to these files. None keeps the CAMs in memory.
    classes : sequence of str or None, default=None
        Names of the class columns, in order (column ``j`` is mask value
        ``j + 1``; for a VOC set, ``load_voc(...).class_names``). Their
        number fixes the number of classes, also when ``y`` holds masks.
        None: the columns of ``y`` when it is a pandas DataFrame, else
        ``"class 1"``, ``"class 2"``, ... Only names: training ignores them.
    dropout : float, default=0.0
        Channel dropout (``nn.Dropout2d``: whole feature maps zeroed with this
        probability) on the backbone's last feature map before the
        classifier, while training only (CAMs and scores are computed without
        it). The reference code uses 0.5 on ResNet-38; 0 adds no dropout layer.
    {training parameters}

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class columns ``0 .. n_classes - 1`` (column ``j`` is mask value ``j + 1``).
    class_names_ : ndarray of shape (n_classes,), object
        Name of each class column (see ``classes``), for reports and plots:
        ``segmentation_report(..., class_names=cam.class_names_)``,
        ``plot_cams(record, class_names=cam.class_names_)``.
    n_classes_ : int
    network_ : sklearn_psa.nn.heads.Network
        The trained network (backbone + :class:`~sklearn_psa.nn.heads.CAMHead`).
    {training attributes}

    See Also
    --------
    sklearn_psa.AffinityEstimator : learns affinities from the CAMs of :meth:`fit_transform`.
    sklearn_psa.plotting.plot_cams : CAM heatmaps over the image.

    Notes
    -----
    With ``backbone="tiny"`` an epoch of 160 128x128
    :func:`~sklearn_psa.datasets.make_shapes` images takes about 1 s on two
    CPU cores (the default 50 epochs about a minute); ``"auto"``, which is
    EfficientNet-Lite0 with ImageNet weights where they are installed, about
    five times as long (docs/benchmarks.md). The reference code
    (``train_cls.py``, README) trains ResNet-38 from ImageNet weights at
    ``crop_size=448``, ``learning_rate=0.1``, ``batch_size=16``,
    ``max_epochs=15``, ``weight_decay=5e-4``, polynomial
    decay with power 0.9, 2x the rate on biases, 10x (20x for biases) on the
    new classifier, BatchNorm and the first blocks frozen, on images whose
    long side is rescaled to 256..512 and colour-jittered (0.3, hue 0.1); its
    optimizer has effectively no momentum (the weight decay is passed where
    SGD expects the momentum). Here biases get the base rate and momentum is 0.9;
    ``optimizer_options={"momentum": 0.0}`` trains without it, as the reference did.

    Examples
    --------
    >>> from sklearn_psa import CAMClassifier
    >>> from sklearn_psa.datasets import make_shapes
    >>> X, Y, masks = make_shapes(24, image_size=48, random_state=0)
    >>> cam = CAMClassifier(max_epochs=2, crop_size=None, scales=(1.0,),
    ...                     device="cpu", random_state=0).fit(X, Y)
    >>> cam.predict_proba(X[:2]).shape
    (2, 4)
    >>> records = cam.fit_transform(X, Y)  # CAMs of the true classes
    >>> records[0].cams.shape == (int(Y[0].sum()), 48, 48)
    True
    """

    _torch_attributes = ("network_",)

    _parameter_constraints = {
        **TrainedNetworkMixin._parameter_constraints,
        "scales": ["array-like"],
        "scale_range": ["array-like"],
        "flip": ["boolean"],
        "threshold": [Interval(numbers.Real, 0, 1, closed="both")],
        "store": [str, os.PathLike, None],
        "classes": [None, "array-like"],
        "dropout": [Interval(numbers.Real, 0, 1, closed="left")],
    }
    _later_params = {**TrainedNetworkMixin._later_params, "dropout": 0.0}
    _fingerprint_ignores = ("threshold", "scales", "flip")

    def __init__(
        self,
        backbone="auto",
        pretrained=None,
        scales=(1.0, 0.5, 1.5, 2.0),
        flip=True,
        threshold=0.5,
        crop_size=112,
        scale_range=(1.0, 1.0),
        batch_size=16,
        max_epochs=50,
        learning_rate="auto",
        weight_decay=1e-4,
        device="auto",
        random_state=None,
        verbose=0,
        backbone_options=None,
        warm_start=False,
        checkpoint=None,
        store=None,
        classes=None,
        optimizer="sgd",
        optimizer_options=None,
        lr_schedule="poly",
        callbacks=None,
        num_workers="auto",
        dropout=0.0,
    ):
        keep_params(self, locals())

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        tags.target_tags.required = True
        tags.non_deterministic = self.random_state is None
        return tags

    # ------------------------------------------------------------------ fitting

    def _checked_scales(self):
        return checked_scales(self.scales)

    def _check_settings(self):
        self._checked_scales()
        self._checked_scale_range()

    def _build_network(self, data):
        from .nn import make_backbone
        from .nn.heads import CAMHead, Network

        backbone = make_backbone(self.backbone, pretrained=self.pretrained, **(self.backbone_options or {}))
        return Network(backbone, CAMHead(backbone.out_channels[2], data["n_classes"],
                                         dropout=float(self.dropout)))

    def _training_samples(self, data):
        return ImageSamples(data["images"], targets={"labels": data["labels"].astype(np.float32)})

    def get_loss(self, net, batch):
        """The multilabel soft-margin loss of the scores of ``batch["image"]`` against
        ``batch["labels"]`` (the ``(N, n_classes)`` 0/1 indicator); see
        :meth:`TrainedNetworkMixin.get_loss <sklearn_psa._base.TrainedNetworkMixin.get_loss>`."""
        from torch.nn import functional as F

        return F.multilabel_soft_margin_loss(net(batch["image"]).float(), batch["labels"])

    def _rates(self, data):
        pretrained = self._resolved_backbone()[1] not in (None, False)
        return self._learning_rate(pretrained), 10.0 if pretrained else 1.0

    def _data_fingerprint(self, data):
        import joblib

        return [s if isinstance(s, str) else joblib.hash(s) for s in data["images"].sources], data["labels"]

    def _check_fit_input(self, X, y):
        """``(images, labels, class names)`` of ``fit``'s ``X`` and ``y``."""
        images = check_images(X)
        classes = check_classes(self.classes)
        targets = check_targets(y, len(images), shapes=images.shapes,
                                n_classes=None if classes is None else len(classes))
        return images, targets.labels, class_names_of(classes, targets.labels.shape[1], y)

    def _fit(self, images, labels, class_names):
        self._checked_scales()
        if not labels.any():
            raise ValueError(
                f"y marks no class in any of the {labels.shape[0]} images: the CAM classifier "
                "learns the classes from the images that contain them, so at least one image "
                "must contain one"
            )
        n_classes = labels.shape[1]
        self._fit_network({"images": images, "labels": labels, "n_classes": n_classes})
        self.classes_ = np.arange(n_classes)
        self.class_names_ = class_names
        self.n_classes_ = n_classes
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Train the classifier on images and image-level labels.

        Parameters
        ----------
        X : sequence of images or paths, or ndarray of shape (n, H, W, 3)
        y : ndarray of shape (n, n_classes) or sequence of (H, W) masks
            0/1 indicator of the classes present, or masks from which it is
            derived (only the classes present are used).

        Returns
        -------
        self : CAMClassifier
        """
        return self._fit(*self._check_fit_input(X, y))

    @_fit_context(prefer_skip_nested_validation=True)
    def fit_transform(self, X, y, **fit_params):
        """Fit, then return the CAMs of the training images masked by their TRUE labels.

        As in the paper, the CAMs that seed the affinity labels are those of
        the classes known to be present, not of the predicted ones. In a
        data-parallel fit (docs/distributed.md) each process computes the
        CAMs of its share of the images and every process returns all.

        Parameters
        ----------
        X : sequence of images or paths, or ndarray of shape (n, H, W, 3)
        y : ndarray of shape (n, n_classes) or sequence of (H, W) masks

        Returns
        -------
        records : sklearn_psa.records.Records
        """
        images, labels, class_names = self._check_fit_input(X, y)
        self._fit(images, labels, class_names)
        with self._split_over_ranks():
            return self._records(images, labels)

    # ------------------------------------------------------------------ inference

    def _run(self, images, labels=None, cams=True, emit=None, done=0, net=None):
        """Logits (n, C) and, when ``cams``, per-image CAM arrays of the classes in ``labels``.

        ``labels`` None means the predicted classes. With ``emit``, each image's
        ``(present, cams)`` goes to ``emit(i, present, cams)`` as it is computed
        and is not kept; ``done`` images computed earlier count in the progress bar.
        ``net``: the network on its inference device, where the caller has it
        already (None: ``self._network()``).
        """
        return multiscale_cams(
            self._network() if net is None else net, images, n_classes=self.n_classes_,
            scales=self._checked_scales() if cams else (1.0,), flip=self.flip,
            threshold=self.threshold, batch_size=self.batch_size, verbose=self.verbose,
            desc="CAMClassifier " + ("CAMs" if cams else "scores"), labels=labels, cams=cams,
            emit=emit, done=done)

    def _records(self, images, labels=None):
        check_is_fitted(self)
        net = self._network()  # the device resolved once per call
        # what a later step may start from (AffinityEstimator(init="cam")): the
        # fitted backbone, as numpy arrays so that the records hash stably
        backbone, pretrained, options = self._resolved_backbone()
        source = {
            "backbone": backbone,
            "backbone_options": dict(options or {}),
            "pretrained": pretrained,
            "state_dict": net.backbone.state_dict(),
        }
        return cam_records(self, net, images, labels, source=source,
                           run=lambda imgs, labs, **kw: self._run(imgs, labs, net=net, **kw))

    def decision_function(self, X):
        """Class scores (logits) of the whole images at scale 1.

        Parameters
        ----------
        X : sequence of images or paths, or ndarray of shape (n, H, W, 3)

        Returns
        -------
        scores : ndarray of shape (n, n_classes)
        """
        check_is_fitted(self)
        images = check_images(X)
        return self._run(images, cams=False)[0]

    def predict_proba(self, X):
        """Probability of each class being present (sigmoid of the scores).

        Returns
        -------
        proba : ndarray of shape (n, n_classes)
        """
        return sigmoid(self.decision_function(X))

    def predict(self, X):
        """Image-level labels: 1 where ``predict_proba >= threshold``.

        Returns
        -------
        y : ndarray of shape (n, n_classes), int
        """
        return (self.predict_proba(X) >= self.threshold).astype(np.int64)

    def transform(self, X):
        """CAMs of the predicted classes.

        Parameters
        ----------
        X : sequence of images or paths, or ndarray of shape (n, H, W, 3)

        Returns
        -------
        records : sklearn_psa.records.Records
            One record per image: the image (or its path), the classes with
            ``predict_proba >= threshold`` and their CAMs, float32
            ``(L, H, W)`` in [0, 1] at the image's size.
        """
        return self.compute_cams(X)

    def compute_cams(self, X, y=None):
        """CAMs of the classes given in ``y``, or of the predicted ones when ``y`` is None.

        ``compute_cams(X, y)`` on the training images gives the CAMs
        :meth:`fit_transform` returns, without training again (e.g. to
        evaluate CAMs against masks, as the paper does).

        Parameters
        ----------
        X : sequence of images or paths, or ndarray of shape (n, H, W, 3)
        y : ndarray of shape (n, n_classes) or sequence of (H, W) masks, optional
            The classes whose CAMs to keep (masks: the classes present).

        Returns
        -------
        records : sklearn_psa.records.Records
        """
        check_is_fitted(self)
        images = check_images(X)
        labels = None
        if y is not None:
            labels = check_targets(y, len(images), n_classes=self.n_classes_, shapes=images.shapes).labels
        return self._records(images, labels)

    def score(self, X, y, sample_weight=None):
        """Subset accuracy of :meth:`predict` (as scikit-learn's multilabel classifiers).

        ``y`` may be an indicator matrix or masks (their classes present).
        """
        from sklearn.metrics import accuracy_score

        images = check_images(X)
        labels = check_targets(y, len(images), n_classes=self.n_classes_).labels
        return accuracy_score(labels, self.predict(images), sample_weight=sample_weight)
