"""The base of the estimators that train a network: shared parameters, the fit recipe, hooks.

:class:`TrainedNetworkMixin` owns what :class:`~sklearn_psa.CAMClassifier`,
:class:`~sklearn_psa.AffinityEstimator` and :class:`~sklearn_psa.PSASegmenter`'s
segmentation network share: the training parameters and their constraints
(which an estimator merges with its own, as scikit-learn's KMeans family
does), and :meth:`~TrainedNetworkMixin._fit_network`, the one fit recipe::

    device, seed <- device, random_state
    net          <- a copy of network_ (warm_start), else _build_network(data) under seeded(seed)
    samples      <- _training_samples(data)
    train(net, samples, get_loss, optimizer, lr_schedule, callbacks, checkpoint, ...)
    network_, history_

Under ``torchrun`` (or in a process group the user initialised) the recipe
trains data-parallel (:mod:`sklearn_psa._distributed`, docs/distributed.md):
the device is the rank's, the seed rank 0's, and every rank ends with the same
``network_`` and ``history_``.

An estimator describes its data in a dict ``data`` (its own keys, plus
``"n_classes"``; the recipe adds the resolved ``"device"`` and ``"seed"``) and
fills in the hooks, in the way skorch's ``NeuralNet`` has
``initialize_module``, ``get_dataset`` and ``get_loss``:

- ``_build_network(data)``: the untrained network (``backbone`` and ``head``
  attributes), built under the fit's seed;
- ``_training_samples(data)``: a sequence of :class:`~sklearn_psa._training.Sample`;
- ``get_loss(net, batch)``: the training objective (public: override it for a
  custom loss);
- ``_rates(data)``: ``(learning_rate, head_lr_mult)``;
- ``_data_fingerprint(data)``: what identifies the training data in a checkpoint.
"""

import copy
import numbers
import os

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions

from ._torch_estimator import TorchEstimatorMixin, device_type, module_type
from . import _distributed, _training
from ._training import Augmentation, TrainConfig, optimizer_names, seeded, weights_hash
from .callbacks import Callback

__all__ = ["TrainedNetworkMixin", "training_parameters_doc"]



#: The entries of the parameters that the base gives every estimator, for their docstrings.
_TRAINING_PARAMETERS = """
    optimizer : str, torch optimizer class or callable, default="sgd"
        The optimizer: a lower-case name of a ``torch.optim`` class
        (``"sgd"``, ``"adamw"`` ...), a ``torch.optim.Optimizer`` subclass
        (called as ``cls(param_groups, lr=learning_rate, **optimizer_options)``),
        or a callable ``f(param_groups, **optimizer_options) -> Optimizer``.
        Each parameter group carries its learning rate (the head's times its
        multiplier) and its weight decay (``weight_decay`` on weights, none on
        biases and norm parameters).
    optimizer_options : dict or None, default=None
        Keyword arguments of the optimizer, e.g. ``{"momentum": 0.0}`` (the
        reference code's effective setting) or ``{"betas": (0.9, 0.99)}``.
        SGD takes ``momentum=0.9`` unless set here.
    lr_schedule : {"poly", "constant"} or callable, default="poly"
        Factor of the learning rate at each step: ``"poly"`` is
        ``(1 - step / max_step) ** 0.9`` (the reference's), ``"constant"``
        1, a callable ``f(step, max_step) -> factor``.
    callbacks : list of Callback or None, default=None
        Objects notified at the training loop's events
        (:mod:`sklearn_psa.callbacks`: early stopping, TensorBoard, your own).
        The objects given are used (not copies), so their state after ``fit``
        can be read.
    warm_start : bool, default=False
        When True and already fitted on the same number of classes, ``fit``
        continues from the fitted weights (a new learning-rate schedule of
        ``max_epochs``) instead of starting anew. It trains a copy:
        ``network_`` is replaced only when ``fit`` completes.
    checkpoint : str, path or None, default=None
        File written atomically after every epoch; when it exists at ``fit``
        training resumes at its epoch (it must come from the same data and
        parameters, else ``fit`` raises an error naming the parameters that
        differ). A warm-started fit has its own checkpoint, identified by the
        fitted weights it starts from: it replaces the finished checkpoint of
        the fit that gave those weights, and an interrupted warm-started fit
        resumes from it. A fit that a callback stopped early is complete.
    num_workers : int or "auto", default="auto"
        DataLoader worker processes that read and augment the training images
        while the network trains (0: in the training process). ``"auto"``:
        none on the CPU, where the network's own threads use the cores; on
        CUDA the cores of this process (its share under ``torchrun``) less
        one, at most 8. The same samples, in the same order with the same
        augmentation, for any value.
"""


#: The entries of the fitted attributes that the base gives every estimator.
_TRAINING_ATTRIBUTES = """
    history_ : list of dict
        One dict per epoch trained (those of earlier fits continued by
        ``warm_start`` and of a resumed checkpoint included): ``"epoch"``
        (its number within its fit), ``"loss"`` (mean training loss),
        ``"seconds"`` (wall time; None for an epoch of a checkpoint written
        before it was stored), ``"valid_loss"`` when a callback held out a
        validation split, and what callbacks added.
        ``pandas.DataFrame(est.history_)`` tabulates it.
    loss_curve_ : list of float
        ``"loss"`` of each epoch of ``history_``.
    n_iter_ : int
        Epochs trained: ``len(history_)``.
    epoch_seconds_ : list of float
        Wall time of each epoch the last ``fit`` ran.
"""


def training_parameters_doc(cls):
    """Class decorator: put the base's parameter and attribute entries where ``cls``'s
    docstring has the lines ``{training parameters}`` and ``{training attributes}`` (one
    copy of the text for the three estimators)."""
    doc = cls.__doc__ or ""
    for marker, text in (("training parameters", _TRAINING_PARAMETERS),
                         ("training attributes", _TRAINING_ATTRIBUTES)):
        line = "    {" + marker + "}\n"
        if line not in doc:
            raise ValueError(f"{cls.__name__}'s docstring has no {line.strip()} line")
        doc = doc.replace(line, text.lstrip("\n"))
    cls.__doc__ = doc
    return cls


class TrainedNetworkMixin(TorchEstimatorMixin):
    """Training parameters, their constraints and the fit recipe of a network estimator.

    Attributes
    ----------
    _fingerprint_ignores : tuple of str
        Parameters that do not change the trained weights (inference-only
        settings), left out of a checkpoint's fingerprint besides the base's.
    """

    _parameter_constraints = {
        "backbone": [str, module_type()],
        "pretrained": [None, "boolean", str, os.PathLike],
        "backbone_options": [dict, None],
        "crop_size": [Interval(numbers.Integral, 8, None, closed="left"), None],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "max_epochs": [Interval(numbers.Integral, 0, None, closed="left")],
        "learning_rate": [Interval(numbers.Real, 0, None, closed="neither"), StrOptions({"auto"})],
        "weight_decay": [Interval(numbers.Real, 0, None, closed="left")],
        "optimizer": [StrOptions(set(optimizer_names())), callable],
        "optimizer_options": [dict, None],
        "lr_schedule": [StrOptions({"poly", "constant"}), callable],
        "callbacks": [list, None],
        "warm_start": ["boolean"],
        "checkpoint": [str, os.PathLike, None],
        "device": [str, device_type()],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "num_workers": [Interval(numbers.Integral, 0, None, closed="left"), StrOptions({"auto"})],
    }

    #: Never in a fingerprint: how and where the training runs, not what it learns.
    _NOT_FINGERPRINTED = ("verbose", "device", "checkpoint", "warm_start", "store", "n_jobs",
                          "classes", "num_workers")
    _fingerprint_ignores = ()
    #: Parameters added after the first release, with the value an estimator pickled or
    #: saved without them takes (their default: what it was fitted with).
    _later_params = {"num_workers": "auto"}

    # ------------------------------------------------------------------ hooks

    def _build_network(self, data):
        """The untrained network for ``data`` (called under the fit's seed)."""
        raise NotImplementedError

    def _training_samples(self, data):
        """The training samples of ``data``: a sequence of ``Sample``."""
        raise NotImplementedError

    def get_loss(self, net, batch):
        """The training loss of one batch: a scalar tensor.

        Override it in a subclass for a custom loss (see docs/training.md).

        Parameters
        ----------
        net : torch.nn.Module
            The network being trained, in training mode (in eval mode, without
            gradients, when a callback's validation split is evaluated).
        batch : dict of str to torch.Tensor
            On the training device: ``"image"``, a float ``(N, 3, h, w)``
            batch on the 0..255 scale, and the estimator's targets.

        Returns
        -------
        loss : torch.Tensor
        """
        raise NotImplementedError

    def _rates(self, data):
        """``(learning_rate, head_lr_mult)``: the base rate and the head's multiplier."""
        raise NotImplementedError

    def _data_fingerprint(self, data):
        """What identifies the training data of ``data`` (hashed into a checkpoint's fingerprint)."""
        raise NotImplementedError

    def _n_epochs(self, n_samples):
        """Epochs to train on ``n_samples`` images."""
        return int(self.max_epochs)

    def _can_warm_start(self, data):
        """Whether the fitted network can continue on ``data`` (same number of classes)."""
        return getattr(self, "n_classes_", None) == data["n_classes"]

    def _desc(self):
        """The progress bar's and error messages' name of this training."""
        return type(self).__name__

    # ------------------------------------------------------------------ the recipe

    def _checked_scale_range(self):
        """``scale_range`` as ``(low, high)`` with ``0 < low <= high``; (1, 1) without one."""
        value = getattr(self, "scale_range", (1.0, 1.0))
        try:
            scale_range = tuple(float(s) for s in np.asarray(value, dtype=float).ravel())
        except (TypeError, ValueError):
            scale_range = ()
        if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {value!r}")
        return scale_range

    def _checked_callbacks(self):
        """The ``callbacks`` list, each item checked to have the loop's events."""
        events = [name for name in vars(Callback) if name.startswith("on_")]
        callbacks = list(self.callbacks or [])
        for i, cb in enumerate(callbacks):
            missing = [e for e in events if not callable(getattr(cb, e, None))]
            if missing:
                raise TypeError(f"callbacks[{i}] = {cb!r} has no {missing[0]} method: subclass "
                                "sklearn_psa.callbacks.Callback")
        return callbacks

    def _fingerprint(self, data, start=None):
        """``(fingerprint, params)`` of a checkpointed fit: the hash of the training
        parameters, the data and, for a warm start, the ``start`` network's weights;
        and those parameters."""
        import joblib

        skip = set(self._NOT_FINGERPRINTED) | set(self._fingerprint_ignores)
        # a parameter added later, at its default, trains what the version before it did:
        # left out, so that a checkpoint written then still resumes
        skip |= {k for k, v in self._later_params.items() if getattr(self, k, None) == v}
        params = {k: v for k, v in self.get_params(deep=False).items() if k not in skip}
        name, params["pretrained"], params["backbone_options"] = self._resolved_backbone()
        params["backbone"] = name if isinstance(name, str) else repr(name)
        params["callbacks"] = [
            {"class": type(cb).__name__, **(cb.get_params() if hasattr(cb, "get_params") else {})}
            for cb in self.callbacks or []]
        if start is not None:
            params["warm_start_weights"] = weights_hash(start)
        return joblib.hash((params, self._data_fingerprint(data))), params

    def _split_over_ranks(self):
        """A :func:`~sklearn_psa._distributed.split_work` block over the process group of this
        estimator's data-parallel fit (none outside one): the per-image work within it, as the
        inference over the training images at the end of ``fit_transform``, is each rank's
        share. Only where every rank runs the same code, as after a data-parallel fit."""
        return _distributed.split_work(_distributed.process_group(self._fit_device()))

    def _fit_network(self, data):
        """Build (or warm-start) the network, train it on ``data``; set ``network_``,
        ``history_``; return the training result."""
        scale_range = self._checked_scale_range()
        callbacks = self._checked_callbacks()
        device, seed = self._fit_device(), self._fit_seed()
        group = _distributed.process_group(device)  # under torchrun: data-parallel
        if group is not None:
            device, seed = group.device, group.broadcast_object(seed)  # random_state=None: rank 0's
        data = {**data, "device": device, "seed": seed}  # resolved once: the hooks take them
        start = (self.network_ if self.warm_start and hasattr(self, "network_")
                 and self._can_warm_start(data) else None)
        if start is not None:  # a copy: an interrupted fit leaves the fitted model (and its checkpoint)
            net = copy.deepcopy(start)
        else:
            with seeded(seed):
                net = self._build_network(data)
        with _distributed.split_work(group):  # per-image work (labels, CRF): each rank its share
            samples = self._training_samples(data)
        fingerprint, params = (None, None) if self.checkpoint is None else self._fingerprint(data, start)
        learning_rate, head_lr_mult = self._rates(data)
        config = TrainConfig(
            max_epochs=self._n_epochs(len(samples)),
            batch_size=int(self.batch_size),
            learning_rate=learning_rate,
            weight_decay=float(self.weight_decay),
            optimizer=self.optimizer,
            optimizer_options=self.optimizer_options,
            lr_schedule=self.lr_schedule,
            augmentation=Augmentation(crop_size=self.crop_size, flip=True, color_jitter=0.3,
                                      scale_range=scale_range,
                                      pad_value=tuple(net.backbone.input_mean)),
        )
        result = _training.train(  # looked up at each fit, so that tests can replace it
            net, samples, self.get_loss, config,
            param_groups=[(net.backbone.parameters(), 1.0), (net.head.parameters(), head_lr_mult)],
            device=device, seed=seed, verbose=self.verbose, checkpoint=self.checkpoint,
            fingerprint=fingerprint, fingerprint_params=params, desc=self._desc(),
            callbacks=callbacks, group=group,
            num_workers=_training.auto_workers(getattr(self, "num_workers", "auto"), device),
        )
        previous = list(self.history_) if start is not None else []
        self.network_ = net
        self.history_ = previous + [dict(r) for r in result.records]
        self._epochs_run = len(result.epoch_seconds)
        return result

    @classmethod
    def _upgrade_state(cls, state):
        """``state`` (of ``__setstate__``) of an estimator made by an earlier version (a
        pickle, a joblib cache, a model file): the parameters added since
        (``_later_params``) at their defaults, and the history of one fitted before
        ``history_``, whose ``loss_curve_`` / ``epoch_seconds_`` / ``n_iter_`` or
        ``train_result_`` become ``history_``."""
        missing = {k: v for k, v in cls._later_params.items() if k not in state}
        if missing:
            state = {**state, **missing}
        if "history_" in state or not ("loss_curve_" in state or "train_result_" in state):
            return state
        state = dict(state)
        result = state.pop("train_result_", None)
        losses = state.pop("loss_curve_", getattr(result, "history", []))
        seconds = list(state.pop("epoch_seconds_", getattr(result, "epoch_seconds", [])))
        state.pop("n_iter_", None)
        seconds = [None] * (len(losses) - len(seconds)) + seconds
        state["history_"] = [{"epoch": i + 1, "loss": float(loss), "seconds": t}
                             for i, (loss, t) in enumerate(zip(losses, seconds))]
        state["_epochs_run"] = sum(t is not None for t in seconds)
        return state

    def __setstate__(self, state):
        super().__setstate__(self._upgrade_state(state))

    # ------------------------------------------------------------------ views of history_

    @property
    def loss_curve_(self):
        """Mean training loss of each epoch of :attr:`history_` (list of float)."""
        return [r["loss"] for r in self.history_]

    @property
    def n_iter_(self):
        """Epochs trained: the length of :attr:`history_` (int)."""
        return len(self.history_)

    @property
    def epoch_seconds_(self):
        """Wall time of each epoch the last ``fit`` ran (list of float)."""
        run = getattr(self, "_epochs_run", len(self.history_))
        return [r["seconds"] for r in self.history_[len(self.history_) - run:]]
