"""RandomWalkRefiner(alpha="auto", beta="auto"): the walk's settings chosen without masks."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from sklearn_psa import RandomWalkRefiner, neighbor_offsets
from sklearn_psa._affinity_labels import affinity_label_map
from sklearn_psa._walk_choice import AUTO_ALPHAS, AUTO_BETAS, AUTO_LABEL_ALPHAS, walk_agreement
from sklearn_psa.metrics import mean_iou
from sklearn_psa.records import Record, Records


def make_records(seed, n=4, size=32, n_classes=3):
    """Records of smooth random CAMs (one or two classes per image) and random affinities."""
    rng = np.random.default_rng(seed)
    K, g = len(neighbor_offsets(5)), size // 8
    images, labels, cams, affs = [], [], [], []
    yy, xx = np.mgrid[:size, :size] / size
    for _ in range(n):
        present = np.sort(rng.choice(n_classes, size=rng.integers(1, 3), replace=False))
        maps = []
        for _ in present:
            cy, cx, s = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.3)
            maps.append(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s)))
        images.append(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        labels.append(present)
        cams.append(np.stack(maps).astype(np.float32))
        affs.append(rng.uniform(0, 1, (K, g, g)).astype(np.float32))
    return Records([Record(im, lab, c, a, 5, (size, size))
                    for im, lab, c, a in zip(images, labels, cams, affs)], n_classes)


def regions(records):
    low, high = AUTO_LABEL_ALPHAS
    return [affinity_label_map(r.cams, r.labels, alpha_low=low, alpha_high=high, stride=1)
            for r in records.records]


def test_agreement_is_the_mean_iou_of_the_walk_against_the_confident_regions():
    records = make_records(0)
    scores = walk_agreement(records, (1, 4, 16), (8, 32), crf=False, device="cpu")
    assert set(scores) == {(a, b) for a in (1.0, 4.0, 16.0) for b in (8.0, 32.0)}
    for (alpha, beta), value in scores.items():
        pred = RandomWalkRefiner(alpha=alpha, beta=beta, device="cpu").predict(records)
        assert value == pytest.approx(mean_iou(regions(records), pred, n_classes=records.n_classes),
                                      abs=1e-12)


def test_max_images_scores_evenly_spaced_records():
    records = make_records(1, n=5)
    some = walk_agreement(records, (4,), (8,), crf=False, device="cpu", max_images=3)
    picked = walk_agreement(records[[0, 2, 4]], (4,), (8,), crf=False, device="cpu")
    whole = walk_agreement(records, (4,), (8,), crf=False, device="cpu")
    assert some == picked
    assert some != whole


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**16), order=st.permutations(range(3)))
def test_agreement_does_not_depend_on_the_class_numbering(seed, order):
    records = make_records(seed, n=2, size=24)
    renumbered = []
    for r in records.records:
        labels = np.asarray(order)[r.labels]
        sort = np.argsort(labels)  # a record lists its classes in increasing order
        renumbered.append(Record(r.image, labels[sort], r.cams[sort], r.affinity, 5, r.shape))
    renumbered = Records(renumbered, 3)
    a = walk_agreement(records, (2, 8), (8,), crf=False, device="cpu")
    b = walk_agreement(renumbered, (2, 8), (8,), crf=False, device="cpu")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-12)


def test_auto_fits_the_best_agreement_and_walks_with_it():
    records = make_records(2)
    rw = RandomWalkRefiner(alpha="auto", beta="auto", device="cpu").fit(records)
    assert set(rw.agreement_) == {(float(a), float(b)) for a in AUTO_ALPHAS for b in AUTO_BETAS}
    assert rw.agreement_[(rw.alpha_, rw.beta_)] == max(rw.agreement_.values())
    fixed = RandomWalkRefiner(alpha=rw.alpha_, beta=rw.beta_, device="cpu")
    for got, want in zip(rw.transform(records), fixed.transform(records)):
        np.testing.assert_array_equal(got, want)


def test_auto_alpha_with_a_given_beta_searches_alpha_only():
    records = make_records(3)
    rw = RandomWalkRefiner(alpha="auto", beta=16, device="cpu").fit(records)
    assert {b for _, b in rw.agreement_} == {16.0}
    assert rw.beta_ == 16


def test_auto_needs_fit_and_a_walk():
    records = make_records(4)
    with pytest.raises(NotFittedError, match="call fit"):
        RandomWalkRefiner(alpha="auto", device="cpu").predict(records)
    with pytest.raises(ValueError, match="t > 0"):
        RandomWalkRefiner(alpha="auto", t=0, device="cpu").fit(records)
    assert clone(RandomWalkRefiner(alpha="auto")).get_params()["alpha"] == "auto"


def test_fixed_settings_leave_fit_stateless():
    rw = RandomWalkRefiner(alpha=4, beta=16, device="cpu").fit(make_records(5))
    assert not any(hasattr(rw, name) for name in ("alpha_", "beta_", "agreement_"))
