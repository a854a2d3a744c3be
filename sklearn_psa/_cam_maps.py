"""Multi-scale class activation maps of a network: what CAMClassifier and ClassifierCAM share.

The network gives ``features(x)`` (a tuple of feature maps, the last the one the
classifier pools), ``head(features)`` (logits ``(N, n_classes)``) and
``head.cams(features)`` (ReLU'd class maps ``(N, n_classes, h, w)``), as
:class:`sklearn_psa.nn.heads.Network` with a
:class:`~sklearn_psa.nn.heads.CAMHead` does. Inference follows the paper
(docs/method.md, section 1): each scale, also flipped, upsampled to the image
size and summed; each class divided by its maximum (+1e-5); only the classes
present kept.
"""

import numpy as np

from ._device import autocast
from ._distributed import share_work
from ._store import ArrayStore, image_key, model_key
from ._torch_estimator import images_to_tensor, iter_image_batches
from .records import Record, Records

__all__ = ["cam_records", "checked_scales", "multiscale_cams", "sigmoid", "stored_cams"]


def sigmoid(z):
    """The logistic function in float64."""
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def checked_scales(scales):
    """``scales`` as a tuple of positive floats (a clear error otherwise)."""
    try:
        out = tuple(float(s) for s in np.asarray(scales, dtype=float).ravel())
    except (TypeError, ValueError):
        out = ()
    if not out or not all(np.isfinite(s) and s > 0 for s in out):
        raise ValueError(f"scales must be a non-empty sequence of positive numbers, got {scales!r}")
    return out


def multiscale_cams(net, images, *, n_classes, scales, flip, threshold, batch_size, verbose,
                    desc, labels=None, cams=True, emit=None, done=0):
    """Logits ``(n, n_classes)`` and, when ``cams``, each image's ``(present, maps)``.

    Parameters
    ----------
    net : torch.nn.Module
        On its inference device, in eval mode, with ``features``, ``head`` and
        ``head.cams`` (module docstring).
    images : sklearn_psa._validation.ImageSet
    n_classes : int
    scales : tuple of float
        Used when ``cams``; the logits come from scale 1 (a plain pass when 1
        is not among them).
    flip : bool
        Also take each scale horizontally flipped (for the maps).
    threshold : float
        Classes whose sigmoid of the logit reaches it are present, where
        ``labels`` is None.
    batch_size : int
    verbose : int
    desc : str
        Name of the progress bar.
    labels : ndarray of shape (n, n_classes), optional
        The classes present (0/1); None: the predicted ones.
    cams : bool, default=True
        False: the logits only.
    emit : callable or None, default=None
        With it, each image's ``(present, maps)`` goes to
        ``emit(i, present, maps)`` as it is computed and is not kept (its
        ``out`` item stays None).
    done : int, default=0
        Images computed earlier, counted in the progress bar.

    Returns
    -------
    logits : ndarray of shape (n, n_classes), float32
    out : list of (ndarray of int, ndarray of shape (L, H, W) float32) or None
        Per image the classes present and their maps, each in [0, 1] (None
        without ``cams``).
    """
    import torch
    from torch.nn import functional as F

    from ._training import progress

    device = next(net.parameters()).device
    scales = scales if cams else (1.0,)
    n = len(images)
    logits = np.zeros((n, n_classes), np.float32)
    out = [None] * n
    bar = progress(verbose=verbose, desc=desc, total=n + done, initial=done)
    with torch.inference_mode(), autocast(device), bar:
        for idx in iter_image_batches(images.shapes, batch_size):
            x = images_to_tensor([images[i] for i in idx], device)
            N, _, H, W = x.shape
            total = None
            have_logits = False
            for s in scales:
                xs = x
                if s != 1.0:
                    size = (max(1, round(H * s)), max(1, round(W * s)))
                    xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
                if cams and flip:
                    xs = torch.cat([xs, xs.flip(-1)])
                feats = net.features(xs)
                if s == 1.0 and not have_logits:
                    logits[idx] = net.head(tuple(f[:N] for f in feats)).float().cpu().numpy()
                    have_logits = True
                if not cams:
                    continue
                maps = net.head.cams(feats).float()
                maps = F.interpolate(maps, size=(H, W), mode="bilinear", align_corners=False)
                if flip:
                    maps = maps[:N] + maps[N:].flip(-1)
                total = maps if total is None else total + maps
            bar.update(len(idx))
            if not cams:
                continue
            if not have_logits:  # scales without 1.0: logits from a plain pass
                logits[idx] = net(x).float().cpu().numpy()
            total = total / (total.amax(dim=(2, 3), keepdim=True) + 1e-5)
            total = total.cpu().numpy()
            for j, i in enumerate(idx):
                if labels is None:
                    present = np.flatnonzero(sigmoid(logits[i]) >= threshold)
                else:
                    present = np.flatnonzero(labels[i])
                out[i] = (present, np.ascontiguousarray(total[j, present], dtype=np.float32))
                if emit is not None:
                    emit(i, *out[i])
                    out[i] = None
    return logits, out


def cam_records(estimator, net, images, labels, run, source=None):
    """The :class:`~sklearn_psa.records.Records` of the CAMs that ``run`` computes.

    ``run(images, labels, emit=None, done=0)`` returns ``(logits, [(present,
    cams)])`` as :func:`multiscale_cams` does with ``net``, the estimator's
    network already on its inference device (resolved once by the caller).
    Where ``estimator.store`` is set, the CAMs go through it
    (:func:`stored_cams`). ``source`` is the records' ``source``.

    Within :func:`~sklearn_psa._distributed.split_work` (a data-parallel fit),
    each rank computes the CAMs of its share of the images
    (:func:`~sklearn_psa._distributed.share_work`) and every rank gets all.
    """
    if estimator.store is None:
        def compute(part):
            return run(images.take(part), None if labels is None else labels[part])[1]

        out = share_work(compute, range(len(images)))
    else:
        out = stored_cams(estimator, net, images, labels, run)
    records = [Record(images.sources[i], present, cams, shape=tuple(images.shape(i)))
               for i, (present, cams) in enumerate(out)]
    return Records(records, estimator.n_classes_, source=source, from_array=images.from_array)


def stored_cams(estimator, net, images, labels, run):
    """``(present, cams reference)`` per image through ``estimator.store``, computing only the
    images whose CAMs are not there.

    The key of an image's CAMs: the estimator's class, its parameters (but
    those in ``_store.NOT_IN_KEY``), the weights of ``net``, its fitted network, the image
    and the classes asked for (``labels``; None: the predicted ones, kept
    beside the CAMs). ``run(images, labels, emit=, done=)`` computes CAMs as
    :func:`multiscale_cams` does, handing each image to ``emit``. In a
    data-parallel fit each rank writes its share of those missing, and all
    read them after a barrier (:meth:`~sklearn_psa._store.ArrayStore.fill`).
    """
    import joblib

    store = ArrayStore(estimator.store)
    model = model_key(estimator, (net,))
    asked = [None if labels is None else np.flatnonzero(labels[i]) for i in range(len(images))]
    keys = [joblib.hash((model, image_key(src), None if a is None else a.tolist()))
            for src, a in zip(images.sources, asked)]
    def compute(todo):  # the images not there (in a data-parallel fit: this rank's share)
        def emit(j, present, cams):
            key = keys[todo[j]]
            if labels is None:  # the predicted classes: kept beside the CAMs
                store.save("labels", key, present.astype(np.int64))
            store.save("cams", key, cams)  # last: its presence means both are there

        run(images.take(todo), None if labels is None else labels[todo],
            emit=emit, done=len(images) - len(todo))

    store.fill("cams", keys, compute)
    # references, not open memory maps: a record maps its file when it is used
    return [(store.read("labels", key) if a is None else a, store.reference("cams", key))
            for key, a in zip(keys, asked)]
