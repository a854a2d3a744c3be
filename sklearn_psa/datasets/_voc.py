"""PASCAL VOC 2012 from a devkit folder on disk (nothing is downloaded)."""

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

__all__ = ["VOC_CLASSES", "load_voc"]

#: The 20 PASCAL VOC classes in the standard order: class column ``j`` is mask value ``j + 1``.
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

_CLASS_INDEX = {name: j for j, name in enumerate(VOC_CLASSES)}
_SPLITS_DIR = ("ImageSets", "Segmentation")
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def find_voc2012(root):
    """The ``VOC2012`` folder: ``root`` itself, ``root/VOC2012`` or ``root/VOCdevkit/VOC2012``."""
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a path to a VOC2012 devkit folder, got {root!r}")
    root = Path(os.fspath(root)).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"VOC root {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"VOC root {str(root)!r} is not a folder")
    root = root.resolve()  # absolute paths survive a change of working folder
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir() or (candidate / "Annotations").is_dir():
            return candidate
    raise FileNotFoundError(
        f"{str(root)!r} is not a VOC2012 devkit folder: expected it, or its VOC2012 or "
        "VOCdevkit/VOC2012 subfolder, to hold JPEGImages/ and Annotations/"
    )


def _require_dir(voc, *parts):
    folder = voc.joinpath(*parts)
    if not folder.is_dir():
        raise FileNotFoundError(f"{str(voc)!r}: missing folder {'/'.join(parts)}/")
    return folder


def _find_list_file(voc, split):
    """Path of the image list for ``split``: a name in ImageSets/Segmentation or a file path."""
    splits_dir = voc.joinpath(*_SPLITS_DIR)
    if not isinstance(split, (str, os.PathLike)):
        raise TypeError(
            f"split must be a split name such as 'train' or a path to a list file, got {split!r}"
        )
    text = os.fspath(split)
    is_name = isinstance(split, str) and not (
        "/" in text or os.sep in text or text.endswith(".txt")
    )
    if is_name:
        path = splits_dir / f"{text}.txt"
        if path.is_file():
            return path
        if not splits_dir.is_dir():
            raise FileNotFoundError(
                f"{str(voc)!r}: missing folder {'/'.join(_SPLITS_DIR)}/ (needed for split "
                f"{text!r}; pass a path to a list file instead)"
            )
        known = sorted(p.stem for p in splits_dir.glob("*.txt"))
        raise FileNotFoundError(
            f"no list file for split {text!r}: {str(path)!r} does not exist "
            f"(splits found: {known})"
        )
    path = Path(text).expanduser()
    candidates = [path] if path.is_absolute() else [path, voc / path, splits_dir / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"list file {text!r} not found (looked at {[str(c) for c in candidates]})"
    )


def _read_list(list_file):
    """Ids, listed mask paths (or None) and line numbers from a list file.

    A line is either an id (``2007_000032``) or, as in the SBD-augmented
    ``train_aug.txt``, ``/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png``.
    """
    ids, listed_masks, numbers = [], [], []
    try:
        lines = Path(list_file).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{str(list_file)!r}: cannot read the list file ({exc})") from exc
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) > 2:
            raise ValueError(
                f"{str(list_file)!r}, line {number}: expected an image id or 'image mask' "
                f"paths, got {line!r}"
            )
        name = fields[0].replace("\\", "/").rsplit("/", 1)[-1]
        stem, ext = os.path.splitext(name)
        ids.append(stem if ext.lower() in _IMAGE_EXTENSIONS else name)
        listed_masks.append(fields[1] if len(fields) == 2 else None)
        numbers.append(number)
    if not ids:
        raise ValueError(f"{str(list_file)!r}: the list file holds no image ids")
    return ids, listed_masks, numbers


def _labels_from_xml(path):
    """Indicator over the 20 classes of the objects listed in one annotation XML."""
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError) as exc:
        raise ValueError(f"{str(path)!r}: unreadable annotation XML ({exc})") from exc
    labels = np.zeros(len(VOC_CLASSES), dtype=np.uint8)
    # Only <object><name> counts: the <part><name> of person layouts (head, hand,
    # foot) are not classes. Objects marked difficult or truncated count too.
    for k, obj in enumerate(tree.getroot().findall("object")):
        name = obj.findtext("name")
        if name is None or not name.strip():
            raise ValueError(f"{str(path)!r}: object {k} has no <name>")
        name = name.strip()
        j = _CLASS_INDEX.get(name, _CLASS_INDEX.get(name.lower()))
        if j is None:
            raise ValueError(
                f"{str(path)!r}: object {k} has unknown class name {name!r} "
                f"(expected one of {list(VOC_CLASSES)})"
            )
        labels[j] = 1
    return labels


def load_voc(root, split="train"):
    """Load the PASCAL VOC 2012 segmentation image lists from a devkit folder.

    Images and masks are returned as paths (loaded lazily by every estimator),
    image-level labels as an indicator matrix read from the annotation XMLs.
    Nothing is downloaded.

    Read more in the data conventions page, ``docs/data.md``.

    Parameters
    ----------
    root : str or path-like
        The ``VOC2012`` folder (holding ``JPEGImages``, ``Annotations``,
        ``ImageSets/Segmentation`` and ``SegmentationClass``), or a folder
        containing ``VOC2012`` or ``VOCdevkit/VOC2012``.
    split : str or path-like, default="train"
        A split name, read from ``ImageSets/Segmentation/{split}.txt``
        (``"train"``, ``"val"``, ``"trainval"``), or a path to a list file (a
        path-like, or a string holding ``/`` or ending in ``.txt``; a relative
        path is looked up in the current folder, then in the ``VOC2012``
        folder, then in ``ImageSets/Segmentation``). A list file holds one id
        per line (``2007_000032``), or ``image mask`` paths per line as in the
        SBD-augmented ``train_aug.txt``
        (``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png``).

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        ids : list of str
            Image ids in list-file order.
        images : list of str
            Absolute paths of ``JPEGImages/{id}.jpg``; use them as ``X``.
            ``root`` is resolved to an absolute path once, so these paths
            (and those of ``masks``) stay valid after a change of the working
            folder.
        labels : ndarray of shape (n_images, 20), dtype uint8
            ``labels[i, j] == 1`` iff ``Annotations/{id}.xml`` lists an object
            of class ``class_names[j]``; repeats count once, and objects
            marked ``difficult`` or ``truncated`` count too, as in the
            reference code's label file. Body parts of person layouts
            (``<part><name>``) are not objects.
        masks : list of str or None
            Absolute paths of the palette PNG masks (values 0 background, ``j + 1``
            class ``j``, 255 object boundaries and ignored pixels, as
            :func:`sklearn_psa.io.load_mask` reads them), None where an image
            has none. A mask path given in the list file (relative to the
            ``VOC2012`` folder, e.g. ``SegmentationClassAug``) is used where
            that file exists, else ``SegmentationClass/{id}.png`` where that
            exists.
        class_names : list of str
            The 20 VOC classes in the standard order (aeroplane ... tvmonitor).
        root : str
            The ``VOC2012`` folder that was read, as an absolute path.
        list_file : str
            The list file that was read, as an absolute path.

    Raises
    ------
    FileNotFoundError
        If ``root``, ``JPEGImages/``, ``Annotations/``, the list file, an
        image listed, or its annotation XML is missing.
    ValueError
        If an annotation XML cannot be parsed or names an unknown class, or
        the list file is empty or malformed (the message names the file).

    Examples
    --------
    A one-image devkit, written to a temporary folder:

    >>> import os, tempfile
    >>> from PIL import Image
    >>> from sklearn_psa.datasets import load_voc
    >>> root = tempfile.mkdtemp()
    >>> voc = os.path.join(root, "VOCdevkit", "VOC2012")
    >>> for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Segmentation")):
    ...     os.makedirs(os.path.join(voc, sub))
    >>> Image.new("RGB", (8, 6)).save(os.path.join(voc, "JPEGImages", "2007_000032.jpg"))
    >>> with open(os.path.join(voc, "Annotations", "2007_000032.xml"), "w") as f:
    ...     _ = f.write("<annotation><object><name>dog</name></object>"
    ...                 "<object><name>person</name></object>"
    ...                 "<object><name>dog</name></object></annotation>")
    >>> with open(os.path.join(voc, "ImageSets", "Segmentation", "train.txt"), "w") as f:
    ...     _ = f.write("2007_000032\\n")
    >>> data = load_voc(root, split="train")
    >>> data.ids, data.labels.shape, data.masks
    (['2007_000032'], (1, 20), [None])
    >>> [data.class_names[j] for j in data.labels[0].nonzero()[0]]
    ['dog', 'person']
    """
    voc = find_voc2012(root)
    images_dir = _require_dir(voc, "JPEGImages")
    annotations_dir = _require_dir(voc, "Annotations")
    list_file = _find_list_file(voc, split).resolve()
    masks_dir = voc / "SegmentationClass"

    ids, listed_masks, numbers = _read_list(list_file)
    images, masks = [], []
    labels = np.zeros((len(ids), len(VOC_CLASSES)), dtype=np.uint8)
    for i, (image_id, listed, number) in enumerate(zip(ids, listed_masks, numbers)):
        image = images_dir / f"{image_id}.jpg"
        if not image.is_file():
            raise FileNotFoundError(
                f"image id {image_id!r} (line {number} of {str(list_file)!r}) has no JPEG: "
                f"{str(image)!r} does not exist"
            )
        annotation = annotations_dir / f"{image_id}.xml"
        if not annotation.is_file():
            raise FileNotFoundError(
                f"image id {image_id!r}: missing annotation XML {str(annotation)!r}"
            )
        labels[i] = _labels_from_xml(annotation)
        images.append(str(image))
        mask = None
        if listed is not None:
            candidate = voc / listed.replace("\\", "/").lstrip("/")
            if candidate.is_file():
                mask = candidate
        if mask is None and (masks_dir / f"{image_id}.png").is_file():
            mask = masks_dir / f"{image_id}.png"
        masks.append(None if mask is None else str(mask))
    return Bunch(
        ids=ids,
        images=images,
        labels=labels,
        masks=masks,
        class_names=list(VOC_CLASSES),
        root=str(voc),
        list_file=str(list_file),
    )
