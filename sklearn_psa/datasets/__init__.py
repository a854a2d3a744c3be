"""Data sets: synthetic images (:func:`make_shapes`) and PASCAL VOC (:func:`load_voc`)."""

from ._shapes import make_shapes
from ._voc import VOC_CLASSES, load_voc

__all__ = ["VOC_CLASSES", "load_voc", "make_shapes"]
