"""Files in and out: images and masks, VOC-palette PNGs, atomic writes, model files.

:data:`MAX_PIXELS` is a setting: assigning ``sklearn_psa.io.MAX_PIXELS``
changes the limit every image reader of the package applies.
"""

import sys
import types

from . import _files
from ._files import (
    IMAGE_EXTENSIONS,
    OUTPUT_MARK,
    STALE_SECONDS,
    atomic_write,
    check_writable,
    dump_model,
    image_size,
    list_images,
    load_image,
    load_mask,
    output_mark,
    remove_stale_temporaries,
    save_mask,
    to_rgb,
    voc_palette,
)
from ._model_file import is_model_file, load_model, save_model

__all__ = [
    "atomic_write",
    "check_writable",
    "dump_model",
    "image_size",
    "is_model_file",
    "list_images",
    "load_image",
    "load_mask",
    "load_model",
    "MAX_PIXELS",
    "remove_stale_temporaries",
    "save_mask",
    "save_model",
    "to_rgb",
    "output_mark",
    "voc_palette",
    "IMAGE_EXTENSIONS",
    "OUTPUT_MARK",
    "STALE_SECONDS",
]


class _IOModule(types.ModuleType):
    """This module, with ``MAX_PIXELS`` read from and written to the image readers' setting."""

    @property
    def MAX_PIXELS(self):
        return _files.MAX_PIXELS

    @MAX_PIXELS.setter
    def MAX_PIXELS(self, value):
        _files.MAX_PIXELS = value


sys.modules[__name__].__class__ = _IOModule
