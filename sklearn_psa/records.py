"""The per-image record that flows between pipeline steps.

``CAMClassifier.transform`` returns :class:`Records` whose items carry the image
(or its path), the classes present and their class activation maps;
``AffinityEstimator.transform`` returns the same records with each image's
affinities added; ``RandomWalkRefiner`` consumes them.

Memory per image (float32): the CAMs take ``4 * L * H * W`` bytes for ``L``
classes present at the image's full size (a 500x375 VOC image with 2 classes:
1.5 MB), the affinity ``4 * K * h * w`` bytes on the stride-8 grid
(radius 5, K = 34, 63x47 grid: 0.4 MB). An image given as a path is not held
in memory.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

__all__ = ["Record", "Records"]


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
                from .io import image_size

                self.shape = tuple(image_size(self.image))
            else:
                self.shape = tuple(np.asarray(self.image).shape[:2])
        if self.cams is not None:
            self.cams = np.asarray(self.cams, dtype=np.float32)
        if self.affinity is not None:
            self.affinity = np.asarray(self.affinity, dtype=np.float32)

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
        return {k: _canonical(v) if isinstance(v, np.ndarray) else v
                for k, v in self.__dict__.items()}

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
        from ._validation import check_records

        if self.affinity is None:
            raise ValueError(
                "this record has no affinity: take records from AffinityEstimator.transform "
                "(or FeatureAffinity.transform)"
            )
        n_classes = max(int(self.labels.max(initial=0)) + 1, 1)
        check_records(Records([self], n_classes), require_cams=False, require_affinity=True,
                      name="record")
        from .walk import transition_matrix

        return transition_matrix(self.affinity, beta=beta)

    def load_image(self):
        """The image as an (H, W, 3) uint8 array (loaded from disk when a path)."""
        from .io import load_image

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
        from ._validation import ImageSet

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
        from ._validation import check_image_labels, check_images, check_records

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
