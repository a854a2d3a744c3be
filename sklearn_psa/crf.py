"""Fully connected CRF: mean-field inference in pure torch (CPU and CUDA).

The dense CRF of Krähenbühl and Koltun ("Efficient Inference in Fully
Connected CRFs with Gaussian Edge Potentials", NIPS 2011) with Potts
compatibility, as the AffinityNet reference code uses it (through
``pydensecrf``) to refine class activation maps. Its energy is

    E(x) = sum_i U_i(x_i) + sum_{i<j} [x_i != x_j] sum_k w_k k_k(f_i, f_j)

with an appearance (bilateral) kernel on position and colour and a
smoothness (Gaussian) kernel on position. Mean-field inference iterates

    Q <- softmax(-U + sum_k w_k D_k K_k D_k Q)

where ``K_k`` filters every label map with the Gaussian kernel ``k_k`` and
``D_k = diag(K_k 1)^(-1/2)`` is the symmetric normalisation of
Krähenbühl's code (``NORMALIZE_SYMMETRIC``, the default of ``pydensecrf``).
The long-range bilateral kernel is filtered on a permutohedral lattice
(:mod:`sklearn_psa._permutohedral`) built once per image, in the same way as
Krähenbühl's code, so results agree with ``pydensecrf`` to float rounding.

:func:`dense_crf` refines one probability map; :class:`DenseCRF` keeps an
image's lattices to refine several.
"""

import inspect
import numbers
import threading

import numpy as np

from . import _device
from ._device import cpu_threads, flush_denormal, resolve_device

__all__ = ["DenseCRF", "dense_crf", "ImageCRF", "check_crf_options", "placed_crf_options",
           "scaled_crf_options", "CRF_REFERENCE_SIDE"]

#: The reference code's CRF kernels are for VOC images of about this many pixels a side;
#: ``crf=True`` of the walk and of the segmenter scales their bilateral width (80 px there)
#: with the image's longer side (:func:`scaled_crf_options`).
CRF_REFERENCE_SIDE = 500

# Probabilities are clipped here before the log, as pydensecrf.utils.unary_from_softmax
# (which the reference code uses) does by default.
_CLIP = 1e-5
# Tolerance for "probs is a distribution per pixel".
_PROB_ATOL = 1e-3
# On CPU, torch.softmax over fewer than 16 labels per row is slow (3-5x in torch 2.13):
# use the transposed (C, N) layout there.
_TRANSPOSED_SOFTMAX_BELOW = 16
_BACKENDS = ("auto", "torch", "pydensecrf2")


def _is_tensor(obj):
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return isinstance(obj, torch.Tensor)


def _describe(obj):
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        return f"{type(obj).__name__} of shape {tuple(obj.shape)} and dtype {obj.dtype}"
    return type(obj).__name__


def _as_numpy(obj):
    if _is_tensor(obj):
        return obj.detach().cpu().numpy()
    return np.asarray(obj)


def _check_image(image):
    expected = "image must be an (H, W, 3) uint8 RGB array or tensor"
    if not (isinstance(image, np.ndarray) or _is_tensor(image)):
        raise TypeError(f"{expected}, got {_describe(image)}")
    arr = _as_numpy(image)
    if arr.dtype != np.uint8:
        raise TypeError(f"{expected}, got {_describe(image)}")
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{expected}, got {_describe(image)}")
    return _torch_ready(arr)


def _torch_ready(arr):
    """``arr`` itself, or a C-ordered writable copy where torch cannot share its memory
    (negative strides, e.g. ``probs[::-1]``; read-only memory, e.g. a memory map)."""
    if arr.flags.c_contiguous and arr.flags.writeable:
        return arr
    return np.array(arr, order="C")


def _check_probs(probs, shape):
    expected = "probs must be a (C, H, W) float array or tensor of per-pixel label probabilities"
    if not (isinstance(probs, np.ndarray) or _is_tensor(probs)):
        raise TypeError(f"{expected}, got {_describe(probs)}")
    if probs.ndim != 3 or probs.shape[0] == 0:
        raise ValueError(f"{expected}, got {_describe(probs)}")
    if tuple(probs.shape[1:]) != tuple(shape):
        raise ValueError(
            f"probs has shape {tuple(probs.shape)}, but the image is {shape[0]} x {shape[1]}: "
            f"expected (C, {shape[0]}, {shape[1]})"
        )
    floating = probs.is_floating_point() if _is_tensor(probs) else np.issubdtype(probs.dtype, np.floating)
    if not floating:
        raise TypeError(f"{expected}, got {_describe(probs)}")


def _check_distribution(probs, atol=_PROB_ATOL):
    """probs: float32 tensor (C, H, W). Finite, >= 0 and summing to 1 per pixel (to ``atol``)."""
    import torch

    sums = probs.sum(0)  # NaN or inf anywhere shows here
    if not bool(torch.isfinite(sums).all()):
        label, y, x = torch.nonzero(~torch.isfinite(probs))[0].tolist()
        raise ValueError(f"probs contains NaN or infinite values (first at label {label}, pixel ({y}, {x}))")
    low = probs.amin()
    if float(low) < -atol:
        label, y, x = torch.nonzero(probs == low)[0].tolist()
        raise ValueError(f"probs must be probabilities (>= 0), got {float(low):.4g} at label {label}, pixel ({y}, {x})")
    error = (sums - 1).abs_()
    worst = error.amax()
    if float(worst) > atol:
        y, x = torch.nonzero(error == worst)[0].tolist()
        raise ValueError(
            f"probs must sum to 1 over labels at every pixel (tolerance {atol:.2g}); pixel ({y}, {x}) sums "
            f"to {float(sums[y, x]):.6g}. Normalise score maps first (scores / scores.sum(0)): the CRF's "
            "result depends only on the per-pixel ratios of the scores"
        )


def _check_positive(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _check_real(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _check_n_iter(n_iter):
    if isinstance(n_iter, bool) or not isinstance(n_iter, numbers.Integral) or n_iter < 0:
        raise ValueError(f"n_iter must be a non-negative integer, got {n_iter!r}")
    return int(n_iter)


def _check_kernels(gaussian_sxy, gaussian_compat, bilateral_sxy, bilateral_srgb, bilateral_compat):
    return dict(
        gaussian_sxy=_check_positive(gaussian_sxy, "gaussian_sxy"),
        gaussian_compat=_check_real(gaussian_compat, "gaussian_compat"),
        bilateral_sxy=_check_positive(bilateral_sxy, "bilateral_sxy"),
        bilateral_srgb=_check_positive(bilateral_srgb, "bilateral_srgb"),
        bilateral_compat=_check_real(bilateral_compat, "bilateral_compat"),
    )


#: Largest (feature range / standard deviation) of a kernel: a finer lattice than
#: 2**20 cells per dimension only costs memory and ends in integer overflow.
_MAX_SPAN = 2.0 ** 20


def _check_kernel_spans(kernels, shape):
    """Each standard deviation against the range it divides: the image size, 0..255."""
    size = float(max(shape))
    spans = {"gaussian_sxy": size, "bilateral_sxy": size, "bilateral_srgb": 255.0}
    if kernels["gaussian_compat"] == 0:
        del spans["gaussian_sxy"]
    if kernels["bilateral_compat"] == 0:
        del spans["bilateral_sxy"], spans["bilateral_srgb"]
    for name, span in spans.items():
        if span / kernels[name] > _MAX_SPAN:
            what = "the colour range 0..255" if name == "bilateral_srgb" else f"a {size:.0f} px image"
            raise ValueError(
                f"{name}={kernels[name]!r} is too small for {what}: at least "
                f"{span / _MAX_SPAN:.3g} (the range / {name} may be at most 2**20)"
            )


def _prepare_probs(probs, shape, device):
    """Validated probs as a float32 tensor (C, H, W) on ``device``."""
    import torch

    _check_probs(probs, shape)
    given = torch.as_tensor(_torch_ready(probs) if isinstance(probs, np.ndarray) else probs)
    probs_t = given.detach().to(device=device, dtype=torch.float32)
    # low-precision inputs (bfloat16: 8 bits of mantissa) sum to 1 only to their own precision
    eps = torch.finfo(given.dtype).eps if given.dtype.is_floating_point else 0.0
    _check_distribution(probs_t, max(_PROB_ATOL, 4 * eps))
    return probs_t


def _format_like(out, probs):
    if _is_tensor(probs):
        return out.to(probs.device)
    return out.cpu().numpy()


class DenseCRF:
    """The fully connected CRF of one image, to refine several probability maps.

    Builds the image's permutohedral lattices and kernel normalisation once
    (on CPU, from a third of :func:`dense_crf`'s time with 21 labels to half
    of it with 3, at the default 10 iterations) and runs mean-field inference
    on each map it is called with. The affinity labels of AffinityNet, for
    instance, refine two score maps of every image (``alpha_low`` and
    ``alpha_high``). Built-in torch implementation only; see
    :func:`dense_crf` for the model and the parameters.

    Parameters
    ----------
    image : ndarray or torch.Tensor of shape (H, W, 3), dtype uint8
    gaussian_sxy, gaussian_compat, bilateral_sxy, bilateral_srgb, bilateral_compat : float
        The kernels, as in :func:`dense_crf`.
    device : str, torch.device or None, default=None
        ``"cpu"``, ``"cuda"``, ``"auto"`` (CUDA when available); None: the
        device of ``image`` when it is a tensor, else ``"auto"``.

    Attributes
    ----------
    shape : tuple of int
        ``(H, W)``.
    device : torch.device

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_psa.crf import DenseCRF
    >>> image = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    >>> crf = DenseCRF(image)
    >>> probs = np.full((3, 30, 40), 1 / 3, dtype=np.float32)
    >>> [crf(p, n_iter=5).shape for p in (probs, probs[:2] * 1.5)]
    [(3, 30, 40), (2, 30, 40)]
    """

    def __init__(
        self,
        image,
        *,
        gaussian_sxy=3,
        gaussian_compat=3,
        bilateral_sxy=80,
        bilateral_srgb=13,
        bilateral_compat=10,
        device=None,
    ):
        import torch

        image_np = _check_image(image)
        self.shape = image_np.shape[:2]
        self._kernels = _check_kernels(gaussian_sxy, gaussian_compat, bilateral_sxy, bilateral_srgb, bilateral_compat)
        if device is None:
            self.device = image.device if _is_tensor(image) else resolve_device("auto")
        else:
            self.device = resolve_device(device)
        self._image = torch.from_numpy(image_np).to(self.device)
        self._pairwise = None  # the pairwise filter, built on first use
        self._built = False

    def __call__(self, probs, n_iter=10):
        """Mean-field marginals for ``probs``.

        Parameters
        ----------
        probs : ndarray or torch.Tensor of shape (C, H, W), float
            Label probabilities per pixel, as in :func:`dense_crf`.
        n_iter : int, default=10

        Returns
        -------
        marginals : ndarray or torch.Tensor of shape (C, H, W), float32
            A NumPy array when ``probs`` is one, else a tensor on its device.
        """
        n_iter = _check_n_iter(n_iter)
        if self.device.type != "cpu":
            return _format_like(self._infer(_prepare_probs(probs, self.shape, self.device), n_iter), probs)
        _check_probs(probs, self.shape)  # before its shape is used
        # Images below about two megapixels (21 labels) run on one thread: see cpu_threads.
        with cpu_threads(self._work(probs.shape[0]), _device.CRF_SERIAL_WORK), flush_denormal():
            out = self._infer(_prepare_probs(probs, self.shape, self.device), n_iter)
        return _format_like(out, probs)

    def _work(self, n_labels):
        """Multiply-adds of the largest single product of inference on ``n_labels`` labels.

        The splat onto the bilateral lattice (6 corners per pixel), or onto the
        Gaussian one (3) without it: what decides whether threads pay
        (:func:`sklearn_psa._device.cpu_threads`).
        """
        corners = 6 if self._kernels["bilateral_compat"] != 0 else 3
        return self.shape[0] * self.shape[1] * int(n_labels) * corners

    def _build(self):
        """The pairwise term ``sum_k w_k D_k K_k D_k``, as one lattice filter (or None)."""
        import torch

        from ._permutohedral import LatticeFilter, PermutohedralLattice

        kernels = self._kernels
        height, width = self.shape
        # Features as in Krähenbühl's DenseCRF2D: (x / sxy, y / sxy[, r, g, b / srgb]).
        ys, xs = torch.meshgrid(
            torch.arange(height, dtype=torch.float32, device=self.device),
            torch.arange(width, dtype=torch.float32, device=self.device),
            indexing="ij",
        )
        position = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)
        lattices, weights = [], []
        if kernels["bilateral_compat"] != 0:
            colour = self._image.reshape(-1, 3).to(torch.float32) / kernels["bilateral_srgb"]
            lattices.append(PermutohedralLattice(torch.cat([position / kernels["bilateral_sxy"], colour], 1)))
            weights.append(kernels["bilateral_compat"])
        if kernels["gaussian_compat"] != 0:
            lattices.append(PermutohedralLattice(position / kernels["gaussian_sxy"]))
            weights.append(kernels["gaussian_compat"])
        return LatticeFilter(lattices, weights, normalize=True) if lattices else None

    def _infer(self, probs, n_iter):
        """Mean-field on probs (C, H, W) float32 on the CRF's device."""
        n_labels, height, width = probs.shape
        # -unary, as (N, C) rows for the sparse products.
        log_probs = probs.clamp(_CLIP, 1.0).log_().reshape(n_labels, -1).t().contiguous()
        marginals = _softmax_rows(log_probs)
        if n_iter:
            if not self._built:
                self._pairwise, self._built = self._build(), True
            if self._pairwise is not None:
                for _ in range(n_iter):
                    # Potts: the message sum_{l' != l} w k Q_l' equals -w k Q_l up to a
                    # per-pixel constant, which the softmax ignores.
                    marginals = _softmax_rows(self._pairwise(marginals, add=log_probs))
        return marginals.t().reshape(n_labels, height, width).contiguous()


def dense_crf(
    image,
    probs,
    *,
    n_iter=10,
    gaussian_sxy=3,
    gaussian_compat=3,
    bilateral_sxy=80,
    bilateral_srgb=13,
    bilateral_compat=10,
    backend="auto",
    device=None,
):
    """Refine per-pixel label probabilities with a fully connected CRF.

    Mean-field inference in the dense CRF of Krähenbühl and Koltun (2011)
    with Potts compatibility, a smoothness kernel
    ``gaussian_compat * exp(-|p_i - p_j|^2 / (2 gaussian_sxy^2))`` and an
    appearance kernel ``bilateral_compat * exp(-|p_i - p_j|^2 / (2
    bilateral_sxy^2) - |I_i - I_j|^2 / (2 bilateral_srgb^2))`` over pixel
    positions ``p`` and colours ``I``. Both are filtered over the whole image
    on a permutohedral lattice and normalised as in ``pydensecrf``
    (``NORMALIZE_SYMMETRIC``), whose results this function reproduces; the
    defaults are those of the AffinityNet reference code.

    Parameters
    ----------
    image : ndarray or torch.Tensor of shape (H, W, 3), dtype uint8
        The RGB image.
    probs : ndarray or torch.Tensor of shape (C, H, W), float
        Label probabilities per pixel: non-negative and summing to 1 over
        the ``C`` labels (tolerance 1e-3, or 4 eps of a coarser dtype such as
        bfloat16). The unary energy is
        ``-log(clip(probs, 1e-5, 1))``, as ``pydensecrf.utils.unary_from_softmax``
        computes it in the reference code. Score maps that do not sum to 1
        (the reference code passes CAM scores as they are) give the same
        result once divided by their per-pixel sum, up to the clipping.
    n_iter : int, default=10
        Mean-field iterations; 0 returns ``softmax(log(clip(probs)))``.
    gaussian_sxy : float, default=3
        Spatial standard deviation of the smoothness kernel, in pixels.
    gaussian_compat : float, default=3
        Weight of the smoothness kernel (0 leaves it out).
    bilateral_sxy : float, default=80
        Spatial standard deviation of the appearance kernel, in pixels.
    bilateral_srgb : float, default=13
        Colour standard deviation of the appearance kernel, in 0-255 units.
    bilateral_compat : float, default=10
        Weight of the appearance kernel (0 leaves it out).
    backend : {"auto", "torch", "pydensecrf2"}, default="auto"
        ``"torch"``: the built-in implementation (CPU or CUDA).
        ``"pydensecrf2"``: the C++ code of Krähenbühl through the optional
        ``pydensecrf2`` package (``pip install sklearn-psa[crf]``), CPU only.
        ``"auto"``: ``"torch"``, which needs no optional package, runs on GPUs
        and gives the same results everywhere; on one CPU thread it is as fast
        as pydensecrf2 with 21 labels and faster with few (``docs/benchmarks.md``).
    device : str, torch.device or None, default=None
        Where the torch backend runs: ``"cpu"``, ``"cuda"``, ``"auto"`` (CUDA
        when available). None: the device of ``probs`` when it is a tensor,
        else ``"auto"``. Must be None or CPU with ``backend="pydensecrf2"``.

    Returns
    -------
    marginals : ndarray or torch.Tensor of shape (C, H, W), float32
        The mean-field marginals, a distribution over labels per pixel. A
        NumPy array when ``probs`` is one, else a tensor on ``probs``' device.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_psa import dense_crf
    >>> image = np.zeros((40, 60, 3), dtype=np.uint8)
    >>> image[:, 35:] = 200  # two flat regions, the edge at column 35
    >>> probs = np.full((2, 40, 60), 0.5, dtype=np.float32)
    >>> probs[0, :, :20], probs[1, :, :20] = 0.9, 0.1  # confident on the left only
    >>> probs[0, :, 40:], probs[1, :, 40:] = 0.2, 0.8  # and on the right
    >>> labels = dense_crf(image, probs).argmax(0)
    >>> bool((labels[:, :35] == 0).all() and (labels[:, 35:] == 1).all())
    True
    """
    import torch

    image_np = _check_image(image)
    shape = image_np.shape[:2]
    _check_probs(probs, shape)
    n_iter = _check_n_iter(n_iter)
    kernels = _check_kernels(gaussian_sxy, gaussian_compat, bilateral_sxy, bilateral_srgb, bilateral_compat)
    _check_kernel_spans(kernels, shape)
    if not isinstance(backend, str) or backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if device is None:
        target = probs.device if _is_tensor(probs) else resolve_device("auto")
    else:
        target = resolve_device(device)
    if backend == "pydensecrf2":
        if target.type != "cpu":
            if device is not None:
                raise ValueError(f"backend='pydensecrf2' runs on the CPU only, got device={device!r}")
            target = torch.device("cpu")
        probs_t = _prepare_probs(probs, shape, target)
        out = torch.from_numpy(_dense_crf_pydensecrf(image_np, probs_t.numpy(), n_iter=n_iter, **kernels))
        return _format_like(out, probs)
    return DenseCRF(image_np, device=target, **kernels)(probs, n_iter=n_iter)


class ImageCRF:
    """``crf(image, probs)``: :func:`dense_crf` with fixed options, building an image's
    lattices once for consecutive calls on the same image (the same array object).

    The affinity labels refine two score maps of every image; building the
    lattices once saves from a third (21 labels) to over half (3 labels) of
    the second call (see :class:`DenseCRF`), with the same result bit for
    bit. The built CRF of the last image is kept per thread (so one object
    may serve several threads) and is not pickled.

    Parameters
    ----------
    **options
        Keyword options of :func:`dense_crf` (``backend="pydensecrf2"`` calls
        it each time: nothing to reuse there).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_psa.crf import ImageCRF, dense_crf
    >>> image = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    >>> probs = np.full((2, 30, 40), 0.5, dtype=np.float32)
    >>> probs[0, :, :10] = 0.9
    >>> probs[1, :, :10] = 0.1
    >>> crf = ImageCRF(n_iter=5, device="cpu")
    >>> first, second = crf(image, probs), crf(image, probs[::-1])  # one lattice for both
    >>> bool(np.array_equal(second, dense_crf(image, probs[::-1], n_iter=5, device="cpu")))
    True
    """

    def __init__(self, **options):
        self.options = options
        self._local = threading.local()

    def __call__(self, image, probs):
        options = dict(self.options)
        if options.pop("backend", "auto") not in ("auto", "torch"):
            return dense_crf(image, probs, **self.options)  # pydensecrf2, or its error
        n_iter = options.pop("n_iter", 10)
        cached = getattr(self._local, "last", None)
        if cached is None or cached[0] is not image:
            cached = (image, DenseCRF(image, **options))
            self._local.last = cached
        return cached[1](probs, n_iter=n_iter)

    def __getstate__(self):
        return {"options": self.options}

    def __setstate__(self, state):
        self.options = state["options"]
        self._local = threading.local()


def check_crf_options(crf, name="crf"):
    """The ``crf`` parameter of an estimator as :func:`dense_crf` options.

    Returns None for False, ``{}`` for True and a copy of a dict whose keys
    are all options of :func:`dense_crf` with values in their ranges (checked
    here, before any training; the kernels' widths against the image size when
    it runs); anything else is an error naming ``name`` and the option.
    """
    if crf is False:
        return None
    if crf is True:
        return {}
    if not isinstance(crf, dict):
        raise TypeError(f"{name} must be True, False or a dict of dense_crf options, got {crf!r}")
    allowed = [p.name for p in inspect.signature(dense_crf).parameters.values()
               if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(crf) - set(allowed))
    if unknown:
        raise ValueError(f"{name}: unknown dense_crf options {unknown}; expected some of {allowed}")
    checks = {"n_iter": lambda v, _: _check_n_iter(v), "gaussian_sxy": _check_positive,
              "bilateral_sxy": _check_positive, "bilateral_srgb": _check_positive,
              "gaussian_compat": _check_real, "bilateral_compat": _check_real}
    for key, check in checks.items():
        if key in crf:
            try:
                check(crf[key], key)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from exc
    if "backend" in crf and crf["backend"] not in _BACKENDS:
        raise ValueError(f"{name}: backend must be one of {_BACKENDS}, got {crf['backend']!r}")
    return dict(crf)


def scaled_crf_options(options, shape):
    """Dense CRF options for an image of ``shape`` ``(H, W)``, bilateral width scaled to it.

    ``options`` as :func:`check_crf_options` returns them; where they leave
    ``bilateral_sxy`` out, it is the reference code's 80 px scaled by the
    image's longer side over :data:`CRF_REFERENCE_SIDE` (500 px): 20.5 px at
    128 px, 80 px at 500 px. The estimators' ``crf=True`` runs with these.
    """
    out = dict(options)
    out.setdefault("bilateral_sxy", 80.0 * max(shape[:2]) / CRF_REFERENCE_SIDE)
    return out


def placed_crf_options(options, device):
    """CRF options with the device they run on settled, and whether that is a GPU.

    Parameters
    ----------
    options : dict
        Options of :func:`dense_crf` (from :func:`check_crf_options`).
    device : str or torch.device
        The estimator's device, resolved once per ``fit`` or ``predict``. The
        CRF runs there unless ``options`` names a device of its own.

    Returns
    -------
    options : dict
        A copy of ``options`` whose ``device`` is set explicitly (a worker
        process of ``n_jobs`` never picks CUDA by itself); unchanged for
        ``backend="pydensecrf2"``, which runs on the CPU.
    on_cuda : bool
        Whether the CRF runs on a GPU, hence in this process.
    """
    options = dict(options)
    if options.get("backend", "auto") == "pydensecrf2":
        return options, False
    given = options.get("device")
    target = resolve_device(device if given is None else given)
    options["device"] = str(target)
    return options, target.type == "cuda"


def _softmax_rows(logits):
    """Softmax over the labels of ``(N, C)`` logits, as a contiguous ``(N, C)``."""
    import torch

    if logits.device.type == "cpu" and logits.shape[1] < _TRANSPOSED_SOFTMAX_BELOW:
        return torch.softmax(logits.t().contiguous(), 0).t().contiguous()
    return torch.softmax(logits, 1)


def _dense_crf_pydensecrf(
    image, probs, *, n_iter, gaussian_sxy, gaussian_compat, bilateral_sxy, bilateral_srgb, bilateral_compat
):
    """The same inference through pydensecrf2 (``pydensecrf.densecrf``)."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as exc:
        raise ImportError(
            "backend='pydensecrf2' needs the optional pydensecrf2 package (it provides the "
            "`pydensecrf` module): pip install 'sklearn-psa[crf]'; backend='torch' needs nothing"
        ) from exc
    n_labels, height, width = probs.shape
    crf = dcrf.DenseCRF2D(width, height, n_labels)
    unary = -np.log(np.clip(probs, _CLIP, 1.0)).reshape(n_labels, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    if gaussian_compat != 0:
        crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    if bilateral_compat != 0:
        crf.addPairwiseBilateral(
            sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=np.ascontiguousarray(image), compat=bilateral_compat
        )
    marginals = crf.inference(n_iter)
    return np.asarray(marginals, dtype=np.float32).reshape(n_labels, height, width)
