"""Affinity labels, pairs, oracle affinity (numpy), and the AffinityNet head and loss (torch)."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sklearn_psa._affinity_labels import (
    affinity_label_map,
    affinity_pairs,
    combine_confident,
    confident_regions,
    confident_scores,
    downsample_mask,
    oracle_affinity,
    pair_counts,
    pool_index_map,
    pool_score_stack,
    score_stack,
)
from sklearn_psa.nn.affinity_head import AffinityHead, AffinityNet, affinity_loss, pairwise_affinity
from sklearn_psa.walk import neighbor_offsets

IGN = 255


# ---------------------------------------------------------------- references


def mean_pooled_labels(cams, labels, alpha_low=4, alpha_high=32, stride=8):
    """The reference code's affinity labels (``VOC12AffDataset`` without a CRF), in plain
    float64 numpy: per-pixel distributions of both score stacks, 8x8 block means (zero
    padding), argmax; a block with no score ignored; 0 bg, ``j + 1`` class column ``j``."""
    cams = np.asarray(cams, np.float64)
    values = np.array([0] + [int(j) + 1 for j in labels])
    L, H, W = cams.shape
    h, w = -(-H // stride), -(-W // stride)
    levels = []
    for alpha in (alpha_low, alpha_high):
        top = cams.max(axis=0) if L else np.zeros((H, W))
        scores = np.concatenate([((1 - top) ** alpha)[None], cams])
        probs = np.zeros((L + 1, h * stride, w * stride))
        probs[:, :H, :W] = scores / scores.sum(axis=0)
        means = probs.reshape(L + 1, h, stride, w, stride).mean(axis=(2, 4))
        level = values[means.argmax(axis=0)]
        levels.append(np.where(means.max(axis=0) < 1e-5, IGN, level))
    low, high = levels
    out = np.where(low == 0, IGN, low)
    out[high == 0] = 0
    out[(low == IGN) | (high == IGN)] = IGN
    return out.astype(np.uint8)


def vote_differs_from_mean_cams():
    """One 8x8 block whose pixels a class wins by a small margin in 40 pixels (CAM 0.3:
    probability 0.56 against the background's (1 - 0.3) ** 4) and the background wins
    outright in 24 (CAM 0): the vote gives the class, the mean the background."""
    cams = np.zeros((1, 8, 8), np.float32)
    cams[0, :5] = 0.3
    return cams


def brute_pairs(grid, radius):
    """Counts (bg+, fg+, neg) over all unordered cell pairs closer than radius."""
    h, w = grid.shape
    cells = list(itertools.product(range(h), range(w)))
    bg = fg = neg = 0
    for (y1, x1), (y2, x2) in itertools.combinations(cells, 2):
        d2 = (y1 - y2) ** 2 + (x1 - x2) ** 2
        if not 0 < d2 < radius**2:
            continue
        a, b = grid[y1, x1], grid[y2, x2]
        if a == IGN or b == IGN:
            continue
        if a != b:
            neg += 1
        elif a == 0:
            bg += 1
        else:
            fg += 1
    return bg, fg, neg


def dense_walk(scores, affinity, offsets, beta, t):
    """The dense formula in float64: W symmetric with self-loops, T = D^-1 W^beta, T^t."""
    C, h, w = scores.shape
    n = h * w
    Wm = np.eye(n)
    for k, (dy, dx) in enumerate(offsets):
        for y in range(h):
            for x in range(w):
                y2, x2 = y + dy, x + dx
                if 0 <= y2 < h and 0 <= x2 < w:
                    i, j = y * w + x, y2 * w + x2
                    Wm[i, j] = Wm[j, i] = affinity[k, y, x]
    Wb = Wm**beta
    T = Wb / Wb.sum(axis=1, keepdims=True)
    Tt = np.linalg.matrix_power(T, t)
    # scores as row vectors: vec(M*) = T^t vec(M) with T row-normalised acting on columns
    return (Tt @ scores.reshape(C, n).T).T.reshape(C, h, w)


# ---------------------------------------------------------------- pair counts


def test_pairs_all_background_3x3_radius2_exact():
    grid = np.zeros((3, 3), np.uint8)
    offsets = neighbor_offsets(2)
    assert len(offsets) == 4  # (0,1), (1,-1), (1,0), (1,1)
    # horizontal 3*2, vertical 2*3, two diagonals 2*2 each
    assert pair_counts(grid, offsets) == (20, 0, 0)


def test_pairs_hand_made_map_with_borders_and_ignored_cells():
    # 2x4 grid, radius 2 (the 8-neighbourhood):   a b c d  =  0 0   1 1
    #                                             e f g h     0 255 1 2
    grid = np.array([[0, 0, 1, 1], [0, IGN, 1, 2]], np.uint8)
    offsets = neighbor_offsets(2)
    bg, fg, neg = affinity_pairs(grid, offsets)
    # bg+: a-b, a-e, b-e; fg+: c-d, c-g, d-g; neg: b-c, b-g, c-h, d-h, g-h; f's 5 pairs dropped
    assert pair_counts(grid, offsets) == (3, 3, 5)
    assert (int(bg.sum()), int(fg.sum()), int(neg.sum())) == brute_pairs(grid, 2)
    # entries whose neighbour leaves the grid are never labelled
    for k, (dy, dx) in enumerate(offsets):
        for y, x in itertools.product(range(2), range(4)):
            if not (0 <= y + dy < 2 and 0 <= x + dx < 4):
                assert not (bg[k, y, x] or fg[k, y, x] or neg[k, y, x])
    # pairs touching the ignored cell (1,1) are all dropped
    for k, (dy, dx) in enumerate(offsets):
        assert not (bg[k, 1, 1] or fg[k, 1, 1] or neg[k, 1, 1])
        y, x = 1 - dy, 1 - dx
        if 0 <= y < 2 and 0 <= x < 4:
            assert not (bg[k, y, x] or fg[k, y, x] or neg[k, y, x])


def test_pairs_radius5_single_cell_labels():
    # 10x10 background with one foreground cell in the middle and an ignored corner
    grid = np.zeros((10, 10), np.uint8)
    grid[5, 5] = 3
    grid[0, 0] = IGN
    offsets = neighbor_offsets(5)
    assert len(offsets) == 34
    bg, fg, neg = pair_counts(grid, offsets)
    assert fg == 0
    # every neighbour of (5, 5) within radius 5 lies inside: 2 * 34 - 0 = 68 cells? no:
    # the number of cells at distance < 5 from a centre is 2*34 = 68 (34 directions, two ways)
    assert neg == 68
    assert (bg, fg, neg) == brute_pairs(grid, 5)


@given(
    grid=hnp.arrays(np.uint8, st.tuples(st.integers(1, 7), st.integers(1, 7)),
                    elements=st.sampled_from([0, 0, 1, 2, IGN])),
    radius=st.integers(1, 9),
)
def test_pairs_match_brute_force(grid, radius):
    offsets = neighbor_offsets(radius)
    bg, fg, neg = affinity_pairs(grid, offsets)
    assert (int(bg.sum()), int(fg.sum()), int(neg.sum())) == brute_pairs(grid, radius)
    assert not np.any(bg & fg) and not np.any(bg & neg) and not np.any(fg & neg)


# ---------------------------------------------------------------- labels from CAMs


def test_score_stack_background_formula():
    cams = np.array([[[0.0, 0.5]], [[0.2, 0.9]]], np.float32)  # (2, 1, 2)
    s = score_stack(cams, 4)
    np.testing.assert_allclose(s[0], [[(1 - 0.2) ** 4, (1 - 0.9) ** 4]], rtol=1e-6)
    np.testing.assert_array_equal(s[1:], cams)
    # no class present: background 1 everywhere
    assert np.all(score_stack(np.zeros((0, 3, 2), np.float32), 32) == 1)


def test_confident_regions_thresholds():
    # a single class with a ramp of activations; with one class, low says class where
    # c > (1-c)^4 and high says background where (1-c)^32 > c
    c = np.linspace(0, 1, 101, dtype=np.float32)
    cams = c[None, None, :]
    low, high = confident_regions(cams, 4, 32)
    np.testing.assert_array_equal(low[0] == 1, c > (1 - c) ** 4)
    np.testing.assert_array_equal(high[0] == 0, (1 - c) ** 32 >= c)
    # confident foreground starts above ~0.28, confident background ends below ~0.08
    assert 0.25 < c[low[0] == 1].min() < 0.3 and 0.05 < c[high[0] == 0].max() < 0.1


def test_label_map_tiny_synthetic_cams_full_resolution():
    # two classes (columns 0 and 3) on a 4x6 image
    cams = np.zeros((2, 4, 6), np.float32)
    cams[0, :, 0:2] = 0.9  # class 0: confident
    cams[1, :, 2:4] = 0.1  # class 3: weak -> ignored
    cams[1, 0, 4] = 0.6  # class 3: confident in one pixel
    lab = affinity_label_map(cams, [0, 3], stride=1)
    expected = np.zeros((4, 6), np.uint8)
    expected[:, 0:2] = 1
    expected[:, 2:4] = IGN
    expected[0, 4] = 4
    np.testing.assert_array_equal(lab, expected)
    # with alpha_high small too, the weak region becomes background
    lab2 = affinity_label_map(cams, [0, 3], alpha_low=4, alpha_high=4, stride=1)
    assert np.all(lab2[:, 2:4] == 0)


def test_label_map_strongest_class_wins_and_empty_labels():
    cams = np.zeros((2, 2, 2), np.float32)
    cams[0] = [[0.9, 0.5], [0.0, 0.0]]
    cams[1] = [[0.5, 0.9], [0.0, 0.0]]
    lab = affinity_label_map(cams, [1, 2], stride=1)
    np.testing.assert_array_equal(lab, [[2, 3], [0, 0]])
    lab = affinity_label_map(np.zeros((0, 9, 9), np.float32), [], stride=8)
    np.testing.assert_array_equal(lab, np.zeros((2, 2)))


def test_label_map_on_stride_grid_majority_and_odd_sizes():
    H, W = 20, 13  # grid 3 x 2
    cams = np.zeros((1, H, W), np.float32)
    cams[0, 0:8, 0:5] = 1.0  # 40 of 64 pixels of block (0, 0) confident fg
    cams[0, 16:20, 8:13] = 0.1  # bottom-right partial block (4x5 pixels) all ignored
    cams[0, 8:16, 8:13] = 0.1
    cams[0, 8:10, 8:13] = 0.0  # block (1, 1): 10 bg pixels, 30 ignored -> ignored
    lab = affinity_label_map(cams, [1], stride=8)
    assert lab.shape == (3, 2)
    np.testing.assert_array_equal(lab, [[2, 0], [0, IGN], [0, IGN]])


def test_label_map_uses_crf_callable():
    calls = []

    def fake_crf(image, scores):
        calls.append(scores.shape)
        np.testing.assert_allclose(scores.sum(axis=0), 1, rtol=1e-6)  # distributions per pixel
        probs = np.zeros_like(scores)
        probs[1] = 1.0  # everything becomes the class
        return probs

    cams = np.full((1, 8, 8), 0.05, np.float32)
    image = np.zeros((8, 8, 3), np.uint8)
    assert np.all(affinity_label_map(cams, [0], image=image, crf=fake_crf) == 1)
    assert calls == [(2, 8, 8), (2, 8, 8)]
    with pytest.raises(ValueError, match="image"):
        affinity_label_map(cams, [0], crf=fake_crf)


def test_label_map_with_the_dense_crf_follows_colour_edges(rng):
    from scipy.ndimage import gaussian_filter

    crf_module = pytest.importorskip("sklearn_psa.crf")
    # a red square on grey noise; the CAM is the square blurred far beyond its edges
    image = np.clip(rng.normal(90, 12, (32, 32, 3)), 0, 255)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 10:26] = 1
    image[mask == 1] = (200, 60, 40)
    image = image.astype(np.uint8)
    cam = gaussian_filter(mask.astype(np.float32), 4)
    cam = (cam / cam.max())[None]

    def wrong(lab):
        return int(((lab == 1) & (mask == 0)).sum() + ((lab == 0) & (mask == 1)).sum())

    plain = affinity_label_map(cam, [0], stride=1)
    refined = affinity_label_map(cam, [0], image=image, crf=crf_module.dense_crf, stride=1)
    assert wrong(plain) > 60 and wrong(refined) < 10
    assert (refined == 1).sum() > 0.8 * mask.sum()


@pytest.mark.parametrize("shape", [(32, 24), (36, 21), (7, 9)])
def test_mean_pooling_is_the_reference_codes(shape, rng):
    H, W = shape
    cams = rng.random((2, H, W), dtype=np.float32) * 0.4
    cams[0, H // 2 :, : W // 2] += 0.6  # class 1 at the bottom left, class 4 at the right
    cams[1, H // 2 :, W // 2 :] += 0.6
    cams[:, : H // 4] *= 0.1  # a weak top: background, then ignored cells
    got = affinity_label_map(cams, [1, 4], pooling="mean")
    expected = mean_pooled_labels(cams, [1, 4])
    np.testing.assert_array_equal(got, expected)
    if H > 16:  # every kind of label is tested
        assert set(np.unique(expected).tolist()) == {0, 2, 5, IGN}


def test_vote_and_mean_pooling_differ_where_margins_differ():
    cams = vote_differs_from_mean_cams()
    assert affinity_label_map(cams, [2], pooling="vote").item() == 3  # confident class 2
    # the mean: the background wins the low level, the class the high one: ignored
    assert affinity_label_map(cams, [2], pooling="mean").item() == IGN
    assert mean_pooled_labels(cams, [2]).item() == IGN
    with pytest.raises(ValueError, match="pooling"):
        affinity_label_map(cams, [2], pooling="max")


def test_confident_scores_are_distributions_with_the_argmax_of_the_regions(rng):
    cams = rng.random((3, 9, 11), dtype=np.float32)
    stacks = confident_scores(cams, 4, 32)
    for stack, region in zip(stacks, confident_regions(cams, 4, 32)):
        assert stack.shape == (4, 9, 11) and stack.dtype == np.float32
        np.testing.assert_allclose(stack.sum(axis=0), 1, rtol=1e-6)
        np.testing.assert_array_equal(stack.argmax(axis=0), region)
    # through a CRF: its marginals, normalised
    image = np.zeros((9, 11, 3), np.uint8)
    low, _ = confident_scores(cams, 4, 32, image=image, crf=lambda im, p: 2 * p[::-1])
    np.testing.assert_allclose(low, stacks[0][::-1], rtol=1e-6)


def test_pool_score_stack_ignores_the_padding_and_keeps_the_border_cells():
    scores = np.zeros((2, 12, 12), np.float32)
    scores[1, :10, :10] = 1.0  # the image's 10 x 10 pixels, the rest padding (zeros)
    grid = pool_score_stack(scores)
    np.testing.assert_array_equal(grid, [[1, 1], [1, 1]])  # border cells: 2 of 8 rows valid
    padded = np.zeros((2, 24, 24), np.float32)
    padded[:, :12, :12] = scores
    np.testing.assert_array_equal(pool_score_stack(padded), [[1, 1, IGN], [1, 1, IGN], [IGN] * 3])
    batch = np.stack([padded, padded[:, ::-1, ::-1]])  # leading dimensions: a batch
    assert pool_score_stack(batch).shape == (2, 3, 3)


def test_pool_index_map_ties_and_ignore():
    m = np.array([[1, 0], [IGN, IGN]], np.uint8)
    np.testing.assert_array_equal(pool_index_map(m, 2), [[0]])  # tie -> smaller value
    m = np.full((3, 3), IGN, np.uint8)
    np.testing.assert_array_equal(pool_index_map(m, 2), np.full((2, 2), IGN))


def test_combine_confident_table():
    low = np.array([0, 0, 1, 2, 1, IGN])
    high = np.array([0, 1, 1, 2, 0, 0])
    out = combine_confident(low, high, [4, 7])
    np.testing.assert_array_equal(out, [0, IGN, 5, 8, 0, IGN])


# ---------------------------------------------------------------- oracle affinity


def test_downsample_mask_and_oracle_affinity_values():
    mask = np.zeros((16, 24), np.uint8)
    mask[:, 8:16] = 2
    mask[:8, 16:] = IGN
    grid = downsample_mask(mask)
    np.testing.assert_array_equal(grid, [[0, 2, IGN], [0, 2, 0]])
    offsets = neighbor_offsets(2)
    aff = oracle_affinity(mask, offsets)
    assert aff.shape == (4, 2, 3) and aff.dtype == np.float32
    k = {tuple(o): i for i, o in enumerate(offsets.tolist())}
    assert aff[k[(0, 1)], 0, 0] == 0  # bg - class 2
    assert aff[k[(1, 0)], 0, 0] == 1  # bg - bg
    assert aff[k[(1, 0)], 0, 1] == 1  # 2 - 2
    assert aff[k[(1, 0)], 0, 2] == 0  # ignored - bg
    assert aff[k[(0, 1)], 0, 2] == 0  # outside the grid


def test_oracle_affinity_recovers_mask_through_walk():
    # true mask: a rectangular object; CAM: strong on a part, weak on the rest of the body
    H = W = 48
    mask = np.zeros((H, W), np.uint8)
    mask[8:32, 8:40] = 1
    cam = np.zeros((H, W), np.float32)
    cam[8:32, 8:40] = 0.15
    cam[16:32, 16:32] = 1.0
    grid_h, grid_w = H // 8, W // 8
    pooled = cam.reshape(grid_h, 8, grid_w, 8).mean(axis=(1, 3))
    scores = np.stack([(1 - pooled) ** 4, pooled])  # CAM alone: the object is the part only
    offsets = neighbor_offsets(3)
    aff = oracle_affinity(mask, offsets)
    out = dense_walk(scores.astype(np.float64), aff, offsets, beta=8, t=64)
    pred = out.argmax(axis=0)
    np.testing.assert_array_equal(pred, downsample_mask(mask))
    assert not np.array_equal(scores.argmax(axis=0), downsample_mask(mask))
    from sklearn_psa.walk import random_walk

    fast = random_walk(scores.astype(np.float32), aff, beta=8, t=64)
    np.testing.assert_allclose(np.asarray(fast), out, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- head and loss


def test_pairwise_affinity_matches_dense_formula(rng):
    f = torch.from_numpy(rng.normal(size=(2, 5, 4, 6)))
    offsets = neighbor_offsets(6)  # some offsets reach beyond the 4 x 6 grid
    aff = pairwise_affinity(f, offsets).numpy()
    ref = np.zeros_like(aff)
    fn = f.numpy()
    for n, (k, (dy, dx)), y, x in itertools.product(range(2), enumerate(offsets), range(4), range(6)):
        if 0 <= y + dy < 4 and 0 <= x + dx < 6:
            ref[n, k, y, x] = np.exp(-np.abs(fn[n, :, y, x] - fn[n, :, y + dy, x + dx]).mean())
    np.testing.assert_allclose(aff, ref, rtol=1e-12)


@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5)),
                  elements=st.floats(-50, 50)), st.integers(2, 7))
def test_affinity_symmetric_and_in_unit_interval(feat, radius):
    offsets = neighbor_offsets(radius)
    aff = pairwise_affinity(torch.from_numpy(feat)[None], offsets)[0].numpy()
    # rotating the grid by 180 degrees swaps the ends of every pair: the pair stored at
    # [k, y, x] is stored at [k, h-1-y-dy, w-1-x-dx] of the rotated grid, with the same value
    rot = pairwise_affinity(torch.from_numpy(feat[:, ::-1, ::-1].copy())[None], offsets)[0].numpy()
    h, w = feat.shape[1:]
    for k, (dy, dx) in enumerate(offsets):
        for y, x in itertools.product(range(h), range(w)):
            if 0 <= y + dy < h and 0 <= x + dx < w:
                assert 0 <= aff[k, y, x] <= 1
                assert aff[k, y, x] == rot[k, h - 1 - y - dy, w - 1 - x - dx]
            else:
                assert aff[k, y, x] == 0
    # identical features -> W = 1 for every pair inside the grid
    ones = pairwise_affinity(torch.ones(1, 2, h, w), offsets)[0].numpy()
    np.testing.assert_array_equal(ones, oracle_affinity(np.zeros((h, w), np.uint8), offsets, stride=1))


def test_loss_on_hand_made_features():
    offsets = neighbor_offsets(2)
    # two constant halves: left features 0, right features 3 (distance 3 -> W = e^-3)
    f = torch.zeros(1, 2, 2, 4, dtype=torch.float64)
    f[..., 2:] = 3.0
    labels = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], np.uint8)
    bg, fg, neg = (torch.from_numpy(p)[None] for p in affinity_pairs(labels, offsets))
    aff = pairwise_affinity(f, offsets)
    loss, parts = affinity_loss(aff, bg, fg, neg)
    eps = 1e-5
    assert pair_counts(labels, offsets) == (6, 6, 4)  # 2x2 blocks: 6 pairs each; 4 across

    def mean(value, n):  # the reference divides the sum by (count + 1e-5)
        return n * value / (n + eps)

    lpos = -np.log(1 + eps)
    lneg = -np.log(1 + eps - np.exp(-3.0))
    assert parts["bg"].item() == pytest.approx(mean(lpos, 6), rel=1e-12)
    assert parts["fg"].item() == pytest.approx(mean(lpos, 6), rel=1e-12)
    assert parts["neg"].item() == pytest.approx(mean(lneg, 4), rel=1e-12)
    expected = mean(lpos, 6) / 4 + mean(lpos, 6) / 4 + mean(lneg, 4) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    # identical features: positives cost ~0, negatives explode
    aff1 = pairwise_affinity(torch.zeros_like(f), offsets)
    _, parts1 = affinity_loss(aff1, bg, fg, neg)
    assert abs(parts1["bg"].item()) < 1e-4 and abs(parts1["fg"].item()) < 1e-4
    assert parts1["neg"].item() > 10
    # no pairs of a kind -> that term is 0, not NaN
    loss0, parts0 = affinity_loss(aff, bg, torch.zeros_like(fg), torch.zeros_like(neg))
    assert parts0["fg"].item() == 0 and parts0["neg"].item() == 0 and torch.isfinite(loss0)


@pytest.mark.parametrize("labels, sign", [([[0, 0]], 1), ([[1, 1]], 1), ([[0, 1]], -1)])
def test_loss_gradient_pulls_positives_together_and_pushes_negatives_apart(labels, sign):
    offsets = neighbor_offsets(2)
    f = torch.tensor([[[[0.0, 1.0]]]], requires_grad=True)  # (1, 1, 1, 2): one horizontal pair
    pairs = affinity_pairs(np.array(labels, np.uint8), offsets)
    loss, _ = affinity_loss(pairwise_affinity(f, offsets), *(torch.from_numpy(p)[None] for p in pairs))
    loss.backward()
    # a descent step -grad moves f[0] = 0 up and f[1] = 1 down for a positive pair
    assert sign * f.grad[0, 0, 0, 0] < 0 and sign * f.grad[0, 0, 0, 1] > 0


class _ThreeLevels(torch.nn.Module):
    """A minimal backbone: strides 2, 4, 8."""

    out_channels = (3, 4, 5)

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 3, 3, stride=2, padding=1)
        self.b = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.c = torch.nn.Conv2d(4, 5, 3, stride=2, padding=1)

    def normalize(self, x):
        return x / 255.0

    def forward(self, x):
        a = self.a(x)
        b = self.b(a)
        return a, b, self.c(b)


@pytest.mark.parametrize("H, W", [(8, 8), (33, 17), (64, 47), (1, 1)])
@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_affinity_net_output_grid_any_size(H, W, scale):
    torch.manual_seed(0)
    net = AffinityNet(_ThreeLevels(), widths=(2, 3, 4), out_channels=6, input_scale=scale)
    out = net(torch.rand(2, 3, H, W) * 255)
    assert out.shape == (2, 6, -(-H // 8), -(-W // 8))


def test_affinity_net_dropout_only_in_training_mode():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16) * 255
    plain = AffinityNet(_ThreeLevels(), widths=(2, 3, 4))
    assert not any(isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d)) for m in plain.modules())
    net = AffinityNet(_ThreeLevels(), widths=(2, 3, 4), dropout=0.5)
    assert isinstance(net.dropout, torch.nn.Dropout2d) and net.dropout.p == 0.5
    assert net.init_args["dropout"] == 0.5
    net.train()
    assert not torch.equal(net(x), net(x))
    net.eval()
    torch.testing.assert_close(net(x), net(x), rtol=0, atol=0)
    del net.dropout  # a network pickled before the option
    net(x)


def test_head_shapes_and_errors():
    head = AffinityHead((3, 4, 5), widths=(2, 2, 2))
    assert head.out_channels == 6
    out = head([torch.rand(1, 3, 16, 16), torch.rand(1, 4, 8, 8), torch.rand(1, 5, 8, 8)])
    assert out.shape == (1, 6, 8, 8)
    assert torch.all(out >= -1)  # ELU
    with pytest.raises(ValueError, match="three"):
        head([torch.rand(1, 3, 8, 8)])
    with pytest.raises(ValueError, match="three levels"):
        AffinityHead((3, 4), widths=(2, 2, 2))
