"""A model file that holds no code: fitted estimators as JSON and arrays.

:func:`save_model` writes a fitted estimator of this package (or a scikit-learn
``Pipeline`` of them) as a zip archive of

- ``sklearn-psa-model.json``: the format, the package version, and the
  estimator as a tree of plain values: the class (one of a fixed list), its
  parameters and fitted attributes (numbers, strings, lists, dicts, nested
  estimators), with references to arrays;
- ``arrays/<i>.npy``: numpy arrays (fitted arrays, masks, network weights),
  read back with ``numpy.load(allow_pickle=False)``.

A torch network is stored as its recipe (a registered backbone name with its
options, and the head's constructor arguments; only the classes of
:data:`_MODULES` are rebuilt) and its state dict. :func:`load_model` builds
nothing outside those lists and unpickles nothing, so a crafted file cannot run
code; a file that does not follow the format is a ``ValueError`` naming it.
"""

import io
import json
import math
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import __version__
from ._files import atomic_write

__all__ = ["is_model_file", "load_model", "save_model"]

FORMAT = "sklearn-psa-model"
VERSION = 1
MANIFEST = "sklearn-psa-model.json"


def _estimator_classes():
    """The classes a model file may name: this package's estimators, its callbacks (their
    parameters and results) and ``Pipeline``."""
    from sklearn.pipeline import Pipeline

    from .affinity import AffinityEstimator
    from .callbacks import EarlyStopping, TensorBoard
    from .cam import CAMClassifier
    from .feature_affinity import FeatureAffinity
    from .segmenter import PSASegmenter
    from .walk import RandomWalkRefiner

    classes = (CAMClassifier, AffinityEstimator, FeatureAffinity, RandomWalkRefiner,
               PSASegmenter, Pipeline, EarlyStopping, TensorBoard)
    return {cls.__name__: cls for cls in classes}


def _dataclasses():
    from ._training import TrainResult

    return {"TrainResult": TrainResult}


class _Writer:
    """Encode Python values as JSON-able trees, collecting arrays."""

    def __init__(self):
        self.arrays = []

    def array(self, arr, where):
        arr = np.asarray(arr)
        if arr.dtype.hasobject:  # class names and the like: their items as JSON values
            items = arr.ravel().tolist()
            if arr.dtype != object or not all(
                    v is None or isinstance(v, (str, bool, int, float)) for v in items):
                raise TypeError(f"{where}: an array of Python objects other than strings and "
                                "numbers cannot be stored safely")
            return {"__type__": "objectarray", "shape": list(arr.shape),
                    "items": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(items)]}
        self.arrays.append(arr)  # (np.ascontiguousarray would make 0-d arrays 1-d)
        return {"__type__": "ndarray", "ref": len(self.arrays) - 1}

    def stored(self, path):
        """An array of a store (numbers only), read from its file when it is written."""
        from ._store import StoredArray

        return self.deferred(StoredArray(path))

    def deferred(self, item):
        """An array read (``item.load()``) only when the file is written."""
        self.arrays.append(item)
        return {"__type__": "ndarray", "ref": len(self.arrays) - 1}

    def tensor(self, t, where):
        import torch

        t = t.detach().cpu()
        if t.dtype == torch.bfloat16:  # no numpy dtype: stored as its bits
            return {"__type__": "tensor", "dtype": "bfloat16",
                    "data": self.array(t.view(torch.int16).numpy(), where)}
        return {"__type__": "tensor", "dtype": str(t.dtype).replace("torch.", ""),
                "data": self.array(t.numpy(), where)}

    def encode(self, value, where):
        import torch
        from sklearn.base import BaseEstimator

        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, np.generic):
            if value.dtype.hasobject:
                raise TypeError(f"{where}: a numpy object scalar cannot be stored safely")
            return {"__type__": "npscalar", "dtype": value.dtype.str,
                    "value": self.encode(value.item(), where)}
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {"__type__": "float", "value": repr(value)}
        if isinstance(value, np.ndarray):
            return self.array(value, where)
        if isinstance(value, torch.Tensor):
            return self.tensor(value, where)
        if isinstance(value, tuple):
            return {"__type__": "tuple",
                    "items": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        from ._store import StoredArrays

        if isinstance(value, StoredArrays):  # masks in a store (pseudo_labels_): the file holds
            # their values, so that it stands alone. Each is read when written (one memory map
            # at a time, however many masks)
            return [self.stored(path) for path in value.paths]
        if isinstance(value, ModelFileArrays):  # masks of a loaded model file: the same
            return [self.deferred(item) for item in value.items()]
        if isinstance(value, dict):
            if all(isinstance(k, str) for k in value) and "__type__" not in value:
                return {k: self.encode(v, f"{where}[{k!r}]") for k, v in value.items()}
            return {"__type__": "dict",
                    "items": [[self.encode(k, f"{where} key"), self.encode(v, f"{where}[{k!r}]")]
                              for k, v in value.items()]}
        if isinstance(value, os.PathLike):
            return {"__type__": "path", "value": os.fspath(value)}
        if isinstance(value, torch.device):
            return {"__type__": "device", "value": str(value)}
        if isinstance(value, torch.nn.Module):
            return self.module(value, where)
        if isinstance(value, BaseEstimator):
            return self.estimator(value, where)
        name = type(value).__name__
        if name in _dataclasses() and isinstance(value, _dataclasses()[name]):
            return {"__type__": "dataclass", "class": name,
                    "fields": self.encode(dict(vars(value)), where)}
        raise TypeError(
            f"{where}: a {type(value).__module__}.{type(value).__qualname__} cannot be stored "
            "in a model file (it holds numbers, strings, arrays, this package's estimators and "
            "networks only); set it to a plain value, or pickle the model with "
            "sklearn_psa.io.dump_model and load it only from sources you trust"
        )

    def estimator(self, est, where):
        classes = _estimator_classes()
        name = type(est).__name__
        from .classifier_cam import ClassifierCAM

        if isinstance(est, ClassifierCAM):
            raise TypeError(
                f"{where}: a ClassifierCAM wraps a network of yours (code), which a model file "
                "cannot hold: pickle the model with sklearn_psa.io.dump_model instead and load "
                "it only from sources you trust (or keep your network's own file and rebuild "
                "the ClassifierCAM around it)"
            )
        if classes.get(name) is not type(est):
            raise TypeError(
                f"{where}: a {type(est).__module__}.{type(est).__qualname__} cannot be stored in "
                f"a model file, which holds only {', '.join(sorted(classes))}; pickle it with "
                "sklearn_psa.io.dump_model and load it only from sources you trust"
            )
        state = {k: v for k, v in vars(est).items() if k != "_sklearn_version"}
        return {"__type__": "estimator", "class": name,
                "state": {k: self.encode(v, f"{where}.{k}") for k, v in state.items()}}

    def module(self, module, where):
        return {"__type__": "module", "recipe": _recipe(module, where, self),
                "training": bool(module.training),
                "state": {k: self.tensor(v, f"{where}.{k}")
                          for k, v in module.state_dict().items()}}


def _user_module_error(where, module):
    return TypeError(
        f"{where}: a {type(module).__qualname__} module given by the user; a model file holds "
        "no code, so it can store only networks built from registered backbone names "
        "(sklearn_psa.nn.available_backbones()). Pickle this model with "
        "sklearn_psa.io.dump_model instead, and load it only from sources you trust"
    )


def _recipe(module, where, writer):
    """The JSON recipe of one of the networks the estimators build (``writer`` encodes the
    backbone options)."""
    from .nn.affinity_head import AffinityNet
    from .nn.heads import CAMHead, Network
    from .nn.seg_head import ASPPHead

    if isinstance(module, Network):
        return {"class": "Network",
                "backbone": _recipe(module.backbone, f"{where}.backbone", writer),
                "head": _recipe(module.head, f"{where}.head", writer)}
    if isinstance(module, AffinityNet):
        args = dict(module.init_args, stride=int(module.stride),
                    input_scale=float(module.input_scale))
        return {"class": "AffinityNet",
                "backbone": _recipe(module.backbone, f"{where}.backbone", writer), "args": args}
    for cls in (CAMHead, ASPPHead):
        if type(module) is cls and hasattr(module, "init_args"):
            return {"class": cls.__name__, "args": dict(module.init_args)}
    recipe = getattr(module, "build_recipe", None)
    if isinstance(recipe, dict) and isinstance(recipe.get("name"), str):
        return {"class": "backbone", "name": recipe["name"],
                "options": writer.encode(recipe.get("options") or {}, f"{where} options"),
                "pretrained": bool(recipe.get("pretrained"))}
    raise _user_module_error(where, module)


def _build(recipe, where, reader):
    """Build the (untrained) network a recipe describes (``reader`` decodes the options)."""
    from .nn import make_backbone
    from .nn.affinity_head import AffinityNet
    from .nn.heads import CAMHead, Network
    from .nn.seg_head import ASPPHead

    kind = recipe.get("class") if isinstance(recipe, dict) else None
    if kind == "backbone":
        options = reader.decode(recipe.get("options") or {}, where)
        if not isinstance(recipe.get("name"), str) or not isinstance(options, dict):
            raise ValueError(f"{where}: a backbone recipe needs a name and options")
        backbone = make_backbone(recipe["name"], pretrained=None, **options)
        if recipe.get("pretrained"):
            backbone.prepare_pretrained()  # set up as the fitted one was (frozen layers, ...)
            backbone.build_recipe["pretrained"] = True
        return backbone
    if kind == "Network":
        return Network(_build(recipe["backbone"], f"{where}.backbone", reader),
                       _build(recipe["head"], f"{where}.head", reader))
    if kind == "AffinityNet":
        return AffinityNet(_build(recipe["backbone"], f"{where}.backbone", reader),
                           **recipe["args"])
    heads = {"CAMHead": CAMHead, "ASPPHead": ASPPHead}
    if kind in heads:
        return heads[kind](**recipe["args"])
    raise ValueError(f"{where}: unknown network recipe {kind!r}")


class _Reader:
    """Decode what :class:`_Writer` encoded, building only allowed classes; estimator
    attributes named in ``skip`` are left out (their arrays are never read), those named in
    ``lazy`` (lists of arrays) become :class:`ModelFileArrays` of ``source``."""

    def __init__(self, arrays, skip=(), lazy=(), source=None):
        self.arrays = arrays
        self.skip = frozenset(skip)
        self.lazy = frozenset(lazy)
        self.source = source

    def lazy_arrays(self, value, where):
        """A list of array references as arrays read from the file on access."""
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list of arrays")
        refs = []
        for i, item in enumerate(value):
            ref = item.get("ref") if isinstance(item, dict) and item.get("__type__") == "ndarray" else None
            if not isinstance(ref, int) or not 0 <= ref < len(self.arrays):
                raise ValueError(f"{where}[{i}]: expected a reference to a stored array")
            refs.append(ref)
        return ModelFileArrays(self.source, refs)

    def decode(self, value, where):
        if isinstance(value, list):
            return [self.decode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if not isinstance(value, dict):
            return value
        kind = value.get("__type__")
        if kind is None:
            return {k: self.decode(v, f"{where}[{k!r}]") for k, v in value.items()}
        if kind == "ndarray":
            ref = value.get("ref")
            if not isinstance(ref, int) or not 0 <= ref < len(self.arrays):
                raise ValueError(f"{where}: reference to a missing array {ref!r}")
            return self.arrays[ref]
        if kind == "tensor":
            return self.tensor(value, where)
        if kind == "objectarray":
            items = [self.decode(v, f"{where}[{i}]") for i, v in enumerate(value["items"])]
            if not all(v is None or isinstance(v, (str, bool, int, float)) for v in items):
                raise ValueError(f"{where}: an object array holds strings and numbers only")
            out = np.empty(len(items), dtype=object)
            out[:] = items
            return out.reshape([int(n) for n in value["shape"]])
        if kind == "npscalar":
            dtype = np.dtype(value["dtype"])
            if dtype.kind not in "biufc":
                raise ValueError(f"{where}: a numpy scalar of dtype {dtype} is not a number")
            return dtype.type(self.decode(value["value"], where))
        if kind == "float":
            if value.get("value") not in ("nan", "inf", "-inf"):
                raise ValueError(f"{where}: not a float: {value.get('value')!r}")
            return float(value["value"])
        if kind == "tuple":
            return tuple(self.decode(v, f"{where}[{i}]") for i, v in enumerate(value["items"]))
        if kind == "dict":
            return {self.decode(k, f"{where} key"): self.decode(v, f"{where} value")
                    for k, v in value["items"]}
        if kind == "path":
            return Path(value["value"])
        if kind == "device":
            import torch

            return torch.device(value["value"])
        if kind == "dataclass":
            cls = _dataclasses().get(value.get("class"))
            if cls is None:
                raise ValueError(f"{where}: unknown record type {value.get('class')!r}")
            return cls(**self.decode(value["fields"], where))
        if kind == "estimator":
            return self.estimator(value, where)
        if kind == "module":
            return self.module(value, where)
        raise ValueError(f"{where}: unknown value type {kind!r}")

    def tensor(self, value, where):
        import torch

        data = self.decode(value["data"], where)
        if not isinstance(data, np.ndarray):
            raise ValueError(f"{where}: a tensor needs an array")
        if value.get("dtype") == "bfloat16":
            return torch.from_numpy(data.copy()).view(torch.bfloat16)
        tensor = torch.from_numpy(data.copy())
        if str(tensor.dtype).replace("torch.", "") != value.get("dtype"):
            raise ValueError(f"{where}: tensor dtype {value.get('dtype')!r} does not match its data")
        return tensor

    def estimator(self, value, where):
        cls = _estimator_classes().get(value.get("class"))
        if cls is None:
            raise ValueError(f"{where}: unknown estimator class {value.get('class')!r}")
        est = cls.__new__(cls)
        state = value.get("state")
        if not isinstance(state, dict):
            raise ValueError(f"{where}: an estimator needs its state")
        state = {k: self.lazy_arrays(v, f"{where}.{k}") if k in self.lazy else self.decode(v, f"{where}.{k}")
                 for k, v in state.items() if k not in self.skip}
        upgrade = getattr(cls, "_upgrade_state", None)  # the state of an earlier version
        est.__dict__.update(state if upgrade is None else upgrade(state))
        return est

    def module(self, value, where):
        import torch

        state = {k: self.tensor(v, f"{where}.{k}") for k, v in value["state"].items()}
        # Built without memory first (the "meta" device), so that a recipe whose sizes the
        # stored weights do not back cannot allocate without bound; then given the weights.
        with torch.device("meta"):
            net = _build(value.get("recipe"), where, self)
        expected = {k: tuple(t.shape) for k, t in net.state_dict().items()}
        stored = {k: tuple(t.shape) for k, t in state.items()}
        if expected != stored:
            wrong = sorted(set(expected) ^ set(stored)) or sorted(
                k for k in expected if expected[k] != stored[k])
            raise ValueError(f"{where}: the stored weights do not fit the network "
                             f"({len(wrong)} tensors differ, first: {wrong[0]})")
        net = net.to_empty(device="cpu")
        net.load_state_dict(state, strict=True)
        net.to(memory_format=torch.channels_last)
        return net.train(bool(value.get("training", False)))


def save_model(model, path):
    """Write a fitted estimator (or a Pipeline of them) to a file that holds no code.

    The parameters and fitted attributes are stored as JSON, the arrays and
    network weights as ``.npy`` arrays, in one zip file written atomically.
    :func:`load_model` reads it back without unpickling anything, so such a
    file is safe to share and to load from any source; ``sklearn-psa
    predict --model`` reads it.

    Parameters
    ----------
    model : estimator
        A :class:`~sklearn_psa.PSASegmenter`, :class:`~sklearn_psa.CAMClassifier`,
        :class:`~sklearn_psa.AffinityEstimator`, :class:`~sklearn_psa.FeatureAffinity`,
        :class:`~sklearn_psa.RandomWalkRefiner` or a
        :class:`sklearn.pipeline.Pipeline` of them, fitted or not. Networks must
        use registered backbones (a user ``nn.Module`` backbone is code:
        pickle such a model with :func:`dump_model` instead); ``memory`` must
        be None or a folder path.
    path : str or path
        The file to write (by convention ``*.psa``); its folder is created.

    Returns
    -------
    path : str

    Raises
    ------
    TypeError
        Naming the attribute that cannot be stored (a user module, an object).

    Examples
    --------
    >>> import os, tempfile
    >>> from sklearn_psa import RandomWalkRefiner
    >>> from sklearn_psa.io import load_model, save_model
    >>> path = save_model(RandomWalkRefiner(beta=16), os.path.join(tempfile.mkdtemp(), "rw.psa"))
    >>> load_model(path).beta
    16
    """
    writer = _Writer()
    tree = writer.encode(model, "model")
    if not (isinstance(tree, dict) and tree.get("__type__") == "estimator"):
        raise TypeError(f"model: expected an estimator, got {type(model).__name__}")
    manifest = {"format": FORMAT, "version": VERSION, "sklearn_psa": __version__,
                "n_arrays": len(writer.arrays), "model": tree}
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{os.fspath(path)}: is a folder; expected a model file path")
    with atomic_write(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MANIFEST, json.dumps(manifest, allow_nan=False))
        for i, arr in enumerate(writer.arrays):
            buffer = io.BytesIO()
            np.save(buffer, arr if isinstance(arr, np.ndarray) else arr.load(), allow_pickle=False)
            zf.writestr(f"arrays/{i}.npy", buffer.getvalue())
    return os.fspath(path)


def is_model_file(path):
    """Whether ``path`` is a file written by :func:`save_model` (reads its zip directory only)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as zf:
            return MANIFEST in zf.namelist()
    except OSError:
        return False


class _ZipArrays:
    """The arrays of an open model file, each read when the decoder first asks for it."""

    def __init__(self, zf, n_arrays):
        self.zf = zf
        self.n_arrays = n_arrays

    def __len__(self):
        return self.n_arrays

    def __getitem__(self, i):
        with self.zf.open(f"arrays/{i}.npy") as f:
            return np.load(io.BytesIO(f.read()), allow_pickle=False)


class _OpenModelFile:
    """A model file held open for :class:`ModelFileArrays`: the open file keeps reading the
    same bytes even when the path is later replaced (e.g. by saving the model there)."""

    def __init__(self, path, n_arrays):
        self.path = path
        self._file = open(path, "rb")
        try:
            self.arrays = _ZipArrays(zipfile.ZipFile(self._file), n_arrays)
        except BaseException:
            self._file.close()
            raise

    def __del__(self):
        file = getattr(self, "_file", None)
        if file is not None:
            file.close()


class _ModelFileArray:
    """One array of a :class:`_OpenModelFile`, read by ``load()`` (when a model is saved)."""

    __slots__ = ("source", "ref")

    def __init__(self, source, ref):
        self.source = source
        self.ref = ref

    def load(self):
        return self.source.arrays[self.ref]


class ModelFileArrays(Sequence):
    """Arrays of a model file, each read from it on access (``load_model``'s
    ``PSASegmenter.pseudo_labels_``), so that loading a model holds none of them.

    Indexing by an int reads that array; a slice gives ``ModelFileArrays``. Pickles (and
    copies) as the list of its arrays, read then.
    """

    def __init__(self, source, refs):
        self._source = source
        self._refs = list(refs)

    def __len__(self):
        return len(self._refs)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return ModelFileArrays(self._source, self._refs[index])
        return self._source.arrays[self._refs[index]]

    def items(self):
        """The arrays as deferred reads (see :meth:`_Writer.deferred`)."""
        return [_ModelFileArray(self._source, ref) for ref in self._refs]

    def __reduce__(self):
        return list, (list(self),)

    def __repr__(self):
        return f"ModelFileArrays(n={len(self)}, file={self._source.path!r})"


def load_model(path, *, pseudo_labels=True):
    """Read a model written by :func:`save_model`; unpickles nothing.

    Only this package's estimators, ``Pipeline`` and networks built from
    registered backbones are created; the arrays are read with
    ``numpy.load(allow_pickle=False)``.

    Parameters
    ----------
    path : str or path
    pseudo_labels : bool, default=True
        Give ``PSASegmenter.pseudo_labels_``, the masks synthesized for the
        training images (one byte per pixel of every training image: 2 GB for
        PASCAL VOC's train_aug, 36 GB for COCO's train2017), as a sequence that
        reads each mask from the file when it is indexed, so that loading holds
        none of them (``list(model.pseudo_labels_)`` reads them all; the file
        stays open while the model lives). False leaves the attribute out, for
        prediction, which does not use them (``sklearn-psa predict`` and
        ``evaluate`` do so).

    Returns
    -------
    model : estimator

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        The file is not a model file of this format (a pickle, for example: load
        those with ``joblib.load`` only from sources you trust), or is damaged.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such model file")
    if not is_model_file(path):
        raise ValueError(
            f"{path}: not a model file written by sklearn_psa.io.save_model"
            + (" (it looks like a pickle, which can run code when loaded: load it with "
               "joblib.load only if you trust its source, then save it with save_model)"
               if looks_like_pickle(path) else "")
        )
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = json.loads(zf.read(MANIFEST).decode("utf-8"))
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise ValueError("not this format")
            if manifest.get("version") != VERSION:
                raise ValueError(
                    f"format version {manifest.get('version')!r}; this sklearn-psa reads "
                    f"version {VERSION} (written by sklearn-psa {manifest.get('sklearn_psa')})"
                )
            n_arrays = manifest.get("n_arrays")
            if not isinstance(n_arrays, int) or n_arrays < 0:
                raise ValueError("no array count")
            if pseudo_labels:  # read through a handle that the masks keep open
                source = _OpenModelFile(path, n_arrays)
                reader = _Reader(source.arrays, lazy=("pseudo_labels_",), source=source)
            else:
                reader = _Reader(_ZipArrays(zf, n_arrays), skip=("pseudo_labels_", "pseudo_label_names_"))
            return reader.decode(manifest["model"], "model")
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError,
            zipfile.BadZipFile, EOFError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: damaged or not a sklearn-psa model file ({exc})") from exc


def looks_like_pickle(path):
    """Whether the file starts as a pickle or a joblib (compressed) pickle does."""
    with open(path, "rb") as f:
        head = f.read(3)
    return head[:1] == b"\x80" or head[:2] in (b"\x1f\x8b", b"x\x9c", b"x\x01", b"x\xda", b"BZ") \
        or head == b"\xfd7z"
