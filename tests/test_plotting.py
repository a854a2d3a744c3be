"""Pictures of learned affinities and synthesized masks (plotting.py, Figure 5)."""

import doctest

import numpy as np
import pytest

import sklearn_psa.plotting as plotting
from sklearn_psa import neighbor_offsets
from sklearn_psa._affinity_labels import oracle_affinity
from sklearn_psa.plotting import affinity_map
from sklearn_psa.records import Records


def test_docstring_examples():
    assert doctest.testmod(plotting, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0


def _brute_force_affinity_map(affinity, offsets):
    _, h, w = affinity.shape
    total, count = np.zeros((h, w)), np.zeros((h, w))
    for k, (dy, dx) in enumerate(offsets):
        for y in range(h):
            for x in range(w):
                ty, tx = y + dy, x + dx
                if 0 <= ty < h and 0 <= tx < w:
                    for cy, cx in ((y, x), (ty, tx)):
                        total[cy, cx] += affinity[k, y, x]
                        count[cy, cx] += 1
    return np.where(count > 0, total / np.maximum(count, 1), 1.0)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (6, 1), (5, 9)])
def test_affinity_map_matches_a_plain_loop(shape):
    offsets = neighbor_offsets(3)
    aff = np.random.default_rng(0).random((len(offsets),) + shape)
    np.testing.assert_allclose(affinity_map(aff, offsets), _brute_force_affinity_map(aff, offsets))


def test_affinity_map_is_dark_on_boundaries_of_an_oracle_affinity():
    mask = np.zeros((32, 160), np.uint8)
    mask[:, 80:] = 1  # boundary between grid columns 9 and 10
    offsets = neighbor_offsets(5)
    amap = affinity_map(oracle_affinity(mask, offsets), offsets)
    assert amap.shape == (4, 20)
    assert amap[:, :5].min() == 1.0 and amap[:, 15:].min() == 1.0  # beyond the radius
    assert amap[:, 6:14].max() < 1.0  # within the radius of the boundary
    assert amap[:, 9].mean() < amap[:, 6].mean()  # darkest at the boundary


def test_plot_synthesized_draws_every_column():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (24, 40, 3), dtype=np.uint8) for _ in range(2)]
    masks = [np.zeros((24, 40), np.uint8) for _ in range(2)]
    masks[1][:, 20:] = 2
    affs = [oracle_affinity(m, neighbor_offsets(5)) for m in masks]
    recs = Records.from_arrays(images, [[0, 0], [0, 1]],
                               [np.zeros((0, 24, 40)), (masks[1] == 2)[None].astype(np.float32)],
                               affinities=affs, radius=5)
    fig = plotting.plot_synthesized(recs, masks, true_masks=masks)
    assert len(fig.axes) == 2 * 5
    assert [ax.get_title() for ax in fig.axes[:5]] == [
        "image", "ground truth", "CAMs", "affinities", "synthesized"]
    plt.close(fig)
    # with the affinity labels: a column after the CAMs, coloured as the labels on the grid
    fig = plotting.plot_synthesized(recs, masks, true_masks=masks, label_alphas=(4, 32))
    assert [ax.get_title() for ax in fig.axes[:6]] == [
        "image", "ground truth", "CAMs", "affinity labels", "affinities", "synthesized"]
    from sklearn_psa._affinity_labels import affinity_label_map
    from sklearn_psa.io import voc_palette

    shown = fig.axes[6 + 3].get_images()[0].get_array()  # second image's labels panel
    grid = affinity_label_map(recs[1].cams, recs[1].labels, alpha_low=4, alpha_high=32)
    np.testing.assert_array_equal(shown[0, 0], voc_palette()[grid[0, 0]])
    np.testing.assert_array_equal(shown[0, -1], voc_palette()[grid[0, -1]])
    assert grid[0, -1] == 2 and grid[0, 0] == 0
    plt.close(fig)
    with pytest.raises(TypeError, match="label_alphas"):
        plotting.plot_synthesized(recs, masks, label_alphas=4)
    with pytest.raises(ValueError, match="no affinity"):
        plotting.plot_affinity(Records.from_arrays(images[:1], [[0, 0]], [np.zeros((0, 24, 40))])[0])


# ----------------------------------------------------------------------------- input checks


@pytest.fixture
def plt():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def _shapes_records(n=3):
    """Records of ``make_shapes`` images with (empty) CAMs and oracle affinities, and the masks."""
    from sklearn_psa.datasets import make_shapes

    X, Y, masks = make_shapes(n, n_classes=2, image_size=32, random_state=0)
    cams = [np.zeros((int(y.sum()), 32, 32), np.float32) for y in Y]
    affs = [oracle_affinity(m, neighbor_offsets(5)) for m in masks]
    return X, Records.from_arrays(X, Y, cams, affinities=affs, radius=5), list(masks)


def test_single_record_plots_reject_records_and_other_types(plt):
    _, recs, _ = _shapes_records()
    for plot in (plotting.plot_cams, plotting.plot_affinity):
        with pytest.raises(TypeError, match=r"record: expected one Record, got Records of 3 .*records\[0\]"):
            plot(recs)
        with pytest.raises(TypeError, match="record: expected a Record.*got array of shape"):
            plot(np.zeros((32, 32, 3), np.uint8))


def test_plot_cams_checks_the_record_and_its_options(plt):
    from sklearn_psa.records import Record

    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"cams has shape \(1, 4, 4\), expected \(1, 8, 8\)"):
        plotting.plot_cams(Record(image, [1], np.zeros((1, 4, 4))))
    with pytest.raises(ValueError, match=r"cams has shape \(1, 8, 8\), expected \(2, 8, 8\)"):
        plotting.plot_cams(Record(image, [0, 1], np.zeros((1, 8, 8))))
    r = Record(image, [1], np.zeros((1, 8, 8)))
    with pytest.raises(TypeError, match="class_names is a single string"):
        plotting.plot_cams(r, class_names="ab")
    with pytest.raises(TypeError, match="background_alpha must be a number"):
        plotting.plot_cams(r, background_alpha="4")
    with pytest.raises(ValueError, match=r"overlay must lie in \[0, 1\]"):
        plotting.plot_cams(r, overlay=3)
    with pytest.raises(ValueError, match="axes: need 2 axes"):
        plotting.plot_cams(r, axes=[])


def test_plot_cams_numbers_classes_by_their_mask_value(plt):
    """Class column 1 is mask value 2: "class 2", as in the reports (it said "class 1")."""
    from sklearn_psa.records import Record

    r = Record(np.zeros((8, 8, 3), np.uint8), [0, 2], np.zeros((2, 8, 8)))
    assert [ax.get_title() for ax in plotting.plot_cams(r)] == ["image", "class 1", "class 3"]
    names = np.array(["cat", "dog", "cow"], dtype=object)  # a fitted class_names_
    assert [ax.get_title() for ax in plotting.plot_cams(r, class_names=names)][1:] == ["cat", "cow"]


def test_plot_synthesized_checks_masks_against_records(plt):
    _, recs, masks = _shapes_records()
    with pytest.raises(ValueError, match="masks has 2 masks but records has 3 records"):
        plotting.plot_synthesized(recs, masks[:2], masks)
    with pytest.raises(ValueError, match="true_masks has 1 masks but records has 3 records"):
        plotting.plot_synthesized(recs, masks, masks[:1])
    with pytest.raises(ValueError, match=r"masks\[1\]: mask has shape \(16, 32\) but its image is \(32, 32\)"):
        plotting.plot_synthesized(recs, [masks[0], masks[1][:16], masks[2]])
    with pytest.raises(ValueError, match=r"masks\[0\]: mask value 3 is beyond the 2 classes"):
        plotting.plot_synthesized(recs, [np.full((32, 32), 3, np.uint8)] + masks[1:])
    with pytest.raises(ValueError, match="masks is a single"):
        plotting.plot_synthesized(recs[:1], masks[0])
    with pytest.raises(TypeError, match="records: expected Records"):
        plotting.plot_synthesized(list(recs.records), masks)


def test_plot_synthesized_checks_indices(plt):
    _, recs, masks = _shapes_records()
    with pytest.raises(ValueError, match=r"indices\[1\] must lie in \[-3, 2\], got 3"):
        plotting.plot_synthesized(recs, masks, indices=[0, 3])
    with pytest.raises(ValueError, match="indices is empty"):
        plotting.plot_synthesized(recs, masks, indices=[])
    with pytest.raises(TypeError, match="indices is a single int"):
        plotting.plot_synthesized(recs, masks, indices=1)
    with pytest.raises(ValueError, match="max_images must be at least 1, got 0"):
        plotting.plot_synthesized(recs, masks, max_images=0)


def test_plot_mask_checks_values_image_and_alpha(plt):
    X, _, masks = _shapes_records(1)
    with pytest.raises(ValueError, match=r"mask: .*0 \(background\), 1\.\.K \(classes\) or 255 "
                                         r"\(ignore\), got values in \[300, "):
        plotting.plot_mask(X[0], masks[0].astype(int) + 300)
    with pytest.raises(ValueError, match=r"got values in \[-1, "):
        plotting.plot_mask(X[0], masks[0].astype(int) - 1)
    with pytest.raises(ValueError, match=r"mask: mask value 2 is beyond the 1 classes \(expected 0\.\.1 or 255\)"):
        plotting.plot_mask(X[0], np.full((32, 32), 2), n_classes=1)
    plotting.plot_mask(X[0], np.full((32, 32), 255), n_classes=1)  # ignore is fine
    with pytest.raises(TypeError, match=r"image: expected an \(H, W, 3\) uint8"):
        plotting.plot_mask(X[0] / 255.0, masks[0])
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        plotting.plot_mask(X[0], masks[0], alpha=2)
    ax = plotting.plot_mask(X[0, ..., 0], masks[0])  # grayscale: drawn as RGB, not a colour map
    assert ax.get_images()[0].get_array().shape == (32, 32, 3)


def test_affinity_map_checks_its_arrays():
    with pytest.raises(ValueError, match=r"offsets: expected a \(K, 2\) integer array .*got shape \(3, 3\)"):
        affinity_map(np.zeros((3, 4, 4)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="offsets: expected integer"):
        affinity_map(np.zeros((1, 4, 4)), [[0, 0.5]])
    with pytest.raises(ValueError, match=r"affinity: expected a \(K, h, w\) array with K = 1"):
        affinity_map(np.zeros((4, 4)), [[0, 1]])
    with pytest.raises(TypeError, match="affinity: expected .* of numbers, got dict"):
        affinity_map({"a": 1}, [[0, 1]])


def test_plot_mask_names_the_classes_it_shows(plt):
    mask = np.zeros((8, 8), np.uint8)
    mask[:2] = 3
    mask[4:] = 1
    mask[7, 7] = 255
    ax = plotting.plot_mask(np.zeros((8, 8, 3), np.uint8), mask,
                            class_names=np.array(["cat", "dog", "cow"], dtype=object))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["cat", "cow"]
    assert plotting.plot_mask(np.zeros((8, 8, 3), np.uint8), mask).get_legend() is None
    with pytest.raises(ValueError, match="mask value 3 is beyond the 2 classes"):
        plotting.plot_mask(np.zeros((8, 8, 3), np.uint8), mask, class_names=["cat", "dog"])
    with pytest.raises(ValueError, match="class_names has 3 names but n_classes is 4"):
        plotting.plot_mask(np.zeros((8, 8, 3), np.uint8), mask, class_names=["a", "b", "c"],
                           n_classes=4)
