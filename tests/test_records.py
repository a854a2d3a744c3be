"""Tests of sklearn_psa.records: list-like indexing, pickling, hashing, validation."""

import pickle

import joblib
import numpy as np
import pytest
from PIL import Image
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.pipeline import Pipeline

from sklearn_psa._validation import ImageSet, check_images
from sklearn_psa.records import Record, Records, check_records


def _data(seed=0):
    """Three images of different sizes, their labels (3 classes) and CAMs."""
    rng = np.random.default_rng(seed)
    shapes = [(8, 10), (12, 6), (5, 5)]
    images = [rng.integers(0, 256, size=s + (3,)).astype(np.uint8) for s in shapes]
    labels = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0]])
    cams = [rng.random((int(labels[i].sum()),) + s).astype(np.float32)
            for i, s in enumerate(shapes)]
    return images, labels, cams


def _affinities(records, k=34):
    rng = np.random.default_rng(1)
    return [rng.random((k, -(-r.shape[0] // 8), -(-r.shape[1] // 8))).astype(np.float32)
            for r in records]


@pytest.fixture
def records():
    images, labels, cams = _data()
    return Records.from_arrays(images, labels, cams)


# --------------------------------------------------------------------------- construction


def test_from_arrays(records):
    images, labels, cams = _data()
    assert len(records) == 3 and records.n_classes == 3
    assert repr(records) == "Records(n=3, n_classes=3)"
    for i, r in enumerate(records):
        assert isinstance(r, Record)
        np.testing.assert_array_equal(r.image, images[i])
        np.testing.assert_array_equal(r.labels, np.flatnonzero(labels[i]))
        assert r.labels.dtype == np.int64
        assert r.cams.dtype == np.float32
        np.testing.assert_array_equal(r.cams, cams[i])
        assert r.shape == images[i].shape[:2]
        assert r.affinity is None and r.radius is None
    assert records[2].labels.size == 0 and records[2].cams.shape == (0, 5, 5)


def test_from_4d_array_and_paths(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(2, 6, 7, 3)).astype(np.uint8)
    recs = Records.from_arrays(X, [[1], [0]], [np.ones((1, 6, 7)), np.zeros((0, 6, 7))])
    np.testing.assert_array_equal(recs[1].load_image(), X[1])
    path = str(tmp_path / "a.png")
    Image.fromarray(X[0]).save(path)
    recs = Records.from_arrays([path], [[1]], [np.ones((1, 6, 7))])
    assert recs[0].image == path and recs[0].shape == (6, 7)
    np.testing.assert_array_equal(recs[0].load_image(), X[0])
    # a Record made directly reads the size of its file from the header
    assert Record(path, [0]).shape == (6, 7)


def test_labels_property(records):
    _, labels, _ = _data()
    Y = records.labels
    assert Y.dtype == np.uint8 and Y.shape == (3, 3)
    np.testing.assert_array_equal(Y, labels)
    np.testing.assert_array_equal(records[[2, 0]].labels, labels[[2, 0]])


def test_images_property(records):
    images, _, _ = _data()
    got = records.images
    assert isinstance(got, ImageSet) and len(got) == 3
    assert got.shapes == [im.shape[:2] for im in images]
    np.testing.assert_array_equal(got[1], images[1])


# --------------------------------------------------------------------------- indexing


def test_indexing_like_a_list(records):
    assert records[0] is records.records[0]
    assert records[-1] is records.records[2]
    with pytest.raises(IndexError):
        records[3]
    part = records[1:]
    assert isinstance(part, Records) and part.n_classes == 3
    assert part.records == records.records[1:]
    assert records[::-1].records == records.records[::-1]
    for index in ([2, 0], np.array([2, 0]), np.array([[2], [0]])):
        picked = records[index]
        assert isinstance(picked, Records) and picked.n_classes == 3
        assert picked.records == [records.records[2], records.records[0]]
    assert records[np.int64(1)] is records.records[1]
    tagged = Records(records.records, 3, source={"backbone": "tiny"})
    for part in (tagged[1:], tagged[[0, 2]], tagged.with_affinity(_affinities(tagged), 5)):
        assert part.source == {"backbone": "tiny"}
    assert len(records[[]]) == 0
    assert list(records) == records.records
    assert records.records[1] in records


def test_boolean_and_bad_index_arrays(records):
    picked = records[np.array([True, False, True])]
    assert picked.records == [records.records[0], records.records[2]]
    assert records[[False, True, False]].records == [records.records[1]]
    with pytest.raises(IndexError, match=r"boolean index of shape \(2,\) for 3 records"):
        records[np.array([True, False])]
    with pytest.raises(IndexError, match="integers or booleans"):
        records[np.array([0.5])]


def test_from_array_is_carried_to_the_images_and_parts():
    images, labels, cams = _data()
    assert not Records.from_arrays(images, labels, cams).images.from_array
    X = np.zeros((3, 5, 5, 3), np.uint8)
    recs = Records.from_arrays(X, labels, [np.zeros((int(row.sum()), 5, 5)) for row in labels])
    assert recs.from_array and recs.images.from_array
    for part in (recs[1:], recs[[0, 2]], recs[np.array([True, True, False])],
                 recs.with_affinity(_affinities(recs), 5), pickle.loads(pickle.dumps(recs))):
        assert part.from_array
    # records pickled before the attribute existed read as not from an array
    old = Records(recs.records, 3)
    del old.__dict__["from_array"]
    assert not old.images.from_array and not old[1:].from_array


def test_record_repr_is_short(records, tmp_path):
    with_aff = records.with_affinity(_affinities(records), radius=5)
    assert repr(with_aff[0]) == ("Record(image=<8x10 array>, labels=[0, 2], cams=<float32 (2, 8, 10)>, "
                                 "affinity=<float32 (34, 1, 2)>, radius=5)")
    path = str(tmp_path / "a.png")
    Image.fromarray(np.zeros((6, 7, 3), np.uint8)).save(path)
    assert repr(Record(path, [1])) == f"Record(image={path!r}, labels=[1], cams=None, affinity=None)"


# --------------------------------------------------------------------------- pickle and hash


def _assert_same(a, b):
    assert type(a) is type(b) and len(a) == len(b) and a.n_classes == b.n_classes
    for ra, rb in zip(a, b):
        for name in ("image", "labels", "cams", "affinity"):
            va, vb = getattr(ra, name), getattr(rb, name)
            if va is None:
                assert vb is None
            else:
                np.testing.assert_array_equal(va, vb)
                assert np.asarray(va).dtype == np.asarray(vb).dtype
        assert ra.radius == rb.radius and ra.shape == rb.shape


def test_pickle_round_trip(records, tmp_path):
    with_aff = records.with_affinity(_affinities(records), radius=5)
    for recs in (records, with_aff):
        _assert_same(recs, pickle.loads(pickle.dumps(recs)))
    # joblib's persistence, as Pipeline(memory=...) uses it
    joblib.dump(with_aff, tmp_path / "recs.joblib")
    _assert_same(with_aff, joblib.load(tmp_path / "recs.joblib"))


def test_joblib_hash_is_stable_and_content_based():
    a = Records.from_arrays(*_data(0))
    b = Records.from_arrays(*_data(0))  # built anew from equal arrays
    assert a is not b
    assert joblib.hash(a) == joblib.hash(b)

    images, labels, cams = _data(0)
    cams[1] = cams[1].copy()
    cams[1][0, 3, 2] += 1e-3  # one CAM value differs
    assert joblib.hash(Records.from_arrays(images, labels, cams)) != joblib.hash(a)

    affs = _affinities(a)
    a5, b5 = a.with_affinity(affs, radius=5), b.with_affinity(affs, radius=5)
    assert joblib.hash(a5) == joblib.hash(b5) != joblib.hash(a)
    affs2 = [x.copy() for x in affs]
    affs2[0][0, 0, 0] += 0.5
    assert joblib.hash(a.with_affinity(affs2, radius=5)) != joblib.hash(a5)
    assert joblib.hash(a.with_affinity(affs, radius=4)) != joblib.hash(a5)
    assert joblib.hash(Records(a.records, n_classes=4)) != joblib.hash(a)


def test_joblib_hash_survives_pickling(tmp_path):
    # Pipeline(memory=...) keys a step's cache on the hash of its input; when that input
    # comes back from the cache (joblib.load) its hash must be the one it had when fresh.
    # joblib.hash includes strides, which differ between equal arrays: an empty CAM stack
    # (background-only image), a single map made with cam[None], a strided view.
    image = np.zeros((5, 12, 3), np.uint8)
    cam = np.linspace(0, 1, 60, dtype=np.float32).reshape(5, 12)
    cases = [
        (image, [], np.zeros((0, 5, 12), np.float32)),
        (image, [1], cam[None]),
        (image[:, ::2], [0, 1], np.stack([cam, cam])[:, :, ::2]),
    ]
    for i, (img, labels, cams) in enumerate(cases):
        recs = Records([Record(img, labels, cams)], n_classes=2)
        by_pickle = pickle.loads(pickle.dumps(recs))
        joblib.dump(recs, tmp_path / f"{i}.joblib")
        by_joblib = joblib.load(tmp_path / f"{i}.joblib")
        for back in (by_pickle, by_joblib):
            _assert_same(recs, back)
            assert joblib.hash(back) == joblib.hash(recs), (i, cams.strides)


def test_joblib_hash_with_a_state_dict_in_source():
    # CAMClassifier passes its backbone's CPU state dict on in Records.source. joblib.hash
    # of a torch tensor differs between equal tensors (and across pickling), which would
    # make every Records hash unique and Pipeline(memory=...) never reuse the next step.
    torch = pytest.importorskip("torch")

    def make():
        torch.manual_seed(0)
        state = torch.nn.Conv2d(3, 4, 3).state_dict()
        images, labels, cams = _data(0)
        recs = Records.from_arrays(images, labels, cams)
        return Records(recs.records, recs.n_classes,
                       source={"backbone": "tiny", "state_dict": state})

    a, b = make(), make()
    assert joblib.hash(a) == joblib.hash(b)
    assert joblib.hash(pickle.loads(pickle.dumps(a))) == joblib.hash(a)


_FITS = []


class _MakeRecords(TransformerMixin, BaseEstimator):
    """Records as a CAM step makes them: one map per class present, none for background."""

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        images = check_images(X)
        recs = []
        for i in range(len(images)):
            image = images[i]
            if image.mean() > 100:
                recs.append(Record(image, [0], (image[:, :, 0] / 255.0).astype(np.float32)[None]))
            else:
                recs.append(Record(image, [], np.zeros((0,) + image.shape[:2], np.float32)))
        return Records(recs, n_classes=1)


class _CountFits(TransformerMixin, BaseEstimator):
    def fit(self, X, y=None):
        _FITS.append(len(X))
        return self

    def transform(self, X):
        return X


def test_pipeline_memory_caches_the_step_after_records(tmp_path):
    X = [np.full((4, 5, 3), 200, np.uint8), np.zeros((6, 3, 3), np.uint8)]
    _FITS.clear()
    for _ in range(3):
        pipe = Pipeline([("cams", _MakeRecords()), ("count", _CountFits()),
                         ("last", "passthrough")], memory=str(tmp_path))
        pipe.fit(X)
    assert _FITS == [2]  # fitted once; the later runs load both steps from the cache


# --------------------------------------------------------------------------- with_affinity


def test_with_affinity(records):
    affs = _affinities(records)
    new = records.with_affinity(affs, radius=5)
    assert isinstance(new, Records) and new is not records and new.n_classes == 3
    for old, rec, aff in zip(records, new, affs):
        assert rec is not old
        assert rec.cams is old.cams  # shared, not copied
        assert rec.image is old.image
        np.testing.assert_array_equal(rec.labels, old.labels)
        assert rec.affinity.dtype == np.float32
        np.testing.assert_array_equal(rec.affinity, aff)
        assert rec.radius == 5
        assert old.affinity is None and old.radius is None  # the input is left alone
    with pytest.raises(ValueError, match="got 2 affinities for 3 records"):
        records.with_affinity(affs[:2], radius=5)


# --------------------------------------------------------------------------- nbytes


def test_nbytes(records, tmp_path):
    expected = sum(r.labels.nbytes + r.cams.nbytes + r.image.nbytes for r in records)
    assert records.nbytes == expected
    new = records.with_affinity(_affinities(records), radius=5)
    assert new.nbytes == expected + sum(r.affinity.nbytes for r in new)
    assert new[0].nbytes == (new[0].labels.nbytes + new[0].cams.nbytes
                             + new[0].affinity.nbytes + 8 * 10 * 3)
    path = str(tmp_path / "a.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    on_disk = Record(path, [0], np.zeros((1, 4, 4)))
    assert on_disk.nbytes == 8 + 4 * 16  # the image file is not held in memory


# --------------------------------------------------------------------------- validation


def test_from_arrays_cams_of_the_wrong_shape_name_the_item():
    images, labels, cams = _data()
    cams[1] = np.zeros((1, 6, 12), np.float32)  # transposed size
    with pytest.raises(ValueError, match=r"records\[1\]: cams has shape \(1, 6, 12\), "
                                         r"expected \(1, 12, 6\)"):
        Records.from_arrays(images, labels, cams)
    images, labels, cams = _data()
    cams[0] = cams[0][:1]  # one map for two classes present
    with pytest.raises(ValueError, match=r"records\[0\]: cams has shape \(1, 8, 10\), "
                                         r"expected \(2, 8, 10\).*one map per class present"):
        Records.from_arrays(images, labels, cams)


def test_from_arrays_other_errors():
    images, labels, cams = _data()
    with pytest.raises(ValueError, match="cams has 2 items but images has 3"):
        Records.from_arrays(images, labels, cams[:2])
    with pytest.raises(ValueError, match="labels has 2 rows but X has 3 images"):
        Records.from_arrays(images, labels[:2], cams)
    with pytest.raises(ValueError, match=r"labels\[0, 1\] is 2"):
        Records.from_arrays(images, [[1, 2, 0], [0, 1, 0], [0, 0, 0]], cams)
    with pytest.raises(TypeError, match=r"images\[1\]: .*dtype float64"):
        Records.from_arrays([images[0], images[1].astype(float), images[2]], labels, cams)
    bad = [c.copy() for c in cams]
    bad[2] = np.full((0, 5, 5), 1.0)  # empty is fine ...
    Records.from_arrays(images, labels, bad)
    bad[1] = np.full((1, 12, 6), np.nan)  # ... NaN is not
    with pytest.raises(ValueError, match=r"records\[1\]: cams contain NaN"):
        Records.from_arrays(images, labels, bad)
    grids = [(-(-img.shape[0] // 8), -(-img.shape[1] // 8)) for img in images]
    affs = [np.ones((34,) + g) for g in grids]
    with pytest.raises(ValueError, match="radius is required when affinities are given"):
        Records.from_arrays(images, labels, cams, affinities=affs)
    Records.from_arrays(images, labels, cams, affinities=affs, radius=5)
    with pytest.raises(ValueError, match=r"records\[2\]: affinity must be non-negative"):
        Records.from_arrays(images, labels, cams, affinities=affs[:2] + [-affs[2]], radius=5)
    wrong_grid = affs[:1] + [np.ones((34, grids[1][0] + 1, grids[1][1]))] + affs[2:]
    with pytest.raises(ValueError, match=r"records\[1\]: affinity is on a .* grid, but a"):
        Records.from_arrays(images, labels, cams, affinities=wrong_grid, radius=5)
    with pytest.raises(ValueError, match=r"records\[0\]: affinity has 34 channels, but radius 4"):
        Records.from_arrays(images, labels, cams, affinities=affs, radius=4)


def test_from_arrays_with_affinities():
    images, labels, cams = _data()
    affs = [np.ones((34, -(-img.shape[0] // 8), -(-img.shape[1] // 8)), np.float64)
            for img in images]
    recs = Records.from_arrays(images, labels, cams, affinities=affs, radius=5)
    assert all(r.radius == 5 and r.affinity.dtype == np.float32 for r in recs)


# =========================================================================== check_records


def _records(**overrides):
    fields = dict(image=np.zeros((8, 8, 3), np.uint8), labels=[0, 2],
                  cams=np.zeros((2, 8, 8), np.float32))
    fields.update(overrides)
    good = Record(np.zeros((8, 8, 3), np.uint8), [1], np.zeros((1, 8, 8)))
    return Records([good, Record(**fields)], n_classes=3)


class TestCheckRecords:
    def test_valid(self):
        recs = _records()
        assert check_records(recs) is recs

    def test_not_records(self):
        with pytest.raises(TypeError, match="expected Records .*got list"):
            check_records([1, 2])
        with pytest.raises(ValueError, match="X is empty"):
            check_records(Records([], 2))

    @pytest.mark.parametrize(
        "overrides, match",
        [
            ({"labels": [0, 3], "cams": np.zeros((2, 8, 8))}, r"X\[1\]: labels must be class "
                                                              r"columns in 0\.\.2"),
            ({"labels": [2, 0]}, r"X\[1\]: labels must be sorted and unique"),
            ({"labels": [1, 1]}, r"X\[1\]: labels must be sorted and unique"),
            ({"cams": None}, r"X\[1\]: has no CAMs"),
            ({"cams": np.zeros((1, 8, 8))}, r"X\[1\]: cams has shape \(1, 8, 8\), expected "
                                            r"\(2, 8, 8\)"),
            ({"cams": np.zeros((2, 4, 4))}, r"X\[1\]: cams has shape \(2, 4, 4\)"),
            ({"cams": np.full((2, 8, 8), np.nan)}, r"X\[1\]: cams contain NaN"),
        ],
    )
    def test_bad_record_is_named(self, overrides, match):
        with pytest.raises(ValueError, match=match):
            check_records(_records(**overrides))

    def test_affinity_checks(self):
        with pytest.raises(ValueError, match=r"X\[0\]: has no affinity"):
            check_records(_records(), require_affinity=True)
        aff = np.ones((34, 1, 1), np.float32)
        recs = _records().with_affinity([aff, aff], radius=5)
        assert check_records(recs, require_affinity=True) is recs
        for bad, match in [(np.ones((34, 1)), "affinity must be \\(K, h, w\\)"),
                           (np.full((34, 1, 1), np.inf), "affinity contains NaN"),
                           (-np.ones((34, 1, 1)), "affinity must be non-negative")]:
            with pytest.raises(ValueError, match=r"X\[1\]: " + match):
                check_records(_records().with_affinity([aff, bad], radius=5))
        with pytest.raises(ValueError, match=r"X\[0\]: affinity without its radius"):
            check_records(_records().with_affinity([aff, aff], radius=None))

    def test_cams_optional(self):
        recs = _records(cams=None)
        assert check_records(recs, require_cams=False) is recs


@pytest.mark.parametrize("low, high", [(-0.1, 0.5), (0.0, 1.5)])
def test_cams_outside_the_unit_interval_are_refused(low, high):
    cams = np.full((1, 8, 8), 0.5)
    cams[0, 0, 0], cams[0, 1, 1] = low, high
    recs = Records([Record(np.zeros((8, 8, 3), np.uint8), [0], cams)], n_classes=1)
    with pytest.raises(ValueError, match=r"X\[0\]: cams must lie in \[0, 1\]"):
        check_records(recs)
    recs = Records([Record(np.zeros((8, 8, 3), np.uint8), [0], np.clip(cams, 0, 1))], n_classes=1)
    assert check_records(recs) is recs
