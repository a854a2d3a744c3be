"""sklearn-psa: weakly supervised semantic segmentation with AffinityNet.

A scikit-learn-style implementation of Ahn & Kwak, "Learning Pixel-level
Semantic Affinity with Image-level Supervision for Weakly Supervised Semantic
Segmentation" (CVPR 2018).

Public names are imported lazily, so that ``import sklearn_psa`` and the
torch-free parts (datasets, metrics, I/O) stay fast.
"""

import importlib

__version__ = "0.1.0.dev0"

_LAZY = {
    "CAMClassifier": "cam",
    "ClassifierCAM": "classifier_cam",
    "AffinityEstimator": "affinity",
    "FeatureAffinity": "feature_affinity",
    "RandomWalkRefiner": "walk",
    "PSASegmenter": "segmenter",
    "random_walk": "walk",
    "neighbor_offsets": "walk",
    "transition_matrix": "walk",
    "dense_crf": "crf",
    "DenseCRF": "crf",
    "Record": "records",
    "Records": "records",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sklearn_psa' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"sklearn_psa.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
