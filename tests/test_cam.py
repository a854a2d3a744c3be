"""CAMClassifier: fitting, CAM inference against a plain reference, sklearn conventions, plotting."""

import pickle

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import InvalidParameterError
from torch.nn import functional as F

from sklearn_psa import CAMClassifier
from sklearn_psa._validation import labels_from_masks
from sklearn_psa.records import Records
from _estimator_checks import assert_inapplicable_checks_fail_on_input, sklearn_check_cases

try:
    from sklearn_psa.datasets import make_shapes
except ImportError:  # pragma: no cover - the datasets module lands separately
    make_shapes = None

FAST = dict(backbone="tiny", max_epochs=2, batch_size=8, crop_size=None, learning_rate=0.05,
            backbone_options={"width": 8}, device="cpu", random_state=0)


def _square_images(n, size=32, seed=0):
    """Class 0: a red square, class 1: a blue square, on dark noise; returns X, Y, boxes."""
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 50, (n, size, size, 3)).astype(np.uint8)
    Y = rng.integers(0, 2, (n, 2)).astype(np.uint8)
    boxes = np.zeros((n, 2, 4), int)
    for i in range(n):
        for c, channel in enumerate((0, 2)):
            if Y[i, c]:
                r, q = rng.integers(0, size - 9, 2)
                X[i, r:r + 9, q:q + 9, channel] = 255
                boxes[i, c] = (r, q, r + 9, q + 9)
    return X, Y, boxes


@pytest.fixture(scope="module")
def shapes_data():
    if make_shapes is None:
        X, Y, _ = _square_images(40, size=64)
        return X, Y, None
    return make_shapes(40, image_size=64, random_state=0)


@pytest.fixture(scope="module")
def fitted_cam(shapes_data):
    """A tiny CAMClassifier fitted on 40 make_shapes images at 64x64 (candidate for conftest)."""
    X, Y, _ = shapes_data
    return CAMClassifier(**FAST).fit(X, Y)


@pytest.fixture(scope="module")
def square_cam():
    """Trained long enough on red/blue squares to localise them."""
    X, Y, boxes = _square_images(64, seed=1)
    cam = CAMClassifier(backbone="tiny", max_epochs=15, batch_size=16, crop_size=None, learning_rate=0.1,
                        backbone_options={"width": 8, "depth": 1}, scales=(1.0, 0.5, 1.5),
                        device="cpu", random_state=0).fit(X, Y)
    return cam


# ----------------------------------------------------------------------------- fitting


def test_fitted_attributes(fitted_cam, shapes_data):
    X, Y, _ = shapes_data
    np.testing.assert_array_equal(fitted_cam.classes_, np.arange(Y.shape[1]))
    assert fitted_cam.n_classes_ == Y.shape[1]
    assert len(fitted_cam.loss_curve_) == fitted_cam.n_iter_ == 2
    assert len(fitted_cam.epoch_seconds_) == 2
    assert not fitted_cam.network_.training


def test_predict_proba_decision_predict_consistent(fitted_cam, shapes_data):
    X, Y, _ = shapes_data
    scores = fitted_cam.decision_function(X[:6])
    proba = fitted_cam.predict_proba(X[:6])
    assert scores.shape == proba.shape == (6, Y.shape[1])
    np.testing.assert_allclose(proba, 1 / (1 + np.exp(-scores.astype(np.float64))), rtol=1e-6)
    est = clone(fitted_cam)
    est.__dict__.update({k: v for k, v in fitted_cam.__dict__.items() if k.endswith("_")})
    for t in (0.2, 0.5, 0.8):
        est.set_params(threshold=t)
        np.testing.assert_array_equal(est.predict(X[:6]), (proba >= t).astype(int))


def test_decision_function_is_the_network_on_the_whole_image(fitted_cam, shapes_data):
    X, _, _ = shapes_data
    x = torch.from_numpy(X[:3]).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        expected = fitted_cam.network_(x).numpy()
    np.testing.assert_allclose(fitted_cam.decision_function(X[:3]), expected, rtol=1e-4, atol=1e-5)


def test_learns_to_classify_and_localise(square_cam):
    X, Y, boxes = _square_images(40, seed=2)
    assert (square_cam.predict(X) == Y).mean() > 0.9
    records = square_cam.transform(X)
    hits = total = 0
    for r, box in zip(records, boxes):
        for k, c in enumerate(r.labels):
            if box[c].any():  # a true class: its CAM peaks on its square
                y, x = np.unravel_index(np.argmax(r.cams[k]), r.cams[k].shape)
                r0, q0, r1, q1 = box[c]
                hits += (r0 - 2 <= y < r1 + 2) and (q0 - 2 <= x < q1 + 2)
                total += 1
    assert total > 20 and hits / total > 0.85


def test_same_random_state_same_weights_on_cpu(shapes_data):
    X, Y, _ = shapes_data
    kw = dict(FAST, max_epochs=1)
    a = CAMClassifier(**kw).fit(X[:16], Y[:16])
    b = CAMClassifier(**kw).fit(X[:16], Y[:16])
    c = CAMClassifier(**dict(kw, random_state=1)).fit(X[:16], Y[:16])
    sa, sb, sc = (m.network_.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_masks_as_targets_train_on_the_classes_present(shapes_data):
    X, Y, masks = shapes_data
    if masks is None:
        pytest.skip("make_shapes not available")
    kw = dict(FAST, max_epochs=1)
    a = CAMClassifier(**kw).fit(X[:16], list(masks[:16]))
    labels = labels_from_masks(list(masks[:16]))
    b = CAMClassifier(**kw).fit(X[:16], labels)
    assert a.n_classes_ == labels.shape[1]
    sa, sb = a.network_.state_dict(), b.network_.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_warm_start_continues_from_the_fitted_weights(shapes_data):
    X, Y, _ = shapes_data
    est = CAMClassifier(**dict(FAST, max_epochs=1, warm_start=True)).fit(X[:16], Y[:16])
    net = est.network_
    before = {k: v.clone() for k, v in net.state_dict().items()}
    est.fit(X[:16], Y[:16])
    assert est.n_iter_ == 2 and len(est.loss_curve_) == 2
    # trained a copy (an interrupted fit leaves the fitted model), which left the fitted weights
    assert est.network_ is not net and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not all(torch.equal(before[k], v) for k, v in est.network_.state_dict().items())
    est.set_params(warm_start=False).fit(X[:16], Y[:16])
    assert est.n_iter_ == 1
    assert all(torch.equal(before[k], v) for k, v in est.network_.state_dict().items())  # anew


def _tiny_data():
    return make_shapes(6, image_size=32, random_state=0)[:2] if make_shapes else _square_images(6)[:2]


TINY = dict(FAST, backbone_options={"width": 4, "depth": 1}, scales=(1.0,))


def test_warm_start_with_a_checkpoint_trains_and_resumes(tmp_path, monkeypatch):
    import sklearn_psa._training as training

    X, Y = _tiny_data()
    path = tmp_path / "cam.ckpt"
    plain = CAMClassifier(**TINY, warm_start=True).fit(X, Y).fit(X, Y)  # no checkpoint: 2 + 2 epochs
    est = CAMClassifier(**TINY, warm_start=True, checkpoint=str(path)).fit(X, Y)
    fitted = {k: v.clone() for k, v in est.network_.state_dict().items()}

    save = training._save_checkpoint

    def save_then_die(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):  # the second fit replaces the finished checkpoint, then dies
        est.fit(X, Y)
    monkeypatch.undo()
    assert training.load_checkpoint(path)["epoch"] == 1
    assert all(torch.equal(fitted[k], v) for k, v in est.network_.state_dict().items())

    est.fit(X, Y)  # resumes the warm-started fit at its second epoch
    assert len(est.epoch_seconds_) == 1 and est.n_iter_ == 4
    assert est.loss_curve_ == pytest.approx(plain.loss_curve_)
    sp, se = plain.network_.state_dict(), est.network_.state_dict()
    assert all(torch.equal(sp[k], se[k]) for k in sp)

    other = CAMClassifier(**dict(TINY, random_state=1), warm_start=True).fit(X, Y)
    with pytest.raises(ValueError, match="random_state: 0 in the checkpoint, 1 now; warm_start_weights"):
        other.set_params(checkpoint=str(path)).fit(X, Y)  # another run's checkpoint


def test_checkpoint_resumes_and_refuses_other_data(shapes_data, tmp_path):
    X, Y, _ = shapes_data
    path = tmp_path / "cam.ckpt"
    a = CAMClassifier(**dict(FAST, max_epochs=1, checkpoint=str(path))).fit(X[:16], Y[:16])
    assert path.exists()
    b = CAMClassifier(**dict(FAST, max_epochs=1, checkpoint=str(path))).fit(X[:16], Y[:16])
    assert b.epoch_seconds_ == []  # nothing left to train: the checkpoint is complete
    sa, sb = a.network_.state_dict(), b.network_.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(ValueError, match="the parameters agree, so the training data differ"):
        CAMClassifier(**dict(FAST, max_epochs=1, checkpoint=str(path))).fit(X[16:32], Y[16:32])
    with pytest.raises(ValueError, match=r"\(max_epochs: 1 in the checkpoint, 2 now\); delete it"):
        CAMClassifier(**dict(FAST, max_epochs=2, checkpoint=str(path))).fit(X[:16], Y[:16])


# ----------------------------------------------------------------------------- CAMs


@torch.no_grad()
def _reference_cams(net, image, scales, flip):
    """Plain per-image CAM inference, written out from DESIGN 3.1."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    H, W = image.shape[:2]
    w = net.head.classifier.weight[:, :, 0, 0].double()
    total = torch.zeros(w.shape[0], H, W, dtype=torch.float64)
    for s in scales:
        xs = x if s == 1.0 else F.interpolate(x, size=(round(H * s), round(W * s)), mode="bilinear",
                                              align_corners=False)
        for flipped in ([False, True] if flip else [False]):
            xi = xs.flip(-1) if flipped else xs
            f = net.features(xi)[2][0].double()
            m = torch.relu(torch.einsum("kc,chw->khw", w, f))
            m = F.interpolate(m[None], size=(H, W), mode="bilinear", align_corners=False)[0]
            total += m.flip(-1) if flipped else m
    return (total / (total.amax(dim=(1, 2), keepdim=True) + 1e-5)).numpy()


@pytest.mark.parametrize("flip", [True, False])
def test_cams_match_the_plain_multiscale_formula(fitted_cam, shapes_data, flip):
    X, Y, _ = shapes_data
    est = clone(fitted_cam).set_params(flip=flip, scales=(1.0, 0.5, 1.5))
    est.__dict__.update({k: v for k, v in fitted_cam.__dict__.items() if k.endswith("_")})
    records = est.compute_cams(X[:4], Y[:4])  # CAMs of the true classes
    for i, r in enumerate(records):
        ref = _reference_cams(fitted_cam.network_, X[i], (1.0, 0.5, 1.5), flip)
        np.testing.assert_array_equal(r.labels, np.flatnonzero(Y[i]))
        np.testing.assert_allclose(r.cams, ref[r.labels], atol=2e-5)


def test_progress_bars_name_the_stage_only_when_verbose(capsys):
    X, Y = _tiny_data()
    est = CAMClassifier(**dict(TINY, max_epochs=1)).fit(X, Y)
    est.compute_cams(X)
    est.predict(X)
    assert capsys.readouterr().err == ""
    est.set_params(verbose=2).fit_transform(X, Y)  # 2: the bars stay, complete
    err = capsys.readouterr().err
    assert "CAMClassifier: 100%" in err and "CAMClassifier CAMs: 100%" in err and "6/6" in err
    est.set_params(verbose=1).transform(X)
    assert "CAMClassifier CAMs" in capsys.readouterr().err
    est.predict(X)
    assert "CAMClassifier scores" in capsys.readouterr().err


def test_transform_records_use_the_predicted_classes(fitted_cam, shapes_data):
    X, Y, _ = shapes_data
    records = fitted_cam.transform(X[:8])
    assert isinstance(records, Records) and len(records) == 8 and records.n_classes == Y.shape[1]
    pred = fitted_cam.predict(X[:8])
    for i, r in enumerate(records):
        np.testing.assert_array_equal(r.labels, np.flatnonzero(pred[i]))
        assert r.cams.dtype == np.float32 and r.cams.shape == (len(r.labels), 64, 64)
        assert r.cams.min() >= 0 and r.cams.max() <= 1
        if len(r.labels):
            assert np.all(r.cams.reshape(len(r.labels), -1).max(1) > 0.99)  # divided by its max
        assert r.image is X[i] or np.array_equal(r.image, X[i])


def test_fit_transform_masks_with_the_true_labels(shapes_data, monkeypatch):
    X, Y, _ = shapes_data
    est = CAMClassifier(**dict(FAST, max_epochs=1, threshold=0.99999))
    monkeypatch.setattr(CAMClassifier, "transform", lambda self, X: pytest.fail("used transform"))
    records = est.fit_transform(X[:12], Y[:12])
    np.testing.assert_array_equal(records.labels, Y[:12])
    for r in records:
        assert r.cams.shape == (len(r.labels), 64, 64)
    # the predicted classes differ (nearly nothing passes the threshold): transform would not match
    assert not np.array_equal(est.predict(X[:12]), Y[:12])


def test_images_of_different_sizes_batch_like_one_by_one(fitted_cam, shapes_data):
    X, _, _ = shapes_data
    images = [X[0], X[1][:48, :40], X[2], X[3][:48, :40], X[4][:33, :57]]
    together = fitted_cam.transform(images)
    est = clone(fitted_cam).set_params(batch_size=1)
    est.__dict__.update({k: v for k, v in fitted_cam.__dict__.items() if k.endswith("_")})
    for i, im in enumerate(images):
        alone = est.transform([im])[0]
        assert together[i].shape == im.shape[:2]
        np.testing.assert_array_equal(together[i].labels, alone.labels)
        np.testing.assert_allclose(together[i].cams, alone.cams, atol=1e-5)


def test_image_paths_work(fitted_cam, shapes_data, tmp_path):
    from PIL import Image

    X, _, _ = shapes_data
    paths = []
    for i in range(3):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(X[i]).save(p)
        paths.append(str(p))
    records = fitted_cam.transform(paths)
    assert [r.image for r in records] == paths
    np.testing.assert_allclose(fitted_cam.predict_proba(paths), fitted_cam.predict_proba(X[:3]), rtol=1e-5)


# ----------------------------------------------------------------------------- conventions


def test_clone_and_params_round_trip():
    est = CAMClassifier(backbone="tiny", scales=(1.0, 2.0), backbone_options={"depth": 1}, max_epochs=3)
    params = est.get_params()
    assert clone(est).get_params() == params
    est2 = CAMClassifier().set_params(**params)
    assert est2.get_params() == params
    from sklearn_psa.nn.tiny import TinyBackbone

    module = TinyBackbone(width=4)
    est3 = clone(CAMClassifier(backbone=module))
    assert isinstance(est3.backbone, TinyBackbone) and est3.backbone is not module


def test_dropout_trains_only_and_survives_model_files(tmp_path):
    from sklearn_psa.io import load_model, save_model

    X, Y, _ = _square_images(8, size=16)
    plain = CAMClassifier(**{**FAST, "max_epochs": 1}).fit(X, Y)
    assert not any(isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d))
                   for m in plain.network_.modules())
    cam = CAMClassifier(**{**FAST, "max_epochs": 1}, dropout=0.5).fit(X, Y)
    net, x = cam.network_, torch.rand(4, 3, 16, 16) * 255
    assert isinstance(net.head.dropout, torch.nn.Dropout2d) and net.head.dropout.p == 0.5
    net.train()
    assert not torch.equal(net(x), net(x))
    net.eval()
    assert torch.equal(net(x), net(x))
    first = cam.predict_proba(X)
    np.testing.assert_array_equal(first, cam.predict_proba(X))  # inference without dropout
    save_model(cam, tmp_path / "cam.psa")
    loaded = load_model(tmp_path / "cam.psa")
    assert loaded.dropout == 0.5 and loaded.network_.head.dropout.p == 0.5
    np.testing.assert_array_equal(loaded.predict_proba(X), first)
    with pytest.raises(InvalidParameterError, match="dropout"):
        CAMClassifier(**FAST, dropout=1.5).fit(X, Y)


def test_fit_with_a_module_backbone_does_not_train_the_callers_module(shapes_data):
    from sklearn_psa.nn.tiny import TinyBackbone

    X, Y, _ = shapes_data
    module = TinyBackbone(width=4)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    est = CAMClassifier(**dict(FAST, backbone=module, backbone_options=None, max_epochs=1)).fit(X[:8], Y[:8])
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert est.network_.backbone is not module


@pytest.mark.parametrize("dump", ["pickle", "joblib"])
def test_pickle_and_joblib_round_trip(fitted_cam, shapes_data, tmp_path, dump):
    X, _, _ = shapes_data
    if dump == "pickle":
        other = pickle.loads(pickle.dumps(fitted_cam))
    else:
        joblib.dump(fitted_cam, tmp_path / "cam.joblib")
        other = joblib.load(tmp_path / "cam.joblib")
    np.testing.assert_array_equal(other.decision_function(X[:4]), fitted_cam.decision_function(X[:4]))
    a, b = other.transform(X[:2]), fitted_cam.transform(X[:2])
    for ra, rb in zip(a, b):
        np.testing.assert_array_equal(ra.cams, rb.cams)


def test_pickling_stores_modules_on_the_cpu(fitted_cam, monkeypatch):
    import sklearn_psa._torch_estimator as te

    # pretend the network sits on a GPU: the pickled state must hold a CPU copy
    monkeypatch.setattr(te, "_module_device", lambda m: torch.device("cuda", 0))
    state = fitted_cam.__getstate__()
    assert state["network_"] is not fitted_cam.network_
    assert all(p.device.type == "cpu" for p in state["network_"].parameters())
    monkeypatch.undo()
    assert fitted_cam.__getstate__()["network_"] is fitted_cam.network_  # already on CPU: no copy


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fitted_model_unpickles_to_cpu_tensors(shapes_data):
    X, Y, _ = shapes_data
    est = CAMClassifier(**dict(FAST, device="cuda", max_epochs=1)).fit(X[:8], Y[:8])
    state = est.__getstate__()
    assert all(p.device.type == "cpu" for p in state["network_"].parameters())
    other = pickle.loads(pickle.dumps(est)).set_params(device="cpu")
    np.testing.assert_allclose(other.predict_proba(X[:4]), est.predict_proba(X[:4]), atol=1e-2)


def test_asking_for_cuda_without_it_is_a_clear_error(fitted_cam, shapes_data):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    X, _, _ = shapes_data
    est = pickle.loads(pickle.dumps(fitted_cam)).set_params(device="cuda")
    with pytest.raises(ValueError, match="no CUDA device"):
        est.predict(X[:1])


def test_unfitted_and_bad_inputs(shapes_data):
    X, Y, _ = shapes_data
    with pytest.raises(NotFittedError):
        CAMClassifier().transform(X[:2])
    with pytest.raises(InvalidParameterError, match="threshold"):
        CAMClassifier(threshold=2.0).fit(X[:4], Y[:4])
    with pytest.raises(ValueError, match="scales must be a non-empty sequence of positive"):
        CAMClassifier(**dict(FAST, scales=(1.0, -1.0))).fit(X[:4], Y[:4])
    with pytest.raises(TypeError, match=r"X\[1\]: expected an \(H, W, 3\) uint8"):
        CAMClassifier(**FAST).fit([X[0], np.zeros((8, 8, 3), np.float32)], Y[:2])
    with pytest.raises(ValueError, match="y has 3 rows but X has 4 images"):
        CAMClassifier(**FAST).fit(X[:4], Y[:3])
    with pytest.raises(ValueError, match="unknown backbone 'nope'"):
        CAMClassifier(**dict(FAST, backbone="nope", backbone_options=None)).fit(X[:4], Y[:4])
    with pytest.raises(ValueError, match="y marks no class in any of the 4 images"):
        CAMClassifier(**FAST).fit(X[:4], np.zeros_like(Y[:4]))


def test_score_is_subset_accuracy(fitted_cam, shapes_data):
    X, Y, _ = shapes_data
    pred = fitted_cam.predict(X[:10])
    assert fitted_cam.score(X[:10], Y[:10]) == pytest.approx(np.mean(np.all(pred == Y[:10], axis=1)))


# Every check below feeds 2-D float feature matrices; this estimator's X is a set of
# images ((n, H, W, 3) uint8 or a list of images/paths), rejected by check_images.
_IMAGES = "X must be images ((n, H, W, 3) uint8 or a list of images/paths), not a 2-D feature matrix"
EXPECTED_FAILED_CHECKS = {
    name: _IMAGES
    for name in [
        "check_fit_score_takes_y", "check_estimators_overwrite_params", "check_dont_overwrite_parameters",
        "check_estimators_fit_returns_self", "check_readonly_memmap_input", "check_n_features_in_after_fitting",
        "check_positive_only_tag_during_fit", "check_estimators_dtypes", "check_complex_data",
        "check_dtype_object", "check_estimators_empty_data_messages", "check_pipeline_consistency",
        "check_estimators_nan_inf", "check_estimator_sparse_tag", "check_estimator_sparse_array",
        "check_estimator_sparse_matrix", "check_estimators_pickle", "check_f_contiguous_array_estimator",
        "check_classifier_data_not_an_array", "check_classifiers_one_label", "check_classifiers_classes",
        "check_classifiers_train", "check_classifiers_regression_target",
        "check_classifiers_multilabel_representation_invariance",
        "check_classifiers_multilabel_output_format_predict",
        "check_classifiers_multilabel_output_format_predict_proba",
        "check_classifiers_multilabel_output_format_decision_function", "check_supervised_y_2d",
        "check_decision_proba_consistency", "check_transformer_data_not_an_array",
        "check_transformer_general", "check_transformer_preserve_dtypes",
        "check_methods_sample_order_invariance", "check_methods_subset_invariance", "check_fit2d_1sample",
        "check_fit2d_1feature", "check_dict_unchanged", "check_fit_idempotent", "check_fit_check_is_fitted",
        "check_n_features_in", "check_fit2d_predict1d", "check_requires_y_none",
    ]
}


_CHECKED = CAMClassifier(backbone="tiny", max_epochs=1, device="cpu", random_state=0)


@pytest.mark.parametrize(**sklearn_check_cases(_CHECKED, EXPECTED_FAILED_CHECKS))
def test_sklearn_checks(estimator, check):
    check(estimator)


def test_inapplicable_sklearn_checks_fail_on_the_image_check_only():
    assert_inapplicable_checks_fail_on_input(_CHECKED, EXPECTED_FAILED_CHECKS,
                                             lambda m: "image" in m and "expected" in m)


# ----------------------------------------------------------------------------- plotting


def test_plot_cams_draws_image_classes_and_background(square_cam):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sklearn_psa.plotting import plot_cams

    X, Y, _ = _square_images(12, seed=3)
    both = np.flatnonzero(Y.sum(1) == 2)[:1]
    r = square_cam.compute_cams(X[both], Y[both])[0]  # CAMs of both classes
    axes = plot_cams(r, class_names=["red", "blue"], background_alpha=4)
    assert len(axes) == 4  # image, two classes, background
    assert [ax.get_title() for ax in axes] == ["image", "red", "blue", "background (alpha=4)"]
    heat = axes[1].get_images()[-1].get_array()
    np.testing.assert_allclose(np.asarray(heat), r.cams[0])
    bg = np.asarray(axes[3].get_images()[-1].get_array())
    np.testing.assert_allclose(bg, (1 - r.cams.max(0)) ** 4, rtol=1e-5)
    plt.close("all")
    with pytest.raises(ValueError, match="class_names has 1 names"):
        plot_cams(r, class_names=["red"])
    plt.close("all")


def test_scale_range_rescales_the_training_images(shapes_data, monkeypatch):
    """CAM rescale augmentation (issue #17): the range reaches the training loop's augmentation;
    a bad range fails before training."""
    X, Y = shapes_data[0][:4], shapes_data[1][:4]
    seen = []

    def record_config(net, samples, loss_fn, config, **kwargs):
        seen.append(config.augmentation.scale_range)
        raise RuntimeError("stop here")

    monkeypatch.setattr("sklearn_psa._training.train", record_config)
    for value, expected in (((0.5, 1.0), (0.5, 1.0)), (None, (1.0, 1.0))):
        params = {} if value is None else {"scale_range": value}
        with pytest.raises(RuntimeError, match="stop here"):
            CAMClassifier(backbone="tiny", max_epochs=1, device="cpu", **params).fit(X, Y)
        assert seen[-1] == expected
    with pytest.raises(ValueError, match="scale_range"):
        CAMClassifier(backbone="tiny", scale_range=(2.0, 1.0)).check_params()
