"""The per-image record that flows between pipeline steps.

``CAMClassifier.transform`` returns :class:`Records` whose items carry the image
(or its path), the classes present and their class activation maps;
``AffinityEstimator.transform`` returns the same records with each image's
affinities added; ``RandomWalkRefiner`` consumes them.

Memory per image (float32): the CAMs take ``4 * L * H * W`` bytes for ``L``
classes present at the image's full size (a 500x375 VOC image with 2 classes:
1.5 MB), the affinity ``4 * K * h * w`` bytes on the stride-8 grid
(radius 5, K = 34, 63x47 grid: 0.4 MB). An image given as a path is not held
in memory, and neither are arrays from a ``store`` folder: they are memory-mapped
(read-only) from their files, and a record pickles their file names
(:mod:`sklearn_psa._store`).
"""

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ._files import image_size, load_image
from ._grid import STRIDE, grid_shape, neighbor_offsets
from ._store import StoredArray, stored_path
from ._transition import transition_matrix
from ._validation import ImageSet, check_image_labels, check_images, describe

__all__ = ["Record", "Records", "check_records"]


def _canonical(arr):
    """``arr`` in a layout that depends only on its shape and dtype (C order)."""
    if arr.size == 0:
        return np.empty(arr.shape, arr.dtype)
    strides, step = [], arr.itemsize
    for n in reversed(arr.shape):
        strides.append(step)
        step *= n
    if arr.strides == tuple(reversed(strides)):
        return arr
    return np.array(arr, order="C", copy=True)


def _numpy_tree(obj):
    """``obj`` with torch tensors (in dicts, lists, tuples) turned into numpy arrays.

    ``joblib.hash`` of a tensor differs between equal tensors and across pickling;
    that of an array does not.
    """
    if isinstance(obj, dict):
        return {k: _numpy_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_numpy_tree(v) for v in obj)
    if type(obj).__module__.split(".")[0] == "torch" and hasattr(obj, "detach"):
        return obj.detach().cpu().numpy().copy()  # a copy: the module may train on
    return obj


@dataclass(eq=False)
class Record:
    """One image's data between pipeline steps.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3) or str
        The image, or the path it is loaded from.
    labels : ndarray of shape (L,), dtype int64
        Sorted class columns present in the image (0-based: class column ``j`` is
        mask value ``j + 1``). May be empty (background only).
    cams : ndarray of shape (L, H, W), dtype float32, or None
        Class activation maps of the classes in ``labels``, each in [0, 1], at the
        image's size.
    affinity : ndarray of shape (K, h, w), dtype float32, or None
        ``affinity[k, y, x]`` is the affinity between grid cell ``(y, x)`` and
        ``(y + dy_k, x + dx_k)`` for the offsets ``neighbor_offsets(radius)``, on
        the grid ``h = ceil(H / stride)``, ``w = ceil(W / stride)``.
    radius : int or None
        Radius the affinity was computed for.
    shape : tuple of int
        ``(H, W)`` of the image (filled in automatically).
    """

    image: object
    labels: np.ndarray
    cams: np.ndarray = None
    affinity: np.ndarray = None
    radius: int = None
    shape: tuple = field(default=None)

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if self.shape is None:
            if isinstance(self.image, str):
                self.shape = tuple(image_size(self.image))
            else:
                self.shape = tuple(np.asarray(self.image).shape[:2])
        for name in ("cams", "affinity"):
            value = self.__dict__[name]
            if value is not None and not isinstance(value, StoredArray):
                setattr(self, name, np.asarray(value, dtype=np.float32))

    def __repr__(self):
        image = repr(self.image) if isinstance(self.image, str) else f"<{self.shape[0]}x{self.shape[1]} array>"
        parts = [f"image={image}", f"labels={self.labels.tolist()}"]
        for name in ("cams", "affinity"):
            arr = getattr(self, name)
            parts.append(f"{name}=None" if arr is None else f"{name}=<{arr.dtype} {tuple(arr.shape)}>")
        if self.radius is not None:
            parts.append(f"radius={self.radius}")
        return f"Record({', '.join(parts)})"

    def __getstate__(self):
        # joblib.hash (Pipeline(memory=...)'s cache key) includes the strides of arrays,
        # and those of equal arrays differ between a fresh record, its pickled copy and
        # its joblib.load-ed copy (empty arrays, cam[None], strided views): pickle and
        # hash the arrays in one layout so that a record hashes the same however it was made
        # (arrays of a store are held, pickled and hashed as their file's name)
        return {k: _canonical(v) if isinstance(v, np.ndarray) else v
                for k, v in self.__dict__.items()}

    @property
    def stored(self):
        """Whether this record's arrays come from a ``store`` folder (memory-mapped on access)."""
        return any(isinstance(self.__dict__[k], StoredArray) for k in ("cams", "affinity"))

    def transition_matrix(self, beta=8):
        """The random walk's transition matrix of this record's affinity, sparse.

        ``T = D^-1 W ** beta`` on the image's stride-8 grid, as
        :func:`sklearn_psa.transition_matrix` gives it (a scipy CSR array of
        shape ``(h * w, h * w)``, cell ``(y, x)`` at ``y * w + x``).

        Parameters
        ----------
        beta : float, default=8
            Power applied to the affinities (``RandomWalkRefiner``'s ``beta``).

        Returns
        -------
        T : scipy.sparse.csr_array of shape (h * w, h * w)
        """
        if self.affinity is None:
            raise ValueError(
                "this record has no affinity: take records from AffinityEstimator.transform "
                "(or FeatureAffinity.transform)"
            )
        n_classes = max(int(self.labels.max(initial=0)) + 1, 1)
        check_records(Records([self], n_classes), require_cams=False, require_affinity=True,
                      name="record")
        return transition_matrix(self.affinity, beta=beta)

    def load_image(self):
        """The image as an (H, W, 3) uint8 array (loaded from disk when a path)."""
        return load_image(self.image) if isinstance(self.image, str) else self.image

    @property
    def nbytes(self):
        """Bytes held by the arrays of this record."""
        total = self.labels.nbytes
        for arr in (self.cams, self.affinity):
            if arr is not None:
                total += arr.nbytes
        if isinstance(self.image, np.ndarray):
            total += self.image.nbytes
        return total


def _lazy_array(name):
    """The ``cams`` / ``affinity`` attribute of :class:`Record`.

    An array from a store is held as its file's name (:class:`StoredArray`) and
    memory-mapped anew at each access, so records hold no open files and no
    pages of the arrays they do not use; any other array is held as it is.
    """

    def get(self):
        value = self.__dict__.get(name)
        return value.load() if isinstance(value, StoredArray) else value

    def set(self, value):
        path = stored_path(value)
        self.__dict__[name] = StoredArray(path) if path else value  # a StoredArray stays one

    return property(get, set, doc=f"The record's {name} (memory-mapped when from a store).")


Record.cams = _lazy_array("cams")
Record.affinity = _lazy_array("affinity")


class Records(Sequence):
    """A list of :class:`Record` with the number of classes they refer to.

    Indexes like a list (an int gives a :class:`Record`, a slice or an index
    array gives ``Records``), pickles, and hashes stably with ``joblib.hash``,
    so ``Pipeline(memory=...)`` caches the steps that produce it.

    Parameters
    ----------
    records : iterable of Record
    n_classes : int
        Number of classes (columns of the image-level indicator).
    source : dict, optional
        What the producing step wants later steps to know, picklable (e.g.
        ``CAMClassifier`` puts its backbone's name, options and CPU state dict
        here, so that ``AffinityEstimator(init="cam")`` can start from it).
        Passed on by indexing and :meth:`with_affinity`; covered by ``joblib.hash``.
    from_array : bool, default=False
        Whether the images came as one ``(n, H, W, 3)`` array; then the masks
        predicted from these records come as an ``(n, H, W)`` array too (as
        ``predict`` of the estimators returns for such input). Passed on like
        ``source``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_psa.records import Records
    >>> image = np.zeros((16, 16, 3), np.uint8)
    >>> recs = Records.from_arrays([image], labels=[[0, 1]],
    ...                            cams=[np.zeros((1, 16, 16), np.float32)])
    >>> recs[0].labels, recs.n_classes
    (array([1]), 2)
    """

    def __init__(self, records, n_classes, source=None, *, from_array=False):
        self.records = list(records)
        self.n_classes = int(n_classes)
        self.source = _numpy_tree(source)
        self.from_array = bool(from_array)

    def _like(self, records):
        """Records holding ``records``, with this one's classes, source and ``from_array``."""
        return Records(records, self.n_classes, self.source, from_array=getattr(self, "from_array", False))

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self._like(self.records[index])
        if isinstance(index, (list, np.ndarray)):
            index = np.asarray(index)
            if index.dtype == bool:
                if index.shape != (len(self),):
                    raise IndexError(
                        f"boolean index of shape {index.shape} for {len(self)} records: expected ({len(self)},)"
                    )
                index = np.flatnonzero(index)
            elif index.size and not np.issubdtype(index.dtype, np.integer):
                raise IndexError(f"records can be indexed by integers or booleans, got dtype {index.dtype}")
            return self._like([self.records[i] for i in index.ravel()])
        return self.records[index]

    def __repr__(self):
        return f"Records(n={len(self)}, n_classes={self.n_classes})"

    @property
    def images(self):
        """The images as an :class:`~sklearn_psa._validation.ImageSet`."""
        return ImageSet([r.image for r in self.records], getattr(self, "from_array", False))

    @property
    def labels(self):
        """Image-level indicator ``(n, n_classes)``, uint8."""
        Y = np.zeros((len(self), self.n_classes), dtype=np.uint8)
        for i, r in enumerate(self.records):
            Y[i, r.labels] = 1
        return Y

    @property
    def nbytes(self):
        return sum(r.nbytes for r in self.records)

    def with_affinity(self, affinities, radius):
        """New Records with ``affinity`` set per record (the CAMs are shared, not copied)."""
        affinities = list(affinities)
        if len(affinities) != len(self):
            raise ValueError(f"got {len(affinities)} affinities for {len(self)} records")
        return self._like([replace(r, affinity=a, radius=radius) for r, a in zip(self.records, affinities)])

    @classmethod
    def from_arrays(cls, images, labels, cams, affinities=None, radius=None):
        """Build records from CAMs (and affinities) computed elsewhere.

        Parameters
        ----------
        images : sequence of images or paths, or (n, H, W, 3) array
        labels : (n, n_classes) 0/1 indicator
        cams : sequence of (L_i, H_i, W_i) float arrays in [0, 1], one map per
            class present in image i (in class order)
        affinities : sequence of (K, h_i, w_i) arrays, optional
        radius : int, optional
            Required with ``affinities``.
        """
        X = check_images(images, name="images")
        Y = check_image_labels(labels, len(X), name="labels")
        cams = list(cams)
        if len(cams) != len(X):
            raise ValueError(f"cams has {len(cams)} items but images has {len(X)}")
        if affinities is None:
            affinities = [None] * len(X)
        elif radius is None:
            raise ValueError("radius is required when affinities are given")
        recs = cls(
            [
                Record(X.sources[i], np.flatnonzero(Y[i]), cams[i], affinities[i],
                       None if affinities[i] is None else radius, tuple(X.shape(i)))
                for i in range(len(X))
            ],
            Y.shape[1],
            from_array=X.from_array,
        )
        return check_records(recs, name="records")


#: How far above 1 a CAM may be (float rounding of the normalisation).
CAM_TOLERANCE = 1e-5


def check_records(records, *, require_cams=True, require_affinity=False, name="X"):
    """Validate :class:`Records` coming from an earlier step.

    Parameters
    ----------
    records : Records
        The output of ``CAMClassifier.transform`` or ``AffinityEstimator.transform``.
    require_cams : bool, default=True
        Whether every record must have CAMs (those present are checked either way).
    require_affinity : bool, default=False
        Whether every record must have an affinity (those present are checked either way).
    name : str, default="X"
        The argument's name in error messages.

    Returns
    -------
    records : Records
        ``records`` itself.
    """
    if not isinstance(records, Records):
        raise TypeError(
            f"{name}: expected Records (the output of CAMClassifier.transform or "
            f"AffinityEstimator.transform), got {describe(records)}"
        )
    if len(records) == 0:
        raise ValueError(f"{name} is empty: expected at least one record")
    for i, r in enumerate(records.records):
        where = f"{name}[{i}]"
        if r.labels.size and (r.labels.min() < 0 or r.labels.max() >= records.n_classes):
            raise ValueError(f"{where}: labels must be class columns in 0..{records.n_classes - 1}")
        if r.labels.size > 1 and np.any(np.diff(r.labels) <= 0):
            raise ValueError(f"{where}: labels must be sorted and unique, got {r.labels}")
        if require_cams or r.cams is not None:
            if r.cams is None:
                raise ValueError(f"{where}: has no CAMs")
            expected = (r.labels.size,) + tuple(r.shape)
            if r.cams.shape != expected:
                raise ValueError(
                    f"{where}: cams has shape {r.cams.shape}, expected {expected} "
                    "(one map per class present, at the image's size)"
                )
            # arrays of a store were checked when computed: reading them all again here
            # would page the whole dataset in
            if not stored_path(r.cams) and not np.all(np.isfinite(r.cams)):
                raise ValueError(f"{where}: cams contain NaN or infinite values")
            if r.cams.size and (r.cams.min() < 0 or r.cams.max() > 1 + CAM_TOLERANCE):
                raise ValueError(
                    f"{where}: cams must lie in [0, 1] (each class's map divided by its "
                    f"maximum, as CAMClassifier makes them), got values in "
                    f"[{float(r.cams.min()):.4g}, {float(r.cams.max()):.4g}]"
                )
        if require_affinity or r.affinity is not None:
            if r.affinity is None:
                raise ValueError(
                    f"{where}: has no affinity (run AffinityEstimator.transform first)"
                )
            if r.affinity.ndim != 3:
                raise ValueError(f"{where}: affinity must be (K, h, w), got shape {r.affinity.shape}")
            if not stored_path(r.affinity):
                if not np.all(np.isfinite(r.affinity)):
                    raise ValueError(f"{where}: affinity contains NaN or infinite values")
                if r.affinity.size and r.affinity.min() < 0:
                    raise ValueError(f"{where}: affinity must be non-negative")
            if r.radius is None:
                raise ValueError(f"{where}: affinity without its radius")
            _check_affinity_layout(r, where)
    return records


def _check_affinity_layout(record, where):
    """The affinity lies on the image's stride-8 grid with one channel per neighbour offset."""
    H, W = record.shape
    grid = grid_shape(record.shape)
    if tuple(record.affinity.shape[1:]) != grid:
        raise ValueError(
            f"{where}: affinity is on a {tuple(record.affinity.shape[1:])} grid, but a "
            f"{H}x{W} image has the grid {grid} (ceil of the size / {STRIDE})"
        )
    try:
        K = len(neighbor_offsets(record.radius))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: invalid radius {record.radius!r}: {exc}") from exc
    if record.affinity.shape[0] != K:
        raise ValueError(
            f"{where}: affinity has {record.affinity.shape[0]} channels, but radius "
            f"{record.radius} has {K} neighbour offsets"
        )
