"""AffinityEstimator: fit on CAM records, transform to affinities, sklearn guarantees."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator, clone

from sklearn_psa import AffinityEstimator, RandomWalkRefiner, neighbor_offsets
from sklearn_psa._affinity_labels import downsample_mask
from sklearn_psa._grid import shifted_pairs
from sklearn_psa.records import Records
from _estimator_checks import (RECORDS_INPUT_FAILED_CHECKS, assert_inapplicable_checks_fail_on_input,
                               sklearn_check_cases)

FAST = dict(backbone="tiny", crf=False, head_widths=(8, 8, 8), backbone_options={"width": 4, "depth": 1},
            crop_size=32, batch_size=4, device="cpu", random_state=0, label_affinity=None)


def square_records(n=12, size=32, seed=0, perfect_cams=True):
    """Images with one coloured square object on a noisy background, CAM = the square's mask."""
    rng = np.random.default_rng(seed)
    images, cams, masks = [], [], []
    for _ in range(n):
        img = rng.normal(90, 12, size=(size, size, 3))
        mask = np.zeros((size, size), np.uint8)
        y, x = rng.integers(0, size - 16, size=2)
        s = rng.integers(12, 17)
        mask[y:y + s, x:x + s] = 1
        img[mask == 1] = rng.normal((200, 60, 40), 12, size=(int(mask.sum()), 3))
        images.append(np.clip(img, 0, 255).astype(np.uint8))
        cam = mask[None].astype(np.float32) if perfect_cams else np.zeros((1, size, size), np.float32)
        cams.append(cam)
        masks.append(mask)
    return Records.from_arrays(images, np.ones((n, 1), np.uint8), cams), masks


@pytest.fixture(scope="module")
def squares():
    return square_records()


@pytest.fixture(scope="module")
def fitted(squares):
    records, _ = squares
    return AffinityEstimator(max_epochs=6, learning_rate=0.1, **FAST).fit(records)


def mean_affinity_same_vs_different(records, affinities, masks, radius):
    offsets = neighbor_offsets(radius)
    same, diff = [], []
    for aff, m in zip(affinities, masks):
        frm, to, inside = shifted_pairs(downsample_mask(m), offsets)
        same.append(aff[inside & (frm == to)])
        diff.append(aff[inside & (frm != to)])
    return np.concatenate(same).mean(), np.concatenate(diff).mean()


# ----------------------------------------------------------------------------- fit / transform


def test_fit_learns_affinities_that_separate_the_confident_regions(fitted, squares):
    records, masks = squares
    affs = fitted.predict_affinity(records)
    same, diff = mean_affinity_same_vs_different(records, affs, masks, fitted.radius)
    assert same > diff + 0.2, (same, diff)
    hist = fitted.loss_curve_
    assert len(hist) == 6 and hist[-1] < hist[0]


def test_fitted_attributes_and_label_stats(fitted, squares):
    records, masks = squares
    assert fitted.n_classes_ == 1
    np.testing.assert_array_equal(fitted.offsets_, neighbor_offsets(5))
    stats = fitted.label_stats_
    assert stats["foreground"] + stats["background"] + stats["ignored"] == pytest.approx(1)
    # perfect CAMs: nothing ignored, the foreground fraction is the grid masks'
    grid_fg = np.mean([downsample_mask(m).mean() for m in masks])
    assert stats["ignored"] == 0 and stats["foreground"] == pytest.approx(grid_fg)
    assert stats["bg_pairs"] > 0 and stats["fg_pairs"] > 0 and stats["neg_pairs"] > 0


@pytest.mark.parametrize("shape", [(33, 17), (8, 8), (41, 64), (7, 3)])
def test_transform_whole_image_any_size(fitted, shape, rng):
    H, W = shape
    image = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    records = Records.from_arrays([image, image[::-1].copy()], [[1], [0]],
                                  [np.full((1, H, W), 0.5, np.float32), np.zeros((0, H, W), np.float32)])
    out = fitted.transform(records)
    assert isinstance(out, Records) and len(out) == 2
    for r in out.records:
        assert r.affinity.shape == (34, -(-H // 8), -(-W // 8)) and r.affinity.dtype == np.float32
        assert r.radius == 5
        assert np.all(r.affinity >= 0) and np.all(r.affinity <= 1)
        # entries whose neighbour is outside the grid are 0, those inside are > 0
        _, _, inside = shifted_pairs(np.zeros(r.affinity.shape[1:]), neighbor_offsets(5))
        assert np.all(r.affinity[~inside] == 0) and np.all(r.affinity[inside] > 0)
    assert out[0].cams is records[0].cams  # CAMs passed on, not copied
    RandomWalkRefiner(t=4).predict(out)  # consumable by the walk


def test_transform_batches_like_one_by_one(fitted, squares):
    records, _ = squares
    together = fitted.predict_affinity(records[:5])
    alone = [fitted.predict_affinity(records[i:i + 1])[0] for i in range(5)]
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_same_random_state_same_affinities(squares):
    records, _ = squares
    a = AffinityEstimator(max_epochs=1, **FAST).fit(records[:6]).predict_affinity(records[:2])
    b = AffinityEstimator(max_epochs=1, **FAST).fit(records[:6]).predict_affinity(records[:2])
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_init_from_the_cam_classifiers_backbone(squares):
    from sklearn_psa.nn import make_backbone

    records, _ = squares
    source_net = make_backbone("tiny", width=4, depth=1)
    state = {k: v + 0.5 if v.is_floating_point() else v for k, v in source_net.state_dict().items()}
    with_source = Records(records.records, records.n_classes,
                          {"backbone": "tiny", "backbone_options": {"width": 4, "depth": 1},
                           "state_dict": state})
    est = AffinityEstimator(init="cam", max_epochs=0, **FAST).fit(with_source)
    got = est.network_.backbone.state_dict()
    for k, v in state.items():
        np.testing.assert_array_equal(got[k].cpu().numpy(), np.asarray(v))
    with pytest.raises(ValueError, match="init='cam'"):
        AffinityEstimator(init="cam", max_epochs=0, **FAST).fit(records)
    # the CAM's backbone wins over backbone="auto" (which would be ImageNet weights)
    est = AffinityEstimator(init="cam", max_epochs=0,
                            **{**FAST, "backbone": "auto", "backbone_options": None}).fit(with_source)
    got = est.network_.backbone.state_dict()
    assert set(got) == set(state)
    for k, v in state.items():
        np.testing.assert_array_equal(got[k].cpu().numpy(), np.asarray(v))


def test_init_from_a_pretrained_cam_backbone_sets_it_up_as_pretrained(squares):
    from sklearn_psa.nn import make_backbone

    records, _ = squares
    state = make_backbone("efficientnet_lite0", stages=5).state_dict()  # random weights suffice
    for pretrained, momentum in ((True, 0.01), (None, 0.1)):
        with_source = Records(records.records, records.n_classes,
                              {"backbone": "efficientnet_lite0", "backbone_options": {"stages": 5},
                               "pretrained": pretrained, "state_dict": state})
        est = AffinityEstimator(init="cam", **FAST)
        net = est._build_network({"records": with_source, "n_classes": records.n_classes})
        bns = [m for m in net.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert bns and {m.momentum for m in bns} == {momentum}
        assert est._rates({})[1] == est.head_lr_mult  # the head learns faster: from weights


def test_crf_snaps_blurred_cams_to_the_objects(squares):
    from scipy.ndimage import gaussian_filter

    pytest.importorskip("sklearn_psa.crf")
    records, masks = squares
    blurred = []
    for r in records.records[:4]:
        cam = gaussian_filter(r.cams[0], 4)
        blurred.append(r.__class__(r.image, r.labels, (cam / cam.max())[None], shape=r.shape))
    blurred = Records(blurred, 1)
    grid_fg = np.mean([downsample_mask(m).mean() for m in masks[:4]])
    plain = AffinityEstimator(max_epochs=0, **FAST).fit(blurred).label_stats_
    crf = AffinityEstimator(max_epochs=0, **{**FAST, "crf": True}).fit(blurred).label_stats_
    # the blur spreads confident foreground beyond the squares; the CRF brings it back
    assert plain["foreground"] > grid_fg + 0.03
    assert abs(crf["foreground"] - grid_fg) < 0.5 * abs(plain["foreground"] - grid_fg)


# ----------------------------------------------------------------------------- sklearn guarantees


def test_progress_bars_name_the_stage_only_when_verbose(squares, capsys):
    records = squares[0][:4]
    est = AffinityEstimator(max_epochs=1, **{**FAST, "crf": True}).fit(records)
    est.transform(records)
    assert capsys.readouterr().err == ""
    est.set_params(verbose=1).fit(records)
    err = capsys.readouterr().err
    assert "AffinityNet labels (dense CRF)" in err and "AffinityNet:" in err
    est.predict_affinity(records)
    assert "AffinityEstimator affinities" in capsys.readouterr().err


def test_clone_get_set_params_round_trip():
    est = AffinityEstimator(alpha_low=2, alpha_high=16, radius=3, crf=False, init="cam")
    params = est.get_params()
    assert params["alpha_low"] == 2 and params["radius"] == 3 and params["init"] == "cam"
    c = clone(est)
    assert c.get_params() == params
    c.set_params(radius=4, learning_rate=0.3)
    assert c.radius == 4 and c.learning_rate == 0.3 and est.radius == 3


def test_pickle_round_trip_gives_the_same_affinities(fitted, squares):
    records, _ = squares
    again = pickle.loads(pickle.dumps(fitted))
    for a, b in zip(fitted.predict_affinity(records[:3]), again.predict_affinity(records[:3])):
        np.testing.assert_array_equal(a, b)
    assert all(t.device.type == "cpu" for t in again.network_.parameters())


def test_errors(fitted, squares):
    records, _ = squares
    with pytest.raises(TypeError, match="Records"):
        AffinityEstimator(**FAST).fit(np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="alpha_high"):
        AffinityEstimator(alpha_low=8, alpha_high=4, **FAST).fit(records)
    with pytest.raises(ValueError, match="multiple of 8"):
        AffinityEstimator(**{**FAST, "crop_size": 30}).fit(records)
    with pytest.raises(ValueError, match="radius"):
        AffinityEstimator(radius=1, **FAST).fit(records)
    with pytest.raises(ValueError, match=r"crf: unknown dense_crf options \['sxy'\]"):
        AffinityEstimator(**{**FAST, "crf": {"sxy": 3}}).fit(records)
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        AffinityEstimator().transform(records)
    with pytest.raises(TypeError, match="expected Records"):
        fitted.transform(np.zeros((2, 8, 8, 3), np.uint8))
    no_cams = Records([records[0].__class__(records[0].image, records[0].labels)], 1)
    with pytest.raises(ValueError, match="no CAMs"):
        fitted.transform(no_cams)


# Every check that feeds 2-D float feature matrices fails on purpose: X is Records. Cloning,
# parameters, pickling of fitted models and determinism are tested above on real records.
EXPECTED_FAILED_CHECKS = RECORDS_INPUT_FAILED_CHECKS


_CHECKED = AffinityEstimator(backbone="tiny", max_epochs=1, crf=False, device="cpu", random_state=0)


@pytest.mark.parametrize(**sklearn_check_cases(_CHECKED, EXPECTED_FAILED_CHECKS))
def test_sklearn_checks(estimator, check):
    check(estimator)


def test_inapplicable_sklearn_checks_fail_on_the_records_check_only():
    assert_inapplicable_checks_fail_on_input(_CHECKED, EXPECTED_FAILED_CHECKS,
                                             lambda m: "expected Records" in m)


def test_end_to_end_on_make_shapes():
    from sklearn_psa import CAMClassifier
    from sklearn_psa.datasets import make_shapes

    X, Y, masks = make_shapes(n_samples=20, image_size=64, random_state=0)
    records = CAMClassifier(backbone="tiny", max_epochs=2, scales=(1.0,), flip=False, crop_size=None, device="cpu",
                            random_state=0).fit_transform(X, Y)
    est = AffinityEstimator(max_epochs=2, **{**FAST, "crop_size": 64})
    out = est.fit_transform(records)
    assert len(out) == 20 and all(r.affinity.shape == (34, 8, 8) for r in out.records)
    assert np.isfinite(est.loss_curve_).all()
    pred = RandomWalkRefiner(t=16).predict(out)
    assert len(pred) == 20 and all(p.shape == (64, 64) and p.dtype == np.uint8 for p in pred)


def test_auto_epochs_reach_a_number_of_steps():
    from sklearn_psa.affinity import AUTO_MIN_EPOCHS, AUTO_MIN_STEPS, AUTO_MIN_STEPS_PRETRAINED, auto_epochs

    assert AffinityEstimator().max_epochs == "auto"
    assert auto_epochs(200, 8) == 64 and auto_epochs(10582, 8) == AUTO_MIN_EPOCHS
    assert auto_epochs(200, 8, pretrained=True) == 16
    for pretrained, min_steps in ((False, AUTO_MIN_STEPS), (True, AUTO_MIN_STEPS_PRETRAINED)):
        for n in (1, 7, 8, 9, 100, 201, 5000, 20000):
            for batch in (1, 4, 8, 16):
                epochs = auto_epochs(n, batch, pretrained=pretrained)
                steps_per_epoch = -(-n // batch)
                assert epochs >= AUTO_MIN_EPOCHS and epochs * steps_per_epoch >= min_steps
                # the fewest such epochs
                assert epochs == AUTO_MIN_EPOCHS or (epochs - 1) * steps_per_epoch < min_steps


def test_auto_epochs_count_the_weights_the_network_starts_from(squares, monkeypatch, tmp_path):
    import torch

    import sklearn_psa.affinity as affinity
    from sklearn_psa.affinity import starts_from_weights
    from sklearn_psa.nn import make_backbone

    assert not starts_from_weights("tiny", None)
    assert starts_from_weights("tiny", None, init="cam")
    assert starts_from_weights("tiny", "weights.pt")
    records, _ = squares
    monkeypatch.setattr(affinity, "AUTO_MIN_STEPS", 3 * len(records))  # batch 1: 3 epochs
    monkeypatch.setattr(affinity, "AUTO_MIN_STEPS_PRETRAINED", 2 * len(records))  # 2 epochs
    monkeypatch.setattr(affinity, "AUTO_MIN_EPOCHS", 1)
    weights = tmp_path / "tiny.pt"
    torch.save(make_backbone("tiny", **FAST["backbone_options"]).state_dict(), weights)
    common = {**FAST, "batch_size": 1}
    assert AffinityEstimator(**common).fit(records).n_epochs_ == 3
    assert AffinityEstimator(pretrained=str(weights), **common).fit(records).n_epochs_ == 2


def test_fit_trains_the_auto_epochs(squares, monkeypatch):
    import sklearn_psa.affinity as affinity

    records, _ = squares
    monkeypatch.setattr(affinity, "AUTO_MIN_STEPS", 5 * len(records))  # 5 epochs of batch 1 ...
    monkeypatch.setattr(affinity, "AUTO_MIN_EPOCHS", 2)
    est = AffinityEstimator(max_epochs="auto", **{**FAST, "batch_size": 1}).fit(records)
    assert est.n_epochs_ == 5 and len(est.loss_curve_) == 5
    assert AffinityEstimator(max_epochs=3, **FAST).fit(records).n_epochs_ == 3
    with pytest.raises(ValueError, match="max_epochs"):
        AffinityEstimator(max_epochs="long", **FAST).fit(records)


# ----------------------------------------------------------------------------- label_pooling, dropout


def _mixed_records(seed=0):
    """Images of several sizes and class sets (among 5 classes), random CAMs, and one image
    whose top-left cell a majority vote and a mean pool label differently."""
    from test_affinity_labels import vote_differs_from_mean_cams

    rng = np.random.default_rng(seed)
    shapes, classes = [(32, 40), (20, 27), (24, 24), (16, 16)], [[0, 3], [2], [1, 3, 4], [4]]
    images, cams, Y = [], [], np.zeros((len(shapes), 5), np.uint8)
    for i, ((H, W), present) in enumerate(zip(shapes, classes)):
        images.append(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        cam = rng.random((len(present), H, W), dtype=np.float32) * 0.5
        for k in range(len(present)):  # each class strong in its own band of columns
            cam[k, H // 4 :, k * W // len(present) : (k + 1) * W // len(present)] += 0.5
        cam[:, : H // 4] *= 0.05  # a weak top: background
        if i == len(shapes) - 1:
            cam[:, :8, :8] = vote_differs_from_mean_cams()
        cams.append(cam)
        Y[i, present] = 1
    return Records.from_arrays(images, Y, cams)


def _training_grids(est, records, params=None, crop_size=None, label_affinity=None):
    """The grid labels ``get_loss`` trains on, for a batch of all ``records`` taken through
    the training data path (``params``: each image's augmentation, default none; ``label_affinity``:
    a fitted ``label_affinity``)."""
    from sklearn_psa.affinity import _batch_grid_labels
    from sklearn_psa._training import _AS_IS, Augmentation, _host_batch, _Plan, _to_device_batch

    est.offsets_ = np.asarray(neighbor_offsets(est.radius))
    samples = est._training_samples({"records": records, "device": torch.device("cpu"),
                                      "label_affinity": label_affinity})
    plan = _Plan(list(range(len(records))), params or [_AS_IS] * len(records))
    aug = Augmentation(crop_size=crop_size, color_jitter=0.0)
    batch = _to_device_batch(*_host_batch(samples, plan, aug), torch.device("cpu"), False)
    maps = {k: v.numpy() for k, v in batch.items() if k != "image"}
    return _batch_grid_labels(maps, est.label_pooling)


def test_mean_label_pooling_trains_on_the_reference_codes_labels():
    from test_affinity_labels import mean_pooled_labels

    records = _mixed_records()
    grids = _training_grids(AffinityEstimator(label_pooling="mean", **FAST), records)
    h, w = grids.shape[1:]  # the batch's grid: the largest image's (32 x 40)
    assert (h, w) == (4, 5)
    for grid, r in zip(grids, records.records):
        expected = np.full((h, w), 255, np.uint8)  # cells beyond the image: padding, ignored
        ref = mean_pooled_labels(r.cams, r.labels)
        expected[: ref.shape[0], : ref.shape[1]] = ref
        np.testing.assert_array_equal(grid, expected)
    assert set(np.unique(grids).tolist()) == {0, 1, 2, 3, 4, 5, 255}  # classes reach j + 1
    # flipped with the image (a width of whole cells: the grid flips too)
    flipped = {"scale": 1.0, "crop": None, "flip": True}
    one = records[[0]]
    grid = _training_grids(AffinityEstimator(label_pooling="mean", **FAST), one, [flipped])[0]
    np.testing.assert_array_equal(grid, mean_pooled_labels(one[0].cams, one[0].labels)[:, ::-1])


def test_vote_and_mean_label_pooling_give_other_labels_where_margins_differ():
    records = _mixed_records()
    vote = _training_grids(AffinityEstimator(**FAST), records)
    mean = _training_grids(AffinityEstimator(label_pooling="mean", **FAST), records)
    assert vote[3, 0, 0] == 5 and mean[3, 0, 0] == 255  # class column 4: confident by vote only


def test_mean_label_pooling_crops_and_rescales_the_scores_with_the_image():
    from test_affinity_labels import mean_pooled_labels

    records = _mixed_records()
    est = AffinityEstimator(label_pooling="mean", **FAST)
    crop = {"scale": 1.0, "crop": (8, 16, 0, 0), "flip": False}  # rows 8:24, columns 16:32
    grid = _training_grids(est, records[[0]], [crop], crop_size=16)[0]
    np.testing.assert_array_equal(grid, mean_pooled_labels(records[0].cams[:, 8:24, 16:32],
                                                           records[0].labels))
    double = {"scale": 2.0, "crop": None, "flip": False}  # each pixel becomes 2 x 2
    grid = _training_grids(est, records[[3]], [double])[0]
    cams = records[3].cams.repeat(2, axis=1).repeat(2, axis=2)
    np.testing.assert_array_equal(grid, mean_pooled_labels(cams, records[3].labels))


def test_mean_label_pooling_fits_end_to_end_with_store_and_dropout(tmp_path, monkeypatch):
    from sklearn_psa import CAMClassifier, affinity as affinity_module
    from sklearn_psa.datasets import make_shapes

    X, Y, _ = make_shapes(n_samples=6, image_size=32, random_state=0)
    records = CAMClassifier(backbone="tiny", max_epochs=1, scales=(1.0,), flip=False, crop_size=None,
                            backbone_options={"width": 4, "depth": 1}, device="cpu",
                            random_state=0).fit_transform(X, Y)
    params = dict(FAST, max_epochs=1, dropout=0.3)
    mean = AffinityEstimator(label_pooling="mean", **params)
    out = mean.fit_transform(records)
    assert all(r.affinity.shape == (34, 4, 4) for r in out.records)
    assert np.isfinite(mean.loss_curve_).all() and mean.network_.dropout.p == 0.3
    # the store keeps vote and mean maps apart, and gives the mean's back
    stores = {p: AffinityEstimator(label_pooling=p, store=str(tmp_path), **params)
              for p in ("vote", "mean")}
    keys = {p: est._stored_label_maps(records).keys for p, est in stores.items()}
    assert not set(keys["vote"]) & set(keys["mean"])
    calls, task = [], affinity_module._label_task
    monkeypatch.setattr(affinity_module, "_label_task", lambda *a: (calls.append(1), task(*a))[1])
    for est in stores.values():
        est.fit(records)
    files = sorted((tmp_path / "affinity-labels").rglob("*.npy"))
    assert len(calls) == len(files) == 2 * len(records)
    stacks = [np.load(f) for f in files]
    assert sorted(s.dtype.str for s in stacks) == ["<f2"] * len(records) + ["|u1"] * len(records)
    again = AffinityEstimator(label_pooling="mean", store=str(tmp_path), **params).fit(records)
    assert len(calls) == 2 * len(records)  # from the store
    assert again.label_stats_ == stores["mean"].label_stats_ == mean.label_stats_
    assert stores["vote"].label_stats_ != mean.label_stats_
    for a, b in zip(mean.predict_affinity(records), again.predict_affinity(records)):
        np.testing.assert_array_equal(a, b)  # same labels, same seed: the same network


def test_dropout_and_label_pooling_parameters():
    from sklearn.utils._param_validation import InvalidParameterError

    records, _ = square_records(n=4)
    for bad in ({"dropout": 1.5}, {"dropout": -0.1}, {"label_pooling": "max"}):
        with pytest.raises(InvalidParameterError, match=next(iter(bad))):
            AffinityEstimator(**{**FAST, **bad}).fit(records)
    est = AffinityEstimator(**FAST)
    assert est.dropout == 0.0 and est.label_pooling == "vote"
    net = est._build_network({"records": records})
    assert not any(isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d)) for m in net.modules())
    net = est.set_params(dropout=0.4)._build_network({"records": records})
    x = torch.rand(2, 3, 32, 32) * 255
    net.train()
    assert not torch.equal(net(x), net(x))
    net.eval()
    assert torch.equal(net(x), net(x))


def test_dropout_survives_model_files_and_old_states(tmp_path):
    from sklearn_psa import PSASegmenter
    from sklearn_psa.io import load_model, save_model

    records, _ = square_records(n=4)
    est = AffinityEstimator(max_epochs=1, dropout=0.25, label_pooling="mean", **FAST).fit(records)
    save_model(est, tmp_path / "aff.psa")
    loaded = load_model(tmp_path / "aff.psa")
    assert loaded.dropout == 0.25 and loaded.label_pooling == "mean"
    assert loaded.network_.dropout.p == 0.25 and not loaded.network_.training
    for a, b in zip(est.predict_affinity(records), loaded.predict_affinity(records)):
        np.testing.assert_array_equal(a, b)
    old = pickle.loads(pickle.dumps(est))  # an estimator pickled before the two options
    del old.dropout, old.label_pooling
    old = pickle.loads(pickle.dumps(old))
    assert old.get_params()["dropout"] == 0.0 and old.get_params()["label_pooling"] == "vote"
    # the segmenter passes them to its steps
    steps = PSASegmenter(cam__dropout=0.5, affinity__dropout=0.3,
                         affinity__label_pooling="mean")._fit_steps()
    assert steps["cam"].dropout == 0.5 and steps["affinity"].dropout == 0.3
    assert steps["affinity"].label_pooling == "mean"


def test_checkpoint_fingerprints_hold_the_new_options_only_when_set(squares):
    # at their defaults they train what the version before them did: its checkpoints resume
    records, _ = squares
    fingerprint, params = AffinityEstimator(**FAST)._fingerprint({"records": records})
    assert "dropout" not in params and "label_pooling" not in params and "crf" in params
    for change in ({"dropout": 0.3}, {"label_pooling": "mean"}):
        other, params = AffinityEstimator(**FAST, **change)._fingerprint({"records": records})
        assert other != fingerprint and params[next(iter(change))] == next(iter(change.values()))


# ----------------------------------------------------------------------------- label walk


class OnesAffinity(BaseEstimator):
    """An affinity estimator whose affinity is 1 everywhere (the walk then spreads each map
    evenly)."""

    def __init__(self, radius=5):
        self.radius = radius

    def fit(self, X, y=None):
        self.n_fitted_on_ = len(X)
        return self

    def transform(self, X):
        k = len(neighbor_offsets(self.radius))
        return X.with_affinity([np.ones((k, -(-r.shape[0] // 8), -(-r.shape[1] // 8)), np.float32)
                                for r in X.records], self.radius)


def _walked_records(records, affinity, beta, t):
    """``records`` whose CAMs are the walk's class maps, each divided by its maximum: the
    plain reference of the label walk (the refiner's walk; its background channel dropped)."""
    scores = RandomWalkRefiner(alpha=1, beta=beta, t=t).transform(affinity.fit(records).transform(records))
    cams = [s[1:] / s[1:].reshape(len(s) - 1, -1).max(axis=1)[:, None, None] for s in scores]
    return Records([r.__class__(r.image, r.labels, c, shape=r.shape) for r, c in zip(records.records, cams)],
                   records.n_classes, records.source)


@pytest.mark.parametrize("pooling", ["vote", "mean"])
def test_label_walk_draws_the_labels_from_the_walked_maps(pooling):
    records = _mixed_records()
    est = AffinityEstimator(**{**FAST, "label_affinity": OnesAffinity()}, label_beta=4, label_t=3, label_pooling=pooling)
    got = _training_grids(est, records, label_affinity=est._fitted_label_affinity(records))
    want = _training_grids(AffinityEstimator(label_pooling=pooling, **FAST),
                           _walked_records(records, OnesAffinity(), beta=4, t=3))
    plain = _training_grids(AffinityEstimator(label_pooling=pooling, **FAST), records)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    # an even walk makes every class a whole-image map: far more confident foreground
    fg = lambda gs: np.mean([((g[0] > 0) & (g[0] != 255)).mean() for g in gs])  # noqa: E731
    assert fg(got) > fg(plain) + 0.2


def test_label_walk_fits_a_clone_of_its_affinity_and_leaves_background_only_images(squares):
    records, _ = squares
    given = OnesAffinity()
    est = AffinityEstimator(max_epochs=0, **{**FAST, "label_affinity": given}).fit(records)
    assert not hasattr(given, "n_fitted_on_") and est.get_params()["label_affinity__radius"] == 5
    assert est.label_stats_ != AffinityEstimator(max_epochs=0, **FAST).fit(records).label_stats_
    empty = Records.from_arrays([records[0].image], np.zeros((1, 1), np.uint8), [np.zeros((0, 32, 32), np.float32)])
    stats = AffinityEstimator(max_epochs=0, **{**FAST, "label_affinity": given}).fit(empty).label_stats_
    assert stats["foreground"] == 0 and stats["background"] == 1


def test_label_walk_keeps_its_own_label_maps_in_the_store(squares, tmp_path):
    records, _ = squares
    with_walk = dict(FAST, max_epochs=0, label_affinity=OnesAffinity(), label_t=4)
    expected = AffinityEstimator(**with_walk).fit(records).label_stats_
    plain = AffinityEstimator(max_epochs=0, store=tmp_path, **FAST).fit(records).label_stats_
    assert plain != expected
    # the maps stored without the walk are not taken for the walk's, and the walk's are reused
    assert AffinityEstimator(**with_walk, store=tmp_path).fit(records).label_stats_ == expected
    n_files = len(list(tmp_path.rglob("*.npy")))
    assert AffinityEstimator(**with_walk, store=tmp_path).fit(records).label_stats_ == expected
    assert len(list(tmp_path.rglob("*.npy"))) == n_files
    AffinityEstimator(**with_walk, label_beta=2, store=tmp_path).fit(records)
    assert len(list(tmp_path.rglob("*.npy"))) > n_files


def test_label_walk_parameters_are_checked_and_fingerprinted(squares):
    from sklearn.utils._param_validation import InvalidParameterError

    records, _ = squares
    for bad in ({"label_affinity": "features"}, {"label_beta": 0}, {"label_t": -1}):
        with pytest.raises(InvalidParameterError, match=next(iter(bad))):
            AffinityEstimator(**{**FAST, **bad}).fit(records)
    _, params = AffinityEstimator(**FAST)._fingerprint({"records": records})
    assert not {"label_affinity", "label_beta", "label_t"} & set(params)  # None: the version before
    fp1, params = AffinityEstimator(**{**FAST, "label_affinity": OnesAffinity()})._fingerprint({"records": records})
    fp2, _ = AffinityEstimator(**{**FAST, "label_affinity": OnesAffinity(radius=3)})._fingerprint({"records": records})
    assert "label_affinity" in params and fp1 != fp2


def test_label_affinity_auto_is_imagenet_features_where_installed(monkeypatch):
    import sklearn_psa.nn as nn_module
    from sklearn_psa import FeatureAffinity

    est = AffinityEstimator(device="cpu")
    monkeypatch.setattr(nn_module, "resolve_backbone", lambda *a, **k: ("efficientnet_lite0", True, None))
    chosen = est._label_affinity()
    assert isinstance(chosen, FeatureAffinity) and chosen.device == "cpu"
    monkeypatch.setattr(nn_module, "resolve_backbone", lambda *a, **k: ("tiny", None, None))
    assert est._label_affinity() is None
    given = OnesAffinity()
    assert AffinityEstimator(label_affinity=given)._label_affinity() is given


def test_label_walk_parameters_survive_model_files_and_old_states(tmp_path):
    from sklearn_psa.io import load_model, save_model

    records, _ = square_records(n=4)
    est = AffinityEstimator(max_epochs=1, **{**FAST, "label_affinity": "auto"}, label_beta=4.0, label_t=16)
    est.set_params(label_affinity=None).fit(records).set_params(label_affinity="auto")
    save_model(est, tmp_path / "aff.psa")
    loaded = load_model(tmp_path / "aff.psa")
    assert (loaded.label_affinity, loaded.label_beta, loaded.label_t) == ("auto", 4.0, 16)
    old = pickle.loads(pickle.dumps(est))  # an estimator pickled before the options
    del old.label_affinity, old.label_beta, old.label_t
    old = pickle.loads(pickle.dumps(old))
    assert (old.label_affinity, old.label_beta, old.label_t) == (None, 8.0, 256)  # as it was trained


def test_label_records_are_the_maps_the_labels_come_from(squares):
    records, _ = squares
    est = AffinityEstimator(**{**FAST, "label_affinity": OnesAffinity()}, label_beta=4, label_t=3)
    walked = est.label_records(records)
    want = _walked_records(records, OnesAffinity(), beta=4, t=3)
    for got, ref in zip(walked.records, want.records):
        np.testing.assert_allclose(got.cams, ref.cams, rtol=1e-5, atol=1e-6)
        assert got.image is not None and np.array_equal(got.labels, ref.labels)
    assert not np.allclose(walked[0].cams, records[0].cams)
    np.testing.assert_array_equal(AffinityEstimator(**FAST).label_records(records)[0].cams, records[0].cams)
