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
    with pytest.raises(ValueError, match="no affinity"):
        plotting.plot_affinity(Records.from_arrays(images[:1], [[0, 0]], [np.zeros((0, 24, 40))])[0])
