"""The ``sklearn-psa`` command: ``demo``, ``fit``, ``predict`` and ``evaluate``.

Run ``sklearn-psa --help`` (or ``python -m sklearn_psa --help``) for the options;
``docs/cli.md`` describes each command and the folder and CSV formats.

Data folders
------------
A command's ``DATA`` argument is either

- a PASCAL VOC devkit folder (``VOC2012`` holding ``JPEGImages`` and
  ``Annotations``, or a folder above it), read with
  :func:`sklearn_psa.datasets.load_voc` for ``--split`` (a split name or a list
  file such as SBD's ``train_aug.txt``); or
- a folder of images. Its labels come from ``--labels CSV``: a header
  ``filename,<class 1>,<class 2>,...`` then one row per image with its file name
  (relative to the folder) and a 0/1 per class. Without ``--labels``,
  ``predict`` takes every image file in the folder. Masks for
  ``--supervision pixel`` come from ``--masks DIR``: ``<image stem>.png``.

Masks are written and read as VOC-palette PNGs (pixel value = class: 0
background, 1..K classes, 255 ignored), named ``<image id>.png``.
"""

import argparse
import ast
import csv
import errno
import os
import sys
from pathlib import Path

from . import io
from ._model_file import looks_like_pickle
from .io import (
    IMAGE_EXTENSIONS,
    atomic_write,
    check_writable,
    image_size,
    is_model_file,
    list_images,
    load_model,
    output_mark,
    remove_stale_temporaries,
    save_mask,
    save_model,
)

__all__ = ["main"]


class CommandError(Exception):
    """An error in the command's input, printed as ``sklearn-psa: error: ...``."""


# --------------------------------------------------------------------------------------
# Data folders
# --------------------------------------------------------------------------------------


def _voc_root(path):
    """The VOC2012 folder at or under ``path`` (as ``load_voc`` finds it), or None."""
    from .datasets._voc import find_voc2012

    if not Path(path).is_dir():
        return None
    try:
        return find_voc2012(path)
    except FileNotFoundError:
        return None


def _read_label_csv(csv_path, folder):
    """Read ``filename,<class>,...`` rows; return (ids, image paths, indicator, class names)."""
    import numpy as np

    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise CommandError(f"{csv_path}: no such labels file")
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]
    except UnicodeDecodeError as exc:
        raise CommandError(f"{csv_path}: {_one_line(exc)}; save the CSV as UTF-8") from exc
    if not rows:
        raise CommandError(f"{csv_path}: empty; expected a header 'filename,<class 1>,...'")
    header = [cell.strip() for cell in rows[0]]
    class_names = _csv_class_names(header, csv_path, folder)
    first = 1
    if class_names is None:  # no header: the first row is an image's
        first = 0
        class_names = [f"class {j + 1}" for j in range(len(header) - 1)]
        print(f"{csv_path}: no header (its first row lists an image); the {len(class_names)} "
              f"classes are named 'class 1'..'class {len(class_names)}' (a first row "
              "'filename,<class 1>,...' names them)", file=sys.stderr)
    if len(rows) == first:
        raise CommandError(f"{csv_path}: has a header but no image rows")
    paths, labels = [], np.zeros((len(rows) - first, len(class_names)), dtype=np.uint8)
    for i, row in enumerate(rows[first:]):
        line = i + first + 1
        if len(row) != len(header):
            raise CommandError(
                f"{csv_path}, line {line}: {len(row)} fields, expected {len(header)} "
                f"(a file name and one 0/1 per class)"
            )
        name = row[0].strip()
        path = Path(name) if os.path.isabs(name) else Path(folder) / name
        if not path.is_file():
            raise CommandError(f"{csv_path}, line {line}: no such image file: {path}")
        for j, cell in enumerate(row[1:]):
            cell = cell.strip()
            if cell not in ("0", "1"):
                raise CommandError(
                    f"{csv_path}, line {line}, column {class_names[j]!r}: {cell!r} is not 0 or 1"
                )
            labels[i, j] = int(cell)
        paths.append(str(path))
    return _image_ids(paths), paths, labels, class_names


def _csv_class_names(header, csv_path, folder=None):
    """The class names of a labels CSV's first row ``header``, or None where that row is no
    header but an image's labels (its first cell names an image file)."""
    class_names = header[1:]
    if not class_names:
        raise CommandError(
            f"{csv_path}: the header {header} names no class; expected 'filename,<class 1>,...'"
        )
    name = header[0]
    path = Path(name) if os.path.isabs(name) or folder is None else Path(folder) / name
    if path.suffix.lower() in IMAGE_EXTENSIONS or path.is_file():
        return None
    if all(c in ("0", "1") for c in class_names):
        raise CommandError(
            f"{csv_path}: the header's class names are all 0 or 1 ({', '.join(class_names)}); "
            f"expected a header 'filename,<class 1>,...' (or, without a header, a first row "
            f"naming an image file, not {name!r})"
        )
    if len(set(class_names)) != len(class_names):
        raise CommandError(f"{csv_path}: repeated class names in the header {class_names}")
    return class_names


def _image_ids(paths):
    """File stems, checked to be unique (they name the output masks)."""
    ids = [Path(p).stem for p in paths]
    seen = {}
    for p, i in zip(paths, ids):
        if i in seen and os.path.abspath(seen[i]) == os.path.abspath(p):
            raise CommandError(f"{p} is listed twice; list each image once")
        if i in seen:
            raise CommandError(
                f"two images share the name {i!r} ({seen[i]} and {p}); their masks would "
                f"both be {i}.png"
            )
        seen[i] = p
    return ids


def _list_images(folder):
    paths = list_images(folder)
    if not paths:
        raise CommandError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return paths


def _mask_paths(mask_dir, ids, *, what="mask"):
    mask_dir = Path(mask_dir)
    if not mask_dir.is_dir():
        raise CommandError(f"{mask_dir}: no such {what} folder")
    paths = [mask_dir / f"{i}.png" for i in ids]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise CommandError(
            f"{len(missing)} of {len(ids)} {what}s are missing in {mask_dir} (first: {missing[0]})"
        )
    return [str(p) for p in paths]


def load_data(data, *, labels=None, masks=None, split="train", need_labels=True,
              need_masks=False):
    """Resolve a command's DATA argument.

    Returns a dict with ``ids``, ``images`` (paths), ``labels`` (indicator or
    None), ``masks`` (paths or None) and ``class_names`` (or None).
    """
    data = Path(data)
    if not data.exists():
        raise CommandError(f"{data}: no such folder")
    voc = _voc_root(data)
    if voc is not None:
        from .datasets import load_voc

        bunch = load_voc(voc, split=split)
        out = {
            "ids": list(bunch.ids),
            "images": [str(p) for p in bunch.images],
            "labels": bunch.labels,
            "masks": None,
            "class_names": list(bunch.class_names),
        }
        if masks is not None:
            out["masks"] = _mask_paths(masks, out["ids"])
        elif need_masks:
            voc_masks = list(bunch.masks)
            missing = [i for i, m in zip(out["ids"], voc_masks) if m is None]
            if missing:
                raise CommandError(
                    f"{voc}: {len(missing)} images of split {split!r} have no "
                    f"SegmentationClass mask (first: {missing[0]}); use a segmentation split"
                )
            out["masks"] = [str(m) for m in voc_masks]
        return out
    if not data.is_dir():
        raise CommandError(f"{data}: expected a VOC devkit folder or a folder of images")
    if labels is not None:
        ids, paths, Y, class_names = _read_label_csv(labels, data)
    elif need_labels:
        raise CommandError(
            f"{data} is not a VOC devkit folder: give the image labels with --labels CSV "
            "(header 'filename,<class 1>,<class 2>,...', one 0/1 per class)"
        )
    else:
        paths = _list_images(data)
        ids, Y, class_names = _image_ids(paths), None, None
    out = {"ids": ids, "images": paths, "labels": Y, "masks": None, "class_names": class_names}
    if masks is not None:
        out["masks"] = _mask_paths(masks, ids)
    elif need_masks:
        raise CommandError("--supervision pixel needs the true masks: give --masks DIR")
    return out


# --------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------


def _parse_param(text):
    """``name=value`` -> (name, value); the value is a Python literal when it parses as one."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    name, value = text.split("=", 1)
    try:
        value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        pass
    return name.strip(), value


def _positive_int(text):
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _n_jobs(text):
    """argparse type of ``--n-jobs``: a non-zero integer (-1: all cores)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a non-zero integer (-1: all cores), got {text!r}")
    return value


def _check_folder(path, option):
    """Fail before any work where ``path``, a folder to reuse or create, is (or is in) a file."""
    if path is None:
        return
    path = Path(path)
    found = next((p for p in (path, *path.parents) if p.exists()), None)
    if found is not None and not found.is_dir():
        raise CommandError(f"{option} {path}: expected a folder, but {found} is a file")


def _resolved(path):
    return Path(os.path.realpath(path))


def _input_files(data, *extra):
    """The resolved paths of the data files a run reads: images, masks, CSVs."""
    paths = list(data["images"]) + list(data.get("masks") or []) + [p for p in extra if p]
    return {_resolved(p) for p in paths}


def _writable(folder, what):
    """Fail unless files can be created in ``folder``; ``what`` names the option and path."""
    try:
        check_writable(folder)
    except OSError as exc:
        raise CommandError(
            f"{what}: cannot write in {folder} ({exc.strerror or exc}: {exc.filename})"
        ) from exc


def _check_mask_folder(folder, option, inputs, ids):
    """Before any work: ``folder`` holds no input of this run, can be written, and every
    ``<id>.png`` already there is a mask sklearn-psa wrote as an output (only those are
    skipped as done or replaced); removes what killed saves left there."""
    if folder is None:
        return
    where = _resolved(folder)
    held = sorted(str(p) for p in inputs if p.parent == where or p == where)
    if held:
        raise CommandError(
            f"{option} {folder}: holds {len(held)} input file(s) of this run (first: {held[0]}), "
            "which the masks written there could replace; choose another folder"
        )
    _writable(folder, f"{option} {folder}")
    foreign = [p for p in (Path(folder) / f"{i}.png" for i in ids)
               if p.exists() and output_mark(p) is None]
    if foreign:
        raise CommandError(
            f"{option} {folder}: {len(foreign)} file(s) there are not masks that sklearn-psa "
            f"wrote (first: {foreign[0]}); they are never replaced or taken for finished "
            "masks: choose an empty folder or move them"
        )
    remove_stale_temporaries(folder)


def _check_model_output(path, inputs):
    """Before training: ``--model`` is not an input, replaces only a model file, can be written."""
    path = Path(path)
    if _resolved(path) in inputs:
        raise CommandError(f"--model {path}: is an input of this run; choose another path")
    if path.exists() and not is_model_file(path):
        raise CommandError(
            f"--model {path}: exists and is not a model file of sklearn_psa.io.save_model "
            "(a pickle of an earlier version, or a file of yours); it is never replaced: "
            "choose another path or remove it"
        )
    _writable(path.parent, f"--model {path}")


def _load_model(path, *, trust_pickle=False):
    """The fitted PSASegmenter or Pipeline in ``path``: a file of ``sklearn_psa.io.save_model``
    (holds no code), or with ``trust_pickle`` a joblib pickle. A model file's pseudo-labels (the
    training images' masks, as large as the training set) are not read: predicting and
    evaluating do not use them."""
    path = Path(path)
    if not path.is_file():
        raise CommandError(f"{path}: no such model file (write one with 'sklearn-psa fit')")
    if is_model_file(path):
        try:
            model = load_model(path, pseudo_labels=False)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
    elif not trust_pickle:
        if looks_like_pickle(path):
            raise CommandError(
                f"{path}: a pickle (joblib) file, which can run any code when loaded: refused. "
                "If you trust its source, pass --trust-pickle, or convert it once with "
                "sklearn_psa.io.save_model(joblib.load(path), 'model.psa')"
            )
        raise CommandError(f"{path}: not a model written by 'sklearn-psa fit' "
                           "(or sklearn_psa.io.save_model)")
    else:
        import joblib

        try:
            model = joblib.load(path)
        except Exception as exc:  # a CSV, an image, a truncated file: whatever unpickling raises
            raise CommandError(
                f"{path}: not a model written by 'sklearn-psa fit' (joblib could not read it: "
                f"{type(exc).__name__}: {exc})"
            ) from exc
    from sklearn.pipeline import Pipeline
    from sklearn.utils.validation import check_is_fitted

    from .segmenter import PSASegmenter

    if not isinstance(model, (PSASegmenter, Pipeline)) or not hasattr(model, "predict"):
        raise CommandError(
            f"{path}: holds a {type(model).__name__}, not a fitted PSASegmenter or Pipeline"
        )
    try:
        check_is_fitted(model)
    except Exception as exc:
        raise CommandError(f"{path}: holds an unfitted {type(model).__name__}") from exc
    return model


def _set_predict_options(model, device, crf, n_jobs=None, store=None):
    """Apply ``--device``, ``--crf``, ``--n-jobs`` and ``--store`` to a PSASegmenter or to
    each step of a Pipeline (``--n-jobs``, ``--store``: the steps that have the parameter)."""
    from sklearn.pipeline import Pipeline

    if isinstance(model, Pipeline):
        params = model.get_params()
        if crf is not None:
            raise CommandError(
                "--crf / --no-crf: the model is a Pipeline, whose masks come from the random "
                "walk; the dense CRF at prediction belongs to PSASegmenter"
            )
        for option, value in (("device", device), ("n_jobs", n_jobs), ("store", store)):
            if value is not None:
                names = [k for k in params if k.endswith(f"__{option}") and k.count("__") == 1]
                model.set_params(**{k: value for k in names})
        return model
    if store is not None:
        raise CommandError(
            "--store: the model is a PSASegmenter, which predicts with its segmentation "
            "network alone and makes no per-image CAMs or affinities to keep; --store is for "
            "a Pipeline model (its CAM and affinity steps)"
        )
    if device is not None:
        model.set_params(device=device)
    if crf is not None:
        model.set_params(crf=crf)
    if n_jobs is not None:  # the CRF's workers
        model.set_params(n_jobs=n_jobs)
    return model


def cmd_demo(args):
    from ._demo import run_demo

    _check_folder(args.output, "--output")
    if args.quick and args.backbone not in ("auto", "tiny"):
        raise CommandError(
            f"--quick always uses the tiny backbone, got --backbone {args.backbone}"
        )
    run_demo(
        args.output,
        n_samples=args.n_samples,
        device=args.device or "auto",
        quick=args.quick,
        random_state=args.random_state,
        progress=not args.quiet,
        out=sys.stdout,
        backbone=args.backbone,
    )
    return 0


def _check_feature_affinity(affinity):
    """Check FeatureAffinity's parameters before any training, so that weights it cannot load
    (package not installed, no such file) or a backbone without trained weights fail at once,
    with the estimator's own message, rather than after the CAM classifier."""
    try:
        affinity.check_params()
    except (ImportError, OSError, ValueError) as exc:
        raise CommandError(f"--affinity features: {exc}") from exc


def _make_estimator(args, classes=None, n_images=None):
    """The unfitted PSASegmenter of ``sklearn-psa fit``'s options (``classes``: the data's
    class names)."""
    from .segmenter import PSASegmenter

    params = dict(
        classes=classes,
        backbone=args.backbone,
        supervision=args.supervision,
        device=args.device or "auto",
        random_state=args.random_state,
        verbose=0 if args.quiet else 1,
        memory=args.memory,
        n_jobs=args.n_jobs,
    )
    model = PSASegmenter(**params)  # its backbone is the CAM and affinity steps' too
    if args.affinity == "features":
        from .feature_affinity import FeatureAffinity

        # its own pretrained backbone; the command's device and progress reach it at fit, as
        # they reach the other steps
        model.set_params(affinity=FeatureAffinity())
    if args.store is not None:  # per-image CAMs, affinities and label maps on disk
        model.set_params(cam__store=args.store, affinity__store=args.store)
    _set_epochs(model, args, n_images)
    try:
        return model.set_params(**dict(args.set))
    except ValueError as exc:  # scikit-learn's message holds a multi-line estimator repr
        raise CommandError(f"--set: {' '.join(str(exc).split())}") from exc


def _set_epochs(model, args, n_images=None):
    """Each network's epochs: its per-step option, else its default times ``--epoch-scale``
    (at least 1; AffinityNet's ``"auto"`` counts as :func:`~sklearn_psa.affinity.auto_epochs`
    of ``n_images``, the training images). ``--set`` comes after and wins."""
    features = args.affinity == "features"
    if features and args.affinity_epochs is not None:
        raise CommandError("--affinity-epochs: --affinity features trains no network")
    for key, given in (("cam__max_epochs", args.cam_epochs),
                       ("affinity__max_epochs", args.affinity_epochs),
                       ("max_epochs", args.max_epochs)):
        if key == "affinity__max_epochs" and features:
            continue
        if given is None and args.epoch_scale is not None:
            default = model.get_params()[key]
            if isinstance(default, str) and default == "auto":  # AffinityNet: by the data's size
                from .affinity import AUTO_MIN_EPOCHS, auto_epochs, starts_from_weights

                p = {k[len("affinity__"):]: v for k, v in model.get_params().items()
                     if k.startswith("affinity__")}
                pretrained = starts_from_weights(p["backbone"], p["pretrained"], p["init"],
                                                 p["backbone_options"])
                default = (auto_epochs(n_images, p["batch_size"], pretrained=pretrained) if n_images
                           else AUTO_MIN_EPOCHS)
            given = max(1, round(default * args.epoch_scale))
        if given is not None:
            model.set_params(**{key: given})


def _positive_float(text):
    """argparse type: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def cmd_fit(args):
    if Path(args.model).is_dir():
        raise CommandError(f"--model {args.model}: is a folder; expected a file path")
    _check_folder(args.memory, "--memory")
    _check_folder(args.pseudo_labels, "--pseudo-labels")
    _check_folder(args.store, "--store")
    data = load_data(args.data, labels=args.labels, masks=args.masks, split=args.split,
                     need_masks=args.supervision == "pixel")
    inputs = _input_files(data, args.labels)
    _check_model_output(args.model, inputs)
    if args.supervision == "image":
        _check_mask_folder(args.pseudo_labels, "--pseudo-labels", inputs, data["ids"])
    if args.memory is not None:
        _writable(args.memory, f"--memory {args.memory}")
    model = _make_estimator(args, classes=data["class_names"], n_images=len(data["ids"]))
    for name, value in model.get_params().items():  # --set checkpoint=..., cam__checkpoint=...
        if name.split("__")[-1] == "checkpoint" and value is not None:
            path = Path(value)
            if _resolved(path) in inputs:
                raise CommandError(f"--set {name}={value}: is an input of this run")
            _writable(path.parent, f"--set {name}={value}")
    if args.affinity == "features" and args.supervision == "image":
        _check_feature_affinity(model.affinity)
    y = data["masks"] if args.supervision == "pixel" else data["labels"]
    main_rank = getattr(args, "group", None) is None or args.group.rank == 0
    if main_rank:
        print(f"fitting on {len(data['images'])} images from {args.data} "
              f"({args.supervision}-level supervision)", file=sys.stderr)
    model.fit(data["images"], y)  # data-parallel under torchrun: every rank the same model
    if not main_rank:  # rank 0 writes
        return 0
    save_model(model, args.model)
    print(f"model written to {args.model}")
    if args.pseudo_labels and args.supervision == "image":
        # this model's masks replace any left there by an earlier fit
        written = model.save_pseudo_labels(args.pseudo_labels, names=data["ids"], overwrite=True)
        print(f"{len(written)} pseudo-label masks written to {args.pseudo_labels}")
    return 0


#: Error numbers of a full disk (or a quota reached).
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

#: What one image can raise in ``predict`` (unreadable, too large for the memory, bad pixels):
#: reported by name, and skipped with ``--on-error skip``.
_PER_IMAGE_ERRORS = (ValueError, OSError, MemoryError, RuntimeError)


def _data_parallel(args):
    """The process group of ``fit`` and ``predict`` launched by ``torchrun`` (first said on
    stderr by rank 0: "data-parallel over 2 processes (gloo)"), else None. ``demo`` refuses
    to run under a launcher (every process would run all of it and write the same files)."""
    from ._distributed import launched, process_group

    if not launched():
        return None
    if args.command == "demo":
        raise CommandError("demo runs in one process: start it without torchrun (fit and "
                           "predict are the commands that run data-parallel)")
    if args.command not in ("fit", "predict"):
        return None
    from ._device import resolve_device

    group = process_group(resolve_device(args.device or "auto"))
    if group is not None and group.rank == 0:
        print(repr(group), file=sys.stderr, flush=True)
    return group


def cmd_predict(args):
    _check_folder(args.output, "--output")
    if not Path(args.model).is_file():
        raise CommandError(f"{args.model}: no such model file (write one with 'sklearn-psa fit')")
    data = load_data(args.data, labels=args.labels, split=args.split, need_labels=False)
    # (the model may share the folder: no mask is named like it, and were one to be, the
    # model carries no output mark and is never replaced)
    _check_mask_folder(args.output, "--output", _input_files(data, args.labels), data["ids"])
    _check_folder(args.store, "--store")
    model = _set_predict_options(_load_model(args.model, trust_pickle=args.trust_pickle),
                                 args.device, args.crf, args.n_jobs, args.store)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    group = getattr(args, "group", None)
    todo = [(i, p) for i, p in zip(data["ids"], data["images"])
            if args.overwrite or not (out / f"{i}.png").exists()]
    skipped = len(data["ids"]) - len(todo)
    if skipped and (group is None or group.rank == 0):
        print(f"{skipped} masks already in {out}: skipped (resume; --overwrite redoes them)",
              file=sys.stderr)
    n_todo = len(todo)
    if group is not None:  # rank 0's list (before any rank writes), each rank its share
        todo = group.share(group.broadcast_object(todo))
    from tqdm.auto import tqdm

    # over the whole dataset (this rank's share of it): masks from an earlier run count as done
    bar = tqdm(total=len(todo) + skipped, initial=skipped, desc="predict", unit="img",
               disable=args.quiet, file=sys.stderr)
    failed, written = [], 0

    def fail(path, exc):
        """Report one image that cannot be predicted; stop the run with --on-error stop."""
        message = _one_line(exc)
        if not message.startswith(str(path)):
            message = f"{path}: {message}"
        if args.on_error == "stop":
            raise CommandError(f"{message} (--on-error skip goes on with the other images)")
        failed.append(path)
        bar.clear()
        print(f"sklearn-psa predict: skipped {message}", file=sys.stderr)

    readable = []
    for image_id, path in todo:  # from the headers: size, pixel format, readable at all
        try:
            image_size(path)
        except (ValueError, OSError) as exc:
            fail(path, exc)
            bar.update(1)
        else:
            readable.append((image_id, path))
    for start in range(0, len(readable), args.batch_size):
        chunk = readable[start:start + args.batch_size]
        try:
            preds = list(model.predict([p for _, p in chunk]))
        except _PER_IMAGE_ERRORS as exc:
            if len(chunk) == 1:
                fail(chunk[0][1], exc)
                preds = [None]
            else:
                preds = []  # find the image that failed: one at a time
                for _, path in chunk:
                    try:
                        preds.append(model.predict([path])[0])
                    except _PER_IMAGE_ERRORS as exc:
                        fail(path, exc)
                        preds.append(None)
        for (image_id, _), mask in zip(chunk, preds):
            if mask is not None:
                try:
                    save_mask(out / f"{image_id}.png", mask, output_of="predict")
                except OSError as exc:
                    if exc.errno not in _DISK_FULL:
                        raise
                    raise CommandError(
                        f"--output {out}: no space left on the disk while writing "
                        f"{image_id}.png; the {written + skipped} masks written so far are "
                        "complete and kept (nothing half-written is left): free some space "
                        "(or choose another --output) and run the same command again, which "
                        "skips them"
                    ) from exc
                written += 1
        bar.update(len(chunk))
    bar.close()
    if group is not None:  # the counts of all ranks, said once
        written = int(group.sum([written])[0])
        failed = [path for rank_failed in group.all_gather(failed) for path in rank_failed]
    print(f"{written} masks written to {out}")
    if failed:
        print(f"sklearn-psa predict: {len(failed)} of {n_todo} images failed (listed above; "
              f"first: {failed[0]})", file=sys.stderr)
        return 1
    return 0


def cmd_evaluate(args):
    from .metrics import segmentation_report

    pred_dir = Path(args.predictions)
    if not pred_dir.is_dir():
        raise CommandError(f"{pred_dir}: no such folder of predicted masks")
    class_names = None
    voc = _voc_root(args.truth)
    if voc is not None:
        from .datasets import VOC_CLASSES

        true_dir = voc / "SegmentationClass"
        class_names = list(VOC_CLASSES)
    else:
        true_dir = Path(args.truth)
    if not true_dir.is_dir():
        raise CommandError(f"{true_dir}: no such folder of true masks")
    if args.model is not None:
        model = _load_model(args.model, trust_pickle=args.trust_pickle)
        names = getattr(model, "class_names_", None)
        if names is None:  # a Pipeline: its classes parameter, where set
            names = model.get_params(deep=False).get("classes")
        if names is not None:
            class_names = [str(n) for n in names]
    if args.labels is not None:
        class_names = _read_label_csv_header(args.labels)
    if args.class_names is not None:
        class_names = [c.strip() for c in args.class_names.split(",")]
    ids = sorted(p.stem for p in pred_dir.glob("*.png") if not p.name.startswith("."))
    if not ids:
        raise CommandError(f"{pred_dir}: no predicted masks (*.png)")
    true = _mask_paths(true_dir, ids, what="true mask")
    pred = [str(pred_dir / f"{i}.png") for i in ids]
    if args.output:
        inputs = {_resolved(p) for p in true + pred + [args.labels, args.model] if p}
        if _resolved(args.output) in inputs:
            raise CommandError(f"--output {args.output}: is an input of this run (a mask, "
                               "the labels CSV or the model); choose another file")
        if Path(args.output).is_dir():
            raise CommandError(f"--output {args.output}: is a folder; expected a file path")
        _writable(Path(args.output).parent, f"--output {args.output}")
    try:  # mask files are read one pair at a time
        report = segmentation_report(true, pred, class_names=class_names,
                                     verbose=0 if args.quiet else 1)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    text = f"{len(ids)} masks: {pred_dir} against {true_dir}\n\n{report}\n"
    print(text, end="")
    if args.output:
        with atomic_write(args.output, "w") as f:
            f.write(text)
    return 0


def _read_label_csv_header(csv_path):
    """The class names of a labels CSV's header (None for a file without a header)."""
    if not Path(csv_path).is_file():
        raise CommandError(f"{csv_path}: no such labels file")
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), None)
    except UnicodeDecodeError as exc:
        raise CommandError(f"{csv_path}: {_one_line(exc)}; save the CSV as UTF-8") from exc
    if not header or len(header) < 2:
        raise CommandError(f"{csv_path}: expected a header 'filename,<class 1>,...'")
    return _csv_class_names([c.strip() for c in header], csv_path)


# --------------------------------------------------------------------------------------
# Argument parsing
# --------------------------------------------------------------------------------------


def build_parser():
    """The ``sklearn-psa`` argument parser."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="sklearn-psa",
        description="Weakly supervised semantic segmentation with AffinityNet "
                    "(Ahn & Kwak, CVPR 2018).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def common(p):
        p.add_argument("--device", default=None,
                       help="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', ...")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        p.add_argument("--max-pixels", type=_positive_int, default=None,
                       help="largest image (width x height) read; larger files are refused "
                            "by name (default 40000000: sklearn_psa.io.MAX_PIXELS)")

    def command(name, func, help, description):
        p = sub.add_parser(name, help=help, description=description)
        p.set_defaults(func=func)
        return p

    def model_file(p, required, help):
        p.add_argument("--model", required=required, help=help)
        p.add_argument("--trust-pickle", action="store_true",
                       help="also accept a joblib pickle as --model; loading a pickle runs any "
                            "code it holds, so only for files from a source you trust")

    p = command(
        "demo", cmd_demo, help="run the whole method on synthetic shapes and write a report",
        description="Fit the CAM classifier, AffinityNet, the random walk and the segmentation "
                    "network on make_shapes images (image-level labels only), fit the same "
                    "network on the true masks as a reference, and write report.md, report.json, "
                    "grid.png and model.psa to the output folder.",
    )
    p.add_argument("--output", required=True, help="folder for report.md, grid.png, model.psa")
    p.add_argument("--n-samples", type=_positive_int, default=None,
                   help="training images (default 160; 24 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="tiny images and one epoch per network: a smoke test in seconds")
    p.add_argument("--backbone", choices=("auto", "tiny", "efficientnet_lite0"), default="auto",
                   help="auto (default): EfficientNet-Lite0 with ImageNet weights where the "
                        "'pretrained' extra is installed, else tiny from scratch")
    p.add_argument("--random-state", type=int, default=0)
    common(p)

    p = command(
        "fit", cmd_fit, help="fit a PSASegmenter on a VOC devkit or a folder of images",
        description="Fit a PSASegmenter and write it to --model (a model file that holds "
                    "no code: parameters as JSON, arrays as .npy; see sklearn_psa.io.save_model).",
    )
    p.add_argument("data", help="VOC devkit folder, or a folder of images (with --labels)")
    p.add_argument("--model", required=True, help="where to write the fitted model (by convention .psa)")
    p.add_argument("--labels", help="CSV of image labels: 'filename,<class 1>,...' then 0/1 rows")
    p.add_argument("--masks", help="folder of true masks <image id>.png (--supervision pixel)")
    p.add_argument("--split", default="train", help="VOC split (default train)")
    p.add_argument("--supervision", choices=("image", "pixel"), default="image")
    p.add_argument("--backbone", default="auto",
                   help="backbone of the three networks (FeatureAffinity keeps its own): auto "
                        "(default; EfficientNet-Lite0 with ImageNet weights where installed, else "
                        "tiny), tiny, resnet50, ...")
    p.add_argument("--affinity", choices=("net", "features"), default="net",
                   help="net (default): train AffinityNet on the CAMs' confident regions (the "
                        "paper); features: FeatureAffinity, the distance between EfficientNet-"
                        "Lite0's ImageNet features, no training (needs the pretrained extra; "
                        "tune the walk with --set refiner__beta=...)")
    p.add_argument("--epoch-scale", type=_positive_float, default=None, metavar="FACTOR",
                   help="multiply the default epochs of all three networks (CAM classifier, "
                        "AffinityNet, segmentation network) by FACTOR, at least 1 each: 0.1 "
                        "for a quick look, 2 for longer training")
    p.add_argument("--cam-epochs", type=_positive_int, default=None,
                   help="epochs of the CAM classifier (overrides --epoch-scale)")
    p.add_argument("--affinity-epochs", type=_positive_int, default=None,
                   help="epochs of AffinityNet (overrides --epoch-scale)")
    p.add_argument("--max-epochs", "--seg-epochs", type=_positive_int, default=None,
                   help="epochs of the segmentation network (overrides --epoch-scale)")
    p.add_argument("--memory", default=None,
                   help="cache folder for the CAM and affinity steps (reused by later fits)")
    p.add_argument("--pseudo-labels", default=None,
                   help="also write the synthesized training masks to this folder")
    p.add_argument("--store", default=None,
                   help="folder for the per-image CAMs, affinities and affinity labels: written "
                        "as computed, memory-mapped when used, reused by a resumed or later fit "
                        "(docs/scale.md)")
    p.add_argument("--n-jobs", type=_n_jobs, default=None,
                   help="processes for the affinity labels' dense CRF and the random walk "
                        "(-1: all cores)")
    p.add_argument("--random-state", type=int, default=0)
    p.add_argument("--set", action="append", default=[], type=_parse_param,
                   metavar="NAME=VALUE",
                   help="any PSASegmenter parameter, nested ones too: --set refiner__beta=16 "
                        "--set cam__max_epochs=5 (values are Python literals)")
    common(p)

    p = command(
        "predict", cmd_predict, help="write predicted masks for a folder of images or a VOC split",
        description="Predict a mask per image and write <image id>.png (VOC palette) into "
                    "--output, atomically; masks already there are skipped, so an "
                    "interrupted run resumes.",
    )
    p.add_argument("data", help="VOC devkit folder, or a folder of images")
    model_file(p, True, help="a model written by 'sklearn-psa fit' or "
                             "sklearn_psa.io.save_model (a fitted PSASegmenter or Pipeline)")
    p.add_argument("--output", required=True, help="folder for the predicted masks")
    p.add_argument("--labels", help="CSV naming the images to predict (default: all images)")
    p.add_argument("--split", default="val", help="VOC split (default val)")
    p.add_argument("--crf", dest="crf", action="store_true", default=None,
                   help="refine with the dense CRF")
    p.add_argument("--no-crf", dest="crf", action="store_false", help="no dense CRF")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="images per predict call")
    p.add_argument("--overwrite", action="store_true", help="redo masks already written")
    p.add_argument("--store", default=None,
                   help="folder for the per-image CAMs and affinities of a Pipeline model: "
                        "written as computed, reused by a resumed run (docs/scale.md)")
    p.add_argument("--n-jobs", type=_n_jobs, default=None,
                   help="processes for the dense CRF (--crf), or for a Pipeline model's random "
                        "walk (-1: all cores)")
    p.add_argument("--on-error", choices=("skip", "stop"), default="skip",
                   help="an image that cannot be read or predicted (corrupt, too large, float "
                        "pixels): skip (default) reports it by name, goes on and exits with "
                        "status 1; stop ends the run at it (status 2)")
    common(p)

    p = command(
        "evaluate", cmd_evaluate, help="per-class IoU of predicted masks against true masks",
        description="Print the segmentation report (IoU, precision, recall per class, mean) "
                    "of every predicted mask against the true mask of the same name.",
    )
    p.add_argument("predictions", help="folder of predicted masks <image id>.png")
    p.add_argument("truth", help="folder of true masks, or a VOC devkit folder")
    model_file(p, False, help="a model written by 'sklearn-psa fit' or "
                              "sklearn_psa.io.save_model: its class names")
    p.add_argument("--labels", help="CSV whose header names the classes")
    p.add_argument("--class-names", help="comma-separated class names (1..K)")
    p.add_argument("--output", help="also write the report to this file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--max-pixels", type=_positive_int, default=None,
                   help="largest mask (width x height) read; larger files are refused by name "
                        "(default 40000000: sklearn_psa.io.MAX_PIXELS)")
    return parser


def _one_line(exc):
    """The error as one line; an ``OSError`` names its path first."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text ({exc.reason} at byte {exc.start})"
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
        if exc.filename2 is not None:
            text += f" (to {exc.filename2})"
    else:
        text = str(exc)
    return " ".join(text.split())


def main(argv=None):
    """Run the ``sklearn-psa`` command; return its exit status.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    status : int
        0 on success, 1 when ``predict`` skipped images it could not read or
        predict (``--on-error skip``; each is named on stderr), 2 on a usage or
        input error (printed to stderr).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    limit = io.MAX_PIXELS
    if getattr(args, "max_pixels", None) is not None:
        io.MAX_PIXELS = args.max_pixels
    stdout = sys.stdout
    try:
        args.group = _data_parallel(args)
        if args.group is not None and args.group.rank != 0:  # rank 0 reports (errors: every rank)
            args.quiet = True
            sys.stdout = open(os.devnull, "w")
        status = args.func(args)
        if args.group is not None:  # the ranks end together (rank 0 writes while others wait)
            args.group.barrier()
        return status
    except (CommandError, OSError, ValueError, TypeError) as exc:
        if os.environ.get("SKLEARN_PSA_TRACEBACK"):
            raise
        print(f"sklearn-psa {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            print("the disk is full: free some space and run the same command again; every "
                  "file written is complete (a file being written when the disk filled is "
                  "removed), and what is done (masks, --store arrays, checkpoints) is reused",
                  file=sys.stderr)
        if not isinstance(exc, (CommandError, OSError)):
            print("(set SKLEARN_PSA_TRACEBACK=1 to see where it came from)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sklearn-psa {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        io.MAX_PIXELS = limit
        if sys.stdout is not stdout:
            sys.stdout.close()
            sys.stdout = stdout
        if getattr(args, "group", None) is not None:
            import torch.distributed as dist

            if dist.is_initialized():  # the one _data_parallel began
                dist.destroy_process_group()
