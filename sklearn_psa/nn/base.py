"""The interface every backbone follows.

A backbone is an ``nn.Module`` whose ``forward(x)`` takes a normalised float
batch ``(N, 3, H, W)`` and returns a tuple of three feature maps
``(low, mid, high)``: ``high`` is the deepest, at output stride 8 (the CAM
classifier and the segmentation head read it); the affinity head reads all
three (resized to the stride-8 grid). Attributes:

- ``out_channels``: tuple of the three levels' channel counts;
- ``input_mean`` / ``input_std``: per-channel RGB statistics on the 0..255
  scale, applied by :meth:`Backbone.normalize` (each backbone carries its own
  input normalisation, e.g. ImageNet's for ResNets, (127, 128) for
  EfficientNet-Lite).
"""

import torch
from torch import nn

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


class Backbone(nn.Module):
    """Base class of backbones; subclasses set the attributes and ``forward``."""

    out_channels = (0, 0, 0)
    input_mean = IMAGENET_MEAN
    input_std = IMAGENET_STD

    def prepare_pretrained(self):
        """Set the network up as one that starts from trained weights; return it.

        Called once the weights are loaded (from ImageNet, a file, or a fitted
        CAM classifier's backbone that was itself set up so): ResNets freeze
        their BatchNorm layers (and ResNet-38 its first blocks), as the
        reference code does; EfficientNet-Lite keeps its loaded running
        statistics with a slow average. The base class does nothing.
        """
        return self

    def normalize(self, x):
        """Map a float RGB batch on the 0..255 scale to the network's input scale."""
        mean = torch.as_tensor(self.input_mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.as_tensor(self.input_std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std
