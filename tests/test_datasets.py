"""Tests of sklearn_psa.datasets: make_shapes and load_voc."""

import doctest
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import ndimage

from sklearn_psa._validation import check_images, check_masks, labels_from_masks
from sklearn_psa.datasets import VOC_CLASSES, load_voc, make_shapes
from sklearn_psa.datasets import _shapes, _voc
from sklearn_psa.datasets._shapes import _generate, part_style
from sklearn_psa.io import load_mask, save_mask

# --------------------------------------------------------------------------- make_shapes


#: The first generator, kept bit for bit: make_shapes(..., **HARD).
HARD = {"body_class_strength": 0.0, "distractors": "bodies"}


@pytest.fixture(scope="module")
def hard_with_parts():
    """60 default-size images of the hard case with the instance and part maps drawn."""
    return _generate(60, 4, 128, 3, seed=0, return_parts=True, **HARD)


@pytest.fixture(scope="module")
def default_with_parts():
    """60 default-size images of the default setting with the instance and part maps drawn."""
    return _generate(60, 4, 128, 3, seed=0, return_parts=True)


@pytest.fixture(params=["default", "hard"])
def shapes_with_parts(request, default_with_parts, hard_with_parts):
    return default_with_parts if request.param == "default" else hard_with_parts


def test_make_shapes_shapes_and_dtypes():
    X, Y, masks = make_shapes(6, n_classes=3, image_size=48, random_state=0)
    assert X.shape == (6, 48, 48, 3) and X.dtype == np.uint8
    assert Y.shape == (6, 3) and Y.dtype == np.uint8
    assert masks.shape == (6, 48, 48) and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 1, 2, 3}
    assert set(np.unique(Y)) <= {0, 1}
    # A real image: not flat, uses the range.
    assert X.std() > 20


def test_make_shapes_defaults():
    X, Y, masks = make_shapes(2, random_state=0)
    assert X.shape == (2, 128, 128, 3) and Y.shape == (2, 4) and masks.shape == (2, 128, 128)


def test_make_shapes_deterministic_per_seed():
    a = make_shapes(8, image_size=64, random_state=7)
    b = make_shapes(8, image_size=64, random_state=7)
    c = make_shapes(8, image_size=64, random_state=8)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[2], c[2])
    # A RandomState instance is accepted and reproducible too.
    d = make_shapes(8, image_size=64, random_state=np.random.RandomState(7))
    e = make_shapes(8, image_size=64, random_state=np.random.RandomState(7))
    np.testing.assert_array_equal(d[0], e[0])
    # Images within one call differ from each other.
    assert not np.array_equal(a[0][0], a[0][1])


def test_make_shapes_prefix_property():
    small = make_shapes(3, image_size=64, random_state=5)
    large = make_shapes(9, image_size=64, random_state=5)
    for u, v in zip(small, large):
        np.testing.assert_array_equal(u, v[:3])


def test_make_shapes_labels_match_masks():
    X, Y, masks = make_shapes(80, n_classes=5, image_size=64, random_state=1)
    for i in range(len(X)):
        for j in range(5):
            assert Y[i, j] == int(np.any(masks[i] == j + 1)), (i, j)
    np.testing.assert_array_equal(Y, labels_from_masks(masks, 5))
    # Every class occurs; some images hold several classes, a few none.
    assert Y.sum(axis=0).min() > 0
    assert np.any(Y.sum(axis=1) >= 2)
    assert np.any(Y.sum(axis=1) == 0)


def test_make_shapes_object_counts():
    X, masks, instances, parts = _generate(400, 3, 64, 3, seed=2, return_parts=True)
    n_objects = instances.reshape(len(X), -1).max(axis=1)
    assert n_objects.max() == 3
    # No object with probability 0.05 (a few placements may also fail).
    assert 0.01 <= np.mean(n_objects == 0) <= 0.12
    # Several objects of the same class occur.
    same_class = 0
    for i in np.flatnonzero(n_objects >= 2):
        cls = [masks[i][instances[i] == k][0] for k in range(1, n_objects[i] + 1)]
        same_class += len(set(cls)) < len(cls)
    assert same_class > 0
    # max_objects=1: at most one object, hence one class, per image.
    X1, Y1, _ = make_shapes(60, n_classes=3, image_size=48, max_objects=1, random_state=0)
    assert Y1.sum(axis=1).max() == 1


def test_every_object_keeps_its_part_and_class(shapes_with_parts):
    X, masks, instances, parts = shapes_with_parts
    n_objects = 0
    for i in range(len(X)):
        assert not np.any(parts[i] & (masks[i] == 0))
        for k in range(1, instances[i].max() + 1):
            obj = instances[i] == k
            assert obj.any()
            # One class over the whole object, and its part is visible (never covered).
            assert len(np.unique(masks[i][obj])) == 1
            assert np.any(parts[i] & obj), (i, k)
            n_objects += 1
        # Instance pixels are exactly the object pixels.
        np.testing.assert_array_equal(instances[i] > 0, masks[i] > 0)
    assert n_objects > 60


def test_parts_are_much_smaller_than_objects(shapes_with_parts):
    """The class-specific part covers on average < 15 % of its object's visible area, and
    less than half of it for every object (occlusion by later objects included)."""
    X, masks, instances, parts = shapes_with_parts
    ratios = []
    for i in range(len(X)):
        for k in range(1, instances[i].max() + 1):
            obj = instances[i] == k
            ratios.append((parts[i] & obj).sum() / obj.sum())
    ratios = np.array(ratios)
    assert ratios.mean() < 0.15
    assert ratios.max() < 0.5
    assert ratios.min() > 0.01  # the part is not negligible either


def test_parts_carry_the_class_and_hard_case_bodies_do_not(hard_with_parts):
    X, masks, instances, parts = hard_with_parts
    body_colours = []
    for j in range(4):
        in_class = masks == j + 1
        _, colour = part_style(j)
        part_pixels = X[in_class & parts].astype(float)
        # Parts are drawn in the class colour (plus pixel noise).
        np.testing.assert_allclose(np.median(part_pixels, axis=0), colour, atol=12)
        body_colours.append(np.median(X[in_class & ~parts].astype(float), axis=0))
    # Bodies look the same whatever the class.
    body_colours = np.array(body_colours)
    assert np.ptp(body_colours, axis=0).max() < 12
    # Distinct (colour, shape) for each of the 20 classes; classes 0..4 differ in both.
    styles = [part_style(j) for j in range(_shapes.MAX_CLASSES)]
    assert len(set(styles)) == _shapes.MAX_CLASSES
    assert len({s for s, _ in styles[:5]}) == 5 and len({c for _, c in styles[:5]}) == 5


def _body_coloured_background(X, masks, body_colour, radius=40.0):
    """Largest connected background region whose local colour is close to the body colour."""
    smooth = ndimage.uniform_filter(X.astype(np.float32), size=(1, 7, 7, 1))
    near = (np.linalg.norm(smooth - body_colour, axis=-1) < radius) & (masks == 0)
    largest = []
    for i in range(len(X)):
        labelled, n = ndimage.label(near[i])
        largest.append(np.bincount(labelled.ravel())[1:].max(initial=0))
    return np.array(largest)


def test_hard_case_background_has_body_like_clutter(hard_with_parts):
    """Most backgrounds hold a body-coloured region as large as a small body (150 px at
    128 px), i.e. a distractor; without distractors far fewer do (the test can fail)."""
    X, masks, instances, parts = hard_with_parts
    body_colour = np.median(X[(masks > 0) & ~parts].astype(np.float32), axis=0)
    with_clutter = _body_coloured_background(X, masks, body_colour)
    assert np.mean(with_clutter >= 150) >= 0.9
    Xc, masks_c = _generate(60, 4, 128, 3, seed=0, n_distractors=0, **HARD)
    without = _body_coloured_background(Xc, masks_c, body_colour)
    assert np.mean(without >= 150) <= np.mean(with_clutter >= 150) - 0.3


def test_hard_case_is_the_first_generator_bit_for_bit():
    """make_shapes(..., body_class_strength=0, distractors="bodies") reproduces the arrays of
    the first generator (SHA-256 of X, Y and masks recorded before it changed), so that
    earlier benchmark tables stay comparable."""
    import hashlib

    expected = {
        (20, 4, 128, 3, 0): "c4cc8d9a393120d02c845a166cf79dd88c79f16debcf42941516377e326887a9",
        (12, 7, 64, 4, 3): "5c13eb23e9543d092123624ceb6485baba422d8b3a856b7143ffcd26077c7b4e",
        (5, 4, 200, 3, 11): "684a1567c8048679ae09a2acc07f8b349d3de6bbdcab2b2e798d24bee5c4fa6b",
    }
    for (n, k, size, most, seed), digest in expected.items():
        X, Y, masks = make_shapes(n, n_classes=k, image_size=size, max_objects=most, random_state=seed, **HARD)
        assert hashlib.sha256(X.tobytes() + Y.tobytes() + masks.tobytes()).hexdigest() == digest
    # The default is another generator.
    X, Y, masks = make_shapes(20, random_state=0)
    assert hashlib.sha256(X.tobytes() + Y.tobytes() + masks.tobytes()).hexdigest() != expected[(20, 4, 128, 3, 0)]


def _part_gaps(X, instances, parts):
    """Per object: how deep inside its object its part lies (px from the object's edge)."""
    gaps = []
    for i in range(len(X)):
        for k in range(1, instances[i].max() + 1):
            obj = instances[i] == k
            part = parts[i] & obj
            depth = ndimage.distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1]
            gaps.append(depth[part].min())
    return np.array(gaps)


def test_parts_anywhere_on_the_body(default_with_parts, hard_with_parts):
    """Hard case: every part at the edge of its body. Default: part within the body, at the
    edge or inside it (a part more than 4 px from the body's edge for some objects)."""
    hard = _part_gaps(hard_with_parts[0], *hard_with_parts[2:])
    assert hard.max() <= 4.5
    X, masks, instances, parts = default_with_parts
    assert not np.any(parts & (masks == 0))
    default = _part_gaps(X, instances, parts)
    assert np.mean(default > 4.5) >= 0.15
    assert np.mean(default <= 2.5) >= 0.3  # the edge is still possible


def _blob_histograms(X, maps, min_pixels=40):
    """4x4x4 colour histogram of each labelled blob (label k > 0 of each map)."""
    feats = []
    for img, m in zip(X, maps):
        q = (img // 64).astype(np.int64)
        code = q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]
        for k in np.unique(m[m > 0]):
            where = m == k
            if where.sum() >= min_pixels:
                h = np.bincount(code[where], minlength=64).astype(np.float64)
                feats.append(h / h.sum())
    return np.array(feats)


def _body_class_accuracy(strength, n=150, size=64, seed=0):
    """3-fold accuracy of a colour-histogram classifier of the class of bodies alone."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    X, masks, instances, parts = _generate(n, 4, size, 3, seed, return_parts=True, body_class_strength=strength)
    bodies = np.where(parts, 0, instances)
    feats, ys = [], []
    for img, m, b in zip(X, masks, bodies):
        for k in np.unique(b[b > 0]):
            if (b == k).sum() >= 20:
                feats.append(_blob_histograms(img[None], (b == k)[None].astype(np.uint8), 20)[0])
                ys.append(int(np.bincount(m[b == k]).argmax()))
    clf = LogisticRegression(C=10.0, max_iter=2000)
    return cross_val_score(clf, np.array(feats), np.array(ys), cv=3).mean()


def test_class_evidence_of_bodies_grows_with_body_class_strength():
    acc = [_body_class_accuracy(s) for s in (0.0, 0.5, 1.0)]
    assert acc[0] < 0.45  # four classes: chance is 0.25, one look for every class
    assert acc[0] + 0.2 < acc[1] < acc[2]
    assert acc[2] > 0.9


def test_body_class_styles_interpolate():
    for j in range(_shapes.MAX_CLASSES):
        colour0, texture, p0, ratio0 = _shapes.body_style(j, 0.0)
        colour1, _, p1, ratio1 = _shapes.body_style(j, 1.0)
        np.testing.assert_array_equal(colour0, _shapes._BODY_COLOUR)
        assert p0 == 0.0 and p1 == 1.0 and ratio0 == _shapes._BODY_AXIS_RATIO
        half, _, _, _ = _shapes.body_style(j, 0.5)
        np.testing.assert_allclose(half, (colour0 + colour1) / 2, atol=1e-4)
    # At strength 1 the first eight classes have eight distinct colours.
    assert len({tuple(_shapes.body_style(j, 1.0)[0]) for j in range(8)}) == 8


def test_clutter_kinds():
    """"bodies": clutter a colour histogram cannot tell from bodies; "background": clutter
    that it tells apart easily; None: no clutter."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    def separability(**kw):
        X, masks, instances, parts, clutter = _generate(120, 4, 64, 3, 1, return_parts=True, return_clutter=True,
                                                        **kw)
        bodies = _blob_histograms(X, np.where(parts, 0, instances), 20)
        blobs = _blob_histograms(X, clutter, 20)
        n = min(len(bodies), len(blobs))
        feats = np.concatenate([bodies[:n], blobs[:n]])
        y = np.r_[np.zeros(n), np.ones(n)]
        return cross_val_score(LogisticRegression(C=10.0, max_iter=2000), feats, y, cv=3).mean()

    assert separability(**HARD) < 0.65
    assert separability(body_class_strength=0.0, distractors="background") > 0.85
    *_, clutter = _generate(30, 4, 64, 3, 1, return_clutter=True, distractors=None)
    assert not clutter.any()
    *_, clutter = _generate(30, 4, 64, 3, 1, return_clutter=True)
    assert clutter.any()


def test_every_class_is_reachable():
    for n_classes in (1, 7, 20):
        _, Y, _ = make_shapes(200, n_classes=n_classes, image_size=48, random_state=3)
        assert np.all(Y.sum(axis=0) > 0), n_classes


@pytest.mark.parametrize("kw", [{}, HARD, {"body_class_strength": 1.0, "distractors": None},
                                {"body_class_strength": 0.3, "distractors": "bodies"}])
def test_every_setting_is_deterministic_and_consistent(kw):
    a = make_shapes(6, image_size=48, random_state=4, **kw)
    b = make_shapes(6, image_size=48, random_state=4, **kw)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    X, Y, masks = a
    np.testing.assert_array_equal(Y, labels_from_masks(masks, 4))
    prefix = make_shapes(3, image_size=48, random_state=4, **kw)
    np.testing.assert_array_equal(prefix[0], X[:3])


@given(
    n_classes=st.integers(1, 20),
    image_size=st.integers(32, 72),
    max_objects=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 2),
)
def test_make_shapes_properties(n_classes, image_size, max_objects, seed):
    X, masks, instances, parts = _generate(
        3, n_classes, image_size, max_objects, seed, return_parts=True
    )
    assert X.shape == (3, image_size, image_size, 3)
    assert masks.max() <= n_classes
    assert instances.reshape(3, -1).max(axis=1).max() <= max_objects
    for i in range(3):
        for k in range(1, instances[i].max() + 1):
            assert np.any(parts[i] & (instances[i] == k))
    _, Y, m = make_shapes(
        3, n_classes=n_classes, image_size=image_size, max_objects=max_objects,
        random_state=seed,
    )  # fmt: skip
    assert Y.shape == (3, n_classes)
    np.testing.assert_array_equal(Y, labels_from_masks(m, n_classes))


@pytest.mark.parametrize(
    "params, match",
    [
        ({"n_samples": 0}, "n_samples"),
        ({"n_samples": 2.5}, "n_samples"),
        ({"n_classes": 0}, "n_classes"),
        ({"n_classes": 21}, "n_classes"),
        ({"image_size": 31}, "image_size"),
        ({"image_size": "big"}, "image_size"),
        ({"max_objects": 0}, "max_objects"),
        ({"random_state": "seed"}, "random_state"),
        ({"body_class_strength": -0.1}, "body_class_strength"),
        ({"body_class_strength": 1.5}, "body_class_strength"),
        ({"distractors": "noise"}, "distractors"),
    ],
)
def test_make_shapes_parameter_errors(params, match):
    with pytest.raises(ValueError, match=match):
        make_shapes(**{"n_samples": 2, **params})


def test_make_shapes_output_feeds_validation():
    X, Y, masks = make_shapes(4, image_size=40, random_state=0)
    images = check_images(X)
    assert images.from_array and len(images) == 4
    assert len(check_masks(masks, 4, n_classes=4, shapes=images.shapes)) == 4


# --------------------------------------------------------------------------- load_voc

_XML = """<annotation>
  <folder>VOC2012</folder><filename>{id}.jpg</filename>
  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>
  {objects}
</annotation>"""

_OBJECT = """<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>
  <difficult>{difficult}</difficult>
  <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>{extra}</object>"""

_PERSON_PARTS = (
    "<part><name>head</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax>"
    "</bndbox></part><part><name>hand</name><bndbox><xmin>3</xmin><ymin>3</ymin><xmax>4</xmax>"
    "<ymax>4</ymax></bndbox></part>"
)

# id -> objects as (name, difficult, extra XML)
_DEVKIT = {
    "2007_000032": [("dog", 0, ""), ("person", 0, _PERSON_PARTS), ("person", 0, ""),
                    ("cat", 1, "")],
    "2007_000039": [("tvmonitor", 0, "")],
    "2007_000063": [("dog", 0, ""), ("chair", 0, ""), ("dog", 1, "")],
    "2008_000002": [("aeroplane", 0, ""), ("bicycle", 0, "")],
}  # fmt: skip
_WITH_MASK = ("2007_000032", "2007_000039", "2007_000063")  # 2008_000002 has no mask


def _write_xml(path, image_id, objects, shape=(10, 12)):
    body = "\n".join(_OBJECT.format(name=n, difficult=d, extra=e) for n, d, e in objects)
    path.write_text(_XML.format(id=image_id, w=shape[1], h=shape[0], objects=body))


def _mask_for(k, shape=(10, 12)):
    """A mask with values of the image's classes and a 255 boundary."""
    mask = np.zeros(shape, dtype=np.uint8)
    mask[2:8, 2:6] = k + 1
    mask[2:8, 6] = 255
    mask[2:8, 7:10] = (k + 4) % 20 + 1
    return mask


@pytest.fixture(scope="module")
def devkit(tmp_path_factory):
    from PIL import Image

    top = tmp_path_factory.mktemp("voc")
    voc = top / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Segmentation", "SegmentationClass",
                "SegmentationClassAug"):  # fmt: skip
        (voc / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k, (image_id, objects) in enumerate(_DEVKIT.items()):
        pixels = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(voc / "JPEGImages" / f"{image_id}.jpg")
        _write_xml(voc / "Annotations" / f"{image_id}.xml", image_id, objects)
        if image_id in _WITH_MASK:
            save_mask(voc / "SegmentationClass" / f"{image_id}.png", _mask_for(k))
    # The augmented mask of one image differs from its SegmentationClass mask.
    save_mask(voc / "SegmentationClassAug" / "2008_000002.png", np.full((10, 12), 3, np.uint8))
    lists = voc / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("2007_000032\n2007_000039\n2008_000002\n")
    (lists / "val.txt").write_text("2007_000063\n\n")
    (lists / "trainval.txt").write_text("2007_000032\n2007_000039\n2008_000002\n2007_000063\n")
    (lists / "train_aug.txt").write_text(
        "/JPEGImages/2008_000002.jpg /SegmentationClassAug/2008_000002.png\n"
        "/JPEGImages/2007_000039.jpg /SegmentationClassAug/2007_000039.png\n"
    )
    return top


def _expected_labels(image_id):
    y = np.zeros(20, dtype=np.uint8)
    for name, _, _ in _DEVKIT[image_id]:
        y[VOC_CLASSES.index(name)] = 1
    return y


def test_voc_class_names():
    assert list(VOC_CLASSES) == [
        "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
        "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
        "train", "tvmonitor",
    ]  # fmt: skip


@pytest.mark.parametrize("where", ["top", "VOCdevkit", "VOC2012", "VOC2012-str"])
def test_load_voc_accepts_root_layouts(devkit, where):
    root = {
        "top": devkit,
        "VOCdevkit": devkit / "VOCdevkit",
        "VOC2012": devkit / "VOCdevkit" / "VOC2012",
        "VOC2012-str": str(devkit / "VOCdevkit" / "VOC2012"),
    }[where]
    data = load_voc(root)
    assert data.ids == ["2007_000032", "2007_000039", "2008_000002"]
    assert data.root == str(devkit / "VOCdevkit" / "VOC2012")


def test_load_voc_train(devkit):
    data = load_voc(devkit, split="train")
    voc = devkit / "VOCdevkit" / "VOC2012"
    assert data.class_names == list(VOC_CLASSES)
    assert data.images == [str(voc / "JPEGImages" / f"{i}.jpg") for i in data.ids]
    assert data.labels.dtype == np.uint8 and data.labels.shape == (3, 20)
    for i, image_id in enumerate(data.ids):
        np.testing.assert_array_equal(data.labels[i], _expected_labels(image_id))
    # Repeats count once, difficult objects count, person parts (head, hand) are not classes.
    first = dict(zip(VOC_CLASSES, data.labels[0]))
    assert first["person"] == 1 and first["cat"] == 1 and first["dog"] == 1
    assert data.labels[0].sum() == 3
    assert data.masks[0] == str(voc / "SegmentationClass" / "2007_000032.png")
    assert data.masks[2] is None
    # The images are valid X for every estimator.
    images = check_images(data.images)
    assert images.shapes == [(10, 12)] * 3
    assert images[0].shape == (10, 12, 3)


def test_load_voc_masks_read_back(devkit):
    data = load_voc(devkit, split="trainval")
    keys = list(_DEVKIT)
    with_mask = [i for i, m in enumerate(data.masks) if m is not None]
    assert [data.ids[i] for i in with_mask] == ["2007_000032", "2007_000039", "2007_000063"]
    masks = check_masks([data.masks[i] for i in with_mask], n_classes=20)
    for i, mask in zip(with_mask, masks):
        expected = _mask_for(keys.index(data.ids[i]))
        np.testing.assert_array_equal(mask, expected)
        np.testing.assert_array_equal(load_mask(data.masks[i]), expected)
        assert np.any(mask == 255)


def test_load_voc_val_and_list_paths(devkit):
    val = load_voc(devkit, split="val")
    assert val.ids == ["2007_000063"]  # blank lines are skipped
    lists = devkit / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    by_path = load_voc(devkit, split=lists / "val.txt")
    assert by_path.ids == val.ids and by_path.list_file == str(lists / "val.txt")
    by_str = load_voc(devkit, split=str(lists / "trainval.txt"))
    assert len(by_str.ids) == 4


def test_load_voc_train_aug_list(devkit):
    """SBD-style lines: ids from the image paths, masks from the listed paths where present."""
    voc = devkit / "VOCdevkit" / "VOC2012"
    data = load_voc(devkit, split="train_aug.txt")  # found in ImageSets/Segmentation
    assert data.ids == ["2008_000002", "2007_000039"]
    np.testing.assert_array_equal(data.labels[0], _expected_labels("2008_000002"))
    assert data.masks[0] == str(voc / "SegmentationClassAug" / "2008_000002.png")
    np.testing.assert_array_equal(load_mask(data.masks[0]), np.full((10, 12), 3))
    # The listed augmented mask is missing: falls back to SegmentationClass.
    assert data.masks[1] == str(voc / "SegmentationClass" / "2007_000039.png")


def test_load_voc_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_voc(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="not a VOC2012 devkit folder"):
        load_voc(tmp_path)
    with pytest.raises(TypeError, match="root must be a path"):
        load_voc(None)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        load_voc(tmp_path / "file")


def _small_devkit(root, ids=("2007_000032",), objects=(("dog", 0, ""),), folders=None):
    from PIL import Image

    folders = folders or ("JPEGImages", "Annotations", "ImageSets/Segmentation")
    for sub in folders:
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        if "JPEGImages" in folders:
            Image.new("RGB", (12, 10)).save(root / "JPEGImages" / f"{image_id}.jpg")
        if "Annotations" in folders:
            _write_xml(root / "Annotations" / f"{image_id}.xml", image_id, objects)
    if "ImageSets/Segmentation" in folders:
        (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")
    return root


def test_load_voc_missing_folders(tmp_path):
    _small_devkit(tmp_path / "a", folders=("JPEGImages", "ImageSets/Segmentation"))
    with pytest.raises(FileNotFoundError, match="missing folder Annotations/"):
        load_voc(tmp_path / "a")
    _small_devkit(tmp_path / "b", folders=("Annotations", "ImageSets/Segmentation"))
    with pytest.raises(FileNotFoundError, match="missing folder JPEGImages/"):
        load_voc(tmp_path / "b")
    _small_devkit(tmp_path / "c", folders=("JPEGImages", "Annotations"))
    with pytest.raises(FileNotFoundError, match="missing folder ImageSets/Segmentation/"):
        load_voc(tmp_path / "c")
    # Without SegmentationClass there are simply no masks.
    assert load_voc(tmp_path / "c", split=_write_list(tmp_path / "l.txt")).masks == [None]


def _write_list(path, text="2007_000032\n"):
    path.write_text(text)
    return path


def test_load_voc_missing_list_file(tmp_path):
    root = _small_devkit(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"split 'val'.*splits found: \['train'\]"):
        load_voc(root, split="val")
    with pytest.raises(FileNotFoundError, match="list file 'nope.txt' not found"):
        load_voc(root, split="nope.txt")
    with pytest.raises(TypeError, match="split must be"):
        load_voc(root, split=3)
    with pytest.raises(ValueError, match="holds no image ids"):
        load_voc(root, split=_write_list(tmp_path / "empty.txt", "\n \n"))
    with pytest.raises(ValueError, match="line 2"):
        load_voc(root, split=_write_list(tmp_path / "bad.txt", "2007_000032\na b c\n"))


def test_load_voc_id_without_jpeg_or_xml(tmp_path):
    root = _small_devkit(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"'2007_999999' \(line 2 .*\) has no JPEG"):
        load_voc(root, split=_write_list(tmp_path / "l.txt", "2007_000032\n2007_999999\n"))
    os.remove(root / "Annotations" / "2007_000032.xml")
    with pytest.raises(FileNotFoundError, match="missing annotation XML .*2007_000032.xml"):
        load_voc(root)


def test_load_voc_errors_count_file_lines(tmp_path):
    root = _small_devkit(tmp_path)
    blank_lines = "2007_000032\n\n  \n\n2007_999999\n"  # the bad id is on line 5, the 2nd id
    with pytest.raises(FileNotFoundError, match=r"'2007_999999' \(line 5 .*\) has no JPEG"):
        load_voc(root, split=_write_list(tmp_path / "l.txt", blank_lines))


def test_load_voc_relative_root_gives_absolute_paths(tmp_path, monkeypatch):
    _small_devkit(tmp_path / "data" / "VOC2012")
    save_mask(tmp_path / "data" / "VOC2012" / "SegmentationClass" / "2007_000032.png",
              np.zeros((10, 12), np.uint8))
    monkeypatch.chdir(tmp_path)
    data = load_voc("data", split=os.path.join("data", "VOC2012", "ImageSets", "Segmentation",
                                               "train.txt"))
    monkeypatch.chdir(tmp_path / "data")  # the paths must survive a change of folder
    for path in (data.root, data.list_file, *data.images, *data.masks):
        assert os.path.isabs(path) and os.path.exists(path), path
    assert data.root == str(tmp_path / "data" / "VOC2012")


def test_load_voc_bad_xml(tmp_path):
    root = _small_devkit(tmp_path)
    xml = root / "Annotations" / "2007_000032.xml"
    xml.write_text("<annotation><object><name>dog</name></annotation>")
    with pytest.raises(ValueError, match=r"2007_000032\.xml.*unreadable annotation XML"):
        load_voc(root)
    _write_xml(xml, "2007_000032", [("dog", 0, ""), ("unicorn", 0, "")])
    with pytest.raises(ValueError, match=r"2007_000032\.xml.*unknown class name 'unicorn'"):
        load_voc(root)
    xml.write_text("<annotation><object><pose>Left</pose></object></annotation>")
    with pytest.raises(ValueError, match=r"2007_000032\.xml.*has no <name>"):
        load_voc(root)
    # An annotation without objects gives an all-zero row (background only).
    xml.write_text("<annotation><filename>2007_000032.jpg</filename></annotation>")
    assert load_voc(root).labels.sum() == 0


# --------------------------------------------------------------------------- docs


@pytest.mark.parametrize("module", [_shapes, _voc])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("kw", [{}, HARD])
def test_clutter_maps_mark_the_distractors(kw):
    X, masks = _generate(40, 4, 128, 3, seed=3, **kw)
    X2, masks2, clutter = _generate(40, 4, 128, 3, seed=3, return_clutter=True, **kw)
    np.testing.assert_array_equal(X, X2)  # asking for the maps does not change the images
    np.testing.assert_array_equal(masks, masks2)
    assert clutter.dtype == np.uint8 and set(np.unique(clutter)) <= {0, 1, 2}
    assert not np.any((clutter > 0) & (masks > 0))  # distractors are background, under objects
    assert np.mean([(c > 0).any() for c in clutter]) > 0.9
    if kw != HARD:
        return
    # hard case: distractor pixels are painted like bodies: tan with stripes, not the
    # background's colours
    body = X[(clutter > 0)].astype(float).mean(axis=0)
    np.testing.assert_allclose(body, [176, 132, 84], atol=15)
    rest = X[(clutter == 0) & (masks == 0)].astype(float).mean(axis=0)
    assert np.abs(rest - [176, 132, 84]).max() > 20
    # with parts too, the clutter maps come last
    out = _generate(5, 4, 128, 3, seed=3, return_parts=True, return_clutter=True, **HARD)
    assert len(out) == 5
    np.testing.assert_array_equal(out[4], clutter[:5])
