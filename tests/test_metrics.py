"""Tests of sklearn_psa.metrics against a plain per-class reference, with properties."""

import doctest

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.base import BaseEstimator
from sklearn.metrics import make_scorer
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.utils.validation import check_is_fitted

from sklearn_psa import metrics
from sklearn_psa._validation import check_images, check_targets
from sklearn_psa.io import save_mask
from sklearn_psa.metrics import (
    confusion_matrix,
    mean_iou,
    mean_iou_scorer,
    segmentation_report,
)

IGNORE = 255


# --------------------------------------------------------------------------- reference


def reference_confusion(y_true, y_pred, n_classes, ignore=IGNORE):
    """Count every (true, predicted) pair with boolean masks, one pair of classes at a time."""
    cm = np.zeros((n_classes + 1, n_classes + 1), dtype=np.int64)
    for i in range(n_classes + 1):
        for j in range(n_classes + 1):
            for t, p in zip(y_true, y_pred):
                t, p = np.asarray(t), np.asarray(p)
                cm[i, j] += int(np.sum((t == i) & (p == j) & (t != ignore)))
    return cm


def reference_scores(y_true, y_pred, n_classes, ignore=IGNORE):
    """Per-class IoU, precision, recall, support in float64 (nan where the class is in neither)."""
    out = {"iou": [], "precision": [], "recall": [], "support": []}
    for c in range(n_classes + 1):
        tp = fp = fn = 0.0
        for t, p in zip(y_true, y_pred):
            t, p = np.asarray(t), np.asarray(p)
            valid = t != ignore
            is_t = (t == c) & valid
            is_p = (p == c) & valid
            tp += float(np.sum(is_t & is_p))
            fp += float(np.sum(is_p & ~is_t))
            fn += float(np.sum(is_t & ~is_p))
        union = tp + fp + fn
        if union == 0:
            out["iou"].append(np.nan)
            out["precision"].append(np.nan)
            out["recall"].append(np.nan)
        else:
            out["iou"].append(tp / union)
            out["precision"].append(tp / (tp + fp) if tp + fp else 0.0)
            out["recall"].append(tp / (tp + fn) if tp + fn else 0.0)
        out["support"].append(int(tp + fn))
    return {k: np.array(v) for k, v in out.items()}


# --------------------------------------------------------------------------- strategies


@st.composite
def mask_pairs(draw, max_classes=5, min_masks=1, max_masks=4, ignore=True):
    """Lists of (truth, prediction) masks of different sizes; truth may hold 255."""
    n_classes = draw(st.integers(1, max_classes))
    n = draw(st.integers(min_masks, max_masks))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    truth, pred = [], []
    for _ in range(n):
        h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
        t = rng.integers(0, n_classes + 1, size=(h, w))
        if ignore:
            t[rng.random((h, w)) < draw(st.sampled_from([0.0, 0.2, 0.6]))] = IGNORE
        # predictions agree with the truth on part of the pixels, so scores spread over [0, 1]
        p = np.where(rng.random((h, w)) < 0.5, t, rng.integers(0, n_classes + 1, size=(h, w)))
        p[p == IGNORE] = rng.integers(0, n_classes + 1)
        truth.append(t.astype(np.uint8))
        pred.append(p.astype(np.uint8))
    return truth, pred, n_classes


def _has_valid_pixel(truth):
    return any(np.any(t != IGNORE) for t in truth)


# --------------------------------------------------------------------------- against the reference


@given(mask_pairs())
def test_confusion_matrix_matches_reference(data):
    truth, pred, k = data
    cm = confusion_matrix(truth, pred, n_classes=k)
    assert cm.dtype == np.int64
    assert cm.shape == (k + 1, k + 1)
    np.testing.assert_array_equal(cm, reference_confusion(truth, pred, k))


@given(mask_pairs())
def test_mean_iou_and_report_match_reference(data):
    truth, pred, k = data
    if not _has_valid_pixel(truth):
        with pytest.raises(ValueError, match="every pixel of y_true is ignored"):
            mean_iou(truth, pred)
        return
    ref = reference_scores(truth, pred, k)
    score = mean_iou(truth, pred, n_classes=k)
    assert isinstance(score, float)
    np.testing.assert_allclose(score, np.nanmean(ref["iou"]), rtol=1e-12)

    report = segmentation_report(truth, pred, n_classes=k, output_dict=True)
    names = ["background"] + [str(c) for c in range(1, k + 1)]
    assert list(report) == names + ["mean"]
    for c, name in enumerate(names):
        for key in ("iou", "precision", "recall"):
            np.testing.assert_allclose(report[name][key], ref[key][c], rtol=1e-12)
        assert report[name]["support"] == ref["support"][c]
        assert isinstance(report[name]["support"], int)
    for key in ("iou", "precision", "recall"):
        np.testing.assert_allclose(report["mean"][key], np.nanmean(ref[key]), rtol=1e-12)
    assert report["mean"]["iou"] == score
    assert report["mean"]["support"] == sum(int(np.sum(t != IGNORE)) for t in truth)


def test_known_values():
    # background: TP 2, FP 0, FN 1 -> 2/3 ; class 1: TP 2, FP 1, FN 0 -> 2/3 ; class 2: TP 1 -> 1
    truth = [np.array([[0, 0, 1, 1]]), np.array([[0, 255, 2]])]
    pred = [np.array([[0, 1, 1, 1]]), np.array([[0, 2, 2]])]
    np.testing.assert_allclose(mean_iou(truth, pred), (2 / 3 + 2 / 3 + 1) / 3)
    np.testing.assert_array_equal(
        confusion_matrix(truth, pred), [[2, 1, 0], [0, 2, 0], [0, 0, 1]]
    )
    rep = segmentation_report(truth, pred, output_dict=True)
    assert rep["1"]["precision"] == pytest.approx(2 / 3)
    assert rep["1"]["recall"] == 1.0
    assert rep["background"]["recall"] == pytest.approx(2 / 3)
    assert rep["background"]["support"] == 3


# --------------------------------------------------------------------------- properties


@given(mask_pairs())
def test_score_is_a_fraction(data):
    truth, pred, _ = data
    if _has_valid_pixel(truth):
        assert 0.0 <= mean_iou(truth, pred) <= 1.0


@given(mask_pairs(), st.integers(0, 5))
def test_perfect_prediction_scores_one(data, fill):
    truth, _, k = data
    # the prediction equals the truth where it counts; ignored pixels get any label
    pred = [np.where(t == IGNORE, min(fill, k), t).astype(np.uint8) for t in truth]
    if not _has_valid_pixel(truth):
        with pytest.raises(ValueError, match="ignored"):
            mean_iou(truth, pred)
        return
    assert mean_iou(truth, pred) == 1.0
    report = segmentation_report(truth, pred, output_dict=True)
    assert report["mean"] == {
        "iou": 1.0, "precision": 1.0, "recall": 1.0, "support": report["mean"]["support"]
    }


@given(mask_pairs(), st.integers(0, 2**32 - 1))
def test_ignored_pixels_never_count(data, seed):
    truth, pred, k = data
    rng = np.random.default_rng(seed)
    changed = [
        np.where(t == IGNORE, rng.integers(0, k + 1, size=t.shape), p).astype(np.uint8)
        for t, p in zip(truth, pred)
    ]
    np.testing.assert_array_equal(
        confusion_matrix(truth, changed, n_classes=k), confusion_matrix(truth, pred, n_classes=k)
    )
    if _has_valid_pixel(truth):
        assert mean_iou(truth, changed) == mean_iou(truth, pred)


@given(mask_pairs(), st.integers(0, 2**32 - 1), st.booleans())
def test_consistent_relabelling_leaves_the_score_unchanged(data, seed, fix_background):
    truth, pred, k = data
    rng = np.random.default_rng(seed)
    if fix_background:
        perm = np.concatenate([[0], 1 + rng.permutation(k)])
    else:
        perm = rng.permutation(k + 1)
    lut = np.arange(256)
    lut[: k + 1] = perm  # 255 stays 255
    truth2 = [lut[t].astype(np.uint8) for t in truth]
    pred2 = [lut[p].astype(np.uint8) for p in pred]
    cm, cm2 = confusion_matrix(truth, pred, n_classes=k), confusion_matrix(truth2, pred2, n_classes=k)
    np.testing.assert_array_equal(cm2[np.ix_(perm, perm)], cm)
    if _has_valid_pixel(truth):
        assert mean_iou(truth2, pred2) == mean_iou(truth, pred)


@given(mask_pairs(ignore=False), st.integers(0, 4))
def test_extra_classes_do_not_change_the_mean(data, extra):
    truth, pred, k = data
    base = mean_iou(truth, pred, n_classes=k)
    assert mean_iou(truth, pred, n_classes=k + extra) == base
    cm = confusion_matrix(truth, pred, n_classes=k + extra)
    assert cm.shape == (k + extra + 1,) * 2
    assert not cm[k + 1:].any() and not cm[:, k + 1:].any()


# --------------------------------------------------------------------------- inputs


def test_arrays_lists_and_paths_agree(tmp_path, rng):
    truth = rng.integers(0, 4, size=(3, 6, 7)).astype(np.uint8)
    truth[0, 0] = IGNORE
    pred = rng.integers(0, 4, size=(3, 6, 7)).astype(np.uint8)
    paths_t, paths_p = [], []
    for i in range(3):
        paths_t.append(tmp_path / f"t{i}.png")
        paths_p.append(str(tmp_path / f"p{i}.png"))
        save_mask(paths_t[-1], truth[i])
        save_mask(paths_p[-1], pred[i])
    expected = reference_confusion(truth, pred, 3)
    np.testing.assert_array_equal(confusion_matrix(truth, pred), expected)  # (n, H, W) arrays
    np.testing.assert_array_equal(confusion_matrix(list(truth), list(pred)), expected)
    np.testing.assert_array_equal(confusion_matrix(paths_t, paths_p), expected)
    np.testing.assert_array_equal(confusion_matrix(paths_t, list(pred)), expected)
    # other integer dtypes and nested lists
    np.testing.assert_array_equal(
        confusion_matrix([t.astype(np.int64) for t in truth], [p.tolist() for p in pred]),
        expected,
    )


def test_boolean_masks(rng):
    truth = [rng.random((5, 5)) > 0.5]
    pred = [rng.random((5, 5)) > 0.5]
    np.testing.assert_array_equal(
        confusion_matrix(truth, pred), reference_confusion(truth, pred, 1)
    )


def test_chunked_counting_matches_one_chunk(monkeypatch, rng):
    truth = [rng.integers(0, 3, size=rng.integers(1, 12, size=2)) for _ in range(9)]
    pred = [rng.integers(0, 3, size=t.shape) for t in truth]
    whole = confusion_matrix(truth, pred)
    monkeypatch.setattr(metrics, "_CHUNK", 7)  # forces many flushes, some mid-list
    np.testing.assert_array_equal(confusion_matrix(truth, pred), whole)
    np.testing.assert_array_equal(whole, reference_confusion(truth, pred, 2))


def test_default_n_classes_is_the_largest_value_seen():
    truth = [np.array([[0, 1, 255]])]
    assert confusion_matrix(truth, [np.array([[0, 3, 0]])]).shape == (4, 4)
    assert confusion_matrix([np.array([[0, 4, 255]])], [np.array([[0, 1, 0]])]).shape == (5, 5)


def test_single_class_background_only():
    truth = [np.zeros((3, 4), np.uint8), np.zeros((2, 2), np.uint8)]
    cm = confusion_matrix(truth, truth)
    np.testing.assert_array_equal(cm, [[16]])
    assert mean_iou(truth, truth) == 1.0
    rep = segmentation_report(truth, truth, output_dict=True)
    assert list(rep) == ["background", "mean"]
    # a class predicted everywhere and never true: background IoU 0, class IoU 0
    assert mean_iou(truth, [np.ones((3, 4)), np.ones((2, 2))]) == 0.0


def test_all_ignored():
    truth = [np.full((2, 3), IGNORE, np.uint8)]
    pred = [np.zeros((2, 3), np.uint8)]
    # the counts are well defined (all zero) ...
    np.testing.assert_array_equal(confusion_matrix(truth, pred, n_classes=2), np.zeros((3, 3)))
    # ... the scores are not: a clear error rather than nan
    with pytest.raises(ValueError, match="every pixel of y_true is ignored"):
        mean_iou(truth, pred)
    with pytest.raises(ValueError, match="every pixel of y_true is ignored"):
        segmentation_report(truth, pred)


def test_ignore_index_none_and_other_values():
    truth = [np.array([[0, 1, 2, 2]])]
    pred = [np.array([[0, 1, 1, 2]])]
    cm = confusion_matrix(truth, pred, ignore_index=None)
    np.testing.assert_array_equal(cm, reference_confusion(truth, pred, 2, ignore=None))
    # ignore_index=2 skips the true-2 pixels; 2 remains a valid prediction
    np.testing.assert_array_equal(
        confusion_matrix(truth, pred, ignore_index=2, n_classes=2),
        [[1, 0, 0], [0, 1, 0], [0, 0, 0]],
    )
    with pytest.raises(ValueError, match=r"y_true\[0\]: value 255 .*no ignore_index"):
        confusion_matrix([np.array([[0, 255]])], [np.array([[0, 0]])], ignore_index=None)


# --------------------------------------------------------------------------- errors


def test_shape_mismatch_names_the_item():
    truth = [np.zeros((4, 4)), np.zeros((5, 6))]
    pred = [np.zeros((4, 4)), np.zeros((6, 5))]
    with pytest.raises(ValueError, match=r"y_pred\[1\] has shape \(6, 5\) but y_true\[1\] has "
                                         r"shape \(5, 6\)"):
        mean_iou(truth, pred)


def test_length_mismatch():
    with pytest.raises(ValueError, match="y_pred has 1 masks but y_true has 2"):
        confusion_matrix([np.zeros((2, 2))] * 2, [np.zeros((2, 2))])


def test_predicted_255_is_an_error():
    truth = [np.zeros((2, 2)), np.array([[0, 255], [1, 1]])]
    pred = [np.zeros((2, 2)), np.array([[0, 255], [1, 1]])]  # copying the ignore value
    with pytest.raises(ValueError, match=r"y_pred\[1\]: predicted value 255 is not a label.*"
                                         r"ignored pixels"):
        mean_iou(truth, pred)


def test_prediction_beyond_n_classes():
    with pytest.raises(ValueError, match=r"y_pred\[0\]: predicted value 3 .* class 1\.\.2"):
        mean_iou([np.array([[0, 1, 2]])], [np.array([[0, 3, 2]])], n_classes=2)


def test_truth_beyond_n_classes():
    with pytest.raises(ValueError, match=r"y_true\[1\]: value 4 is beyond the 2 classes"):
        confusion_matrix([np.zeros((1, 2)), np.array([[4, 255]])], [np.zeros((1, 2))] * 2,
                         n_classes=2)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.array([[0.0, np.nan]]), r"y_pred\[0\]: mask contains NaN"),
        (np.array([[0, -1]]), r"y_pred\[0\]: mask values must be"),
        (np.array([[0.5, 1.0]]), r"y_pred\[0\]: mask values must be integers"),
        (np.zeros((1, 2, 3)), r"y_pred\[0\]: expected an \(H, W\) integer mask"),
    ],
)
def test_invalid_prediction_values(bad, match):
    with pytest.raises(ValueError, match=match):
        mean_iou([np.zeros((1, 2))], [bad])


def test_invalid_true_mask_named():
    with pytest.raises(ValueError, match=r"y_true\[1\]"):
        mean_iou([np.zeros((1, 2)), np.array([[0, 300]])], [np.zeros((1, 2))] * 2)
    with pytest.raises(FileNotFoundError, match=r"y_true\[0\].*nowhere\.png"):
        mean_iou(["nowhere.png"], [np.zeros((1, 2))])


@pytest.mark.parametrize("kwargs", [{"n_classes": -1}, {"n_classes": 255}, {"n_classes": 1.5},
                                    {"ignore_index": 256}, {"ignore_index": "255"}])
def test_invalid_parameters(kwargs):
    with pytest.raises(ValueError, match="parameter of mean_iou"):
        mean_iou([np.zeros((1, 2))], [np.zeros((1, 2))], **kwargs)


# --------------------------------------------------------------------------- report


VOC_NAMES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]


def _parse_table(text):
    lines = text.splitlines()
    assert lines[0].split() == ["IoU", "Precision", "Recall", "Support"]
    rows = {}
    for line in lines[1:]:
        if line.strip():
            name, *cells = line.split()
            rows[name] = cells
    return lines, rows


def test_report_table_matches_the_dict(rng):
    truth = [rng.integers(0, 21, size=(30, 40)).astype(np.uint8) for _ in range(3)]
    truth[0][:5] = IGNORE
    pred = [np.where(rng.random(t.shape) < 0.6, t, rng.integers(0, 21, size=t.shape))
            .astype(np.uint8) for t in truth]
    pred = [np.where(p == IGNORE, 0, p).astype(np.uint8) for p in pred]
    pred[1][pred[1] == 7] = 8  # class "car" (7) never predicted in image 1
    report = segmentation_report(truth, pred, class_names=VOC_NAMES, output_dict=True)
    text = segmentation_report(truth, pred, class_names=VOC_NAMES)
    lines, rows = _parse_table(text)
    assert list(rows) == ["background"] + VOC_NAMES + ["mean"]
    assert max(len(line) for line in lines) <= 80  # fits a terminal
    for name, cells in rows.items():
        values = report[name]
        assert cells[0] == f"{100 * values['iou']:.1f}"
        assert cells[1] == f"{100 * values['precision']:.1f}"
        assert cells[2] == f"{100 * values['recall']:.1f}"
        assert int(cells[3]) == values["support"]
    assert report["mean"]["iou"] == mean_iou(truth, pred)


def test_report_digits_and_absent_classes():
    truth = [np.array([[0, 0, 1, 1]])]
    pred = [np.array([[0, 1, 1, 1]])]
    text = segmentation_report(truth, pred, n_classes=3, digits=3)
    _, rows = _parse_table(text)
    assert rows["background"][:3] == ["50.000", "100.000", "50.000"]
    assert rows["1"][:3] == ["66.667", "66.667", "100.000"]
    assert rows["2"] == ["-", "-", "-", "0"]  # absent: no scores, left out of the mean
    assert rows["mean"][0] == f"{100 * (0.5 + 2 / 3) / 2:.3f}"
    rep = segmentation_report(truth, pred, n_classes=3, output_dict=True)
    assert np.isnan(rep["3"]["iou"]) and rep["3"]["support"] == 0
    text0 = segmentation_report(truth, pred, digits=0)
    assert _parse_table(text0)[1]["background"][:3] == ["50", "100", "50"]


def test_report_class_names():
    truth = [np.array([[0, 1, 2]])]
    rep = segmentation_report(truth, truth, class_names=np.array(["cat", "dog"]),
                              output_dict=True)
    assert list(rep) == ["background", "cat", "dog", "mean"]
    # n_classes follows class_names: a value beyond them is an error
    with pytest.raises(ValueError, match=r"y_true\[0\]: value 2 is beyond the 1 classes"):
        segmentation_report(truth, truth, class_names=["cat"])
    with pytest.raises(ValueError, match="class_names has 2 names but there are 3 classes"):
        segmentation_report(truth, truth, class_names=["cat", "dog"], n_classes=3)
    for names in (["cat", "cat"], ["mean", "dog"], ["background", "dog"]):
        with pytest.raises(ValueError, match="repeated or reserved"):
            segmentation_report(truth, truth, class_names=names)


# --------------------------------------------------------------------------- scorer


class ThresholdSegmenter(BaseEstimator):
    """Class 1 where the mean brightness exceeds ``threshold``: a fake segmenter."""

    def __init__(self, threshold=128):
        self.threshold = threshold

    def fit(self, X, y):
        images = check_images(X)
        self.n_classes_ = check_targets(y, len(images), shapes=images.shapes).labels.shape[1]
        return self

    def predict(self, X):
        check_is_fitted(self)
        images = check_images(X)
        return [(images[i].mean(axis=2) > self.threshold).astype(np.uint8)
                for i in range(len(images))]


@pytest.fixture(scope="module")
def bright_squares():
    """Images of different sizes: a bright square (class 1) on a darker noisy background."""
    rng = np.random.default_rng(1)
    X, masks = [], []
    for i in range(8):
        h, w = 12 + 3 * i, 20 - i
        image = rng.integers(0, 130, size=(h, w, 3)).astype(np.uint8)
        mask = np.zeros((h, w), np.uint8)
        y0, x0 = rng.integers(0, h - 6), rng.integers(0, w - 6)
        mask[y0:y0 + 6, x0:x0 + 6] = 1
        image[mask == 1] = rng.integers(150, 200, size=(36, 3))
        # a dim fringe around the square, marked "ignore" in the truth
        mask[y0, x0:x0 + 6] = IGNORE
        image[y0, x0:x0 + 6] = 120
        X.append(image)
        masks.append(mask)
    return X, masks


def test_scorer_in_grid_search(bright_squares):
    X, masks = bright_squares
    thresholds = [60, 100, 140, 220]
    search = GridSearchCV(ThresholdSegmenter(), {"threshold": thresholds},
                          scoring=mean_iou_scorer, cv=KFold(2))
    search.fit(X, masks)
    assert search.best_params_ == {"threshold": 140}
    assert search.best_score_ == 1.0
    # the scores are the mean IoU of each fold, computed directly
    folds = list(KFold(2).split(X))
    for k, threshold in enumerate(thresholds):
        for s, (train, test) in enumerate(folds):
            est = ThresholdSegmenter(threshold).fit([X[i] for i in train],
                                                    [masks[i] for i in train])
            expected = mean_iou([masks[i] for i in test], est.predict([X[i] for i in test]))
            assert search.cv_results_[f"split{s}_test_score"][k] == expected
    # too low a threshold takes bright clutter, too high misses the square
    assert np.all(np.delete(search.cv_results_["mean_test_score"], 2) < 1.0)
    # the refit estimator segments new images of other sizes
    pred = search.predict(X[:2])
    assert [p.shape for p in pred] == [m.shape for m in masks[:2]]


def test_scorer_equals_make_scorer_of_mean_iou(bright_squares):
    X, masks = bright_squares
    est = ThresholdSegmenter(100)
    ours = cross_val_score(est, X, masks, scoring=mean_iou_scorer, cv=KFold(3))
    theirs = cross_val_score(est, X, masks, scoring=make_scorer(mean_iou), cv=KFold(3))
    np.testing.assert_array_equal(ours, theirs)
    assert np.all((ours > 0) & (ours < 1))


def test_docstring_examples():
    result = doctest.testmod(metrics, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 4
    assert result.failed == 0


# --------------------------------------------------------------------------- affinity_report


def _square_records(n=3, size=40, bleed=0, affinity=None):
    """Records of one object (class column 0) per image, whose CAM covers the object grown by
    ``bleed`` px; ``affinity(mask) -> (K, h, w)`` adds affinities (radius 5)."""
    from sklearn_psa.records import Records

    masks, cams = [], []
    for i in range(n):
        m = np.zeros((size, size), np.uint8)
        m[8 + i: 24 + i, 8:24] = 1
        c = np.zeros((1, size, size), np.float32)
        c[0, max(8 + i - bleed, 0): 24 + i + bleed, max(8 - bleed, 0): 24 + bleed] = 1.0
        masks.append(m)
        cams.append(c)
    affs = None if affinity is None else [affinity(m) for m in masks]
    records = Records.from_arrays(np.zeros((n, size, size, 3), np.uint8), np.ones((n, 1), np.uint8), cams,
                                  affinities=affs, radius=None if affinity is None else 5)
    return records, masks


def test_affinity_report_labels_against_a_hand_count():
    from sklearn_psa import neighbor_offsets
    from sklearn_psa._affinity_labels import affinity_label_map, downsample_mask, pair_counts
    from sklearn_psa.metrics import affinity_report

    exact, masks = _square_records(bleed=0)
    rep = affinity_report(exact, masks, output_dict=True)
    assert rep["labels"]["fg_precision"] == 1.0 and rep["labels"]["bg_precision"] == 1.0
    assert rep["labels"]["true_fg_as_bg"] == 0.0 and rep["affinity"] is None
    for kind in ("bg_positive", "fg_positive", "negative"):
        assert rep["labels"]["pairs"][kind]["precision"] == 1.0
    # a CAM 8 px wider on every side: its confident foreground takes background cells
    bled, _ = _square_records(bleed=8)
    rep = affinity_report(bled, masks, output_dict=True)
    fg = fg_ok = cells = 0
    counts = np.zeros(3)
    for r, m in zip(bled, masks):
        g, t = affinity_label_map(r.cams, r.labels), downsample_mask(m)
        fg += ((g > 0) & (g != 255)).sum()
        fg_ok += ((g > 0) & (g != 255) & (g == t)).sum()
        cells += t.size
        counts += pair_counts(g, neighbor_offsets(5))
    assert rep["labels"]["fg_precision"] == pytest.approx(fg_ok / fg) and fg_ok < fg
    assert rep["labels"]["fg_cells"] == pytest.approx(fg / cells)
    per_image = [rep["labels"]["pairs"][k]["per_image"] for k in ("bg_positive", "fg_positive", "negative")]
    np.testing.assert_allclose(per_image, counts / len(masks))
    assert rep["labels"]["pairs"]["fg_positive"]["precision"] < 1.0


def test_affinity_report_scores_affinities():
    from sklearn_psa import neighbor_offsets
    from sklearn_psa._affinity_labels import oracle_affinity
    from sklearn_psa.metrics import affinity_report

    offsets = neighbor_offsets(5)
    oracle, masks = _square_records(affinity=lambda m: oracle_affinity(m, offsets))
    rep = affinity_report(oracle, masks, output_dict=True)
    assert rep["affinity"]["pair_auc"] == 1.0 and rep["radius"] == 5
    assert rep["affinity"]["same_mean"] == 1.0 and rep["affinity"]["different_mean"] == 0.0
    inverted, _ = _square_records(affinity=lambda m: 1.0 - oracle_affinity(m, offsets))
    assert affinity_report(inverted, masks, output_dict=True)["affinity"]["pair_auc"] == 0.0
    rng = np.random.default_rng(0)
    noise, _ = _square_records(affinity=lambda m: rng.random((len(offsets), 5, 5)).astype(np.float32))
    assert abs(affinity_report(noise, masks, output_dict=True)["affinity"]["pair_auc"] - 0.5) < 0.1
    text = affinity_report(oracle, masks)
    assert "confident foreground" in text and "pair AUC 1.000" in text


def test_affinity_report_checks_its_inputs():
    from sklearn_psa.metrics import affinity_report

    records, masks = _square_records()
    with pytest.raises(ValueError, match="mask"):
        affinity_report(records, masks[:2])
    with pytest.raises(TypeError, match="records"):
        affinity_report(list(records), masks)
    with pytest.raises(ValueError, match="unknown dense_crf options"):
        affinity_report(records, masks, crf={"sxy": 3})
