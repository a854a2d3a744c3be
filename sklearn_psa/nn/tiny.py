"""A small CPU-friendly backbone with output stride 8 and a tunable receptive field.

Without ImageNet weights, the receptive field of the network decides where a
CAM lands: a field much larger than the objects smears the maps over the
whole image, a field about the size of an object's discriminative part keeps
them there (docs/benchmarks.md, CAMClassifier). The tiny backbone therefore exposes its depth
and dilation at stride 8 and reports its exact :attr:`TinyBackbone.receptive_field`.

Layout (``w`` = ``width``; every conv is 3x3, followed by BatchNorm and ReLU)::

    stride 2   conv(3 -> w, s2), conv(w -> w)                 RF   7
    stride 4   conv(w -> 2w, s2), conv(2w -> 2w)       low    RF  19
    stride 8   conv(2w -> 4w, s2)                      mid    RF  27
    stride 8   depth x conv(-> 8w, dilation d), 1x1    high   RF  27 + 16 d depth

so ``depth=1`` gives a 43 px field, ``depth=2`` 59 px (the default), ``depth=2,
dilation=2`` 91 px, ``depth=4, dilation=2`` 155 px.
"""

import numbers

from torch import nn

from .base import Backbone

__all__ = ["TinyBackbone", "tiny"]


def _conv_bn_relu(c_in, c_out, stride=1, dilation=1):
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class TinyBackbone(Backbone):
    """Plain conv-BN-ReLU network, output stride 8, three feature levels.

    Parameters
    ----------
    width : int, default=16
        Channels of the first stage; the levels have ``2w``, ``4w`` and ``8w``.
    depth : int, default=2
        Number of 3x3 convolutions at stride 8 after the ``mid`` level.
    dilation : int, default=1
        Dilation of those convolutions (receptive field grows by ``16 * dilation``
        per convolution).

    Attributes
    ----------
    out_channels : tuple of int
        ``(2w, 4w, 8w)``.
    receptive_field : int
        Receptive field of the ``high`` level in input pixels.
    output_stride : int
        8.
    """

    output_stride = 8

    def __init__(self, width=16, depth=2, dilation=1):
        super().__init__()
        for name, value in (("width", width), ("depth", depth), ("dilation", dilation)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"tiny backbone: {name} must be an integer, got {value!r}")
        if width < 1 or depth < 0 or dilation < 1:
            raise ValueError(
                f"tiny backbone: width must be >= 1, depth >= 0, dilation >= 1; "
                f"got width={width}, depth={depth}, dilation={dilation}"
            )
        w, depth, dilation = int(width), int(depth), int(dilation)
        self.width, self.depth, self.dilation = w, depth, dilation
        self.stem = nn.Sequential(_conv_bn_relu(3, w, 2), _conv_bn_relu(w, w))
        self.stage1 = nn.Sequential(_conv_bn_relu(w, 2 * w, 2), _conv_bn_relu(2 * w, 2 * w))
        self.stage2 = _conv_bn_relu(2 * w, 4 * w, 2)
        layers = []
        c_in = 4 * w
        for _ in range(depth):
            layers.append(_conv_bn_relu(c_in, 8 * w, 1, dilation))
            c_in = 8 * w
        layers.append(
            nn.Sequential(nn.Conv2d(c_in, 8 * w, 1, bias=False), nn.BatchNorm2d(8 * w), nn.ReLU(inplace=True))
        )
        self.stage3 = nn.Sequential(*layers)
        self.out_channels = (2 * w, 4 * w, 8 * w)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def receptive_field(self):
        """Receptive field (pixels) of the ``high`` level, computed from the layers."""
        rf, stride = 1, 1
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                k = (m.kernel_size[0] - 1) * m.dilation[0] + 1
                rf += (k - 1) * stride
                stride *= m.stride[0]
        return rf

    def forward(self, x):
        x = self.stem(x)
        low = self.stage1(x)
        mid = self.stage2(low)
        high = self.stage3(mid)
        return low, mid, high


def tiny(*, pretrained=None, width=16, depth=2, dilation=1):
    """Build the tiny backbone (see :class:`TinyBackbone`).

    ``pretrained`` may be a path to a weights file saved from a tiny backbone
    of the same shape (there are no packaged weights for it).
    """
    net = TinyBackbone(width=width, depth=depth, dilation=dilation)
    if pretrained is True:
        raise ValueError(
            "backbone='tiny' has no packaged pretrained weights; pass pretrained=None "
            "(train from scratch) or a path to a weights file saved from a tiny backbone"
        )
    if pretrained not in (None, False):
        from .weights import load_weights

        load_weights(net, pretrained)
    return net
