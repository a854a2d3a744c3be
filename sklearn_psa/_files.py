"""Image and mask files: loading, VOC-palette PNGs and atomic writes.

The implementation of :mod:`sklearn_psa.io` below the estimators, which read
images and write files through it (the public module adds the model files,
which know every estimator).
"""

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np

from . import __version__

__all__ = [
    "atomic_write",
    "check_writable",
    "dump_model",
    "image_size",
    "list_images",
    "load_image",
    "load_mask",
    "MAX_PIXELS",
    "remove_stale_temporaries",
    "save_mask",
    "to_rgb",
    "output_mark",
    "voc_palette",
]


def voc_palette(n=256):
    """Return the PASCAL VOC colour map.

    Parameters
    ----------
    n : int, default=256
        Number of colours.

    Returns
    -------
    palette : ndarray of shape (n, 3), dtype uint8
        Colour ``i`` is the colour of mask value ``i``: 0 black (background),
        1 dark red, ..., 255 (ignore) light beige.
    """
    palette = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


#: The most pixels an image or mask file may have (``width * height``): larger ones are
#: refused, naming the file, before their pixels are decoded. A 1-bit PNG of a few kB can
#: declare 12000 x 12000 pixels, whose RGB array and maps take gigabytes. Set it, as
#: ``sklearn_psa.io.MAX_PIXELS`` (or pass ``max_pixels``; ``sklearn-psa --max-pixels``), to allow
#: larger images; None: no limit.
MAX_PIXELS = 40_000_000


def _pixel_limit(max_pixels):
    return MAX_PIXELS if max_pixels is None else max_pixels


def _open(path, max_pixels=None):
    import warnings

    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    limit = _pixel_limit(max_pixels)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        with warnings.catch_warnings():
            # the limit below replaces Pillow's decompression-bomb check
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ValueError(
            f"{path}: {exc}; images are limited to {limit} pixels "
            "(sklearn_psa.io.MAX_PIXELS, --max-pixels)"
        ) from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path}: not a readable image file ({exc})") from exc
    width, height = img.size
    if limit is not None and width * height > limit:
        img.close()
        raise ValueError(
            f"{path}: {width} x {height} = {width * height} pixels, more than the limit of "
            f"{limit} (sklearn_psa.io.MAX_PIXELS; max_pixels=, --max-pixels on the command "
            "line): resize the image, or raise the limit if the memory allows"
        )
    return img


def _sixteen_bit(image):
    """Whether a mode-"I" PIL image holds 16-bit samples: a PNG (older Pillows open 16-bit
    grayscale PNGs as "I") or a TIFF of 16 bits per sample."""
    if image.format == "PNG":
        return True
    if image.format == "TIFF":
        bits = getattr(image, "tag_v2", {}).get(258)
        return tuple(bits or ()) == (16,)
    return False


def _check_mode(image):
    """Refuse PIL images whose pixel scale is unknown (they would turn black or saturate)."""
    mode = image.mode
    if mode == "F":
        raise ValueError(
            "float pixels (mode 'F', such as a 32-bit float TIFF), whose scale is unknown "
            "(0..1 or 0..255): expected 8-bit or 16-bit RGB or grayscale; convert the image "
            "to 8 bits first"
        )
    if (mode == "I" and not _sixteen_bit(image)) or mode.startswith("I;32"):
        raise ValueError(
            f"32-bit integer pixels (mode {mode!r}), whose range is unknown: expected 8-bit or "
            "16-bit RGB or grayscale; convert the image to 8 bits first"
        )


def to_rgb(image):
    """Convert a PIL image or an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 array to RGB.

    Returns an (H, W, 3) uint8 array. Alpha is dropped; 16-bit grayscale keeps
    its 8 most significant bits. Float (mode "F") and 32-bit integer (mode
    "I") pixels are a ``ValueError``: their scale is unknown.
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        _check_mode(image)
        if image.mode.startswith("I;16") or image.mode == "I":
            # 16-bit grayscale: keep the 8 most significant bits (Pillow's convert clips)
            gray = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
            return np.repeat(gray[:, :, None], 3, axis=2)
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image, dtype=np.uint8).copy()
    arr = np.asarray(image)
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if arr.shape[2] == 4:
        return np.ascontiguousarray(arr[:, :, :3])
    return arr


def _orientation(img):
    """EXIF orientation of an opened image (1: as stored), read from the header only."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1  # Pillow would decode the pixels to look for an eXIf chunk after them
    return img.getexif().get(0x0112, 1)


def load_image(path, *, max_pixels=None):
    """Load an image file as an (H, W, 3) uint8 RGB array (grayscale, palette and RGBA convert).

    An EXIF orientation (photos from phones and cameras) is applied, so the
    array is upright as image viewers show it; :func:`image_size` agrees.
    An image of more than ``max_pixels`` pixels (default :data:`MAX_PIXELS`,
    40 million) is a ``ValueError`` naming the file, raised before decoding.
    """
    from PIL import ImageOps

    img = _open(path, max_pixels)
    try:
        upright = _orientation(img) == 1
        img.load()
        try:
            return to_rgb(img if upright else ImageOps.exif_transpose(img))
        except ValueError as exc:
            raise ValueError(f"{os.fspath(path)}: {exc}") from exc
    except OSError as exc:
        raise ValueError(f"{os.fspath(path)}: corrupt or truncated image file ({exc})") from exc
    finally:
        img.close()


def image_size(path, *, max_pixels=None):
    """Return ``(height, width)`` of an image file, reading only its header.

    The size is that of :func:`load_image`'s array: EXIF orientations 5 to 8
    (a quarter turn) swap the stored width and height. Files that
    :func:`load_image` refuses from their header (more than ``max_pixels``
    pixels, float or 32-bit integer pixels) are refused here too.
    """
    img = _open(path, max_pixels)
    try:
        try:
            _check_mode(img)
        except ValueError as exc:
            raise ValueError(f"{os.fspath(path)}: {exc}") from exc
        width, height = img.size
        return (width, height) if _orientation(img) in (5, 6, 7, 8) else (height, width)
    finally:
        img.close()


#: File name endings :func:`list_images` takes as images (compared in lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


def list_images(folder):
    """The image files of a folder, sorted: what to give ``fit`` or ``predict`` for a folder.

    The rule of the ``sklearn-psa`` command's folders: files (not sub-folders,
    not recursively) whose name ends in one of :data:`IMAGE_EXTENSIONS` (any
    case), hidden files (names starting with ".") skipped, sorted by path.

    Parameters
    ----------
    folder : str or path
        A folder.

    Returns
    -------
    paths : list of str
        The images' paths (``folder`` joined with each name); empty where the
        folder holds none.

    Raises
    ------
    FileNotFoundError
        When ``folder`` does not exist.
    NotADirectoryError
        When ``folder`` is a file.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from PIL import Image
    >>> from sklearn_psa.io import list_images
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("b.png", "a.JPG", ".hidden.png", "notes.txt"):
    ...     Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / name, format="PNG")
    >>> [pathlib.Path(p).name for p in list_images(folder)]
    ['a.JPG', 'b.png']
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{os.fspath(folder)}: no such folder")
    if not folder.is_dir():
        raise NotADirectoryError(f"{os.fspath(folder)}: is a file, expected a folder of images")
    return sorted(
        str(p) for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def load_mask(path):
    """Load a mask PNG as an (H, W) uint8 array of class values.

    Palette ("P") images give their palette indices, as VOC's ``SegmentationClass``
    files do; grayscale ("L") images give their values.
    """
    img = _open(path)
    try:
        img.load()
        if img.mode not in ("P", "L", "I", "I;16"):
            raise ValueError(
                f"{os.fspath(path)}: expected a palette or grayscale mask PNG, got mode {img.mode!r}"
            )
        arr = np.asarray(img)
    except OSError as exc:
        raise ValueError(f"{os.fspath(path)}: corrupt or truncated mask file ({exc})") from exc
    finally:
        img.close()
    if arr.dtype != np.uint8:
        if arr.min() < 0 or arr.max() > 255:
            raise ValueError(f"{os.fspath(path)}: mask values must lie in 0..255")
        arr = arr.astype(np.uint8)
    return arr


def _file_mode():
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


#: Seconds without a write after which a temporary file of :func:`atomic_write` counts as
#: left behind by a save that was killed (a save in progress keeps writing to it).
STALE_SECONDS = 60.0


def _temporary_names(name):
    """A pattern matching the temporary files :func:`atomic_write` makes for ``name``
    (``.<name>.<8 random characters>.tmp``); any name when ``name`` is None."""
    import re

    target = ".+" if name is None else re.escape(name)
    return re.compile(rf"^\.{target}\.[A-Za-z0-9_]{{8}}\.tmp$")


def remove_stale_temporaries(folder, name=None, *, older_than=STALE_SECONDS):
    """Remove the temporary files that killed saves of :func:`atomic_write` left in ``folder``.

    Parameters
    ----------
    folder : str or path
    name : str, optional
        Only those of this file name (default: of any file).
    older_than : float, default=STALE_SECONDS
        Seconds since the last write: younger files may belong to a save in
        progress and are kept.

    Returns
    -------
    removed : list of str
    """
    import time

    folder, pattern, now, removed = Path(folder), _temporary_names(name), time.time(), []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not pattern.match(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and now - entry.stat().st_mtime > older_than:
                os.unlink(entry.path)
                removed.append(entry.path)
        except OSError:
            pass  # gone meanwhile, or not ours to remove: the save itself reports real problems
    return removed


def check_writable(folder):
    """Raise ``OSError`` (naming the folder) unless files can be created in ``folder``.

    Creates the folder's missing parents to try, writes and removes a probe
    file, then removes the folders it created, so that nothing is left.
    """
    folder = Path(folder)
    created = []
    try:
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        for p in reversed(missing):
            p.mkdir()
            created.append(p)
        if not folder.is_dir():
            raise NotADirectoryError(20, "not a folder", os.fspath(folder))
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".sklearn-psa-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        if exc.filename is None:
            exc.filename = os.fspath(folder)
        raise
    finally:
        for p in reversed(created):
            with contextlib.suppress(OSError):
                p.rmdir()


#: Folders whose stale temporaries this process has removed (at its first save there).
_CLEANED_FOLDERS = set()


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file next to ``path`` and move it into place on success.

    A reader never sees a half-written ``path``: either the old file (or none)
    or the complete new one. On an exception the temporary file is removed;
    those of saves that were killed are removed by this process's first save
    in the same folder (when unchanged for :data:`STALE_SECONDS`).

    Examples
    --------
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> with atomic_write(os.path.join(d, "a.txt"), "w") as f:
    ...     _ = f.write("done")
    >>> open(os.path.join(d, "a.txt")).read()
    'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.path.realpath(path.parent)
    if folder not in _CLEANED_FOLDERS:  # once per folder and process: a scan per mask would
        remove_stale_temporaries(folder)  # cost O(n) for each of n files
        _CLEANED_FOLDERS.add(folder)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600): give it the mode open() would
        os.chmod(tmp, _FILE_MODE)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None and exc.strerror is not None:
            exc.filename = os.fspath(path)  # a full disk says which file it could not write
        raise


#: The PNG text chunk that marks a mask as an output of sklearn-psa (its value says which).
OUTPUT_MARK = "sklearn-psa-output"


def output_mark(path):
    """What wrote mask ``path`` as an output (``"predict"``, ``"pseudo-labels"``), or None.

    Reads the PNG header only. Masks that :func:`save_mask` wrote with
    ``output_of`` carry the mark; a user's images and true masks do not, and the
    command line never replaces a file without it.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            mark = img.info.get(OUTPUT_MARK) if img.format == "PNG" else None
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return str(mark) if mark else None


def save_mask(path, mask, *, output_of=None):
    """Write an (H, W) mask of values 0..255 as a VOC-palette PNG, atomically.

    The file's pixel values are the mask's values (``load_mask`` reads them
    back exactly); the palette only colours them for viewers. The PNG says
    ``Software: sklearn-psa <version>``.

    Parameters
    ----------
    path : str or path
    mask : array-like of shape (H, W)
        Integer values 0..255.
    output_of : str, optional
        Marks the file as an output of this tool (``"predict"``,
        ``"pseudo-labels"``; see :func:`output_mark`), which a later run may replace.
    """
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{os.fspath(path)}: expected an (H, W) mask, got shape {mask.shape}")
    if not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == bool):
        if not np.issubdtype(mask.dtype, np.floating) or not np.all(mask == np.round(mask)):
            raise ValueError(f"{os.fspath(path)}: expected integer mask values, got dtype "
                             f"{mask.dtype} with fractional or non-finite values")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"{os.fspath(path)}: mask values must lie in 0..255")
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette(voc_palette().ravel().tolist())
    info = PngInfo()
    info.add_text("Software", f"sklearn-psa {__version__}")
    if output_of is not None:
        info.add_text(OUTPUT_MARK, str(output_of))
    with atomic_write(path) as f:
        img.save(f, format="PNG", pnginfo=info)


def dump_model(model, path):
    """Pickle ``model`` (e.g. a fitted estimator) to ``path`` with joblib, atomically.

    .. warning:: Loading a pickle (``joblib.load``) runs whatever code the file
       names: load one only from a source you trust. :func:`sklearn_psa.io.save_model` writes
       a file that holds no code (what ``sklearn-psa fit`` writes and
       ``predict`` reads); use it to share models.
    """
    import joblib

    with atomic_write(path) as f:
        joblib.dump(model, f)
