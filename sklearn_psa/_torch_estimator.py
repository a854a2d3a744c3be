"""What every torch-backed estimator shares: device, seeding, pickling, batched inference.

Use :class:`TorchEstimatorMixin` as the first base of an estimator whose
parameters include ``device`` and ``random_state`` and whose fitted torch
modules are listed in ``_torch_attributes``; an estimator that trains its
network takes :class:`sklearn_psa._base.TrainedNetworkMixin` (a subclass) and
fills in its hooks instead of writing a fit recipe::

    class FeatureAffinity(TorchEstimatorMixin, AffinityTransformerMixin, BaseEstimator):
        _torch_attributes = ("network_",)

        def fit(self, X, y=None):
            self.network_ = make_backbone(...)     # no training
            ...

        def transform(self, X):
            net = self._network("network_")      # on the inference device, eval mode
            for idx in iter_image_batches(shapes, self.batch_size):
                x = images_to_tensor([images[i] for i in idx], resolve_device(self.device))
                ...

Pickling stores each module of ``_torch_attributes`` on the CPU, so a model
fitted on CUDA unpickles on a machine without one; after unpickling, the
module moves to ``resolve_device(self.device)`` on first use.
"""

import copy
import os

import numpy as np

from ._device import resolve_device
from ._validation import check_random_state_seed

__all__ = ["TorchEstimatorMixin", "device_type", "images_to_tensor", "iter_image_batches",
           "module_type"]

#: ``learning_rate="auto"``: the rate for a backbone that starts from pretrained weights, and
#: for one trained from scratch (SGD with momentum 0.9).
AUTO_RATE_PRETRAINED, AUTO_RATE_SCRATCH = 0.01, 0.1


def module_type():
    """``torch.nn.Module``, imported when the parameter constraints are built."""
    from torch import nn

    return nn.Module


def device_type():
    """``torch.device``, imported when the parameter constraints are built."""
    import torch

    return torch.device


def _module_device(module):
    import torch

    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


class TorchEstimatorMixin:
    """Device handling, seeding and CPU pickling for estimators holding torch modules.

    Attributes
    ----------
    _torch_attributes : tuple of str
        Names of the fitted attributes that hold ``nn.Module`` objects.
    """

    _torch_attributes = ()

    def _fit_device(self):
        """``resolve_device(self.device)``: "auto" means CUDA when available, else CPU."""
        return resolve_device(self.device)

    def _fit_seed(self):
        """An int seed from ``random_state`` (None draws a fresh one)."""
        return check_random_state_seed(self.random_state)

    def _resolved_backbone(self, warn=False):
        """``(backbone, pretrained, backbone_options)`` with ``backbone="auto"`` resolved."""
        from .nn import resolve_backbone

        return resolve_backbone(self.backbone, self.pretrained, self.backbone_options, warn=warn)

    def check_params(self):
        """Check the parameters as ``fit`` does first, without fitting anything.

        Checks each parameter (``_parameter_constraints``), how parameters
        relate (the estimator's own settings), that ``backbone="auto"`` is not
        given weights or options, and that a ``pretrained`` weights file exists.
        :class:`~sklearn_psa.PSASegmenter` calls it on each of its steps before
        the first network trains.

        Returns
        -------
        self : estimator

        Raises
        ------
        ValueError
            Naming the parameter that is wrong.
        FileNotFoundError
            When ``pretrained`` names a file that does not exist (or a folder).
        """
        self._validate_params()
        self._check_settings()
        self._check_backbone()
        return self

    def _check_settings(self):
        """Check what ``_parameter_constraints`` cannot (how parameters relate); a hook of
        :meth:`check_params`, which raises ``ValueError`` naming the parameter."""

    def _check_backbone(self):
        """Check ``backbone="auto"`` against ``pretrained`` and ``backbone_options``, and that a
        ``pretrained`` weights file exists (for the estimators that have those parameters)."""
        params = self.get_params(deep=False)
        if "backbone" in params:
            from .nn import resolve_backbone

            resolve_backbone(params["backbone"], params.get("pretrained"),
                             params.get("backbone_options"), warn=False)
        weights = params.get("pretrained")
        if isinstance(weights, (str, os.PathLike)) and not os.path.isfile(weights):
            what = ("is a folder; expected a weights file" if os.path.isdir(weights)
                    else "no such weights file")
            raise FileNotFoundError(f"pretrained={os.fspath(weights)!r}: {what}")

    def _learning_rate(self, pretrained):
        """``learning_rate``, with "auto" resolved for a backbone that does (not) start from
        pretrained weights."""
        if isinstance(self.learning_rate, str) and self.learning_rate == "auto":
            return AUTO_RATE_PRETRAINED if pretrained else AUTO_RATE_SCRATCH
        return float(self.learning_rate)

    def _network(self, name="network_", device=None):
        """The fitted module ``name``, moved to the inference device, in eval mode.

        ``device``: that device when the caller has resolved it already (once per
        ``predict`` or ``transform``); None resolves ``self.device``.
        """
        module = getattr(self, name)
        if device is None:
            device = resolve_device(self.device)
        if _module_device(module) != device:
            import torch

            module.to(device=device, memory_format=torch.channels_last)
        module.eval()
        return module

    def __getstate__(self):
        state = dict(super().__getstate__())  # BaseEstimator records the sklearn version
        for name in self._torch_attributes:
            module = state.get(name)
            if module is not None and _module_device(module).type != "cpu":
                state[name] = copy.deepcopy(module).to("cpu")
        return state


def iter_image_batches(shapes, batch_size, order=None):
    """Group image indices of equal ``(H, W)`` into batches of at most ``batch_size``.

    Parameters
    ----------
    shapes : sequence of (H, W)
    batch_size : int
    order : sequence of int, optional
        The indices to batch (default: all).

    Yields
    ------
    indices : list of int
        Indices of images of one size, in increasing order.
    """
    groups = {}
    for i in range(len(shapes)) if order is None else order:
        groups.setdefault(tuple(shapes[i]), []).append(int(i))
    for idx in groups.values():
        for k in range(0, len(idx), max(1, int(batch_size))):
            yield idx[k:k + batch_size]


def images_to_tensor(images, device, channels_last=True):
    """Stack equal-size (H, W, 3) uint8 images into a float ``(N, 3, H, W)`` 0..255 tensor."""
    import torch

    arr = np.stack([np.asarray(im) for im in images])
    x = torch.from_numpy(arr).to(device).permute(0, 3, 1, 2).float()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
