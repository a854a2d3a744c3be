"""DeepLab-style segmentation head for :class:`~sklearn_psa.PSASegmenter`.

The segmentation network is ``Network(backbone, ASPPHead(...))``
(:class:`sklearn_psa.nn.heads.Network`): the backbone's deepest feature map
(output stride 8) goes through atrous spatial pyramid pooling (DeepLab v3: a
1x1 branch, 3x3 branches dilated at ``rates`` and an image-level pooling
branch, concatenated and projected by a 1x1 conv) and a 1x1 classifier. The
logits come out on the stride-8 grid; the estimator upsamples them bilinearly
to the image size.
"""

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ASPPHead"]


def _conv_bn_relu(in_channels, out_channels, kernel_size=1, dilation=1):
    padding = dilation * (kernel_size // 2)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding,
                  dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class _ImagePool(nn.Module):
    """Global average pooling, a 1x1 conv, broadcast back to the map's size."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        # No BatchNorm: a pooled (N, C, 1, 1) batch of one image has one value per
        # channel, which BatchNorm cannot normalise in training.
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        pooled = F.relu(self.conv(F.adaptive_avg_pool2d(x, 1)))
        return pooled.expand(-1, -1, x.shape[2], x.shape[3])


class ASPPHead(nn.Module):
    """Atrous spatial pyramid pooling and a 1x1 classifier on the ``high`` features.

    Parameters
    ----------
    in_channels : int
        Channels of the backbone's ``high`` level (stride 8).
    n_outputs : int
        Output channels: background + classes.
    channels : int, default=128
        Channels of each branch and of the projection.
    rates : tuple of int, default=(6, 12, 18)
        Dilation rates of the 3x3 branches, in cells of the stride-8 grid
        (DeepLab v3's rates; they suit 300-500 px images, smaller images want
        smaller rates). An empty tuple keeps the 1x1 and pooling branches.
    image_pool : bool, default=True
        Add the image-level pooling branch (global context).
    dropout : float, default=0.1
        Channel dropout before the classifier.

    Examples
    --------
    >>> import torch
    >>> head = ASPPHead(32, n_outputs=3, rates=(1, 2)).eval()
    >>> feats = (None, None, torch.zeros(2, 32, 5, 7))
    >>> head(feats).shape
    torch.Size([2, 3, 5, 7])
    """

    def __init__(self, in_channels, n_outputs, channels=128, rates=(6, 12, 18),
                 image_pool=True, dropout=0.1):
        super().__init__()
        rates = tuple(int(r) for r in rates)
        if any(r < 1 for r in rates):
            raise ValueError(f"ASPP rates must be positive integers, got {rates}")
        # the constructor's arguments, so that sklearn_psa.io.save_model can rebuild it
        self.init_args = {"in_channels": int(in_channels), "n_outputs": int(n_outputs),
                          "channels": int(channels), "rates": list(rates),
                          "image_pool": bool(image_pool), "dropout": float(dropout)}
        branches = [_conv_bn_relu(in_channels, channels, 1)]
        branches += [_conv_bn_relu(in_channels, channels, 3, r) for r in rates]
        if image_pool:
            branches.append(_ImagePool(in_channels, channels))
        self.branches = nn.ModuleList(branches)
        self.project = _conv_bn_relu(channels * len(branches), channels, 1)
        self.dropout = nn.Dropout2d(dropout) if dropout else nn.Identity()
        self.classifier = nn.Conv2d(channels, n_outputs, 1)

    def forward(self, features):
        """Logits ``(N, n_outputs, h, w)`` on the grid of ``features[-1]``."""
        high = features[-1]
        x = torch.cat([branch(high) for branch in self.branches], dim=1)
        return self.classifier(self.dropout(self.project(x)))
