"""Heads put on a backbone, and the network that joins the two.

A head is an ``nn.Module`` whose ``forward(features)`` takes the backbone's
``(low, mid, high)`` tuple. :class:`Network` joins a backbone and a head:
``Network(backbone, head)(x)`` normalises a float 0..255 RGB batch, runs the
backbone and returns ``head(features)``. The affinity and segmentation heads
live here next to :class:`CAMHead` and follow the same pattern.
"""

from torch import nn
from torch.nn import functional as F

__all__ = ["CAMHead", "Network"]


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

