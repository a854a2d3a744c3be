"""ClassifierCAM: CAMs of a classifier trained elsewhere, by the paper's formula, feeding the
affinity step and the walk."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.pipeline import Pipeline
from torch import nn
from torch.nn import functional as F

from sklearn_psa import AffinityEstimator, ClassifierCAM, RandomWalkRefiner
from sklearn_psa.datasets import make_shapes


class Classifier(nn.Module):
    """Features at stride 2, global average pooling, a linear layer (a ResNet's shape)."""

    def __init__(self, n_classes=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 6, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, n_classes)

    def forward(self, x):
        return self.fc(self.pool(self.body(x)).flatten(1))


MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def cam_of(module, **params):
    params = {"input_mean": MEAN, "input_std": STD, "device": "cpu", **params}
    return ClassifierCAM(module, feature_layer="body", linear_layer="fc", **params)


@pytest.fixture(scope="module")
def data():
    return make_shapes(6, image_size=32, random_state=0)


def by_hand(module, image):
    """The paper's CAM at scale 1 without flipping, normalised by each class's maximum."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    x = (x - torch.tensor(MEAN).reshape(1, 3, 1, 1)) / torch.tensor(STD).reshape(1, 3, 1, 1)
    with torch.no_grad():
        f = module.body(x)
        maps = F.relu(torch.einsum("kc,nchw->nkhw", module.fc.weight, f))
        maps = F.interpolate(maps, size=image.shape[:2], mode="bilinear", align_corners=False)
        logits = module(x)
    maps = maps / (maps.amax(dim=(2, 3), keepdim=True) + 1e-5)
    return maps[0].numpy(), logits[0].numpy()


def test_cams_are_the_paper_s_formula_on_the_classifier_s_own_layers(data):
    X, Y, _ = data
    module = Classifier()
    records = cam_of(module, scales=(1.0,), flip=False).fit_transform(X, Y)
    for i, record in enumerate(records):
        maps, _ = by_hand(module, X[i])
        np.testing.assert_array_equal(record.labels, np.flatnonzero(Y[i]))
        np.testing.assert_allclose(record.cams, maps[record.labels], atol=1e-5)
    # transform: the classes whose sigmoid reaches the threshold
    cam = cam_of(module, scales=(1.0,), flip=False, threshold=0.5).fit(X)
    proba = cam.predict_proba(X)
    for i, record in enumerate(cam.transform(X)):
        _, logits = by_hand(module, X[i])
        np.testing.assert_allclose(proba[i], 1 / (1 + np.exp(-logits)), rtol=1e-5)
        np.testing.assert_array_equal(record.labels, np.flatnonzero(proba[i] >= 0.5))


def test_multiscale_flipped_cams_stay_in_range_and_nothing_trains(data):
    X, Y, _ = data
    module = Classifier()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    cam = cam_of(module)
    records = cam.fit_transform(X, Y)
    assert cam.module is module and cam.network_.module is not module  # a copy
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    for record in records:
        assert record.cams.shape == (len(record.labels), 32, 32)
        assert record.cams.min() >= 0 and record.cams.max() <= 1
    assert cam.n_classes_ == 4 and list(cam.class_names_) == [f"class {j}" for j in range(1, 5)]
    # pickled (a fitted model file) and cloned, it gives the same maps
    again = pickle.loads(pickle.dumps(cam)).transform(X[:2])
    for a, b in zip(again, cam.transform(X[:2])):
        np.testing.assert_array_equal(a.cams, b.cams)
    assert clone(cam).get_params()["feature_layer"] == "body"


def test_the_records_feed_the_affinity_step_and_the_walk(data):
    X, Y, masks = data
    pipe = Pipeline([
        ("cam", cam_of(Classifier(), classes=["a", "b", "c", "d"])),
        ("affinity", AffinityEstimator(backbone="tiny", max_epochs=1, crf=False, crop_size=32,
                                       device="cpu", random_state=0)),
        ("rw", RandomWalkRefiner(t=4, device="cpu")),
    ])
    pred = pipe.fit(X, Y).predict(X)
    assert pred.shape == (6, 32, 32) and pred.max() <= 4
    assert 0 <= pipe.score(X, masks) <= 1
    assert list(pipe["cam"].class_names_) == ["a", "b", "c", "d"]


def test_wrong_layers_are_named():
    X = make_shapes(2, image_size=32, random_state=0)[0]
    with pytest.raises(ValueError, match=r"feature_layer='layer4': the module has no such "
                                         r"submodule; its submodules are 'body', 'body.0'"):
        ClassifierCAM(Classifier(), feature_layer="layer4", linear_layer="fc").fit(X)
    with pytest.raises(ValueError, match="linear_layer='body' is a Sequential: expected the "
                                         "nn.Linear"):
        ClassifierCAM(Classifier(), feature_layer="body", linear_layer="body").fit(X)
    with pytest.raises(ValueError, match=r"feature_layer='body.0' gives 8 channels but "
                                         r"linear_layer='fc' takes 6 inputs"):
        ClassifierCAM(Classifier(), feature_layer="body.0", linear_layer="fc",
                      device="cpu").fit(X)
    with pytest.raises(ValueError, match=r"feature_layer='fc' gives a tensor of shape \(1, 4\): "
                                         r"expected an \(N, C, h, w\) feature map"):
        ClassifierCAM(Classifier(), feature_layer="fc", linear_layer="fc", device="cpu").fit(X)
    with pytest.raises(ValueError, match="y has 3 class columns, expected 4"):
        ClassifierCAM(Classifier(), feature_layer="body", linear_layer="fc",
                      device="cpu").fit(X, np.ones((2, 3)))
    with pytest.raises(ValueError, match="input_std must be 3 finite numbers"):
        ClassifierCAM(Classifier(), feature_layer="body", linear_layer="fc",
                      input_std=(1, 2)).fit(X)


def test_param_checks_of_scikit_learn():
    from sklearn.utils.estimator_checks import (
        check_get_params_invariance,
        check_no_attributes_set_in_init,
        check_set_params,
    )

    for check in (check_get_params_invariance, check_no_attributes_set_in_init, check_set_params):
        check("ClassifierCAM", cam_of(Classifier()))


def test_as_the_cam_step_of_a_segmenter(data, capsys):
    from sklearn_psa import PSASegmenter

    X, Y, _ = data
    seg = PSASegmenter(cam=cam_of(Classifier()), backbone="tiny", max_epochs=1, device="cpu",
                       random_state=0, verbose=1)
    seg.set_params(affinity__max_epochs=1, affinity__crf=False, affinity__crop_size=32)
    with pytest.raises(ValueError, match="init='cam' starts the segmentation network from the "
                                         "CAM step's backbone, and the cam step, ClassifierCAM"):
        seg.fit(X, Y)
    seg.set_params(init="scratch").fit(X, Y)
    assert seg.predict(X[:2]).shape == (2, 32, 32)
    assert ("1/4 ClassifierCAM: the given classifier's 'body' and 'fc' layers, nothing trained"
            in capsys.readouterr().err)
