"""Heads put on a backbone, and the network that joins the two.

A head is an ``nn.Module`` whose ``forward(features)`` takes the backbone's
``(low, mid, high)`` tuple. :class:`Network` joins a backbone and a head:
``Network(backbone, head)(x)`` normalises a float 0..255 RGB batch, runs the
backbone and returns ``head(features)``. The affinity and segmentation heads
live here next to :class:`CAMHead` and follow the same pattern.
"""

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["CAMHead", "HookedClassifier", "LinearCAMHead", "Network"]


class CAMHead(nn.Module):
    """Classifier for class activation maps: 1x1 conv without bias on ``high``.

    Training uses global average pooling, then the 1x1 conv (one logit per
    class); :meth:`cams` applies the same weights at every position, so that
    ``M_c = ReLU(w_c . f(x, y))`` (docs/method.md, section 1).

    Parameters
    ----------
    in_channels : int
        Channels of the backbone's ``high`` level.
    n_classes : int
    dropout : float, default=0.0
        Channel dropout before pooling (the reference uses 0.5 on ResNet-38).
    """

    def __init__(self, in_channels, n_classes, dropout=0.0):
        super().__init__()
        # the constructor's arguments, so that sklearn_psa.io.save_model can rebuild it
        self.init_args = {"in_channels": int(in_channels), "n_classes": int(n_classes),
                          "dropout": float(dropout)}
        self.dropout = nn.Dropout2d(dropout) if dropout else nn.Identity()
        self.classifier = nn.Conv2d(in_channels, n_classes, 1, bias=False)
        nn.init.xavier_uniform_(self.classifier.weight)

    def forward(self, features):
        """Logits ``(N, n_classes)``: GAP of ``high``, then the 1x1 conv."""
        high = self.dropout(features[-1])
        pooled = high.mean(dim=(2, 3), keepdim=True)
        return self.classifier(pooled).flatten(1)

    def cams(self, features):
        """Class activation maps ``(N, n_classes, h, w)``, ReLU'd, at the feature resolution."""
        return F.relu(F.conv2d(features[-1], self.classifier.weight))


class Network(nn.Module):
    """A backbone and a head: ``forward(x) = head(backbone(backbone.normalize(x)))``.

    Parameters
    ----------
    backbone : sklearn_psa.nn.base.Backbone
    head : nn.Module
        Takes the ``(low, mid, high)`` tuple.
    """

    def __init__(self, backbone, head):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def features(self, x):
        """Backbone features of a float RGB batch on the 0..255 scale."""
        return self.backbone(self.backbone.normalize(x))

    def forward(self, x):
        return self.head(self.features(x))

    def parameter_groups(self, backbone_lr_mult=1.0, head_lr_mult=1.0):
        """``[(parameters, lr_mult), ...]`` for :func:`sklearn_psa._training.sgd_param_groups`."""
        return [(self.backbone.parameters(), backbone_lr_mult), (self.head.parameters(), head_lr_mult)]



class LinearCAMHead(nn.Module):
    """A trained classifier's own linear layer as a CAM head.

    ``forward`` pools the last feature map globally (average) and applies the
    linear layer; :meth:`cams` applies its weights at every position, without
    the bias: ``M_c = ReLU(w_c . f(x, y))``, as :class:`CAMHead` does.

    Parameters
    ----------
    linear : torch.nn.Linear
        ``C`` inputs (the feature map's channels), one output per class.
    """

    def __init__(self, linear):
        super().__init__()
        self.linear = linear

    def forward(self, features):
        return self.linear(features[-1].mean(dim=(2, 3)))

    def cams(self, features):
        """Class activation maps ``(N, n_classes, h, w)``, ReLU'd, at the feature resolution."""
        weight = self.linear.weight.reshape(self.linear.weight.shape[0], -1, 1, 1)
        return F.relu(F.conv2d(features[-1], weight.to(features[-1].dtype)))


class HookedClassifier(nn.Module):
    """A classifier trained elsewhere, read as a CAM network (``features``, ``head``).

    ``features(x)`` runs the whole ``module`` on the normalised batch and
    returns the output of its submodule ``feature_layer`` (read by a forward
    hook) as a one-map tuple; ``head`` is a :class:`LinearCAMHead` on its
    submodule ``linear_layer``.

    Parameters
    ----------
    module : torch.nn.Module
    feature_layer, linear_layer : str
        Submodule names (``module.get_submodule``).
    input_mean, input_std : tuple of 3 float
        The module's input normalisation, on the 0..1 scale; ``features``
        takes float RGB on the 0..255 scale, as :class:`Network` does.
    """

    def __init__(self, module, feature_layer, linear_layer, input_mean, input_std):
        super().__init__()
        self.module = module
        self.feature_layer = feature_layer
        self.head = LinearCAMHead(module.get_submodule(linear_layer))
        self.register_buffer("mean", torch.tensor(input_mean).reshape(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(input_std).reshape(1, 3, 1, 1) * 255.0)

    def features(self, x):
        """``(feature map,)`` for a float RGB batch on the 0..255 scale."""
        captured = []
        layer = self.module.get_submodule(self.feature_layer)
        handle = layer.register_forward_hook(lambda _m, _i, output: captured.append(output))
        try:
            self.module((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))
        finally:
            handle.remove()
        if not captured:
            raise ValueError(
                f"feature_layer={self.feature_layer!r} did not run in the module's forward pass"
            )
        out = captured[-1]
        if not isinstance(out, torch.Tensor) or out.ndim != 4:
            what = (f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor)
                    else type(out).__name__)
            raise ValueError(
                f"feature_layer={self.feature_layer!r} gives {what}: expected an (N, C, h, w) "
                "feature map (the layer whose output the classifier pools)"
            )
        return (out,)

    def forward(self, x):
        return self.head(self.features(x))
