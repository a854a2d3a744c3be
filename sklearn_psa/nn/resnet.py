"""ResNet backbones whose parameter names match published weight files.

- :func:`resnet50`: torchvision's ResNet-50 (v1.5: stride on the 3x3 conv),
  with ``layer3`` and ``layer4`` dilated (2 and 4) for output stride 8, as
  torchvision's ``replace_stride_with_dilation=[False, True, True]``. A
  torchvision weight file (``resnet50-*.pth``) loads with ``pretrained=path``;
  its ``fc.*`` classifier is skipped. torchvision itself is not needed.
- :func:`resnet38d`: the wide ResNet-38 of the AffinityNet reference code
  (``network/resnet38d.py``: pre-activation blocks ``b2 ... b7``, ``bn7``),
  output stride 8 with dilations 2 and 4 in its last stages, so that the
  reference's published ``.pth`` files load with ``pretrained=path``
  (their ``fc8.*`` classifier and AffinityNet heads are skipped).

Both follow the :class:`~sklearn_psa.nn.base.Backbone` interface: ``forward``
returns ``(low, mid, high)``, ``high`` at stride 8. When built with pretrained
weights, their BatchNorm layers stay in eval mode during training (the batch
sizes that fit in memory are too small to re-estimate them; the reference code
does the same), and the reference's frozen early layers are frozen.
"""

from torch import nn
from torch.nn import functional as F

from .base import Backbone

__all__ = ["ResNet50", "ResNet38d", "resnet50", "resnet38d"]


class _FrozenBatchNormMixin:
    """Keep BatchNorm layers in eval mode (and their affine weights fixed) when ``frozen_bn``."""

    frozen_bn = False

    def freeze_batchnorm(self):
        self.frozen_bn = True
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.requires_grad_(False)
                m.bias.requires_grad_(False)
        return self

    def prepare_pretrained(self):
        return self.freeze_batchnorm()

    def train(self, mode=True):
        super().train(mode)
        if self.frozen_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self


# ----------------------------------------------------------------- ResNet-50


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in, width, stride=1, dilation=1, downsample=None):
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(_FrozenBatchNormMixin, Backbone):
    """ResNet-50 with torchvision's parameter names, output stride 8.

    Levels: ``low`` = ``layer2`` (512 channels), ``mid`` = ``layer3`` (1024),
    ``high`` = ``layer4`` (2048), all at stride 8.
    """

    out_channels = (512, 1024, 2048)
    output_stride = 8

    def __init__(self, init_weights=True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._c_in, self._dilation = 64, 1
        # (blocks, width, stride, dilate): torchvision's stride-8 configuration
        self.layer1 = self._make_layer(3, 64, 1, False)
        self.layer2 = self._make_layer(4, 128, 2, False)
        self.layer3 = self._make_layer(6, 256, 2, True)
        self.layer4 = self._make_layer(3, 512, 2, True)
        del self._c_in, self._dilation
        for m in self.modules() if init_weights else ():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, blocks, width, stride, dilate):
        previous = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        c_out = width * _Bottleneck.expansion
        downsample = None
        if stride != 1 or self._c_in != c_out:
            downsample = nn.Sequential(
                nn.Conv2d(self._c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        layers = [_Bottleneck(self._c_in, width, stride, previous, downsample)]
        self._c_in = c_out
        layers += [_Bottleneck(c_out, width, 1, self._dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        low = self.layer2(x)
        mid = self.layer3(low)
        high = self.layer4(mid)
        return low, mid, high


# ----------------------------------------------------------------- ResNet-38


class _PreActBlock(nn.Module):
    """Two 3x3 convs, pre-activation (reference ``ResBlock``)."""

    def __init__(self, c_in, c_mid, c_out, stride=1, first_dilation=None, dilation=1):
        super().__init__()
        first_dilation = dilation if first_dilation is None else first_dilation
        self.same_shape = c_in == c_out and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(c_in)
        self.conv_branch2a = nn.Conv2d(
            c_in, c_mid, 3, stride, padding=first_dilation, dilation=first_dilation, bias=False
        )
        self.bn_branch2b1 = nn.BatchNorm2d(c_mid)
        self.conv_branch2b1 = nn.Conv2d(c_mid, c_out, 3, padding=dilation, dilation=dilation, bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x):
        """Return ``(output, pre-activated input)``."""
        act = F.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(act)
        out = self.conv_branch2a(act)
        out = self.conv_branch2b1(F.relu(self.bn_branch2b1(out)))
        return shortcut + out, act


class _PreActBottleneck(nn.Module):
    """1x1 - 3x3 - 1x1 pre-activation bottleneck with dropout (reference ``ResBlock_bot``)."""

    def __init__(self, c_in, c_out, stride=1, dilation=1, dropout=0.0):
        super().__init__()
        self.bn_branch2a = nn.BatchNorm2d(c_in)
        self.conv_branch2a = nn.Conv2d(c_in, c_out // 4, 1, stride, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(c_out // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(
            c_out // 4, c_out // 2, 3, padding=dilation, dilation=dilation, bias=False
        )
        self.bn_branch2b2 = nn.BatchNorm2d(c_out // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(c_out // 2, c_out, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x):
        act = F.relu(self.bn_branch2a(x))
        shortcut = self.conv_branch1(act)
        out = self.conv_branch2a(act)
        out = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(out))))
        out = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(out))))
        return shortcut + out, act


class ResNet38d(_FrozenBatchNormMixin, Backbone):
    """The reference code's ResNet-38 (output stride 8), with its parameter names.

    Levels, as the reference AffinityNet reads them: ``low`` = the
    pre-activation input of ``b5`` (512 channels), ``mid`` = that of ``b6``
    (1024), ``high`` = ``relu(bn7(b7))`` (4096), all at stride 8.
    """

    out_channels = (512, 1024, 4096)
    output_stride = 8

    def __init__(self, init_weights=True):
        super().__init__()
        self.conv1a = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.b2 = _PreActBlock(64, 128, 128, stride=2)
        self.b2_1 = _PreActBlock(128, 128, 128)
        self.b2_2 = _PreActBlock(128, 128, 128)
        self.b3 = _PreActBlock(128, 256, 256, stride=2)
        self.b3_1 = _PreActBlock(256, 256, 256)
        self.b3_2 = _PreActBlock(256, 256, 256)
        self.b4 = _PreActBlock(256, 512, 512, stride=2)
        for i in range(1, 6):
            setattr(self, f"b4_{i}", _PreActBlock(512, 512, 512))
        self.b5 = _PreActBlock(512, 512, 1024, first_dilation=1, dilation=2)
        self.b5_1 = _PreActBlock(1024, 512, 1024, dilation=2)
        self.b5_2 = _PreActBlock(1024, 512, 1024, dilation=2)
        self.b6 = _PreActBottleneck(1024, 2048, dilation=4, dropout=0.3)
        self.b7 = _PreActBottleneck(2048, 4096, dilation=4, dropout=0.5)
        self.bn7 = nn.BatchNorm2d(4096)
        self._order = ["b2", "b2_1", "b2_2", "b3", "b3_1", "b3_2", "b4"] + [f"b4_{i}" for i in range(1, 6)]
        for m in self.modules() if init_weights else ():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def prepare_pretrained(self):
        return self.freeze_batchnorm().freeze_early_layers()

    def freeze_early_layers(self):
        """Freeze ``conv1a`` and ``b2*``, as the reference's classifier training does."""
        for name, p in self.named_parameters():
            if name.startswith(("conv1a.", "b2.", "b2_1.", "b2_2.")):
                p.requires_grad_(False)
        return self

    def forward(self, x):
        x = self.conv1a(x)
        for name in self._order:
            x, _ = getattr(self, name)(x)
        x, low = self.b5(x)
        x, _ = self.b5_1(x)
        x, _ = self.b5_2(x)
        x, mid = self.b6(x)
        x, _ = self.b7(x)
        high = F.relu(self.bn7(x))
        return low, mid, high


# ----------------------------------------------------------------- factories


def _build(cls, path, ignore):
    """A fresh ``cls``; with a weights ``path``, built on the meta device and filled from the file."""
    if path in (None, False):
        return cls()
    import torch

    from .weights import load_weights

    with torch.device("meta"):
        net = cls(init_weights=False)
    net = net.to_empty(device="cpu")  # every tensor is then overwritten by the strict load
    load_weights(net, path, ignore=ignore)
    return net.prepare_pretrained()


def _pretrained_path(name, pretrained, hint):
    if pretrained is True:
        raise ValueError(
            f"backbone={name!r} has no packaged weights; pass pretrained=<path to {hint}> "
            "(loaded with torch.load(weights_only=True))"
        )
    return pretrained


def resnet50(*, pretrained=None):
    """ResNet-50 at output stride 8; ``pretrained`` a torchvision weight file (``fc.*`` skipped)."""
    path = _pretrained_path("resnet50", pretrained, "a torchvision resnet50 weights file")
    return _build(ResNet50, path, ("fc.",))


def resnet38d(*, pretrained=None):
    """ResNet-38 at output stride 8; ``pretrained`` a weight file of the reference code.

    The reference's classifier (``fc8.*``) and AffinityNet layers
    (``f8_3.*``, ``f8_4.*``, ``f8_5.*``, ``f9.*``) are skipped when present.
    """
    path = _pretrained_path("resnet38d", pretrained, "a ResNet-38 weights file of the AffinityNet reference code")
    return _build(ResNet38d, path, ("fc8.", "f8_3.", "f8_4.", "f8_5.", "f9."))
