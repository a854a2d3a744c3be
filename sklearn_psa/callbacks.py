"""Callbacks of the training loop: what a user adds to a trained estimator's ``callbacks``.

Every network of the package (:class:`~sklearn_psa.CAMClassifier`,
:class:`~sklearn_psa.AffinityEstimator` and the segmentation network of
:class:`~sklearn_psa.PSASegmenter`) trains in one loop, which calls each
callback at these events, in this order::

    on_train_begin(trainer)
        on_epoch_begin(trainer, epoch)              # epoch: 0-based index
            on_batch_begin(trainer, batch)          # batch: dict of tensors on the device
            on_batch_end(trainer, batch, loss)      # loss: float
        on_epoch_end(trainer, epoch, record)        # record: this epoch's history entry
    on_train_end(trainer)                           # also when training fails

``trainer`` is the running loop: ``trainer.net``, ``trainer.optimizer``,
``trainer.device``, ``trainer.step`` (optimizer steps so far),
``trainer.max_step``, ``trainer.max_epochs``, ``trainer.history`` (one dict
per epoch, as the estimator's ``history_``), ``trainer.evaluate(samples)``
(mean loss without gradients), ``trainer.hold_out(fraction)`` (set aside a
validation split, whose loss each epoch's record then holds as
``"valid_loss"``), ``trainer.rank`` and ``trainer.world_size`` (0 and 1
but in a data-parallel fit, see docs/distributed.md: every rank runs the
callbacks, with the same losses; write files on rank 0 only), and
``trainer.stop``: set it to True to end training after this epoch. A callback
may add numbers to ``record``; they go to ``history_``.

The loop's own parts are callbacks too: mixed precision (set up before the
user's callbacks), then the user's, then checkpoints, the learning-rate
schedule and the progress bar, so that a checkpoint holds what the user's
``on_epoch_end`` did (a stop, restored weights). The ones here are those a
user adds.
Callbacks are scikit-learn estimators as far as their parameters go
(``get_params``, ``clone``), so an estimator holding them clones and its
search can set them.

Examples
--------
>>> from sklearn_psa import CAMClassifier
>>> from sklearn_psa.callbacks import Callback, EarlyStopping
>>> from sklearn_psa.datasets import make_shapes
>>> class Losses(Callback):
...     def on_train_begin(self, trainer):
...         self.losses_ = []
...     def on_batch_end(self, trainer, batch, loss):
...         self.losses_.append(loss)
>>> X, Y, _ = make_shapes(16, image_size=32, random_state=0)
>>> losses = Losses()
>>> stop = EarlyStopping(patience=2, validation_fraction=0.25)
>>> cam = CAMClassifier(backbone="tiny", max_epochs=30, batch_size=4, crop_size=None,
...                     scales=(1.0,), device="cpu", random_state=0,
...                     callbacks=[losses, stop]).fit(X, Y)
>>> len(losses.losses_) == 3 * cam.n_iter_      # 12 training images in batches of 4
True
>>> sorted(cam.history_[0])
['epoch', 'loss', 'seconds', 'valid_loss']
>>> stop.best_epoch_ <= cam.n_iter_ <= 30
True
"""

import math
import numbers
import os

from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import Interval, StrOptions

from ._validation import keep_params

__all__ = ["Callback", "EarlyStopping", "TensorBoard"]


class Callback(BaseEstimator):
    """Base class of the training loop's callbacks: every event does nothing.

    Subclass it and override the events you need (see the module docstring
    for their order and arguments). Parameters go to ``__init__`` as in any
    scikit-learn estimator; state made during training ends in ``_``.
    """

    def on_train_begin(self, trainer):
        """Before the first epoch, before a checkpoint to resume from is loaded (the
        epoch training starts at is known at :meth:`on_epoch_begin`)."""

    def on_epoch_begin(self, trainer, epoch):
        """Before epoch ``epoch`` (0-based)."""

    def on_batch_begin(self, trainer, batch):
        """Before the forward pass of ``batch``."""

    def on_batch_end(self, trainer, batch, loss):
        """After the optimizer step; ``loss`` is the batch's loss as a float."""

    def on_epoch_end(self, trainer, epoch, record):
        """After epoch ``epoch``; ``record`` is its history entry (a dict, may be added to)."""

    def on_train_end(self, trainer):
        """After the last epoch, or when training stopped on an error."""


class EarlyStopping(Callback):
    """Stop training when the monitored loss stops improving; keep the best weights.

    With ``monitor="valid_loss"`` a fraction of the training images is set
    aside when training begins (the same images for the same
    ``random_state``) and the loss on them, without augmentation, on whole
    images, with the network in eval mode, is each epoch's ``"valid_loss"``.

    Parameters
    ----------
    patience : int, default=5
        Epochs without improvement after which training stops.
    tol : float, default=0.0
        An epoch improves when its loss is below the best so far minus ``tol``.
    monitor : {"valid_loss", "loss"}, default="valid_loss"
        The held-out loss, or the mean training loss of the epoch.
    validation_fraction : float, default=0.1
        Fraction of the training images held out (at least one, and at
        least one left to train on) for ``monitor="valid_loss"``.
    restore_best_weights : bool, default=True
        When training ends (stopped, or at ``max_epochs``), load the weights
        of the best epoch into the network.

    Attributes
    ----------
    best_score_ : float
        The best monitored loss.
    best_epoch_ : int
        The epoch (1-based) that reached it.
    stopped_epoch_ : int or None
        The epoch after which training stopped early; None when it ran to
        ``max_epochs``.

    Notes
    -----
    A fit resumed from a checkpoint starts counting patience anew at the
    epoch it resumes from; a checkpoint written when training stopped early
    is complete (resuming it trains nothing).
    """

    _parameter_constraints = {
        "patience": [Interval(numbers.Integral, 1, None, closed="left")],
        "tol": [Interval(numbers.Real, 0, None, closed="left")],
        "monitor": [StrOptions({"valid_loss", "loss"})],
        "validation_fraction": [Interval(numbers.Real, 0, 1, closed="neither")],
        "restore_best_weights": ["boolean"],
    }

    def __init__(self, patience=5, tol=0.0, monitor="valid_loss", validation_fraction=0.1,
                 restore_best_weights=True):
        keep_params(self, locals())

    def on_train_begin(self, trainer):
        self._validate_params()
        if self.monitor == "valid_loss":
            trainer.hold_out(self.validation_fraction)
        self.best_score_, self.best_epoch_, self.stopped_epoch_ = math.inf, 0, None
        self._best_state, self._wait = None, 0

    def on_epoch_end(self, trainer, epoch, record):
        score = float(record[self.monitor])
        if score < self.best_score_ - float(self.tol):
            self.best_score_, self.best_epoch_, self._wait = score, record["epoch"], 0
            if self.restore_best_weights:
                self._best_state = {k: v.detach().clone() for k, v in trainer.net.state_dict().items()}
        else:
            self._wait += 1
            if self._wait >= self.patience:
                trainer.stop = True
                self.stopped_epoch_ = record["epoch"]
        if trainer.stop or epoch + 1 >= trainer.max_epochs:
            # before the checkpoint of this epoch is written, so that it holds these weights
            self._restore(trainer)

    def on_train_end(self, trainer):
        self._best_state = None  # the weights are the network's now; keep the estimator light

    def _restore(self, trainer):
        if self._best_state is not None and self.best_epoch_ != trainer.history[-1]["epoch"]:
            trainer.net.load_state_dict(self._best_state)


class TensorBoard(Callback):
    """Log the training to TensorBoard (needs the ``tensorboard`` package).

    Logs each step's loss and learning rate (``train/loss``, ``train/lr``)
    and each epoch's numbers from the history (``epoch/loss``,
    ``epoch/valid_loss``, ``epoch/seconds`` ...), with the optimizer step or
    the epoch as the x axis. View them with ``tensorboard --logdir runs``.

    Parameters
    ----------
    log_dir : str, path or None, default=None
        Folder of the event files; None uses ``SummaryWriter``'s default
        (``runs/<date>_<host>``).
    comment : str, default=""
        Suffix of the default folder name.

    Examples
    --------
    ``CAMClassifier(callbacks=[TensorBoard("runs/cam")]).fit(X, Y)``, then
    ``tensorboard --logdir runs``.
    """

    _parameter_constraints = {
        "log_dir": [str, os.PathLike, None],
        "comment": [str],
    }

    def __init__(self, log_dir=None, comment=""):
        self.log_dir = log_dir
        self.comment = comment

    def _make_writer(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ImportError(
                "the TensorBoard callback needs the tensorboard package: pip install tensorboard"
            ) from exc
        log_dir = None if self.log_dir is None else os.fspath(self.log_dir)
        return SummaryWriter(log_dir=log_dir, comment=self.comment)

    def on_train_begin(self, trainer):
        self._validate_params()
        # in a data-parallel fit rank 0 writes (the ranks' numbers are the same)
        self._writer = self._make_writer() if getattr(trainer, "rank", 0) == 0 else None

    def on_batch_end(self, trainer, batch, loss):
        if self._writer is not None:
            self._writer.add_scalar("train/loss", loss, trainer.step)
            self._writer.add_scalar("train/lr", trainer.optimizer.param_groups[0]["lr"], trainer.step)

    def on_epoch_end(self, trainer, epoch, record):
        for key, value in record.items():
            if self._writer is not None and key != "epoch" and isinstance(value, numbers.Real):
                self._writer.add_scalar(f"epoch/{key}", value, record["epoch"])

    def on_train_end(self, trainer):
        writer = self.__dict__.pop("_writer", None)  # an open writer does not pickle
        if writer is not None:
            writer.close()

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_writer", None)
        return state
