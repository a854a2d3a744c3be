"""The one training loop shared by the CAM, affinity and segmentation networks.

An estimator describes its data as a sequence of :class:`Sample` (an image,
optional pixel maps cropped and flipped with it, optional per-image targets),
its objective as ``loss_fn(net, batch) -> scalar tensor``, and calls
:func:`train`::

    from sklearn_psa._training import Augmentation, Sample, TrainConfig, train, seeded

    samples = [Sample(image, maps={"label": label_map}, targets={"labels": y}) ...]
    config = TrainConfig(max_epochs=10, batch_size=8, learning_rate=0.05,
                         weight_decay=5e-4,
                         augmentation=Augmentation(crop_size=128, pad_value=net.backbone.input_mean))
    with seeded(seed):                      # same seed -> same initial weights
        net = Network(backbone, head)
    result = train(net, samples, loss_fn, config,
                   param_groups=net.parameter_groups(1.0, 10.0),
                   device=device, seed=seed, verbose=verbose,
                   checkpoint=path_or_None, fingerprint=joblib.hash((params, data)),
                   fingerprint_params=params,   # a mismatch names the params that differ
                   callbacks=[EarlyStopping()])  # sklearn_psa.callbacks
    result.records          # one dict per epoch: epoch, loss, seconds (valid_loss ...)
    result.epoch_seconds    # wall time per epoch run now

The estimators do not call it themselves: their base,
:class:`sklearn_psa._base.TrainedNetworkMixin`, does, from their hooks.

``batch`` is a dict on the training device: ``"image"`` a float
``(N, 3, h, w)`` batch on the 0..255 RGB scale (channels_last; the network
normalises it), each pixel map under its name as ``(N, h, w)`` (int64 for
integer maps, padded with 255 = ignore; float32 for float maps, padded with
0), each per-image target under its name as a float32 ``(N, ...)`` tensor.

What the loop does (the reference code's recipe where it has one). The
:class:`Trainer` runs the epochs and steps and notifies callbacks
(:mod:`sklearn_psa.callbacks`) at each event; its own parts that are not the
step itself are callbacks too (:class:`MixedPrecision`, the user's,
:class:`CheckpointFile`, :class:`LRSchedule`, :class:`ProgressBar`, in that
order):

- By default SGD with momentum 0.9 (``TrainConfig.optimizer`` and
  ``optimizer_options``: any torch optimizer, :func:`make_optimizer`), weight
  decay on weights (not on biases and norm parameters), the learning rate of
  each parameter group scaled by its multiplier (layers trained from scratch
  on a pretrained backbone get a higher rate, 10x in the reference) and by
  default decayed polynomially per step: ``lr = base * (1 - step / max_step)
  ** power`` (power 0.9; ``TrainConfig.lr_schedule``, :class:`LRSchedule`).
- Augmentation: random rescale (optional), random crop to ``crop_size``
  (smaller images are placed at a random offset on a padded canvas),
  horizontal flip, colour jitter of brightness, contrast and saturation.
- Mixed precision on CUDA (bfloat16 where supported, else float16 with a
  gradient scaler); channels_last memory format.
- Seeding: epoch ``e`` draws its data order, crops and dropout masks from
  ``(seed, e)`` only, so the same seed gives the same weights on CPU, and a
  run resumed from a checkpoint gives the same weights as an uninterrupted one.
- Checkpoints: after each epoch the model, optimizer, epoch and loss history
  are written atomically to ``checkpoint``; when that file exists at the
  start, training continues at its epoch (its ``fingerprint`` must match;
  ``fingerprint_params``, stored with it, let a mismatch name what differs).
  A checkpoint holding exactly the weights ``net`` starts from (the last one
  of the fit that a warm start continues) is replaced rather than resumed. A
  checkpoint written when a callback stopped the training is complete.
- Progress: a tqdm bar over steps when ``verbose`` (:func:`progress`, which
  the estimators' inference loops use too): erased when done at ``verbose=1``,
  kept at ``verbose >= 2``.
"""

import contextlib
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ._device import cuda_amp_dtype
from ._distributed import is_main_process, set_batchnorm_sync
from .callbacks import Callback

__all__ = [
    "Augmentation",
    "CheckpointFile",
    "ImageSamples",
    "LRSchedule",
    "MixedPrecision",
    "ProgressBar",
    "Sample",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "auto_workers",
    "load_checkpoint",
    "make_optimizer",
    "optimizer_names",
    "poly_lr",
    "progress",
    "seeded",
    "sgd_param_groups",
    "train",
    "weights_hash",
]


def progress(iterable=None, *, verbose, desc, total=None, unit="image", initial=0):
    """The tqdm bar of a long loop (training steps, inference over images).

    Parameters
    ----------
    iterable : iterable, optional
        Wrapped as ``tqdm(iterable)``; without it, call ``update`` on the bar.
    verbose : int
        0: no bar; 1: a bar erased when the loop ends; 2 or more: the bar
        stays (one line per stage). In a process group, on rank 0 only.
    desc : str
        Label naming the stage.
    total : int, optional
    unit : str, default="image"
    initial : int, default=0

    Returns
    -------
    bar : tqdm.tqdm
    """
    from tqdm.auto import tqdm

    if verbose and not is_main_process():  # a data-parallel run: rank 0 shows the bars
        verbose = 0
    return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit,
                disable=not verbose, leave=verbose > 1)


# --------------------------------------------------------------------------- data


@dataclass
class Sample:
    """One training item.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8
    maps : dict of str to ndarray of shape (H, W)
        Pixel targets, transformed with the image (integer maps are padded with
        255, boolean maps with False, float maps with 0).
    targets : dict of str to ndarray
        Per-image targets (e.g. the label indicator), passed through.
    """

    image: np.ndarray
    maps: dict = field(default_factory=dict)
    targets: dict = field(default_factory=dict)


class ImageSamples(Sequence):
    """:class:`Sample` views over validated images, loaded lazily by index.

    Parameters
    ----------
    images : ImageSet or sequence of (H, W, 3) uint8 arrays
    maps : dict of str to sequence, optional
        Per-image pixel maps (``maps[name][i]`` is image ``i``'s ``(H, W)`` map).
    targets : dict of str to sequence or array, optional
        Per-image targets (``targets[name][i]``), e.g. ``{"labels": Y}``.
    """

    def __init__(self, images, maps=None, targets=None):
        self.images = images
        self.maps = dict(maps or {})
        self.targets = dict(targets or {})
        for kind in (self.maps, self.targets):
            for k, v in kind.items():
                if len(v) != len(images):
                    raise ValueError(f"{k!r} has {len(v)} items but there are {len(images)} images")

    def __len__(self):
        return len(self.images)

    def shape(self, i):
        """``(H, W)`` of image ``i`` (a file's from its header)."""
        shape = getattr(self.images, "shape", None)
        return tuple(shape(i)) if callable(shape) else np.shape(self.images[i])[:2]

    def __getitem__(self, i):
        return Sample(
            self.images[i],
            {k: np.asarray(v[i]) for k, v in self.maps.items()},
            {k: np.asarray(v[i]) for k, v in self.targets.items()},
        )


def _map_fill(arr):
    """Padding of a pixel map: 255 (ignore) for integer maps, False for boolean, 0 for float."""
    if arr.dtype == bool:
        return False
    return 255 if np.issubdtype(arr.dtype, np.integer) else 0


#: Internal boolean map of an image's own pixels (False on padding), for the colour jitter.
_VALID = "__valid__"


@dataclass
class Augmentation:
    """Random geometric and photometric changes applied to training samples.

    Parameters
    ----------
    crop_size : int or None
        Side of the square random crop; None keeps whole images (padded to the
        largest in the batch).
    flip : bool
        Random horizontal flip.
    color_jitter : float
        Brightness, contrast and saturation factors drawn from
        ``[1 - color_jitter, 1 + color_jitter]`` (the reference uses 0.3).
    scale_range : (float, float)
        Random rescale factor range applied before cropping.
    pad_value : tuple of 3 floats
        RGB value (0..255 scale) of padded pixels; use the backbone's
        ``input_mean`` so that padding normalises to 0.
    """

    crop_size: int = None
    flip: bool = True
    color_jitter: float = 0.3
    scale_range: tuple = (1.0, 1.0)
    pad_value: tuple = (0.0, 0.0, 0.0)

    def draw(self, shape, rng):
        """The random choices for an image of ``shape`` ``(H, W)``, drawn from ``rng``:
        a dict for :meth:`geometric` (``"scale"``, ``"crop"`` offsets, ``"flip"``).

        Only the shape is needed, so one process can draw for a whole batch, in
        order, whichever process or rank then decodes and transforms each image.
        """
        h, w = shape[:2]
        params = {"scale": 1.0, "crop": None, "flip": False}
        lo, hi = self.scale_range
        if (lo, hi) != (1.0, 1.0):
            params["scale"] = scale = rng.uniform(lo, hi)
            h, w = _scaled_size((h, w), scale)
        if self.crop_size is not None:
            size = int(self.crop_size)
            ch, cw = min(h, size), min(w, size)
            params["crop"] = (rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1),
                              rng.integers(0, size - ch + 1), rng.integers(0, size - cw + 1))
        params["flip"] = bool(self.flip and rng.random() < 0.5)
        return params

    def geometric(self, sample, rng=None, params=None):
        """Rescale, crop and flip one sample; return ``(image float32 HxWx3, maps)``.

        The choices are ``params`` (of :meth:`draw`), else drawn from ``rng``.
        """
        image = np.asarray(sample.image)
        maps = {k: np.asarray(v) for k, v in sample.maps.items()}
        for k, v in maps.items():
            if v.shape != image.shape[:2]:
                raise ValueError(f"map {k!r} has shape {v.shape} but its image is {image.shape[:2]}")
        if params is None:
            params = self.draw(image.shape, rng)
        if params["scale"] != 1.0:
            image, maps = _rescale(image, maps, params["scale"])
        image = image.astype(np.float32, copy=False)
        if params["crop"] is not None:
            image, maps = _crop(image, maps, int(self.crop_size), params["crop"], self.pad_value)
        if params["flip"]:
            image = image[:, ::-1]
            maps = {k: v[:, ::-1] for k, v in maps.items()}
        return np.ascontiguousarray(image), {k: np.ascontiguousarray(v) for k, v in maps.items()}

    @property
    def jitters(self):
        """Whether the colours are jittered (``color_jitter > 0``)."""
        return float(self.color_jitter) > 0

    def jitter_factors(self, n, rng):
        """``(n, 3)`` brightness, contrast, saturation factors; None without jitter."""
        if not self.jitters:
            return None
        j = float(self.color_jitter)
        return rng.uniform(max(0.0, 1 - j), 1 + j, size=(n, 3)).astype(np.float32)


def _scaled_size(shape, scale):
    h, w = shape
    return max(1, round(h * scale)), max(1, round(w * scale))


def _rescale(image, maps, scale):
    import torch
    from torch.nn import functional as F

    h, w = image.shape[:2]
    size = _scaled_size((h, w), scale)
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    out = F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0]
    image = out.clamp_(0, 255).permute(1, 2, 0).numpy()
    ys = np.minimum((np.arange(size[0]) + 0.5) * h / size[0], h - 1).astype(int)
    xs = np.minimum((np.arange(size[1]) + 0.5) * w / size[1], w - 1).astype(int)
    return image, {k: v[ys][:, xs] for k, v in maps.items()}


def _crop(image, maps, size, offsets, pad_value):
    """Crop a ``size`` square at ``offsets`` ``(y0, x0, oy, ox)`` (of :meth:`Augmentation.draw`):
    the image from ``(y0, x0)``; one smaller than it lands at ``(oy, ox)`` on a canvas."""
    h, w = image.shape[:2]
    ch, cw = min(h, size), min(w, size)
    y0, x0, oy, ox = offsets
    canvas = np.empty((size, size, 3), np.float32)
    canvas[...] = np.asarray(pad_value, np.float32)
    canvas[oy:oy + ch, ox:ox + cw] = image[y0:y0 + ch, x0:x0 + cw]
    out = {}
    for k, v in maps.items():
        m = np.full((size, size), _map_fill(v), v.dtype)
        m[oy:oy + ch, ox:ox + cw] = v[y0:y0 + ch, x0:x0 + cw]
        out[k] = m
    return canvas, out


def _collate(items, pad_value):
    """Stack ``(image, maps)`` pairs, padding to the largest (bottom/right).

    A map that some items lack is padding (its fill) in theirs: the class
    score maps of ``AffinityEstimator(label_pooling="mean")``, one per class
    an image has.
    """
    H = max(im.shape[0] for im, _ in items)
    W = max(im.shape[1] for im, _ in items)
    images = np.empty((len(items), H, W, 3), np.float32)
    images[...] = np.asarray(pad_value, np.float32)
    first = {}  # each name's first map, for its dtype and fill, in the order they come
    for _, mp in items:
        for k, v in mp.items():
            first.setdefault(k, v)
    maps = {k: np.full((len(items), H, W), _map_fill(v), v.dtype) for k, v in first.items()}
    for i, (im, mp) in enumerate(items):
        images[i, : im.shape[0], : im.shape[1]] = im
        for k, v in mp.items():
            maps[k][i, : im.shape[0], : im.shape[1]] = v
    return images, maps


def _color_jitter(x, factors, valid=None, pad_value=None):
    """Brightness, contrast, saturation on a float (N, 3, h, w) 0..255 batch.

    ``valid`` (bool (N, 1, h, w)) marks each image's own pixels: the contrast
    mean is theirs, and the padding keeps ``pad_value``.
    """
    import torch

    b, c, s = (factors[:, i].view(-1, 1, 1, 1) for i in range(3))
    jittered = x * b
    gray = (0.299 * jittered[:, 0:1] + 0.587 * jittered[:, 1:2] + 0.114 * jittered[:, 2:3])
    if valid is None:
        mean = gray.mean(dim=(2, 3), keepdim=True)
    else:
        weight = valid.to(gray.dtype)
        mean = (gray * weight).sum(dim=(2, 3), keepdim=True) / weight.sum(dim=(2, 3), keepdim=True).clamp_min(1)
    jittered = (jittered - mean) * c + mean
    gray = (0.299 * jittered[:, 0:1] + 0.587 * jittered[:, 1:2] + 0.114 * jittered[:, 2:3])
    jittered = ((jittered - gray) * s + gray).clamp(0, 255)
    if valid is None:
        return jittered
    pad = torch.as_tensor(pad_value, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return torch.where(valid, jittered, pad)


def _sample_shape(samples, i):
    """``(H, W)`` of sample ``i``: from the sequence's ``shape(i)`` where it has one
    (without decoding the image), else from the sample."""
    shape = getattr(samples, "shape", None)
    return tuple(shape(i)) if callable(shape) else np.shape(samples[i].image)[:2]


#: The :meth:`Augmentation.draw` choices that leave an image as it is.
_AS_IS = {"scale": 1.0, "crop": None, "flip": False}


@dataclass
class _Plan:
    """What one process prepares of a batch: the samples ``indices``, each with its
    :meth:`Augmentation.draw` choices, and their colour jitter factors (or None)."""

    indices: list
    params: list
    factors: np.ndarray = None


def _plan(samples, idx, aug, rng, keep):
    """The draws for the batch ``idx`` from ``rng``, in the order of a single process
    (each image's geometry, then the batch's colour jitter), of which the positions
    ``keep`` (this rank's share) are planned."""
    params = [aug.draw(_sample_shape(samples, int(i)), rng) for i in idx]
    factors = aug.jitter_factors(len(idx), rng)
    return _Plan([int(idx[k]) for k in keep], [params[k] for k in keep],
                 None if factors is None else factors[keep])


def _host_batch(samples, plan, aug):
    """``(images, maps, targets, jitter factors)``: the samples of ``plan`` augmented and
    collated as numpy arrays (what a loader worker makes; :func:`_to_device_batch`
    takes it to the device)."""
    pairs, targets = [], {}
    for i, params in zip(plan.indices, plan.params):
        s = samples[i]
        if aug.jitters:  # mark the image's own pixels: the jitter leaves the padding
            s = Sample(s.image, {**s.maps, _VALID: np.ones(np.shape(s.image)[:2], bool)}, s.targets)
        pairs.append(aug.geometric(s, params=params))
        for k, v in s.targets.items():
            targets.setdefault(k, []).append(np.asarray(v))
    images, maps = _collate(pairs, aug.pad_value)
    return images, maps, targets, plan.factors


class _PlannedBatches(Sequence):
    """Host batches: item ``k`` is the :func:`_host_batch` of ``plans[k]`` (the dataset of
    a DataLoader with ``batch_size=None``)."""

    def __init__(self, samples, plans, aug):
        self.samples, self.plans, self.aug = samples, plans, aug

    def __len__(self):
        return len(self.plans)

    def __getitem__(self, k):
        return _host_batch(self.samples, self.plans[k], self.aug)


def _as_is(item):
    """A loader's collate function that leaves the numpy batch as it is."""
    return item


def _batches(n, batch_size, rng):
    """Shuffled index batches; a trailing batch of one joins the previous batch (BatchNorm)."""
    order = rng.permutation(n)
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if batch_size > 1 and len(batches) > 1 and len(batches[-1]) == 1:
        last = batches.pop()
        batches[-1] = np.concatenate([batches[-1], last])
    return batches


def _steps_per_epoch(n, batch_size):
    k = math.ceil(n / batch_size)
    if batch_size > 1 and k > 1 and n - (k - 1) * batch_size == 1:
        k -= 1
    return k


# --------------------------------------------------------------------------- optimisation


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train`.

    Parameters
    ----------
    max_epochs, batch_size : int
    learning_rate : float
        Base rate (multiplied per parameter group).
    weight_decay : float
        L2 penalty on weights (conv/linear kernels), not on biases and norm parameters.
    momentum : float, default=0.9
        Momentum of SGD where ``optimizer_options`` does not set it.
    power : float, default=0.9
        Exponent of the polynomial decay.
    augmentation : Augmentation
    amp : bool, default=True
        Mixed precision on CUDA (ignored on CPU).
    channels_last : bool, default=True
    optimizer : str, torch optimizer class or callable, default="sgd"
        See :func:`make_optimizer`.
    optimizer_options : dict or None, default=None
        Keyword arguments of the optimizer (e.g. ``{"momentum": 0.0}``).
    lr_schedule : {"poly", "constant"} or callable, default="poly"
        See :class:`LRSchedule`.
    """

    max_epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    momentum: float = 0.9
    power: float = 0.9
    augmentation: Augmentation = field(default_factory=Augmentation)
    amp: bool = True
    channels_last: bool = True
    optimizer: object = "sgd"
    optimizer_options: dict = None
    lr_schedule: object = "poly"


@dataclass
class TrainResult:
    """What :func:`train` reports.

    Attributes
    ----------
    history : list of float
        Mean training loss of every epoch trained so far (including those of a
        resumed checkpoint).
    epoch_seconds : list of float
        Wall time of each epoch run in this call.
    start_epoch : int
        Epoch this call started at (0, or the checkpoint's).
    records : list of dict
        One dict per epoch of ``history``: ``"epoch"`` (1-based), ``"loss"``,
        ``"seconds"`` (None for an epoch of a checkpoint that did not store
        it), ``"valid_loss"`` with a validation split, and what callbacks added.
    """

    history: list
    epoch_seconds: list
    start_epoch: int = 0
    records: list = field(default_factory=list)


def poly_lr(base, step, max_step, power=0.9):
    """The reference's polynomial decay: ``base * (1 - step / max_step) ** power``."""
    return base * (1.0 - min(step, max_step) / max(max_step, 1)) ** power


def sgd_param_groups(groups, learning_rate, weight_decay):
    """SGD parameter groups from ``[(parameters, lr_mult), ...]``.

    Each entry is split into weights (``ndim > 1``, with weight decay) and
    biases/norm parameters (no weight decay); parameters that do not require
    gradients (frozen layers) are left out; a parameter listed twice is kept once.
    """
    seen = set()
    out = []
    for params, mult in groups:
        decay, no_decay = [], []
        for p in params:
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (decay if p.ndim > 1 else no_decay).append(p)
        for plist, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if plist:
                lr = learning_rate * mult
                out.append({"params": plist, "lr": lr, "initial_lr": lr, "weight_decay": wd})
    if not out:
        raise ValueError("the network has no trainable parameters")
    return out


def optimizer_names():
    """``{lower-case name: class name}`` of the optimizers in ``torch.optim`` (``"sgd"``,
    ``"adamw"`` ...): the names the ``optimizer`` parameter takes."""
    import torch

    return {name.lower(): name for name, obj in vars(torch.optim).items()
            if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer)
            and obj is not torch.optim.Optimizer}


def make_optimizer(optimizer, groups, learning_rate, options=None, momentum=0.9):
    """The optimizer of :func:`sgd_param_groups`' ``groups``.

    Parameters
    ----------
    optimizer : str, torch optimizer class or callable
        A name from :func:`optimizer_names` (``"sgd"``, ``"adamw"`` ...) or a
        ``torch.optim.Optimizer`` subclass, called as
        ``cls(groups, lr=learning_rate, **options)``; or any other callable,
        called as ``optimizer(groups, **options)``, that returns an optimizer.
        Each group carries its own ``lr`` and ``weight_decay``.
    groups : list of dict
    learning_rate : float
    options : dict or None
        Keyword arguments of the optimizer.
    momentum : float, default=0.9
        SGD's momentum (by name or class) where ``options`` does not set it.

    Returns
    -------
    torch.optim.Optimizer
    """
    import torch

    options = dict(options or {})
    if isinstance(optimizer, str):
        names = optimizer_names()
        if optimizer.lower() not in names:
            raise ValueError(f"optimizer={optimizer!r} is not an optimizer of torch.optim "
                             f"(e.g. {', '.join(sorted(names)[:6])} ...)")
        optimizer = getattr(torch.optim, names[optimizer.lower()])
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        if issubclass(optimizer, torch.optim.SGD):
            options.setdefault("momentum", momentum)
        out = optimizer(groups, lr=learning_rate, **options)
    else:
        out = optimizer(groups, **options)
    if not isinstance(out, torch.optim.Optimizer):
        raise TypeError(f"optimizer returned a {type(out).__name__}, not a torch.optim.Optimizer")
    return out


@contextlib.contextmanager
def seeded(seed, device=None):
    """Run the block with torch's global RNG seeded by ``seed``, restoring it afterwards.

    Use it around network construction so that the same ``random_state``
    gives the same initial weights.
    """
    import torch

    if device is not None and torch.device(device).type == "cuda":
        devices = [torch.device(device).index or 0]
    else:  # manual_seed also seeds every CUDA device: restore them all
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed) % (2**63))
        yield


def auto_workers(num_workers, device):
    """The DataLoader workers of ``num_workers`` (an int, or ``"auto"``) for training on
    ``device``: ``"auto"`` is none on the CPU (the network's threads use the cores), else
    the cores of this process (those of the machine shared by the ``LOCAL_WORLD_SIZE``
    processes a launcher started) less one, at most 8."""
    if not (isinstance(num_workers, str) and num_workers == "auto"):
        return int(num_workers)
    import torch

    if torch.device(device).type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_process = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(8, per_process - 1))


def _epoch_seed(seed, epoch):
    return int(np.random.SeedSequence([int(seed) % (2**63), epoch]).generate_state(1, np.uint64)[0] % (2**63))


# --------------------------------------------------------------------------- checkpoints


def weights_hash(module):
    """joblib hash of ``module``'s state dict (weights and buffers), e.g. to fingerprint
    the weights a warm start begins from."""
    import joblib

    return joblib.hash({k: v.detach().cpu().numpy() for k, v in module.state_dict().items()})


def _plain(value):
    """``value`` as plain Python that a ``weights_only`` checkpoint can hold and an error
    message can show: tuples become lists; other objects a ``"<type hash>"`` string."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    import joblib

    return f"<{type(value).__name__} {joblib.hash(value)[:12]}>"


def _mismatch_message(path, saved_params, params):
    """Why the checkpoint at ``path`` does not fit this run: the parameters that differ,
    else the data, or the bare fact where the checkpoint stores no parameters."""
    why = "fingerprint differs"
    if isinstance(saved_params, dict) and params is not None:
        params = _plain(params)
        unset = object()

        def show(d, k):
            return "not set" if d.get(k, unset) is unset else repr(d[k])

        diff = [f"{k}: {show(saved_params, k)} in the checkpoint, {show(params, k)} now"
                for k in sorted(set(saved_params) | set(params))
                if saved_params.get(k, unset) != params.get(k, unset)]
        why = "; ".join(diff) if diff else "the parameters agree, so the training data differ"
    return (f"checkpoint {os.fspath(path)} was written for other data or parameters ({why}); "
            "delete it or pass another checkpoint path")


def _holds_state_of(state, net):
    """Whether the checkpoint's model weights are exactly ``net``'s current ones."""
    import torch

    current = net.state_dict()
    return set(current) == set(state) and all(
        v.shape == state[k].shape and v.dtype == state[k].dtype and torch.equal(v.detach().cpu(), state[k])
        for k, v in current.items()
    )


def _save_checkpoint(path, net, optimizer, scaler, epoch, step, history, fingerprint,
                     fingerprint_params=None, records=None, stopped=False):
    import torch

    from ._files import atomic_write

    state = {
        "epoch": int(epoch),
        "step": int(step),
        "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "history": [float(h) for h in history],
        "records": _plain(list(records or [])),
        "stopped": bool(stopped),
        "fingerprint": "" if fingerprint is None else str(fingerprint),
    }
    if fingerprint_params is not None:
        state["fingerprint_params"] = _plain(fingerprint_params)
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def load_checkpoint(path):
    """Read a checkpoint written by :func:`train` (``weights_only=True``)."""
    import torch

    try:
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{os.fspath(path)}: not a readable training checkpoint ({exc})") from exc
    if not isinstance(state, dict) or not {"epoch", "step", "model", "optimizer"} <= set(state):
        raise ValueError(f"{os.fspath(path)}: not a training checkpoint written by sklearn_psa")
    return state


# --------------------------------------------------------------------------- the loop


def _to_device_batch(images, maps, targets, factors, device, channels_last, pad_value=None):
    import torch

    x = torch.from_numpy(images).to(device, non_blocking=True).permute(0, 3, 1, 2)
    valid = maps.pop(_VALID, None)
    if factors is not None:
        if valid is not None:
            valid = torch.from_numpy(valid).to(device)[:, None]
        x = _color_jitter(x, torch.from_numpy(factors).to(device), valid, pad_value)
    x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    batch = {"image": x}
    for k, v in maps.items():
        t = torch.from_numpy(v)
        t = t.long() if not t.is_floating_point() else t.float()
        batch[k] = t.to(device, non_blocking=True)
    for k, v in targets.items():
        batch[k] = torch.from_numpy(np.stack(v).astype(np.float32)).to(device, non_blocking=True)
    return batch


class TrainingDiverged(FloatingPointError, ValueError):
    """Training diverged: the loss or the weights became non-finite, or the loss exploded.

    The message names the network, the epoch and the learning rate to lower.
    """


#: A loss this many times the first one (and above 1e4) means the training has diverged:
#: the losses of these networks start near 1 and only fall when training works.
DIVERGENCE_FACTOR = 1e4


def _diverged_above(first_loss):
    return DIVERGENCE_FACTOR * max(1.0, abs(first_loss))


# --------------------------------------------------------------------------- the loop's own callbacks


class MixedPrecision(Callback):
    """Autocast on CUDA (bfloat16 where the GPU has it, else float16 with a gradient
    scaler); nothing on other devices or when not ``enabled``."""

    def __init__(self, enabled=True):
        self.enabled = enabled

    def on_train_begin(self, trainer):
        import torch

        if self.enabled and trainer.device.type == "cuda":
            trainer.amp_dtype = cuda_amp_dtype()
            if trainer.amp_dtype == torch.float16:
                trainer.scaler = torch.amp.GradScaler("cuda")


class LRSchedule(Callback):
    """Set each parameter group's rate before every step: its ``initial_lr`` times
    the schedule's factor at ``(trainer.step, trainer.max_step)``.

    Parameters
    ----------
    schedule : {"poly", "constant"} or callable, default="poly"
        ``"poly"``: :func:`poly_lr`, ``(1 - step / max_step) ** power`` (the
        reference's); ``"constant"``: 1; a callable: ``schedule(step, max_step)
        -> factor``.
    power : float, default=0.9
    """

    def __init__(self, schedule="poly", power=0.9):
        self.schedule = schedule
        self.power = power

    def on_batch_begin(self, trainer, batch):
        step, max_step = trainer.step, trainer.max_step
        for g in trainer.optimizer.param_groups:
            if callable(self.schedule):
                g["lr"] = g["initial_lr"] * float(self.schedule(step, max_step))
            elif self.schedule == "poly":
                g["lr"] = poly_lr(g["initial_lr"], step, max_step, self.power)
            elif self.schedule == "constant":
                g["lr"] = g["initial_lr"]
            else:
                raise ValueError(f"lr_schedule={self.schedule!r}: expected 'poly', 'constant' "
                                 "or a callable (step, max_step) -> factor")


class CheckpointFile(Callback):
    """Resume from ``path`` when it exists, and write it atomically after every epoch.

    In a data-parallel fit rank 0 alone reads it (and sends it to the others)
    and writes it.

    See :func:`train` for ``fingerprint`` and ``fingerprint_params``.
    """

    def __init__(self, path, fingerprint=None, fingerprint_params=None):
        self.path = path
        self.fingerprint = fingerprint
        self.fingerprint_params = fingerprint_params

    def _read(self, trainer):
        """The checkpoint's state to resume from; None to start anew."""
        if not os.path.exists(self.path):
            return None
        state = load_checkpoint(self.path)
        if self.fingerprint is not None and state.get("fingerprint", "") != str(self.fingerprint):
            if not _holds_state_of(state["model"], trainer.net):
                raise ValueError(_mismatch_message(self.path, state.get("fingerprint_params"),
                                                   self.fingerprint_params))
            return None  # where this run starts: overwritten by its first epoch
        return state

    def on_train_begin(self, trainer):
        if trainer.group is None:
            state = self._read(trainer)
        else:  # rank 0 reads (other machines need not see the file) and tells the others
            try:
                outcome = self._read(trainer) if trainer.rank == 0 else None
            except ValueError as exc:
                outcome = exc
            outcome = trainer.group.broadcast_object(outcome)
            if isinstance(outcome, Exception):
                raise outcome
            state = outcome
        if state is None:
            return
        from .nn.weights import load_weights

        load_weights(trainer.net, state["model"], source=f"checkpoint {os.fspath(self.path)}")
        trainer.optimizer.load_state_dict(state["optimizer"])
        if trainer.scaler is not None and "scaler" in state:
            trainer.scaler.load_state_dict(state["scaler"])
        trainer.start_epoch, trainer.step = int(state["epoch"]), int(state["step"])
        losses = list(state.get("history", []))
        records = list(state.get("records") or [])
        if len(records) != len(losses):  # a checkpoint of an older version: losses only
            records = [{"epoch": i + 1, "loss": float(h), "seconds": None} for i, h in enumerate(losses)]
        trainer.history = records
        trainer.stop = bool(state.get("stopped", False))

    def on_epoch_end(self, trainer, epoch, record):
        if trainer.rank != 0:  # one writer
            return
        _save_checkpoint(self.path, trainer.net, trainer.optimizer, trainer.scaler, epoch + 1,
                         trainer.step, [r["loss"] for r in trainer.history], self.fingerprint,
                         self.fingerprint_params, records=trainer.history, stopped=trainer.stop)


class ProgressBar(Callback):
    """A tqdm bar over the optimizer steps (see :func:`progress`), with the epoch and
    its loss."""

    def __init__(self, verbose=0, desc="training"):
        self.verbose = verbose
        self.desc = desc

    def on_epoch_begin(self, trainer, epoch):
        if getattr(self, "_bar", None) is None:  # after a validation split and a resume
            self._bar = progress(verbose=self.verbose, desc=self.desc, total=trainer.max_step,
                                 initial=min(trainer.step, trainer.max_step), unit="step")

    def on_batch_end(self, trainer, batch, loss):
        self._bar.update(1)

    def on_epoch_end(self, trainer, epoch, record):
        self._bar.set_postfix(epoch=record["epoch"], loss=f"{record['loss']:.4f}")

    def on_train_end(self, trainer):
        bar = self.__dict__.pop("_bar", None)
        if bar is not None:
            bar.close()


# --------------------------------------------------------------------------- the loop


class _Subset(Sequence):
    """Items ``indices`` of ``samples``."""

    def __init__(self, samples, indices):
        self.samples, self.indices = samples, [int(i) for i in indices]

    def __len__(self):
        return len(self.indices)

    def shape(self, i):
        return _sample_shape(self.samples, self.indices[i])

    def __getitem__(self, i):
        return self.samples[self.indices[i]]


class Trainer:
    """The running training loop that callbacks see (see :mod:`sklearn_psa.callbacks`).

    Made and run by :func:`train`; its attributes are the loop's state.
    """

    def __init__(self, net, samples, loss_fn, config, *, param_groups, device, seed, callbacks, desc,
                 group=None, num_workers=0):
        self.net, self.samples, self.loss_fn, self.config = net, samples, loss_fn, config
        self.group, self.num_workers = group, int(num_workers)
        self.model = net  # what the loss runs: net, or its DistributedDataParallel wrapper
        self.param_groups, self.device, self.seed = param_groups, device, seed
        self.callbacks, self.desc = list(callbacks), desc
        self.max_epochs, self.batch_size = int(config.max_epochs), int(config.batch_size)
        self.optimizer = self.scaler = self.amp_dtype = self.valid_samples = None
        self.start_epoch, self.step, self.history, self.stop = 0, 0, [], False

    @property
    def rank(self):
        """This process's rank in a data-parallel fit (0 in a single process)."""
        return 0 if self.group is None else self.group.rank

    @property
    def world_size(self):
        """The processes of a data-parallel fit (1 in a single process)."""
        return 1 if self.group is None else self.group.world_size

    @property
    def max_step(self):
        """Optimizer steps of the whole training."""
        return _steps_per_epoch(len(self.samples), self.batch_size) * self.max_epochs

    def hold_out(self, fraction):
        """Set aside ``fraction`` of the samples (the same ones for the same seed) as the
        validation split, whose loss each epoch then records as ``"valid_loss"``."""
        if self.valid_samples is not None:
            return
        n = len(self.samples)
        if n < 2:
            raise ValueError(f"a validation split needs at least 2 training images, got {n}")
        k = min(n - 1, max(1, round(float(fraction) * n)))
        order = np.random.default_rng([int(self.seed) % (2**63), 1]).permutation(n)
        self.valid_samples = _Subset(self.samples, np.sort(order[:k]))
        self.samples = _Subset(self.samples, np.sort(order[k:]))

    def _notify(self, event, *args):
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    def _autocast(self):
        import torch

        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def _device_batch(self, host):
        """The device batch of a :func:`_host_batch`."""
        return _to_device_batch(*host, self.device, self.config.channels_last,
                                self.config.augmentation.pad_value)

    def _host_batches(self, plans):
        """The host batches of ``plans``, prepared in ``num_workers`` loader workers (in
        order), or here without workers."""
        dataset = _PlannedBatches(self.samples, plans, self.config.augmentation)
        if self.num_workers <= 0 or len(plans) < 2:
            return iter(dataset)
        import torch
        from torch.utils.data import DataLoader

        # its own generator: the workers' seeds are not drawn from the global one (dropout's)
        return iter(DataLoader(dataset, batch_size=None, shuffle=False, collate_fn=_as_is,
                               num_workers=min(self.num_workers, len(plans)),
                               generator=torch.Generator().manual_seed(0)))

    def _share(self, idx):
        """``(positions, n)``: the positions in the global batch ``idx`` that this rank
        computes, and how many of them are its own (a rank with none runs the first
        one, weighted 0, since every rank takes part in every step)."""
        positions = np.arange(len(idx))
        if self.group is None:
            return positions, len(idx)
        own = self.group.share(positions)
        return (own, len(own)) if len(own) else (positions[:1], 0)

    def evaluate(self, samples):
        """Mean loss over ``samples``: whole images, no augmentation, eval mode, no gradients
        (in a data-parallel fit each rank evaluates its share and the means are combined)."""
        import torch

        aug = Augmentation(crop_size=None, flip=False, color_jitter=0.0,
                           pad_value=self.config.augmentation.pad_value)
        was_training = self.net.training
        self.net.eval()
        total, mine = 0.0, np.arange(len(samples))
        if self.group is not None:
            mine = self.group.share(mine)
        try:
            with torch.no_grad():
                for start in range(0, len(mine), self.batch_size):
                    items = mine[start:start + self.batch_size]
                    plan = _Plan([int(i) for i in items], [_AS_IS] * len(items))
                    batch = self._device_batch(_host_batch(samples, plan, aug))
                    with self._autocast():
                        total += float(self.loss_fn(self.net, batch)) * len(items)
        finally:
            self.net.train(was_training)
        if self.group is not None:
            total = self.group.sum([total])[0]
        return total / max(len(samples), 1)

    def _diverged(self, message):
        rate = self.config.learning_rate
        return TrainingDiverged(f"{self.desc} diverged at {message}; lower learning_rate (it was "
                                f"{rate:g}; try {rate / 10:g})")

    def _run_epoch(self, epoch, first_loss):
        import torch

        eseed = _epoch_seed(self.seed, epoch)
        rng = np.random.default_rng(eseed)
        torch.manual_seed((eseed + self.rank) % (2**63))  # dropout: each rank its own masks
        self.net.train()
        self._notify("on_epoch_begin", epoch)
        total, count = 0.0, 0
        aug = self.config.augmentation
        batches = _batches(len(self.samples), self.batch_size, rng)
        shares = [self._share(idx) for idx in batches]
        plans = [_plan(self.samples, idx, aug, rng, own) for idx, (own, _) in zip(batches, shares)]
        for idx, (_, n_own), host in zip(batches, shares, self._host_batches(plans)):
            batch = self._device_batch(host)
            self._notify("on_batch_begin", batch)
            with self._autocast():
                loss = self.loss_fn(self.model, batch)
            value = float(loss.detach())
            if self.group is not None:  # the global batch's mean loss, the same on every rank
                value = self.group.sum([value * n_own])[0] / len(idx)
                # DistributedDataParallel averages the ranks' gradients: weighted by each
                # rank's share of the batch, they are the gradient of the batch's mean
                loss = loss * (n_own * self.world_size / len(idx))
            first_loss = value if first_loss is None else first_loss
            if not math.isfinite(value) or value > _diverged_above(first_loss):
                raise self._diverged(f"epoch {epoch + 1}, step {self.step + 1}: the loss became "
                                     f"{value:.4g} (the first was {first_loss:.4g})")
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            self.step += 1
            total += value * len(idx)
            count += len(idx)
            self._notify("on_batch_end", batch, value)
        if not all(bool(torch.isfinite(p).all()) for p in self.net.parameters()):
            raise self._diverged(f"epoch {epoch + 1}: the network's weights are no longer finite "
                                 "(NaN or infinite outputs would follow)")
        return total / count, first_loss

    def run(self):
        """Train; return the :class:`TrainResult`."""
        import torch

        config = self.config
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        # SyncBatchNorm where BatchNorm trains (CUDA only: torch has no CPU SyncBatchNorm)
        synced = (self.group is not None and self.device.type == "cuda"
                  and set_batchnorm_sync(self.net, True) > 0)
        self.net.to(device=self.device, memory_format=memory_format)
        groups = sgd_param_groups(self.param_groups, config.learning_rate, config.weight_decay)
        self.optimizer = make_optimizer(config.optimizer, groups, config.learning_rate,
                                        config.optimizer_options, config.momentum)
        epoch_seconds, first_loss = [], None
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        try:
            self._notify("on_train_begin")
            if self.group is not None:
                from torch.nn.parallel import DistributedDataParallel

                ids = [self.device.index] if self.device.type == "cuda" else None
                # static graph: parameters that take no gradient (EfficientNet's ImageNet
                # classifier) are found at the first step, without a search at every step
                self.model = DistributedDataParallel(self.net, device_ids=ids, static_graph=True)
            with torch.random.fork_rng(devices=devices):
                for epoch in range(self.start_epoch, self.max_epochs):
                    if self.stop:
                        break
                    t0 = time.perf_counter()
                    loss, first_loss = self._run_epoch(epoch, first_loss)
                    record = {"epoch": epoch + 1, "loss": loss}
                    if self.valid_samples is not None:
                        record["valid_loss"] = self.evaluate(self.valid_samples)
                    record["seconds"] = time.perf_counter() - t0
                    epoch_seconds.append(record["seconds"])
                    self.history.append(record)
                    self._notify("on_epoch_end", epoch, record)
            if self.group is not None:  # every rank ends with rank 0's model and history
                self.group.broadcast_module(self.net)  # BatchNorm statistics differ by rank
                self.history = self.group.broadcast_object(self.history)
                epoch_seconds = [r["seconds"] for r in self.history[len(self.history) - len(epoch_seconds):]]
        finally:
            self.model = self.net
            self._notify("on_train_end")
            if synced:
                set_batchnorm_sync(self.net, False)
            self.net.eval()
        return TrainResult(history=[r["loss"] for r in self.history], epoch_seconds=epoch_seconds,
                           start_epoch=self.start_epoch, records=self.history)


def train(net, samples, loss_fn, config, *, param_groups=None, device="cpu", seed=0, verbose=0,
          checkpoint=None, fingerprint=None, fingerprint_params=None, desc="training", callbacks=(),
          group=None, num_workers=0):
    """Train ``net`` in place on ``samples``; see the module docstring.

    Parameters
    ----------
    net : torch.nn.Module
        Moved to ``device`` (and channels_last); left there in eval mode.
    samples : sequence of Sample
        Indexed once per epoch per item (images may load lazily).
    loss_fn : callable
        ``loss_fn(net, batch) -> scalar tensor``.
    config : TrainConfig
    param_groups : list of (iterable of parameters, float), optional
        Learning-rate multipliers; default: all parameters at 1x.
    device : torch.device or str
    seed : int
    verbose : int
        0: silent; 1: a tqdm progress bar over the steps, erased when done;
        2 or more: the bar stays (see :func:`progress`).
    checkpoint : path, optional
        Written atomically after every epoch; resumed from when it exists.
    fingerprint : str, optional
        Identifies the data and parameters; a checkpoint with another
        fingerprint is an error rather than silently resumed, unless its
        weights are exactly those ``net`` starts from (a warm start after the
        fit that wrote it, whose fingerprint includes its starting weights):
        resuming it would train nothing and replacing it loses nothing, so
        it is replaced.
    fingerprint_params : dict, optional
        The parameters that went into ``fingerprint`` (values made plain:
        tuples as lists, objects as hashes), stored in the checkpoint so that
        a mismatch names the parameters that differ, or says that the data
        differ when they agree.
    desc : str
        Progress bar label.
    callbacks : sequence of Callback, default=()
        The user's callbacks (:mod:`sklearn_psa.callbacks`). They are notified
        after the mixed-precision set-up and before the loop's checkpoint,
        learning-rate schedule and progress bar, so that what they do at the
        end of an epoch (stop, restore weights) is in its checkpoint.
    group : sklearn_psa._distributed.ProcessGroup or None, default=None
        Train data-parallel in this group: ``net`` wrapped in
        ``DistributedDataParallel`` on ``device`` (this rank's), each global
        batch of ``config.batch_size`` split over the ranks, losses and
        validation losses combined, checkpoints written and progress shown by
        rank 0 only, and rank 0's weights and history on every rank at the end.
    num_workers : int, default=0
        DataLoader worker processes that load and augment the batches (0: in
        this process). The same batches either way.

    Returns
    -------
    TrainResult
    """
    import torch

    if len(samples) == 0:
        raise ValueError("no training samples")
    own = [MixedPrecision(config.amp), *callbacks]
    if checkpoint is not None:
        own.append(CheckpointFile(checkpoint, fingerprint, fingerprint_params))
    own += [LRSchedule(config.lr_schedule, config.power), ProgressBar(verbose, desc)]
    if param_groups is None:
        param_groups = [(net.parameters(), 1.0)]
    trainer = Trainer(net, samples, loss_fn, config, param_groups=param_groups,
                      device=torch.device(device), seed=seed, callbacks=own, desc=desc, group=group,
                      num_workers=num_workers)
    return trainer.run()
