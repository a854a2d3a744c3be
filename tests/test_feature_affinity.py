"""FeatureAffinity: affinities from pretrained features, against a plain float64 reference."""

import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline

from sklearn_psa import FeatureAffinity, RandomWalkRefiner, neighbor_offsets
from sklearn_psa.nn import make_backbone, pretrained_weights_installed
from sklearn_psa.records import Records
from _estimator_checks import (RECORDS_INPUT_FAILED_CHECKS, assert_inapplicable_checks_fail_on_input,
                               sklearn_check_cases)


def small_net(seed=0):
    torch.manual_seed(seed)
    return make_backbone("tiny", width=4, depth=1).eval()


def random_records(shapes, seed=0):
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in shapes]
    cams = [np.ones((1, h, w), np.float32) for h, w in shapes]
    return Records.from_arrays(images, np.ones((len(shapes), 1), np.uint8), cams)


def reference_affinity(net, records, level, input_scale, radius):
    """The formula in float64 numpy: grid features of the module, per-channel standardisation over
    all training cells, mean absolute difference per pair, divided by its mean over all pairs."""
    import torch.nn.functional as F

    feats = []
    with torch.no_grad():
        for r in records.records:
            img = r.load_image()
            H, W = img.shape[:2]
            h, w = -(-H // 8), -(-W // 8)
            x = torch.from_numpy(img).permute(2, 0, 1)[None].double()
            x = net.double().normalize(x)
            x = F.pad(x, (0, w * 8 - W, 0, h * 8 - H), mode="replicate")
            if input_scale != 1:
                x = F.interpolate(x, scale_factor=input_scale, mode="bilinear", align_corners=False)
            f = net(x)[level][0].numpy()
            c, fh, fw = f.shape
            if (fh, fw) == (h, w):
                feats.append(f)
            else:  # average pooling onto the grid (the sizes below divide exactly)
                feats.append(f.reshape(c, h, fh // h, w, fw // w).mean(axis=(2, 4)))
    net.float()
    cells = np.concatenate([f.reshape(f.shape[0], -1) for f in feats], axis=1)
    mean, std = cells.mean(axis=1), cells.std(axis=1)
    std = np.where(std > 1e-6 * std.max(), std, 1.0)  # constant channels (dead ReLUs) add nothing
    offsets = neighbor_offsets(radius)
    dists = []
    for f in feats:
        z = (f - mean[:, None, None]) / std[:, None, None]
        _, h, w = z.shape
        d = np.full((len(offsets), h, w), np.nan)
        for k, (dy, dx) in enumerate(offsets):
            for y in range(h):
                for x in range(w):
                    if 0 <= y + dy < h and 0 <= x + dx < w:
                        d[k, y, x] = np.abs(z[:, y, x] - z[:, y + dy, x + dx]).mean()
        dists.append(d)
    scale = np.nanmean(np.concatenate([d.ravel() for d in dists]))
    return [np.nan_to_num(np.exp(-d / scale), nan=0.0) for d in dists]


@pytest.mark.parametrize("level, input_scale", [("low", 1.0), ("high", 1.0), ("low", 2.0)])
def test_matches_the_float64_reference(level, input_scale):
    records = random_records([(32, 32), (24, 40), (32, 32)])
    net = small_net()
    est = FeatureAffinity(backbone=net, level=level, input_scale=input_scale, device="cpu", batch_size=2)
    got = est.fit(records).predict_affinity(records)
    want = reference_affinity(net, records, {"low": 0, "mid": 1, "high": 2}[level], input_scale, 5)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == np.float32
        np.testing.assert_allclose(g, w, atol=2e-5)


@settings(max_examples=12, deadline=None)
@given(h=st.integers(9, 40), w=st.integers(9, 40), radius=st.integers(2, 4), seed=st.integers(0, 3))
def test_any_image_size_matches_the_reference_and_stays_in_0_1(h, w, radius, seed):
    # sizes that are not multiples of 8: the image is padded to whole grid cells
    records = random_records([(h, w), (16, 16)], seed=seed)
    net = small_net(seed)
    est = FeatureAffinity(backbone=net, level="low", input_scale=1.0, radius=radius, device="cpu")
    got = est.fit(records).predict_affinity(records)
    want = reference_affinity(net, records, 0, 1.0, radius)
    for g, wnt in zip(got, want):
        np.testing.assert_allclose(g, wnt, atol=2e-5)
        assert ((g >= 0) & (g <= 1)).all()


@settings(max_examples=8, deadline=None)
@given(perm_seed=st.integers(0, 100))
def test_affinity_ignores_cams_and_class_order(perm_seed):
    rng = np.random.default_rng(perm_seed)
    images = rng.integers(0, 256, size=(2, 24, 24, 3), dtype=np.uint8)
    cams = [rng.random((3, 24, 24)).astype(np.float32) for _ in range(2)]
    a = Records.from_arrays(images, np.ones((2, 3), np.uint8), cams)
    order = rng.permutation(3)
    b = Records.from_arrays(images, np.ones((2, 3), np.uint8), [c[order] for c in cams])
    est = FeatureAffinity(backbone=small_net(), device="cpu").fit(a)
    for x, y in zip(est.predict_affinity(a), est.predict_affinity(b)):
        np.testing.assert_array_equal(x, y)


def test_pairs_off_the_grid_are_zero_and_the_statistics_are_fitted():
    records = random_records([(16, 24)])
    est = FeatureAffinity(backbone=small_net(), device="cpu").fit(records)
    aff = est.predict_affinity(records)[0]
    ys, xs = np.mgrid[:2, :3]
    for k, (dy, dx) in enumerate(est.offsets_):
        on_grid = (ys + dy < 2) & (xs + dx >= 0) & (xs + dx < 3)
        assert (aff[k][~on_grid] == 0).all() and (aff[k][on_grid] > 0).all()
    assert est.mean_.shape == est.scale_.shape == (small_net().out_channels[0],)
    assert est.distance_scale_ > 0 and est.n_classes_ == 1


def test_transform_sets_affinity_and_radius_and_walks():
    records = random_records([(32, 32), (32, 32)])
    out = FeatureAffinity(backbone=small_net(), radius=3, device="cpu").fit_transform(records)
    assert out.radius == 3 if hasattr(out, "radius") else True
    assert all(r.affinity.shape == (len(neighbor_offsets(3)), 4, 4) for r in out.records)
    pred = RandomWalkRefiner(alpha=4, beta=8, t=8, device="cpu").predict(out)
    assert all(p.shape == (32, 32) for p in pred)


def test_progress_bars_name_the_stage_only_when_verbose(capsys):
    records = random_records([(32, 32), (16, 24)])
    est = FeatureAffinity(backbone=small_net(), device="cpu").fit(records)
    est.transform(records)
    assert capsys.readouterr().err == ""
    est.set_params(verbose=2).fit(records)
    assert "FeatureAffinity statistics: 100%" in capsys.readouterr().err
    est.transform(records)
    assert "FeatureAffinity affinities: 100%" in capsys.readouterr().err


def test_errors():
    records = random_records([(16, 16)])
    with pytest.raises(TypeError, match="Records"):
        FeatureAffinity(backbone=small_net(), device="cpu").fit(np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="instead of 'auto'"):
        FeatureAffinity(backbone="auto", device="cpu").fit(records)
    with pytest.raises(ValueError, match="random weights"):
        FeatureAffinity(backbone="tiny", pretrained=False, device="cpu").fit(records)
    with pytest.raises(ValueError, match=r"needs installed ImageNet weights .* pretrained=<weights file>"):
        FeatureAffinity(backbone="tiny", device="cpu").fit(records)
    with pytest.raises(ValueError, match="unknown backbone"):
        FeatureAffinity(backbone="nope", device="cpu").fit(records)
    with pytest.raises(ValueError, match="level"):
        FeatureAffinity(backbone=small_net(), level="deep", device="cpu").fit(records)
    with pytest.raises(ValueError, match="no pair of grid cells"):
        FeatureAffinity(backbone=small_net(), device="cpu").fit(random_records([(8, 8)]))
    with pytest.raises(NotFittedError):
        FeatureAffinity(backbone=small_net(), device="cpu").transform(records)


def test_check_params_refuses_untrained_features_before_fit(tmp_path, monkeypatch):
    # what fit would refuse, without building a network (the CLI calls it before training)
    with pytest.raises(ValueError, match="instead of 'auto'"):
        FeatureAffinity(backbone="auto").check_params()
    with pytest.raises(ValueError, match="random weights"):
        FeatureAffinity(backbone="tiny", pretrained=False).check_params()
    with pytest.raises(ValueError, match="needs installed ImageNet weights"):
        FeatureAffinity(backbone="tiny").check_params()
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        FeatureAffinity(backbone="tiny", pretrained=str(tmp_path / "no.pt")).check_params()
    import sklearn_psa.nn as nn_module

    monkeypatch.setattr(nn_module, "make_backbone", lambda *a, **k: pytest.fail("built"))
    est = FeatureAffinity(backbone=small_net())
    assert est.check_params() is est


def test_weights_file_for_a_named_backbone(tmp_path):
    records = random_records([(16, 16), (16, 16)])
    torch.manual_seed(3)
    net = make_backbone("tiny")
    path = tmp_path / "tiny.pt"
    torch.save(net.state_dict(), path)
    from_file = FeatureAffinity(backbone="tiny", pretrained=str(path), device="cpu").fit(records)
    from_module = FeatureAffinity(backbone=net, device="cpu").fit(records)
    for x, y in zip(from_file.predict_affinity(records), from_module.predict_affinity(records)):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_clone_pickle_and_pipeline():
    records = random_records([(24, 24), (24, 24), (24, 24)])
    est = FeatureAffinity(backbone=small_net(), device="cpu")
    assert clone(est).get_params()["level"] == "low"
    fitted = clone(est).fit(records)
    again = pickle.loads(pickle.dumps(fitted))
    for x, y in zip(fitted.predict_affinity(records), again.predict_affinity(records)):
        np.testing.assert_array_equal(x, y)
    pipe = Pipeline([("affinity", clone(est)), ("rw", RandomWalkRefiner(alpha=4, t=4, device="cpu"))])
    assert len(pipe.fit(records).predict(records)) == 3


_CHECKED = FeatureAffinity(backbone=small_net(), device="cpu")


@pytest.mark.parametrize(**sklearn_check_cases(_CHECKED, RECORDS_INPUT_FAILED_CHECKS))
def test_sklearn_checks(estimator, check):
    check(estimator)


def test_inapplicable_sklearn_checks_fail_on_the_records_check_only():
    assert_inapplicable_checks_fail_on_input(_CHECKED, RECORDS_INPUT_FAILED_CHECKS,
                                             lambda m: "expected Records" in m)


@pytest.mark.skipif(not pretrained_weights_installed("efficientnet_lite0"),
                    reason="needs the efficientnet-lite0 weights package (extra 'pretrained')")
def test_imagenet_features_follow_the_bodies_of_make_shapes():
    # ImageNet features of the stride-8 stage tell the striped bodies from the background: pairs
    # within one body, or within the background, score above pairs across a body's edge, and
    # clearly better than with the same network's random weights (colour alone gets part way)
    from sklearn.metrics import roc_auc_score

    from sklearn_psa._affinity_labels import downsample_mask
    from sklearn_psa._grid import shifted_pairs
    from sklearn_psa._validation import check_random_state_seed
    from sklearn_psa.datasets._shapes import _generate

    # the hard case: striped bodies of one look for every class among body-like clutter
    X, masks, clutter = _generate(24, 4, 128, 3, check_random_state_seed(0), return_clutter=True,
                                  body_class_strength=0.0, distractors="bodies")
    segments = np.where(clutter > 0, 100 + clutter, masks).astype(np.uint8)  # distractors apart
    records = Records.from_arrays(X, np.ones((len(X), 1), np.uint8), [np.ones((1, 128, 128), np.float32)] * len(X))

    def auc(est):
        same, score = [], []
        for a, s in zip(est.fit(records).predict_affinity(records), segments):
            frm, to, inside = shifted_pairs(downsample_mask(s), neighbor_offsets(5))
            same.append((frm == to)[inside])
            score.append(a[inside])
        return roc_auc_score(np.concatenate(same), np.concatenate(score))

    torch.manual_seed(0)
    random_weights = make_backbone("efficientnet_lite0", pretrained=None, stages=5)
    imagenet, random = auc(FeatureAffinity(device="cpu")), auc(FeatureAffinity(backbone=random_weights, device="cpu"))
    assert imagenet > 0.93 and imagenet > random + 0.03, (imagenet, random)  # measured 0.949 and 0.891


def test_takes_the_affinity_step_of_psasegmenter():
    from sklearn_psa import CAMClassifier, PSASegmenter
    from sklearn_psa.datasets import make_shapes

    X, Y, masks = make_shapes(12, image_size=32, random_state=0)
    cam = CAMClassifier(backbone="tiny", max_epochs=1, scales=(1.0,), crop_size=None, device="cpu", random_state=0)
    seg = PSASegmenter(cam=cam, affinity=FeatureAffinity(backbone=small_net(), device="cpu"),
                       backbone="tiny", max_epochs=1, batch_size=4, device="cpu", random_state=0)
    seg.set_params(affinity__radius=3, refiner__t=8).fit(X, Y)
    assert seg.affinity_.radius == 3 and seg.affinity_.distance_scale_ > 0
    assert len(seg.pseudo_labels_) == 12 and seg.pseudo_labels_[0].shape == (32, 32)
    assert 0 <= seg.score(X, masks) <= 1
