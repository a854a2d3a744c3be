"""Input checks shared by every public entry point.

Every estimator, dataset helper and metric validates its inputs here, so that
errors read the same everywhere and name the offending item (its index or path)
and what was expected. Nothing else in the package re-checks inputs by hand.
"""

import numbers
import os
from collections.abc import Sequence

import numpy as np

from ._files import image_size, load_image, load_mask, to_rgb
from ._grid import IGNORE_INDEX
from .exceptions import MasksRequiredError

_IMAGE_EXPECTED = (
    "expected an (H, W, 3) uint8 RGB image (grayscale (H, W) and RGBA (H, W, 4) "
    "uint8 are converted), a PIL image, or a path to an image file"
)


def is_path(obj):
    """Whether ``obj`` names a file (a str or an ``os.PathLike``)."""
    return isinstance(obj, (str, os.PathLike))


def describe(obj):
    """``obj`` in a few words for an error message: its type, or its shape and dtype."""
    if isinstance(obj, np.ndarray):
        return f"array of shape {obj.shape} and dtype {obj.dtype}"
    return f"{type(obj).__name__}"


class ImageSet(Sequence):
    """Validated images: indexes like a list and loads files lazily.

    Parameters
    ----------
    sources : list
        Each item an (H, W, 3) uint8 array or a path (str).
    from_array : bool
        Whether the input was a single ``(n, H, W, 3)`` array (then ``predict``
        returns an array too).
    """

    def __init__(self, sources, from_array=False):
        self.sources = list(sources)
        self.from_array = bool(from_array)

    def __len__(self):
        return len(self.sources)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return ImageSet(self.sources[index], self.from_array)
        src = self.sources[index]
        return load_image(src) if isinstance(src, str) else src

    def shape(self, index):
        """``(H, W)`` of image ``index`` (reads only the header of a file)."""
        src = self.sources[index]
        return image_size(src) if isinstance(src, str) else src.shape[:2]

    @property
    def shapes(self):
        return [self.shape(i) for i in range(len(self))]

    def take(self, indices):
        return ImageSet([self.sources[i] for i in indices], self.from_array)


def _items(seq, name, what):
    """``list(seq)``, or an error naming ``name`` where it is no sequence of ``what`` or empty."""
    try:
        items = list(seq)
    except TypeError as exc:
        raise TypeError(f"{name}: expected a sequence of {what}s, got {describe(seq)}") from exc
    if len(items) == 0:
        raise ValueError(f"{name} is empty: expected at least one {what}")
    return items


def check_image_item(item, where):
    """One image (array, PIL image) as an ``(H, W, 3)`` uint8 array; ``where`` names it in errors."""
    from PIL import Image

    if isinstance(item, Image.Image):
        if item.mode == "F":
            raise TypeError(
                f"{where}: {_IMAGE_EXPECTED}, got a PIL image of mode 'F' (float pixels); "
                "convert it to 8-bit first"
            )
        try:
            return to_rgb(item)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
    if not isinstance(item, np.ndarray):
        original = item
        try:
            item = np.asarray(item)
        except Exception as exc:  # pragma: no cover - exotic objects
            raise TypeError(f"{where}: {_IMAGE_EXPECTED}, got {describe(original)}") from exc
        if item.dtype == object:
            raise TypeError(f"{where}: {_IMAGE_EXPECTED}, got {describe(original)}")
    if item.dtype != np.uint8:
        raise TypeError(f"{where}: {_IMAGE_EXPECTED}, got {describe(item)}")
    if item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[2] not in (1, 3, 4)):
        raise ValueError(f"{where}: {_IMAGE_EXPECTED}, got {describe(item)}")
    if item.shape[0] == 0 or item.shape[1] == 0:
        raise ValueError(f"{where}: image is empty ({describe(item)})")
    return to_rgb(item)


def check_images(X, *, name="X"):
    """Validate images and return an :class:`ImageSet`.

    Parameters
    ----------
    X : sequence or ndarray
        A sequence of images (arrays, PIL images or paths; sizes may differ),
        an ``(n, H, W, 3)`` uint8 array, or an :class:`ImageSet`.
    name : str
        Name used in error messages.

    Returns
    -------
    images : ImageSet
    """
    if isinstance(X, ImageSet):
        return X
    carried = getattr(X, "images", None)  # Records carry their images as an ImageSet
    if isinstance(carried, ImageSet):
        return carried
    if X is None:
        raise TypeError(f"{name} is None: expected a sequence of images")
    if is_path(X):
        if os.path.isdir(X):
            raise TypeError(
                f"{name} is a folder ({os.fspath(X)!r}): expected a sequence of images; "
                f"sklearn_psa.io.list_images({os.fspath(X)!r}) lists its image files"
            )
        raise TypeError(
            f"{name} is a single path ({os.fspath(X)!r}): expected a sequence of images; "
            "wrap it in a list"
        )
    if isinstance(X, np.ndarray):
        if X.dtype == object and X.ndim == 1:
            X = list(X)
        elif X.ndim == 4:
            if X.shape[0] == 0:
                raise ValueError(f"{name} is empty: expected at least one image")
            if X.dtype != np.uint8:
                raise TypeError(
                    f"{name}: expected an (n, H, W, 3) uint8 array, got {describe(X)}"
                )
            if X.shape[3] not in (1, 3, 4):
                raise ValueError(
                    f"{name}: expected an (n, H, W, 3) uint8 array, got {describe(X)}"
                )
            if X.shape[1] == 0 or X.shape[2] == 0:
                raise ValueError(f"{name}: images are empty ({describe(X)})")
            return ImageSet([check_image_item(x, f"{name}[{i}]") for i, x in enumerate(X)], True)
        else:
            raise ValueError(
                f"{name}: expected an (n, H, W, 3) uint8 array or a sequence of images, "
                f"got {describe(X)}"
            )
    items = _items(X, name, "image")
    sources = []
    for i, item in enumerate(items):
        if is_path(item):
            path = os.fspath(item)
            if os.path.isdir(path):
                raise IsADirectoryError(
                    f"{name}[{i}] is a folder ({path!r}), expected an image file; for the images "
                    f"in it, give sklearn_psa.io.list_images({path!r})"
                )
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{name}[{i}]: no such image file: {path}")
            try:
                image_size(path)
            except ValueError as exc:
                raise ValueError(f"{name}[{i}]: {exc}") from exc
            sources.append(path)
        else:
            sources.append(check_image_item(item, f"{name}[{i}]"))
    return ImageSet(sources, from_array=False)


def check_image_labels(y, n_samples=None, *, n_classes=None, name="y"):
    """Validate an ``(n, n_classes)`` 0/1 indicator matrix; return it as uint8."""
    import scipy.sparse as sp

    if y is None:
        raise TypeError(f"{name} is None: expected an (n_samples, n_classes) 0/1 indicator matrix")
    if sp.issparse(y):
        y = y.toarray()
    try:
        arr = np.asarray(y)
    except ValueError as exc:
        raise ValueError(
            f"{name}: expected an (n_samples, n_classes) 0/1 indicator matrix with rows "
            "of equal length"
        ) from exc
    if arr.ndim != 2 or arr.dtype == object:
        raise ValueError(
            f"{name}: expected an (n_samples, n_classes) 0/1 indicator matrix, got {describe(arr)}"
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: expected at least one row")
    if arr.shape[1] == 0:
        raise ValueError(f"{name}: expected at least one class column, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name}: expected numeric 0/1 labels, got dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        bad = np.argwhere(~np.isfinite(arr))
        if len(bad):
            r, c = bad[0]
            raise ValueError(f"{name}[{r}, {c}] is {arr[r, c]}: expected 0 or 1")
    bad = np.argwhere((arr != 0) & (arr != 1))
    if len(bad):
        r, c = bad[0]
        raise ValueError(f"{name}[{r}, {c}] is {arr[r, c]}: image-level labels must be 0 or 1")
    if n_samples is not None and arr.shape[0] != n_samples:
        raise ValueError(f"{name} has {arr.shape[0]} rows but X has {n_samples} images")
    if n_classes is not None and arr.shape[1] != n_classes:
        raise ValueError(f"{name} has {arr.shape[1]} class columns, expected {n_classes}")
    return arr.astype(np.uint8)


def check_mask_item(item, where, n_classes, shape):
    """One mask (array or path) as an ``(H, W)`` uint8 array; ``where`` names it in errors.

    Values above ``n_classes`` (other than 255) and a shape other than ``shape``
    are errors, unless those are None.
    """
    if is_path(item):
        path = os.fspath(item)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{where}: no such mask file: {path}")
        try:
            arr = load_mask(path)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
    else:
        arr = np.asarray(item)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise TypeError(f"{where}: expected an (H, W) integer mask, got {describe(arr)}")
        if arr.ndim != 2:
            raise ValueError(f"{where}: expected an (H, W) integer mask, got {describe(arr)}")
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{where}: mask contains NaN or infinite values")
            if not np.all(arr == np.round(arr)):
                raise ValueError(f"{where}: mask values must be integers, got fractional values")
        if arr.size:
            lo, hi = arr.min(), arr.max()
            if lo < 0 or hi > IGNORE_INDEX:
                raise ValueError(
                    f"{where}: mask values must be 0 (background), 1..K (classes) or 255 "
                    f"(ignore), got values in [{lo}, {hi}]"
                )
        arr = arr.astype(np.uint8)
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{where}: mask has shape {arr.shape} but its image is {tuple(shape)}")
    if n_classes is not None and arr.size:
        vals = np.unique(arr)
        bad = vals[(vals > n_classes) & (vals != IGNORE_INDEX)]
        if len(bad):
            raise ValueError(
                f"{where}: mask value {int(bad[0])} is beyond the {n_classes} classes "
                f"(expected 0..{n_classes} or 255)"
            )
    return arr


class MaskSet(Sequence):
    """Masks validated and loaded one at a time, on access (files stay paths until then).

    What :func:`check_masks` returns with ``lazy=True``: a loop over it holds one
    mask at a time, whatever the number of masks.
    """

    def __init__(self, items, name, n_classes=None, shapes=None):
        self.items = items
        self.name = name
        self.n_classes = n_classes
        self.shapes = shapes

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        shape = None if self.shapes is None else self.shapes[i]
        return check_mask_item(self.items[i], f"{self.name}[{i}]", self.n_classes, shape)


def check_masks(masks, n_samples=None, *, n_classes=None, shapes=None, name="y",
                of=("X", "image"), lazy=False):
    """Validate pixel-level masks; return a list of (H, W) uint8 arrays.

    Parameters
    ----------
    masks : sequence or ndarray
        ``(H, W)`` integer arrays or mask file paths, or an ``(n, H, W)`` array.
        Values: 0 background, 1..K classes, 255 ignore.
    n_samples : int, optional
        Expected number of masks.
    n_classes : int, optional
        If given, values above it (other than 255) are errors.
    shapes : list of (H, W), optional
        Expected shape of each mask (its image's).
    name : str, default="y"
        The masks' name in error messages.
    of : (str, str), default=("X", "image")
        What ``n_samples`` counts, for the message of a count mismatch: the
        argument's name and its items (``("records", "record")``).
    lazy : bool, default=False
        Return a :class:`MaskSet` that checks and loads each mask when it is
        accessed (the number of masks is checked at once), so that a loop over
        many mask files holds one at a time.
    """
    if masks is None:
        raise TypeError(f"{name} is None: expected a sequence of (H, W) masks")
    if isinstance(masks, np.ndarray) and masks.ndim == 2 and masks.dtype != object:
        if n_samples is not None and n_samples > 1 and masks.shape[0] == n_samples:
            raise ValueError(
                f"{name} has shape {masks.shape}, an (n_samples, n_classes) image-level "
                "indicator: expected pixel-level masks, one (H, W) mask per image (a sequence "
                "or an (n, H, W) array); the mean IoU needs the true masks"
            )
        raise ValueError(
            f"{name} is a single (H, W) mask of shape {masks.shape}: expected a sequence of "
            "masks or an (n, H, W) array; wrap it in a list"
        )
    if is_path(masks):
        raise TypeError(f"{name} is a single path: expected a sequence of masks; wrap it in a list")
    items = _items(masks, name, "mask")
    if n_samples is not None and len(items) != n_samples:
        raise ValueError(f"{name} has {len(items)} masks but {of[0]} has {n_samples} {of[1]}s: "
                         f"expected one mask per {of[1]}")
    if shapes is not None and len(shapes) != len(items):
        raise ValueError(f"{name} has {len(items)} masks but there are {len(shapes)} images")
    masks = MaskSet(items, name, n_classes, shapes)
    return masks if lazy else list(masks)


def check_score_masks(y, n_samples, *, shapes=None, n_classes=None, scorer="score"):
    """Validate the true masks of a ``score`` (mean IoU); refuse image-level labels.

    Image-level labels (an ``(n_samples, n_classes)`` indicator, dense, sparse
    or a list of rows) raise :class:`~sklearn_psa.exceptions.MasksRequiredError`,
    which scikit-learn's model selection does not turn into NaN scores; its
    message says how to fit a search on masks. Anything else is checked by
    :func:`check_masks`.

    Parameters
    ----------
    y : object
        The ``y`` given to ``score``.
    n_samples : int
        Number of images scored.
    shapes : list of (H, W), optional
        The images' shapes.
    n_classes : int, optional
        If given, mask values above it (other than 255) are errors (passed to
        :func:`check_masks`).
    scorer : str, default="score"
        The method's name for the message (``"RandomWalkRefiner.score"``).

    Returns
    -------
    masks : list of (H, W) uint8 arrays
    """
    import scipy.sparse as sp

    shape = None
    if sp.issparse(y):
        shape = y.shape
    elif y is not None and not is_path(y) and not _looks_like_masks(y):
        try:
            arr = np.asarray(y)
        except (TypeError, ValueError):  # ragged: not an indicator; check_masks says what
            arr = None
        if arr is not None and arr.ndim == 2 and arr.dtype != object:
            shape = arr.shape
    single_mask = (n_samples == 1 and shapes is not None and shape is not None
                   and tuple(shapes[0]) == tuple(shape))
    if shape is not None and shape[0] == n_samples and not single_mask:
        raise MasksRequiredError(
            f"{scorer}: y has shape {tuple(shape)}, image-level labels (an (n_samples, "
            "n_classes) indicator), but the mean IoU needs the true pixel masks, one (H, W) "
            "mask per image. To tune or cross-validate, fit the search on masks: "
            "GridSearchCV(pipe, grid).fit(X, masks) trains every step on the image-level "
            "labels derived from the masks and scores on the masks; or give the search a "
            "scoring= of your own that takes image-level labels"
        )
    return check_masks(y, n_samples, n_classes=n_classes, shapes=shapes, name="y")


def labels_from_masks(masks, n_classes=None):
    """Image-level indicator ``(n, n_classes)`` from masks: column j is set where value j+1 occurs.

    ``n_classes`` defaults to the largest class value present (255 excluded), at least 1.
    """
    present = [np.unique(m) for m in masks]
    if n_classes is None:
        highest = [int(v[v != IGNORE_INDEX].max(initial=0)) for v in present]
        n_classes = max(max(highest), 1)
    Y = np.zeros((len(masks), n_classes), dtype=np.uint8)
    for i, vals in enumerate(present):
        vals = vals[(vals >= 1) & (vals <= n_classes)]
        Y[i, vals.astype(int) - 1] = 1
    return Y


def _looks_like_masks(y):
    if isinstance(y, np.ndarray):
        return y.ndim == 3 or (y.dtype == object and y.ndim == 1)
    if isinstance(y, (list, tuple)) and len(y) > 0:
        first = y[0]
        if is_path(first):
            return True
        return np.ndim(first) == 2
    return False


class Targets:
    """Validated targets: image-level ``labels`` always, pixel ``masks`` when given."""

    def __init__(self, labels, masks=None):
        self.labels = labels
        self.masks = masks

    @property
    def kind(self):
        return "image" if self.masks is None else "pixel"


def check_targets(y, n_samples=None, *, n_classes=None, shapes=None, name="y"):
    """Validate ``y`` as an indicator matrix or as masks (from which labels are derived).

    Returns
    -------
    targets : Targets
        ``labels`` is the ``(n, n_classes)`` uint8 indicator; ``masks`` the masks
        when ``y`` held masks (a :class:`MaskSet`: each checked and loaded on access, so
        that mask files are read when used, not all held), else None.
    """
    if y is None:
        raise TypeError(
            f"{name} is None: expected image-level labels (an (n_samples, n_classes) 0/1 "
            "indicator) or pixel masks"
        )
    if _looks_like_masks(y):
        masks = check_masks(y, n_samples, n_classes=n_classes, shapes=shapes, name=name,
                            lazy=True)
        return Targets(labels_from_masks(masks, n_classes), masks)
    return Targets(check_image_labels(y, n_samples, n_classes=n_classes, name=name))


#: Names the reports add themselves (segmentation_report's rows), so no class may take them.
_RESERVED_CLASS_NAMES = ("background", "mean")


def check_classes(classes, *, name="classes"):
    """Validate a ``classes`` parameter: None, or the names of the class columns in order.

    Returns
    -------
    names : list of str or None
    """
    if classes is None:
        return None
    if isinstance(classes, (str, bytes)) or not hasattr(classes, "__len__"):
        raise TypeError(
            f"{name} must be a sequence of class names, one per class column (column j is "
            f"mask value j + 1), got {classes!r}"
        )
    names = [str(c) for c in classes]
    if not names:
        raise ValueError(f"{name} is empty: expected one name per class column")
    for j, n in enumerate(names):
        if not n.strip():
            raise ValueError(f"{name}[{j}] is empty: expected a class name")
        if n.lower() in _RESERVED_CLASS_NAMES:
            raise ValueError(
                f"{name}[{j}] is {n!r}, a name the reports use for their own rows "
                f"({', '.join(_RESERVED_CLASS_NAMES)}): name the classes 1..K only"
            )
    seen = set()
    for n in names:
        if n in seen:
            raise ValueError(f"{name}: the name {n!r} is repeated; each class needs its own")
        seen.add(n)
    return names


def default_class_names(n_classes):
    """``["class 1", ..., "class K"]``: class column ``j`` is named after its mask value ``j + 1``."""
    return [f"class {j + 1}" for j in range(n_classes)]


def class_names_of(classes, n_classes, y=None):
    """The names of ``n_classes`` class columns, as an object array (``class_names_``).

    From ``classes`` (checked by :func:`check_classes`) when given, else from
    the columns of ``y`` when it is a pandas DataFrame of image-level labels,
    else :func:`default_class_names`.
    """
    names = check_classes(classes)
    if names is None and hasattr(y, "columns") and len(y.columns) == n_classes:
        names = check_classes(list(y.columns), name="y's columns")
    if names is None:
        names = default_class_names(n_classes)
    if len(names) != n_classes:
        raise ValueError(
            f"classes has {len(names)} names but y has {n_classes} classes: give one name per "
            "class column (column j is mask value j + 1)"
        )
    return np.asarray(names, dtype=object)


def format_masks(masks, images):
    """Return masks as an ``(n, H, W)`` uint8 array when ``images`` came as one array, else a list."""
    if getattr(images, "from_array", False):
        return np.stack(masks).astype(np.uint8, copy=False)
    return [np.asarray(m, dtype=np.uint8) for m in masks]


def keep_params(estimator, values):
    """Store each parameter of ``type(estimator).__init__`` from ``values``, untouched.

    ``keep_params(self, locals())`` as the body of an estimator's ``__init__``
    does what scikit-learn's ``self.x = x`` lines do (no check, no
    conversion; the signature stays spelled out for ``get_params``), once for
    the estimators whose long signatures share most of their parameters.
    """
    for name in type(estimator)._get_param_names():
        setattr(estimator, name, values[name])


def check_random_state_seed(random_state):
    """An int seed derived from ``random_state`` (None, int or RandomState)."""
    from sklearn.utils import check_random_state

    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def check_scalar_in(value, name, low=None, high=None, integer=False):
    """Check a scalar parameter lies in [low, high]; a small helper for kernels."""
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        if high is None:
            raise ValueError(f"{name} must be at least {low}, got {value!r}")
        if low is None:
            raise ValueError(f"{name} must be at most {high}, got {value!r}")
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value!r}")
    return value
