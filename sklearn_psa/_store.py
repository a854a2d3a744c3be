"""Disk-backed per-image arrays: the ``store`` of the steps that produce records.

With ``store=<folder>``, ``CAMClassifier``, ``AffinityEstimator`` and
``FeatureAffinity`` write each image's arrays there as they are computed and
return :class:`~sklearn_psa.records.Records` whose arrays are memory-mapped
(read-only) from those files, so memory does not grow with the dataset.

Layout: ``<folder>/<kind>/<key>.npy``: ``kind`` is ``cams`` (with ``labels``,
the predicted classes, where the classes were not given), ``affinity`` or
``affinity-labels`` (the training label maps of ``AffinityEstimator.fit``). A key is the hash of what the array depends on: the producing
step's class, parameters (all but ``verbose``, ``device``, ``n_jobs`` and
``store``) and fitted weights, the image (its pixels, or a file's absolute
path, size and modification time) and, for CAMs, the classes asked for. So a
file that exists is the array that would be computed: ``transform`` run again
(after an interruption, or by another process) skips it, and a different
model or image never reads another's arrays. Every file is written to a
temporary name, flushed and moved into place (``io.atomic_write``): a reader
never sees half a file, and an interrupted write leaves nothing behind.

A memory-mapped array remembers its file: a record pickles (and hashes, for
``Pipeline(memory=...)``) the file's name instead of its contents, and loads
it memory-mapped again on unpickling.
"""

import errno
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._distributed import share_work, work_group
from ._files import atomic_write

__all__ = ["ArrayStore", "StoredArray", "StoredArrays", "stored_path", "image_key", "model_key",
           "open_stored", "array_key", "NOT_IN_KEY"]

#: Parameters that do not change the arrays a step computes (``classes`` only names columns).
NOT_IN_KEY = frozenset({"verbose", "device", "n_jobs", "store", "classes"})


class StoredArray:
    """Pickled stand-in for an array memory-mapped from a store file."""

    __slots__ = ("path",)

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (StoredArray, (self.path,))

    def load(self):
        return open_stored(self.path)


def open_stored(path):
    """The array of ``path`` (a store file), memory-mapped read-only, that remembers ``path``."""
    path = str(path)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: this array of the records' store is gone (was the store folder "
            "deleted or moved?); run the step's transform again to rewrite it"
        ) from None
    if not isinstance(arr, np.memmap):  # empty arrays are not mapped
        arr = np.array(arr)
        arr.flags.writeable = False
        return arr
    arr._psa_store_path = path
    return arr


def stored_path(arr):
    """The store file ``arr`` is the whole of, or None (views and other arrays)."""
    return getattr(arr, "_psa_store_path", None) if isinstance(arr, np.memmap) else None


def image_key(source):
    """Hash of an image: its pixels, or a file's absolute path, size and modification time."""
    import joblib

    if isinstance(source, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(source))
        stat = os.stat(path)
        return joblib.hash(("file", path, stat.st_size, stat.st_mtime_ns))
    return joblib.hash(("pixels", np.ascontiguousarray(source)))


def model_key(estimator, fitted):
    """Hash of a fitted step: its class, the parameters that shape its output and what it
    learned (``fitted``: a tuple of networks, hashed by their weights, and arrays)."""
    import joblib

    from ._training import weights_hash

    def plain(value):
        return weights_hash(value) if hasattr(value, "state_dict") else value

    params = {k: plain(v) for k, v in estimator.get_params(deep=False).items() if k not in NOT_IN_KEY}
    return joblib.hash((type(estimator).__name__, params, [plain(v) for v in fitted]))


class StoredArrays(Sequence):
    """A list of store files whose items are their arrays, memory-mapped on access.

    Indexing by an int maps that file; a slice gives ``StoredArrays``. Pickles
    (and hashes) as the file names.
    """

    def __init__(self, paths):
        self.paths = [str(p) for p in paths]

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return StoredArrays(self.paths[index])
        return open_stored(self.paths[index])

    def __repr__(self):
        return f"StoredArrays(n={len(self)})"


def array_key(arr):
    """What identifies a record's array: its store file (content-addressed), else its values."""
    import joblib

    return arr.path if isinstance(arr, StoredArray) else joblib.hash(arr)


class ArrayStore:
    """The folder of a ``store`` parameter (created when missing).

    Parameters
    ----------
    folder : str or path
    name : str
        The parameter's name, for error messages.
    """

    def __init__(self, folder, name="store"):
        self.name = name
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"{name}={os.fspath(folder)!r} is a file: expected a folder (new or existing)")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(exc.errno, f"{name}: cannot create the folder {os.fspath(folder)!r}: "
                                     f"{exc.strerror}") from exc

    def path(self, kind, key):
        return self.folder / kind / f"{key}.npy"

    def has(self, kind, key):
        """Whether the array is there, complete (a readable ``.npy`` header)."""
        path = self.path(kind, key)
        if not path.is_file():
            return False
        try:
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                expected = f.tell() + int(np.prod(shape)) * np.dtype(dtype).itemsize
            return path.stat().st_size == expected
        except (OSError, ValueError):
            return False  # unreadable: computed again and replaced

    def save(self, kind, key, array):
        """Write ``array`` atomically; a full disk is a clear ``OSError``, with nothing left behind."""
        path = self.path(kind, key)
        try:
            with atomic_write(path) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OSError(
                    exc.errno,
                    f"{self.name}: no space left on the disk of {os.fspath(self.folder)!r} while "
                    f"writing {path.name} ({np.asarray(array).nbytes / 1e6:.1f} MB). The images "
                    "done so far are kept and will not be computed again: free some space (or "
                    "choose another folder) and run the same call again to resume",
                ) from exc
            raise
        return path

    def fill(self, kind, keys, compute):
        """Have the arrays of ``keys`` there: ``compute(positions)`` writes those missing.

        In a data-parallel fit (within :func:`~sklearn_psa._distributed.split_work`)
        each rank writes its share of the missing keys and waits for the others
        (:func:`~sklearn_psa._distributed.share_work`); then all must be there,
        which they are when the store is on a file system the ranks share.

        Parameters
        ----------
        kind : str
            The arrays' kind (their presence says the work of a key is done).
        keys : list of str
        compute : callable
            ``compute(positions)`` writes the arrays (of ``kind``, and any
            other kinds written before it) of ``keys[i]`` for each ``i`` of
            ``positions``: the first position of each key not there.

        Raises
        ------
        FileNotFoundError
            When another rank's arrays are not found after it wrote them.
        """
        first = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        todo = [i for key, i in first.items() if not self.has(kind, key)]
        share_work(compute, todo, gather=False)
        if work_group() is None:
            return
        missing = [keys[i] for i in todo if not self.has(kind, keys[i])]
        if missing:
            raise FileNotFoundError(
                f"{self.name}={os.fspath(self.folder)!r}: {len(missing)} arrays that the other "
                f"processes of this data-parallel fit wrote are not there (first: "
                f"{self.path(kind, missing[0])}): the store of a data-parallel fit must be a "
                "folder that every process reads, on a file system the machines share"
            )

    def load(self, kind, key):
        """The array, memory-mapped (it holds an open file until dropped)."""
        return open_stored(self.path(kind, key))

    def reference(self, kind, key):
        """A :class:`StoredArray` of the array, for a record (which opens it on access)."""
        return StoredArray(self.path(kind, key))

    def read(self, kind, key):
        """The array, read into memory (small arrays: an image's class list)."""
        return np.load(self.path(kind, key), allow_pickle=False)
