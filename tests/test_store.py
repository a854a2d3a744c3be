"""store=folder: per-image arrays on disk, written atomically, resumed, memory-mapped."""

import errno
import os
import pickle

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from sklearn_psa import AffinityEstimator, CAMClassifier, FeatureAffinity, RandomWalkRefiner
from sklearn_psa._store import ArrayStore, StoredArray, image_key
from sklearn_psa.datasets import make_shapes
from sklearn_psa.records import Record


def _cam(store=None, **params):
    params = {"backbone": "tiny", "max_epochs": 1, "scales": (1.0,), "crop_size": None,
              "device": "cpu", "random_state": 0, "store": store, **params}
    return CAMClassifier(**params)


def _affinity(store=None, **params):
    params = {"backbone": "tiny", "max_epochs": 1, "crop_size": 32, "crf": False,
              "head_widths": (8, 8, 8), "device": "cpu", "random_state": 0, "store": store, **params}
    return AffinityEstimator(**params)


@pytest.fixture(scope="module")
def data():
    return make_shapes(6, image_size=32, random_state=0)


@pytest.fixture(scope="module")
def fitted_cam(data):
    X, Y, _ = data
    return _cam().fit(X, Y)


def _files(folder, kind):
    path = os.path.join(folder, kind)
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def _count_cam_images(monkeypatch):
    """How many images CAMClassifier._run computes, call by call."""
    calls = []
    run = CAMClassifier._run

    def counting(self, images, *args, **kwargs):
        calls.append(len(images))
        return run(self, images, *args, **kwargs)

    monkeypatch.setattr(CAMClassifier, "_run", counting)
    return calls


def test_cams_in_a_store_equal_those_in_memory(data, fitted_cam, tmp_path):
    X, Y, _ = data
    expected = fitted_cam.compute_cams(X, Y)
    stored = clone(fitted_cam).set_params(store=str(tmp_path))
    stored.__dict__.update({k: v for k, v in vars(fitted_cam).items() if k.endswith("_")})
    for predicted in (False, True):
        got = stored.transform(X) if predicted else stored.compute_cams(X, Y)
        want = fitted_cam.transform(X) if predicted else expected
        for a, b in zip(want, got):
            assert b.stored and isinstance(b.__dict__["cams"], StoredArray)  # no array held
            assert isinstance(b.cams, np.memmap) and not b.cams.flags.writeable
            np.testing.assert_array_equal(a.labels, b.labels)
            np.testing.assert_array_equal(a.cams, b.cams)
    assert len(_files(tmp_path, "cams")) == 2 * len(X)  # true classes, and predicted ones
    assert len(_files(tmp_path, "labels")) == len(X)  # the predicted classes are kept
    assert not [f for f in os.listdir(tmp_path / "cams") if f.endswith(".tmp")]


def test_fit_transform_writes_to_the_store(data, tmp_path):
    X, Y, _ = data
    records = _cam(store=tmp_path).fit_transform(X, Y)
    assert all(r.stored for r in records) and len(_files(tmp_path, "cams")) == len(X)
    reference = _cam().fit_transform(X, Y)
    for a, b in zip(reference, records):
        np.testing.assert_array_equal(a.cams, b.cams)


def test_a_second_call_computes_nothing_and_an_interrupted_one_resumes(data, fitted_cam, tmp_path,
                                                                         monkeypatch):
    X, Y, _ = data
    cam = clone(fitted_cam).set_params(store=str(tmp_path), batch_size=2)
    cam.__dict__.update({k: v for k, v in vars(fitted_cam).items() if k.endswith("_")})
    saves, save = [], ArrayStore.save

    def failing_save(self, kind, key, array):
        if kind == "cams":
            if len(saves) == 3:
                raise KeyboardInterrupt  # the user stops it after three images
            saves.append(key)
        return save(self, kind, key, array)

    monkeypatch.setattr(ArrayStore, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        cam.compute_cams(X, Y)
    assert len(_files(tmp_path, "cams")) == 3
    assert not [f for f in os.listdir(tmp_path / "cams") if not f.endswith(".npy")]  # no leftovers
    monkeypatch.setattr(ArrayStore, "save", save)
    calls = _count_cam_images(monkeypatch)
    resumed = cam.compute_cams(X, Y)
    assert calls == [len(X) - 3]  # only the missing images
    again = cam.compute_cams(X, Y)
    assert calls == [len(X) - 3]  # nothing computed
    for a, b, c in zip(fitted_cam.compute_cams(X, Y), resumed, again):
        np.testing.assert_array_equal(a.cams, b.cams)
        np.testing.assert_array_equal(a.cams, c.cams)


def test_other_models_images_or_classes_do_not_share_arrays(data, fitted_cam, tmp_path, monkeypatch):
    X, Y, _ = data
    cam = clone(fitted_cam).set_params(store=str(tmp_path))
    cam.__dict__.update({k: v for k, v in vars(fitted_cam).items() if k.endswith("_")})
    cam.compute_cams(X[:2], Y[:2])
    calls = _count_cam_images(monkeypatch)
    cam.set_params(flip=False).compute_cams(X[:2], Y[:2])  # another parameter
    Z = 1 - Y[:2]  # each image other classes (whatever make_shapes draws)
    cam.set_params(flip=True).compute_cams(X[:2], Z)  # other classes asked for
    cam.compute_cams(X[2:4], Y[2:4])  # other images
    refit = _cam(store=str(tmp_path), random_state=1).fit(X, Y)  # other weights
    refit.compute_cams(X[:2], Y[:2])
    assert calls == [2, 2, 2, 2]
    # the parameters that do not change the CAMs share them
    cam.set_params(verbose=0, device="cpu").compute_cams(X[:2], Y[:2])
    assert calls == [2, 2, 2, 2]


def test_an_incomplete_file_is_computed_again(data, fitted_cam, tmp_path):
    X, Y, _ = data
    cam = clone(fitted_cam).set_params(store=str(tmp_path))
    cam.__dict__.update({k: v for k, v in vars(fitted_cam).items() if k.endswith("_")})
    first = cam.compute_cams(X[:1], Y[:1])
    path = tmp_path / "cams" / _files(tmp_path, "cams")[0]
    data_bytes = path.read_bytes()
    path.write_bytes(data_bytes[: len(data_bytes) // 2])  # e.g. copied by hand, cut short
    again = cam.compute_cams(X[:1], Y[:1])
    np.testing.assert_array_equal(first[0].cams, again[0].cams)
    assert path.read_bytes() == data_bytes


def test_a_full_disk_is_a_clear_error_with_nothing_half_written(data, fitted_cam, tmp_path,
                                                               monkeypatch):
    X, Y, _ = data
    cam = clone(fitted_cam).set_params(store=str(tmp_path))
    cam.__dict__.update({k: v for k, v in vars(fitted_cam).items() if k.endswith("_")})

    def full(f, array, **kwargs):
        f.write(b"\x93NUMPY partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np.lib.format, "write_array", full)
    with pytest.raises(OSError, match="no space left on the disk of .* run the same call again"):
        cam.compute_cams(X, Y)
    for kind in ("cams", "labels"):
        assert _files(tmp_path, kind) == []  # not even temporary files


def test_store_that_is_a_file_or_gone_says_so(data, fitted_cam, tmp_path):
    X, Y, _ = data
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cam = clone(fitted_cam).set_params(store=str(a_file))
    cam.__dict__.update({k: v for k, v in vars(fitted_cam).items() if k.endswith("_")})
    with pytest.raises(ValueError, match="store=.* is a file: expected a folder"):
        cam.compute_cams(X, Y)
    records = cam.set_params(store=str(tmp_path / "s")).compute_cams(X, Y)
    for path in (tmp_path / "s" / "cams").iterdir():
        path.unlink()
    with pytest.raises(FileNotFoundError, match="store is gone"):
        records[0].cams


def test_records_pickle_and_hash_by_file_and_load_lazily(data, fitted_cam, tmp_path):
    X, Y, _ = data
    cam = clone(fitted_cam).set_params(store=str(tmp_path))
    cam.__dict__.update({k: v for k, v in vars(fitted_cam).items() if k.endswith("_")})
    stored, plain = cam.compute_cams(X, Y), fitted_cam.compute_cams(X, Y)
    cams_bytes = sum(r.cams.nbytes for r in plain)
    assert len(pickle.dumps(plain)) - len(pickle.dumps(stored)) > 0.9 * cams_bytes
    copy = pickle.loads(pickle.dumps(stored))
    assert joblib.hash(copy) == joblib.hash(stored) == joblib.hash(cam.compute_cams(X, Y))
    assert isinstance(copy[0].__dict__["cams"], StoredArray)
    np.testing.assert_array_equal(copy[0].cams, plain[0].cams)
    # indexing and with_affinity keep the files, not copies
    part = stored[[1, 2]].with_affinity([np.zeros((34, 4, 4), np.float32)] * 2, 5)
    assert all(isinstance(r.__dict__["cams"], StoredArray) for r in part.records)


def test_affinity_steps_store_their_affinities(data, fitted_cam, tmp_path, monkeypatch):
    import torch

    from sklearn_psa.nn import make_backbone

    X, Y, _ = data
    records = fitted_cam.compute_cams(X, Y)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = make_backbone("tiny", width=8, depth=1)
    for est in (_affinity().fit(records), FeatureAffinity(backbone=net, device="cpu").fit(records)):
        expected = est.transform(records)
        stored = clone(est).set_params(store=str(tmp_path))
        stored.__dict__.update({k: v for k, v in vars(est).items() if k.endswith("_")})
        got = stored.transform(records)
        for a, b in zip(expected, got):
            assert isinstance(b.__dict__["affinity"], StoredArray) and b.radius == a.radius
            np.testing.assert_array_equal(a.affinity, b.affinity)
        seen = []
        features = type(stored)._affinity_features
        monkeypatch.setattr(type(stored), "_affinity_features",
                            lambda self, recs: (seen.append(len(recs)), features(self, recs))[1])
        stored.transform(records)
        stored.transform(records[:3])
        assert seen == []  # all there: nothing computed
        monkeypatch.undo()
    assert len(_files(tmp_path, "affinity")) == 2 * len(X)  # one per image and estimator
    masks = RandomWalkRefiner(alpha=4, device="cpu").predict(got)
    np.testing.assert_array_equal(masks, RandomWalkRefiner(alpha=4, device="cpu").predict(expected))


def test_image_files_are_keyed_by_path_size_and_time(tmp_path):
    from PIL import Image

    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    key = image_key(str(path))
    assert image_key(path) == key
    os.utime(path, ns=(1, 1))
    assert image_key(str(path)) != key
    assert image_key(np.zeros((4, 4, 3), np.uint8)) != image_key(np.ones((4, 4, 3), np.uint8))


def test_pipeline_memory_and_grid_search_work_with_stores(data, tmp_path):
    X, Y, masks = data
    store = str(tmp_path / "store")

    def pipe(store):
        return Pipeline([("cam", _cam(store=store)), ("affinity", _affinity(store=store)),
                         ("rw", RandomWalkRefiner(alpha=4, t=16, device="cpu"))],
                        memory=str(tmp_path / ("cache" if store else "cache0")))

    plain = pipe(None).fit(X, Y).predict(X)
    stored = pipe(store)
    np.testing.assert_array_equal(stored.fit(X, Y).predict(X), plain)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(stored)).predict(X), plain)
    # the cached records refer to the store's files: a second fit loads them from the cache
    np.testing.assert_array_equal(clone(stored).fit(X, Y).predict(X), plain)
    search = GridSearchCV(stored, {"rw__beta": [4, 8]}, cv=2).fit(X, masks)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()


def test_records_made_by_hand_are_not_stored():
    record = Record(np.zeros((8, 8, 3), np.uint8), [0], np.zeros((1, 8, 8)))
    assert not record.stored and record.cams.dtype == np.float32


def test_stored_records_go_to_worker_processes(data, fitted_cam, tmp_path):
    X, Y, _ = data
    cam = clone(fitted_cam).set_params(store=str(tmp_path))
    cam.__dict__.update({k: v for k, v in vars(fitted_cam).items() if k.endswith("_")})
    stored, plain = cam.compute_cams(X, Y), fitted_cam.compute_cams(X, Y)
    one = _affinity(crf={"n_iter": 2}).fit(plain)
    two = _affinity(crf={"n_iter": 2}, n_jobs=2, store=str(tmp_path)).fit(stored)  # loky
    assert one.label_stats_ == two.label_stats_
    walked = two.transform(stored)
    assert all(r.stored for r in walked)
    refiner = RandomWalkRefiner(alpha=4, device="cpu")
    np.testing.assert_array_equal(refiner.set_params(n_jobs=2).predict(walked),
                                  refiner.set_params(n_jobs=1).predict(one.transform(plain)))


def test_affinity_fit_keeps_its_label_maps_in_the_store(data, fitted_cam, tmp_path, monkeypatch):
    from sklearn_psa import affinity as affinity_module

    X, Y, _ = data
    cam = clone(fitted_cam).set_params(store=str(tmp_path))
    cam.__dict__.update({k: v for k, v in vars(fitted_cam).items() if k.endswith("_")})
    stored, plain = cam.compute_cams(X, Y), fitted_cam.compute_cams(X, Y)
    reference = _affinity(crf={"n_iter": 2}).fit(plain)
    calls, task = [], affinity_module._label_task
    monkeypatch.setattr(affinity_module, "_label_task",
                        lambda *args: (calls.append(1), task(*args))[1])
    first = _affinity(crf={"n_iter": 2}, store=str(tmp_path)).fit(stored)
    assert len(calls) == len(X) and len(_files(tmp_path, "affinity-labels")) == len(X)
    again = _affinity(crf={"n_iter": 2}, store=str(tmp_path), max_epochs=2).fit(stored)
    assert len(calls) == len(X)  # the labels (and their CRF) came from the store
    other = _affinity(crf={"n_iter": 3}, store=str(tmp_path)).fit(stored)
    assert len(calls) == 2 * len(X)  # other CRF settings: other labels
    assert first.label_stats_ == again.label_stats_ == reference.label_stats_
    for a, b in zip(reference.predict_affinity(plain), first.predict_affinity(stored)):
        np.testing.assert_array_equal(a, b)  # same labels, same seed: the same network


def test_segmenter_keeps_its_pseudo_labels_in_the_affinity_store(data, tmp_path, monkeypatch):
    from sklearn_psa import PSASegmenter
    from sklearn_psa._store import StoredArrays

    X, Y, _ = data

    def segmenter(store):
        seg = PSASegmenter(backbone="tiny", max_epochs=1, batch_size=4, device="cpu",
                           random_state=0, refiner=RandomWalkRefiner(alpha=4, t=16, device="cpu"))
        return seg.set_params(cam=_cam(store=store), affinity=_affinity(store=store))

    plain = segmenter(None).fit(X, Y)
    stored = segmenter(str(tmp_path)).fit(X, Y)
    assert isinstance(stored.pseudo_labels_, StoredArrays)
    assert len(_files(tmp_path, "pseudo-labels")) == len(X)
    for a, b in zip(plain.pseudo_labels_, stored.pseudo_labels_):
        assert isinstance(b, np.memmap)
        np.testing.assert_array_equal(a, b)
    # trained on the same masks (read back from the store): the same network
    np.testing.assert_array_equal(plain.predict(X), stored.predict(X))
    copy = pickle.loads(pickle.dumps(stored))
    np.testing.assert_array_equal(copy.pseudo_labels_[0], plain.pseudo_labels_[0])
    written = stored.save_pseudo_labels(tmp_path / "png")
    assert len(written) == len(X)
    walked, refined = [], RandomWalkRefiner._refined
    monkeypatch.setattr(RandomWalkRefiner, "_refined", lambda self, recs, *args, **kwargs: (
        walked.append(len(recs)), refined(self, recs, *args, **kwargs))[1])
    again = segmenter(str(tmp_path)).fit(X, Y)  # same seed, same steps: all in the store
    assert walked == [] and again.pseudo_labels_.paths == stored.pseudo_labels_.paths


def test_class_names_do_not_change_the_store_keys(data, fitted_cam, tmp_path):
    # names only: CAMs stored under one set of names are found under another
    X, Y, _ = data
    stored = clone(fitted_cam).set_params(store=str(tmp_path))
    stored.__dict__.update({k: v for k, v in vars(fitted_cam).items() if k.endswith("_")})
    stored.compute_cams(X, Y)
    files = _files(tmp_path, "cams")
    stored.set_params(classes=["a", "b", "c", "d"]).compute_cams(X, Y)
    assert _files(tmp_path, "cams") == files


def test_classifier_cam_store(data, tmp_path):
    from torch import nn

    from sklearn_psa import ClassifierCAM

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(self.body(x).mean(dim=(2, 3)))

    X, Y, _ = data
    params = dict(feature_layer="body", linear_layer="fc", scales=(1.0, 0.5), device="cpu")
    import torch

    torch.manual_seed(0)
    module = Net()
    want = ClassifierCAM(module, **params).fit_transform(X, Y)
    cam = ClassifierCAM(module, store=str(tmp_path), **params)
    got = cam.fit_transform(X, Y)
    assert len(_files(tmp_path, "cams")) == len(X)
    for a, b in zip(want, got):
        assert b.stored and isinstance(b.cams, np.memmap)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.cams, b.cams)
    again = cam.transform(X)  # the predicted classes: other keys, labels kept beside
    np.testing.assert_array_equal(
        np.concatenate([r.labels for r in again]),
        np.concatenate([r.labels for r in ClassifierCAM(module, **params).fit(X).transform(X)]))
    assert len(_files(tmp_path, "labels")) == len(X)
    assert pickle.loads(pickle.dumps(got))[0].stored
