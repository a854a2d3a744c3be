"""AffinityNet: a head on a backbone's three feature levels, and its loss.

Small tensor functions, each tested alone, wrapped by thin modules:

- :func:`pairwise_affinity` computes ``W_ij = exp(-mean_c |f_i - f_j|)`` for
  every grid cell and every offset of ``neighbor_offsets(radius)``, laid out as
  ``(N, K, h, w)`` like the records' affinity;
- :func:`affinity_loss` is the paper's ``L_bg+/4 + L_fg+/4 + L_neg/2`` with
  ``L+ = -mean log W`` and ``L- = -mean log(1 - W)`` over the labelled pairs;
- :class:`AffinityHead` maps the three levels through 1x1 convs (ELU), brings
  them to the stride-8 grid, concatenates them and applies a final 1x1 conv;
- :class:`AffinityNet` is backbone + head, taking RGB batches on the 0..255
  scale and returning ``f_aff`` on the grid ``ceil(H / 8) x ceil(W / 8)``.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .._grid import shift_slices

__all__ = ["AffinityHead", "AffinityNet", "affinity_loss", "backbone_levels", "pairwise_affinity",
           "resize_to"]

EPS = 1e-5


def pairwise_affinity(features, offsets):
    """Affinities between each cell and its neighbours at ``offsets``.

    Parameters
    ----------
    features : Tensor of shape (N, C, h, w)
    offsets : array-like of shape (K, 2)
        ``(dy, dx)`` pairs (from ``neighbor_offsets(radius)``).

    Returns
    -------
    affinity : Tensor of shape (N, K, h, w)
        ``affinity[n, k, y, x] = exp(-mean_c |f[n, :, y, x] - f[n, :, y+dy, x+dx]|)``;
        0 where the neighbour lies outside the grid.
    """
    N, _, h, w = features.shape
    offsets = [(int(dy), int(dx)) for dy, dx in offsets]
    out = features.new_zeros((N, len(offsets), h, w))
    for k, (dy, dx) in enumerate(offsets):
        (sy, sx), (ty, tx) = shift_slices(dy, dx, h, w)
        diff = (features[:, :, sy, sx] - features[:, :, ty, tx]).abs().mean(dim=1)
        out[:, k, sy, sx] = torch.exp(-diff)
    return out


def affinity_loss(affinity, bg_pos, fg_pos, neg):
    """The AffinityNet loss ``L_bg+/4 + L_fg+/4 + L_neg/2``.

    Each term is a mean over the labelled pairs of the whole batch (a term with
    no pair is 0), with ``log(W + 1e-5)`` and ``log(1 + 1e-5 - W)`` as in the
    reference code.

    Parameters
    ----------
    affinity : Tensor of shape (N, K, h, w), values in (0, 1]
    bg_pos, fg_pos, neg : Tensor of shape (N, K, h, w), bool or 0/1

    Returns
    -------
    loss : Tensor (scalar)
    parts : dict
        ``{"bg": L_bg+, "fg": L_fg+, "neg": L_neg}`` as detached tensors.
    """
    def term(values, mask):
        mask = mask.to(values.dtype)
        return (values * mask).sum() / (mask.sum() + EPS)

    bg = term(-torch.log(affinity + EPS), bg_pos)
    fg = term(-torch.log(affinity + EPS), fg_pos)
    ng = term(-torch.log(1.0 + EPS - affinity), neg)
    loss = bg / 4 + fg / 4 + ng / 2
    return loss, {"bg": bg.detach(), "fg": fg.detach(), "neg": ng.detach()}


def resize_to(x, size):
    """``x`` (``(N, C, h, w)``) at spatial ``size``: average-pooled down, or bilinearly up."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class AffinityHead(nn.Module):
    """1x1 conv on each of three levels, concatenation, final 1x1 conv.

    Parameters
    ----------
    in_channels : tuple of 3 int
        Channels of the backbone's (low, mid, high) levels.
    widths : tuple of 3 int
        Channels of each level after its 1x1 conv (the paper: 64, 128, 256).
    out_channels : int, optional
        Channels of ``f_aff`` (default: ``sum(widths)``, the paper's 448).
    """

    def __init__(self, in_channels, widths=(64, 128, 256), out_channels=None):
        super().__init__()
        in_channels = tuple(int(c) for c in in_channels)
        widths = tuple(int(c) for c in widths)
        if len(in_channels) != 3 or len(widths) != 3:
            raise ValueError(f"need three levels, got in_channels={in_channels}, widths={widths}")
        out_channels = sum(widths) if out_channels is None else int(out_channels)
        self.reduce = nn.ModuleList(
            nn.Conv2d(c, w, kernel_size=1, bias=False) for c, w in zip(in_channels, widths)
        )
        self.fuse = nn.Conv2d(sum(widths), out_channels, kernel_size=1, bias=False)
        for conv in self.reduce:
            nn.init.kaiming_normal_(conv.weight)
        # a large gain spreads the initial features, so that initial affinities
        # are far from 1 and both positive and negative terms carry gradient
        nn.init.xavier_uniform_(self.fuse.weight, gain=4)
        self.out_channels = out_channels

    def forward(self, levels, size=None):
        """``levels``: three maps; ``size``: output grid (default: the last level's)."""
        if len(levels) != 3:
            raise ValueError(f"AffinityHead needs three feature levels, got {len(levels)}")
        size = tuple(levels[-1].shape[-2:]) if size is None else tuple(size)
        parts = [resize_to(F.elu(conv(f)), size) for conv, f in zip(self.reduce, levels)]
        return F.elu(self.fuse(torch.cat(parts, dim=1)))


class AffinityNet(nn.Module):
    """Backbone + :class:`AffinityHead`, producing ``f_aff`` on the stride grid.

    Parameters
    ----------
    backbone : nn.Module
        Follows :class:`sklearn_psa.nn.base.Backbone`: ``forward`` returns
        (low, mid, high), with ``out_channels`` and ``normalize``.
    widths, out_channels :
        Passed to :class:`AffinityHead`.
    stride : int
        The output grid is ``ceil(H / stride) x ceil(W / stride)``.
    input_scale : float
        The image is resized by this factor before the backbone (features are
        then pooled back to the grid): above 1 gives the backbone more pixels
        per grid cell.
    dropout : float, default=0.0
        Channel dropout (``nn.Dropout2d``) on the backbone's deepest level
        before the head, in training mode only; 0 adds no dropout layer.
    """

    def __init__(self, backbone, widths=(64, 128, 256), out_channels=None, stride=8,
                 input_scale=1.0, dropout=0.0):
        super().__init__()
        # the constructor's arguments but the backbone, so that sklearn_psa.io.save_model
        # can rebuild it
        self.init_args = {"widths": [int(w) for w in widths],
                          "out_channels": None if out_channels is None else int(out_channels),
                          "stride": int(stride), "input_scale": float(input_scale),
                          "dropout": float(dropout)}
        self.backbone = backbone
        self.head = AffinityHead(backbone.out_channels, widths, out_channels)
        self.stride = int(stride)
        self.input_scale = float(input_scale)
        self.dropout = nn.Dropout2d(float(dropout)) if dropout else None

    def forward(self, x):
        """``x``: float RGB batch (N, 3, H, W) on the 0..255 scale -> (N, C, h, w)."""
        levels, size = backbone_levels(self.backbone, x, self.stride, self.input_scale)
        dropout = getattr(self, "dropout", None)  # None in a network pickled without it
        if dropout is not None:
            levels = (*levels[:-1], dropout(levels[-1]))
        return self.head(levels, size)


def backbone_levels(backbone, x, stride=8, input_scale=1.0):
    """Run a backbone on a batch laid out for the stride grid.

    The normalised batch is padded (edge replication) to a multiple of
    ``stride`` and resized by ``input_scale`` before the backbone, so that its
    features cover exactly the ``ceil(H / stride) x ceil(W / stride)`` cells.

    Parameters
    ----------
    backbone : Backbone
    x : Tensor of shape (N, 3, H, W)
        Float RGB on the 0..255 scale.
    stride : int
    input_scale : float

    Returns
    -------
    levels : tuple of 3 Tensor
        The backbone's ``(low, mid, high)`` (not yet resized to the grid).
    size : tuple of 2 int
        The grid ``(ceil(H / stride), ceil(W / stride))``.
    """
    H, W = x.shape[-2:]
    size = (-(-H // stride), -(-W // stride))
    x = backbone.normalize(x)
    Hp, Wp = size[0] * stride, size[1] * stride
    if (Hp, Wp) != (H, W):
        x = F.pad(x, (0, Wp - W, 0, Hp - H), mode="replicate")
    if input_scale != 1.0:
        x = F.interpolate(x, scale_factor=input_scale, mode="bilinear",
                          align_corners=False, recompute_scale_factor=False)
    return backbone(x), size

