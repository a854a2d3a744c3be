"""Tests of the random walk: offsets, kernels against a dense float64 reference, the refiner."""

import pickle
from unittest import mock

import numpy as np
import pytest
import scipy.sparse
import torch
from hypothesis import given
from hypothesis import strategies as st
from numpy.polynomial import chebyshev
from sklearn.base import clone
from sklearn.utils._param_validation import InvalidParameterError

from sklearn_psa import RandomWalkRefiner, _walk_kernels, neighbor_offsets, random_walk
from sklearn_psa._walk_kernels import (
    chebyshev_power_coefficients,
    polynomial_walk,
    transition_csr,
)
from sklearn_psa.records import Records

#: torch with each of its CPU kernels (forced regardless of the grid size), and scipy.
KERNELS = ["torch-csr", "torch-stencil", "scipy"]


def walk(kernel, scores, affinity, **kwargs):
    """``random_walk`` with one kernel."""
    if kernel == "scipy":
        return random_walk(scores, affinity, backend="scipy", **kwargs)
    threshold = 0 if kernel == "torch-stencil" else 10**12
    with mock.patch.object(_walk_kernels, "STENCIL_MIN_CELLS", threshold):
        return random_walk(scores, affinity, backend="torch", **kwargs)


# --------------------------------------------------------------------------- reference


def dense_weights(affinity, beta):
    """W**beta in float64 (self-loops 1), from the definition: each on-grid pair, both ways."""
    K, h, w = affinity.shape
    radius = next(r for r in range(1, 20) if len(neighbor_offsets(r)) == K)
    W = np.eye(h * w)
    cell = np.arange(h * w).reshape(h, w)
    for k, (dy, dx) in enumerate(neighbor_offsets(radius)):
        y, x = np.nonzero(np.ones((h, w), bool))
        on_grid = (y + dy >= 0) & (y + dy < h) & (x + dx >= 0) & (x + dx < w)
        y, x = y[on_grid], x[on_grid]
        p, q = cell[y, x], cell[y + dy, x + dx]
        W[p, q] = W[q, p] = affinity[k, y, x]
    return W**beta


def dense_transition(affinity, beta):
    """T = D^-1 W**beta, D the row sums."""
    A = dense_weights(affinity, beta)
    return A / A.sum(axis=1, keepdims=True)


def dense_walk(scores, affinity, beta, t, T=None):
    """T^t applied to each channel, in float64 (``T`` may be given to save building it)."""
    C, h, w = scores.shape
    T = dense_transition(np.asarray(affinity, np.float64), beta) if T is None else T
    S = np.asarray(scores, np.float64).reshape(C, h * w).T
    return (np.linalg.matrix_power(T, t) @ S).T.reshape(C, h, w)


def f32_tol(scores, t):
    """Rounding of t float32 products: about t * eps of the largest score (measured: t * 0.5 eps)."""
    return 1.2e-7 * (t + 100) * max(float(np.abs(scores).max()), 1e-30)


def random_inputs(rng, C, h, w, radius, *, zeros=0.0, high=1.0):
    K = len(neighbor_offsets(radius))
    affinity = rng.uniform(0, high, (K, h, w)).astype(np.float32)
    affinity[rng.random((K, h, w)) < zeros] = 0
    scores = rng.random((C, h, w)).astype(np.float32)
    return scores, affinity


# --------------------------------------------------------------------------- offsets


@pytest.mark.parametrize("radius", range(1, 9))
def test_neighbor_offsets_definition(radius):
    offsets = neighbor_offsets(radius)
    assert offsets.dtype == np.int64 and offsets.shape[1] == 2
    pairs = [tuple(o) for o in offsets.tolist()]
    assert pairs == sorted(pairs) and len(set(pairs)) == len(pairs)
    # every vector within the radius appears exactly once, in one direction
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            inside = 0 < dy * dy + dx * dx < radius * radius
            count = pairs.count((dy, dx)) + pairs.count((-dy, -dx))
            assert count == (1 if inside else 0), (dy, dx)
    assert all(dy > 0 or (dy == 0 and dx > 0) for dy, dx in pairs)


def test_neighbor_offsets_known_counts():
    assert len(neighbor_offsets(5)) == 34
    assert len(neighbor_offsets(1)) == 0
    assert neighbor_offsets(2).tolist() == [[0, 1], [1, -1], [1, 0], [1, 1]]
    neighbor_offsets(5)[0] = 99  # a copy: the cache is not touched
    assert neighbor_offsets(5)[0].tolist() == [0, 1]


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-2, ValueError), (2.5, TypeError),
                                        (True, TypeError), ("5", TypeError)])
def test_neighbor_offsets_errors(bad, error):
    with pytest.raises(error, match="radius"):
        neighbor_offsets(bad)


# ------------------------------------------------------------------ the walk vs the dense formula


SHAPES = [(1, 1), (1, 9), (9, 1), (2, 3), (3, 3), (4, 2), (7, 5), (6, 11), (13, 12)]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("h, w", SHAPES)
@pytest.mark.parametrize("radius", [2, 5])
def test_matches_dense_reference(kernel, h, w, radius):
    rng = np.random.default_rng(h * 100 + w + radius)
    scores, affinity = random_inputs(rng, 3, h, w, radius, zeros=0.2)
    T = dense_transition(affinity, 8)
    for t in (1, 2, 5, 64, 256):
        ref = dense_walk(scores, affinity, 8, t, T)
        out = walk(kernel, scores, affinity, beta=8, t=t)
        assert out.shape == scores.shape and out.dtype == np.float32
        np.testing.assert_allclose(out, ref, rtol=0, atol=f32_tol(scores, t), err_msg=f"t={t}")
        out64 = walk(kernel, scores.astype(np.float64), affinity, beta=8, t=t)
        assert out64.dtype == np.float64
        np.testing.assert_allclose(out64, ref, rtol=0, atol=1e-12, err_msg=f"t={t}")


@pytest.mark.parametrize("kernel", KERNELS)
def test_matches_dense_reference_other_parameters(kernel):
    rng = np.random.default_rng(7)
    # affinities above 1, a fractional beta, a long walk, radius 3
    scores, affinity = random_inputs(rng, 2, 8, 9, 3, zeros=0.3, high=2.5)
    scores = scores * 10 - 3  # scores need not be probabilities
    for beta, t in [(0.5, 3), (2.5, 300), (1, 1000), (16, 77)]:
        ref = dense_walk(scores, affinity, beta, t)
        out = walk(kernel, scores.astype(np.float64), affinity, beta=beta, t=t)
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-11, err_msg=f"beta={beta} t={t}")
        out = walk(kernel, scores, affinity, beta=beta, t=t)
        np.testing.assert_allclose(out, ref, rtol=0, atol=f32_tol(scores, t))


def test_auto_picks_the_stencil_for_large_grids_on_cpu():
    calls = []
    real = _walk_kernels.stencil_operator
    with mock.patch.object(_walk_kernels, "stencil_operator",
                           side_effect=lambda *a: calls.append(a[0].shape) or real(*a)):
        scores, affinity = random_inputs(np.random.default_rng(0), 1, 64, 64, 5)
        random_walk(scores, affinity, t=3)
        random_walk(scores[:, :63, :63], affinity[:, :63, :63], t=3)
        random_walk(scores, affinity, t=3, backend="scipy")
    assert calls == [(34, 64, 64)]  # 64 x 64 = STENCIL_MIN_CELLS; 63 x 63 and scipy use CSR


def test_uses_both_directions_and_all_borders():
    # radius 2 on a 3 x 3 grid: the centre is paired with every cell, the corners
    # only through offsets that start outside the first row or column.
    h = w = 3
    affinity = np.zeros((4, h, w), np.float32)
    affinity[3, 0, 0] = 1.0  # (0, 0) -- (1, 1), given from the top-left end
    affinity[1, 0, 2] = 1.0  # (0, 2) -- (1, 1), offset (1, -1) from the top-right corner
    scores = np.zeros((1, h, w), np.float32)
    scores[0, 1, 1] = 1.0
    out = random_walk(scores, affinity, beta=1, t=1)[0]
    # the corners now see half of the centre; the centre keeps 1/3 of itself
    np.testing.assert_allclose(out, [[0.5, 0, 0.5], [0, 1 / 3, 0], [0, 0, 0]], atol=1e-7)


def test_identity_without_neighbours():
    rng = np.random.default_rng(0)
    scores = rng.random((2, 4, 5)).astype(np.float32)
    out = random_walk(scores, np.zeros((0, 4, 5), np.float32), t=50)  # radius 1: K = 0
    np.testing.assert_allclose(out, scores, rtol=1e-6)
    out = random_walk(scores, np.zeros((34, 4, 5), np.float32), t=50)  # all affinities 0
    np.testing.assert_allclose(out, scores, rtol=1e-6)


def test_t_zero_returns_input_unchanged():
    rng = np.random.default_rng(1)
    scores, affinity = random_inputs(rng, 3, 5, 6, 5)
    out = random_walk(scores, affinity, t=0)
    assert out is not scores
    np.testing.assert_array_equal(out, scores)
    tensor = torch.from_numpy(scores)
    assert torch.equal(random_walk(tensor, affinity, t=0), tensor)


@pytest.mark.parametrize("t", [1000, 10**6, 10**9])
def test_long_walks_keep_float32_accuracy(t):
    # a slowly mixing grid (second eigenvalue 0.99984): far from stationary at t = 1000,
    # reached by t = 10**6; float32 products lost 3e-3 at 10**6 and everything at 10**9
    rng = np.random.default_rng(0)
    affinity = rng.uniform(0.05, 0.6, (len(neighbor_offsets(2)), 4, 5)).astype(np.float32)
    scores = rng.uniform(0, 1, (2, 4, 5)).astype(np.float32)
    W = dense_weights(affinity.astype(np.float64), 8)
    d = W.sum(axis=1)
    lam, V = np.linalg.eigh(W / np.sqrt(np.outer(d, d)))  # M = D^-1/2 W D^-1/2, similar to T
    power = np.sign(lam) ** (t % 2) * np.abs(lam) ** t
    S = scores.reshape(2, -1).T.astype(np.float64)
    expected = ((V * power) @ (V.T @ (np.sqrt(d)[:, None] * S)) / np.sqrt(d)[:, None]).T
    out = random_walk(scores, affinity, beta=8, t=t, backend="torch")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.reshape(2, -1), expected, atol=2e-7)


def test_keeps_kind_dtype_and_inputs():
    rng = np.random.default_rng(2)
    scores, affinity = random_inputs(rng, 2, 6, 7, 5)
    before = (scores.copy(), affinity.copy())
    out = random_walk(torch.from_numpy(scores), torch.from_numpy(affinity), t=10)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.device.type == "cpu"
    np.testing.assert_allclose(out.numpy(), random_walk(scores, affinity, t=10), atol=1e-7)
    assert isinstance(random_walk(torch.from_numpy(scores).double(), affinity, t=3), torch.Tensor)
    out = random_walk((scores * 100).astype(np.int64), affinity, t=3, backend="scipy")
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(scores, before[0])
    np.testing.assert_array_equal(affinity, before[1])
    empty = random_walk(np.zeros((0, 6, 7), np.float32), affinity)
    assert empty.shape == (0, 6, 7)


@pytest.mark.parametrize("kernel", KERNELS)
def test_off_grid_entries_are_ignored(kernel):
    rng = np.random.default_rng(3)
    scores, affinity = random_inputs(rng, 2, 6, 6, 5)
    junk = affinity.copy()
    offsets = neighbor_offsets(5)
    for k, (dy, dx) in enumerate(offsets):
        junk[k, 6 - dy:, :] = np.nan  # neighbour below the grid
        if dx > 0:
            junk[k, :, 6 - dx:] = -5.0  # neighbour right of the grid
        if dx < 0:
            junk[k, :, :-dx] = np.inf  # neighbour left of the grid
    np.testing.assert_array_equal(walk(kernel, scores, junk, t=30), walk(kernel, scores, affinity, t=30))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(4)
    scores, affinity = random_inputs(rng, 3, 20, 17, 5)
    out = random_walk(torch.from_numpy(scores).cuda(), torch.from_numpy(affinity).cuda())
    assert out.device.type == "cuda"
    np.testing.assert_allclose(out.cpu().numpy(), random_walk(scores, affinity),
                               atol=f32_tol(scores, 256))
    out = random_walk(scores, affinity, device="cuda")
    assert isinstance(out, np.ndarray)


# --------------------------------------------------------------------------- the Chebyshev expansion


@pytest.mark.parametrize("t", [2, 3, 10, 64, 255, 256, 1000, 10**6])
@pytest.mark.parametrize("tau", [1e-3, 1e-8, 1e-17])
def test_chebyshev_coefficients_bound(t, tau):
    c = chebyshev_power_coefficients(t, tau)
    if c is None:  # no saving: only for small t
        assert t <= 64
        return
    assert len(c) < t and np.all(c >= 0) and c.sum() == pytest.approx(1, abs=1e-15)
    assert np.all(c[(t - np.arange(len(c))) % 2 == 1] == 0)  # parity of x**t
    if t <= 1000:
        x = np.cos(np.linspace(0, np.pi, 20001, dtype=np.longdouble))
        err = np.abs(x**t - chebyshev.chebval(x, c.astype(np.longdouble))).max()
        # plus the rounding of x**t and of Clenshaw's recurrence (about m**2 eps near +-1)
        assert err <= 2 * tau + 2 * (len(c) ** 2 + t) * np.finfo(np.longdouble).eps
    # the degree grows like sqrt(t log(1 / tau)), not like t
    assert len(c) - 1 <= np.sqrt(2 * t * np.log(4 / tau)) + 2


def test_chebyshev_error_bound_on_a_walk():
    """max|T^t s - p(T) s| <= 2 tau sqrt(sum D / min D) max|s|, and the bound is not vacuous."""
    rng = np.random.default_rng(5)
    scores, affinity = random_inputs(rng, 3, 9, 8, 3, zeros=0.5)
    t, tau = 200, 1e-4
    crow, col, values, ratio = transition_csr(torch.from_numpy(affinity).double(),
                                              neighbor_offsets(3), 4.0, torch.float64)
    T = scipy.sparse.csr_array((values.numpy(), col.numpy(), crow.numpy()), shape=(72, 72))
    x = scores.astype(np.float64).reshape(3, 72).T.copy()
    approx = polynomial_walk(x, t, chebyshev_power_coefficients(t, tau), lambda v: T @ v,
                             lambda cur, prev: 2 * (T @ cur) - prev)
    exact = dense_walk(scores, affinity, 4.0, t).reshape(3, 72).T
    err = np.abs(approx - exact).max()
    bound = 2 * tau * np.sqrt(ratio) * np.abs(scores).max()
    assert err <= bound
    assert err > 1e-9  # the truncation is visible at this tau: the comparison has teeth


def test_transition_rows_are_stochastic_and_sorted():
    rng = np.random.default_rng(6)
    _, affinity = random_inputs(rng, 1, 7, 9, 5, zeros=0.3)
    crow, col, values, _ = transition_csr(torch.from_numpy(affinity), neighbor_offsets(5),
                                          8.0, torch.float32)
    assert crow.dtype == torch.int32 and col.dtype == torch.int32
    T = scipy.sparse.csr_array((values, col, crow), shape=(63, 63)).toarray().astype(np.float64)
    np.testing.assert_allclose(T, dense_transition(affinity, 8), rtol=1e-6, atol=1e-30)
    for r in range(63):
        row = col[crow[r]:crow[r + 1]].numpy()
        assert np.all(np.diff(row) > 0)
    assert (values > 0).all()  # zeros (pruned affinities, borders) are not stored


def test_subnormal_weights_are_flushed():
    affinity = np.full((4, 3, 3), 1e-6, np.float32)  # 1e-6 ** 8 = 1e-48: below float32
    crow, col, values, _ = transition_csr(torch.from_numpy(affinity), neighbor_offsets(2),
                                          8.0, torch.float32)
    assert values.numel() == 9 and torch.all(values == 1)  # the self-loops alone


# --------------------------------------------------------------------------- properties

grids = st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 4))


@st.composite
def walk_inputs(draw):
    h, w, radius = draw(grids)
    C = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scores, affinity = random_inputs(rng, C, h, w, radius, zeros=draw(st.sampled_from([0, 0.3, 0.9])))
    beta = draw(st.sampled_from([0.5, 1, 4, 8, 16]))
    t = draw(st.integers(0, 300))
    return scores, affinity, beta, t


kernels = st.sampled_from(KERNELS)


@given(walk_inputs(), st.floats(-100, 100), kernels)
def test_constant_map_stays_constant(inputs, value, kernel):
    scores, affinity, beta, t = inputs
    constant = np.full_like(scores, np.float32(value))
    out = walk(kernel, constant, affinity, beta=beta, t=t)
    np.testing.assert_allclose(out, constant, rtol=0, atol=f32_tol(constant, t))


@given(walk_inputs())
def test_backends_agree(inputs):
    scores, affinity, beta, t = inputs
    a, b, c = (walk(kernel, scores, affinity, beta=beta, t=t) for kernel in KERNELS)
    np.testing.assert_allclose(a, c, rtol=0, atol=f32_tol(scores, t))
    np.testing.assert_allclose(b, c, rtol=0, atol=f32_tol(scores, t))
    assert np.array_equal(random_walk(scores, affinity, beta=beta, t=t), a)  # auto: CSR when small


@given(walk_inputs(), st.randoms(use_true_random=False), kernels)
def test_channel_order_does_not_matter(inputs, random, kernel):
    scores, affinity, beta, t = inputs
    order = list(range(len(scores)))
    random.shuffle(order)
    out = walk(kernel, scores, affinity, beta=beta, t=t)
    np.testing.assert_allclose(walk(kernel, scores[order], affinity, beta=beta, t=t), out[order],
                               rtol=0, atol=1e-6)
    # and each channel alone gives its row of the joint result
    np.testing.assert_allclose(walk(kernel, scores[-1:], affinity, beta=beta, t=t), out[-1:],
                               rtol=0, atol=1e-6)


@given(walk_inputs(), kernels)
def test_averages_keep_range_and_degree_weighted_mass(inputs, kernel):
    scores, affinity, beta, t = inputs
    s64 = scores.astype(np.float64)
    out = walk(kernel, s64, affinity, beta=beta, t=t)
    # every output is a weighted average of the inputs of its channel
    assert np.all(out >= s64.min(axis=(1, 2), keepdims=True) - 1e-12)
    assert np.all(out <= s64.max(axis=(1, 2), keepdims=True) + 1e-12)
    # d^T T = 1^T W**beta = d^T: the degree-weighted sum of each channel is invariant
    C = len(scores)
    d = dense_weights(affinity, beta).sum(axis=1)
    np.testing.assert_allclose(out.reshape(C, -1) @ d, s64.reshape(C, -1) @ d, rtol=1e-10)


# --------------------------------------------------------------------------- errors


def test_errors_name_the_problem():
    rng = np.random.default_rng(8)
    scores, affinity = random_inputs(rng, 2, 5, 6, 5)
    bad = scores.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"scores\[1, 2, 3\] is nan"):
        random_walk(bad, affinity)
    bad = affinity.copy()
    bad[4, 1, 1] = -0.5  # offset (1, -4): the neighbour is off the grid, the value ignored
    random_walk(scores, bad)
    bad[2, 1, 1] = -0.5  # offset (0, 3): (1, 1) -- (1, 4)
    with pytest.raises(ValueError, match=r"affinity\[2, 1, 1\] is -0.5.*>= 0"):
        random_walk(scores, bad)
    bad = affinity.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"affinity\[0, 0, 0\] is inf.*finite"):
        random_walk(scores, bad)
    with pytest.raises(ValueError, match=r"35 channels, which matches no neighbourhood.*34 \(radius 5\)"):
        random_walk(scores, np.ones((35, 5, 6), np.float32))
    with pytest.raises(ValueError, match=r"\(5, 7\) grid but scores on \(5, 6\)"):
        random_walk(scores, np.ones((34, 5, 7), np.float32))
    with pytest.raises(ValueError, match=r"scores must be \(C, h, w\)"):
        random_walk(scores[0], affinity)
    with pytest.raises(ValueError, match=r"affinity must be \(K, h, w\)"):
        random_walk(scores, affinity[0])
    with pytest.raises(TypeError, match="real numbers"):
        random_walk(scores.astype(np.complex64), affinity)
    with pytest.raises(ValueError, match="overflows"):
        random_walk(scores, affinity * 1e8, beta=8)


@pytest.mark.parametrize("kwargs", [{"beta": 0}, {"beta": -1}, {"t": -1}, {"t": 2.5},
                                    {"backend": "cuda"}, {"backend": None}])
def test_parameter_errors(kwargs):
    scores, affinity = random_inputs(np.random.default_rng(0), 1, 3, 3, 5)
    with pytest.raises(InvalidParameterError, match=next(iter(kwargs))):
        random_walk(scores, affinity, **kwargs)


def test_device_errors():
    scores, affinity = random_inputs(np.random.default_rng(0), 1, 3, 3, 5)
    with pytest.raises(ValueError, match="device"):
        random_walk(scores, affinity, device="no-such-device")
    with pytest.raises(ValueError, match="scipy.*CPU|CUDA"):
        random_walk(scores, affinity, backend="scipy", device="cuda")
    assert random_walk(scores, affinity, backend="scipy", device="cpu").shape == scores.shape


# --------------------------------------------------------------------------- RandomWalkRefiner


def make_records(seed, shapes, n_classes=3, radius=5, affinity=True):
    """Records with random images, CAMs and affinities; the first record has no class."""
    rng = np.random.default_rng(seed)
    K = len(neighbor_offsets(radius))
    images, labels, cams, affinities = [], [], [], []
    for i, (H, W) in enumerate(shapes):
        present = [] if i == 0 else sorted(rng.choice(n_classes, rng.integers(1, n_classes + 1),
                                                      replace=False))
        y = np.zeros(n_classes, np.uint8)
        y[present] = 1
        images.append(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        labels.append(y)
        cams.append(rng.random((len(present), H, W)).astype(np.float32))
        affinities.append(rng.random((K, -(-H // 8), -(-W // 8))).astype(np.float32))
    if not affinity:
        return Records.from_arrays(images, labels, cams)
    return Records.from_arrays(images, labels, cams, affinities, radius=radius)


SHAPES_IMG = [(24, 40), (37, 29), (8, 61), (50, 50)]


@pytest.fixture(scope="module")
def records():
    return make_records(0, SHAPES_IMG)


def hand_scores(record, alpha):
    cams = record.cams
    top = cams.max(axis=0) if len(cams) else np.zeros(record.shape, np.float32)
    bg = np.power(np.float32(1) - top, np.float32(alpha))
    return np.concatenate([bg[None], cams]).astype(np.float32)


def hand_pool(scores, stride=8):
    C, H, W = scores.shape
    h, w = -(-H // stride), -(-W // stride)
    out = np.zeros((C, h, w))
    for y in range(h):
        for x in range(w):
            cell = scores[:, y * stride:(y + 1) * stride, x * stride:(x + 1) * stride]
            out[:, y, x] = cell.mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("alpha", [1, 16, 2.5])
def test_t0_is_the_cam_baseline(records, alpha):
    no_affinity = make_records(0, SHAPES_IMG, affinity=False)
    refiner = RandomWalkRefiner(alpha=alpha, t=0)
    masks = refiner.fit(no_affinity).predict(no_affinity)
    assert isinstance(masks, list) and len(masks) == len(records)
    for r, mask, scores in zip(records, masks, refiner.transform(records)):
        expected = hand_scores(r, alpha)
        np.testing.assert_array_equal(scores, expected)
        values = np.concatenate([[0], r.labels + 1])
        assert mask.dtype == np.uint8 and mask.shape == r.shape
        np.testing.assert_array_equal(mask, values[np.argmax(expected, axis=0)])
    np.testing.assert_array_equal(masks[0], 0)  # no class present: all background


def test_predict_matches_the_hand_pipeline(records):
    refiner = RandomWalkRefiner(alpha=4, beta=8, t=64)
    refined = refiner.transform(records)
    masks = refiner.predict(records)
    for r, scores, mask in zip(records, refined, masks):
        grid = hand_pool(hand_scores(r, 4))
        walked = dense_walk(grid, r.affinity, 8, 64)
        h, w = walked.shape[1:]
        up = torch.nn.functional.interpolate(torch.from_numpy(walked)[None], size=(8 * h, 8 * w),
                                             mode="bilinear", align_corners=False)[0]
        expected = up[:, : r.shape[0], : r.shape[1]].numpy()
        assert scores.dtype == np.float32 and scores.shape == (1 + len(r.labels),) + r.shape
        np.testing.assert_allclose(scores, expected, rtol=0, atol=f32_tol(grid, 64))
        values = np.concatenate([[0], r.labels + 1])
        np.testing.assert_array_equal(mask, values[np.argmax(scores, axis=0)])


def test_average_pool_counts_only_pixels_inside():
    from sklearn_psa._walk_kernels import average_pool

    scores = np.random.default_rng(0).random((2, 13, 21)).astype(np.float32)
    np.testing.assert_allclose(average_pool(scores, 8), hand_pool(scores), rtol=1e-6)
    np.testing.assert_allclose(average_pool(np.ones((1, 9, 9), np.float32), 8), 1.0)


def test_class_values_follow_the_labels():
    rng = np.random.default_rng(1)
    # (the walk itself is checked above; here, that channel i of the stack becomes labels[i] + 1)
    image = np.zeros((16, 24, 3), np.uint8)
    cams = np.zeros((2, 16, 24), np.float32)
    cams[0, :, :8] = 1  # class column 1 -> value 2
    cams[1, :, 16:] = 1  # class column 4 -> value 5
    affinity = rng.uniform(0, 0.1, (34, 2, 3)).astype(np.float32)  # weak: little mixing
    recs = Records.from_arrays([image], [[0, 1, 0, 0, 1]], [cams], [affinity], radius=5)
    for t in (0, 4):
        mask = RandomWalkRefiner(alpha=1, beta=2, t=t).predict(recs)[0]
        assert set(np.unique(mask)) <= {0, 2, 5}
        assert mask[0, 0] == 2 and mask[0, -1] == 5


def objects_scene(seed):
    """Two objects whose CAMs cover only a part, and the oracle affinity of the true masks."""
    from sklearn_psa._affinity_labels import oracle_affinity

    rng = np.random.default_rng(seed)
    H, W = 64, 80
    mask = np.zeros((H, W), np.uint8)
    mask[8:40, 8:40] = 1
    mask[24:60, 48:76] = 3
    cams = np.zeros((2, H, W), np.float32)
    for i, value in enumerate((1, 3)):
        ys, xs = np.nonzero(mask == value)
        cams[i][mask == value] = 0.2  # weak on the body: (1 - 0.2) ** 4 = 0.41 > 0.2
        y0, x0 = ys.min(), xs.min()
        cams[i, y0:y0 + 16, x0:x0 + 16] = 1.0  # strong on a part
    cams += rng.uniform(0, 0.05, cams.shape).astype(np.float32)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    affinity = oracle_affinity(mask, neighbor_offsets(5))
    recs = Records.from_arrays([image], [[1, 0, 1]], [np.clip(cams, 0, 1)], [affinity], radius=5)
    return recs, [mask]


def test_walk_completes_incomplete_cams_and_score_is_mean_iou():
    from sklearn_psa.metrics import mean_iou

    recs, masks = objects_scene(0)
    baseline = RandomWalkRefiner(alpha=4, t=0)
    walked = RandomWalkRefiner(alpha=4, beta=8, t=256)
    before, after = baseline.score(recs, masks), walked.score(recs, masks)
    assert after > before + 0.2  # measured: 0.39 -> 0.67 (boundaries blur by the 8x upsampling)
    # the bodies, CAM-weak, are background alone and their class after the walk
    bodies = (slice(28, 36), slice(28, 36)), (slice(40, 48), slice(62, 68))
    for (ys, xs), value in zip(bodies, (1, 3)):
        assert np.all(baseline.predict(recs)[0][ys, xs] == 0)
        assert np.all(walked.predict(recs)[0][ys, xs] == value)
    assert after == mean_iou(masks, walked.predict(recs), n_classes=3)


def test_backends_give_the_same_masks(records):
    a = RandomWalkRefiner(t=32, backend="torch", device="cpu")
    b = RandomWalkRefiner(t=32, backend="scipy")
    for x, y in zip(a.transform(records), b.transform(records)):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)


def test_refiner_input_errors(records):
    no_affinity = make_records(0, SHAPES_IMG, affinity=False)
    with pytest.raises(ValueError, match=r"X\[0\]: has no affinity"):
        RandomWalkRefiner().fit(no_affinity)
    with pytest.raises(ValueError, match=r"X\[0\]: has no affinity"):
        RandomWalkRefiner().predict(no_affinity)
    with pytest.raises(TypeError, match="expected Records"):
        RandomWalkRefiner().fit(np.zeros((2, 8, 8, 3), np.uint8))
    r = records[1]
    wrong_grid = Records([type(r)(r.image, r.labels, r.cams, r.affinity[:, :-1], 5, r.shape)],
                         records.n_classes)
    message = r"X\[0\]: affinity is on a \(4, 4\) grid, but a 37x29 image has the grid \(5, 4\)"
    with pytest.raises(ValueError, match=message):
        RandomWalkRefiner().predict(wrong_grid)
    wrong_radius = Records([type(r)(r.image, r.labels, r.cams, r.affinity, 4, r.shape)],
                           records.n_classes)
    with pytest.raises(ValueError, match="34 channels, but radius 4 has 22 neighbour offsets"):
        RandomWalkRefiner().transform(wrong_radius)
    wrong_radius.records[0].radius = 4.5
    with pytest.raises(ValueError, match=r"X\[0\]: invalid radius 4.5"):
        RandomWalkRefiner().transform(wrong_radius)
    with pytest.raises(ValueError, match=r"y\[1\].*shape"):
        shapes = [(24, 40), (3, 3), (8, 61), (50, 50)]
        RandomWalkRefiner(t=0).score(records, [np.zeros(s, np.uint8) for s in shapes])
    with pytest.raises(ValueError, match="device"):
        RandomWalkRefiner(device="no-such-device").predict(records)


@pytest.mark.parametrize("params", [{"alpha": 0}, {"beta": -1}, {"t": -1}, {"t": 1.5},
                                    {"backend": "numpy"}, {"device": 3}])
def test_refiner_parameter_errors(records, params):
    refiner = RandomWalkRefiner(**params)
    for method in (refiner.fit, refiner.transform, refiner.predict):
        with pytest.raises(InvalidParameterError, match=next(iter(params))):
            method(records)


def test_refiner_is_stateless_clones_and_pickles(records):
    refiner = RandomWalkRefiner(alpha=8, beta=4, t=16, backend="scipy", device="cpu")
    state = dict(vars(refiner))
    assert refiner.fit(records, records.labels) is refiner
    assert vars(refiner) == state  # fit learns nothing
    twin = clone(refiner)
    assert twin.get_params() == refiner.get_params()
    assert twin.set_params(t=0).t == 0 and refiner.t == 16
    restored = pickle.loads(pickle.dumps(refiner))
    assert restored.get_params() == refiner.get_params()
    for a, b in zip(restored.predict(records), refiner.predict(records)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(refiner.fit_transform(records), refiner.transform(records)):
        np.testing.assert_array_equal(a, b)
    assert refiner.__sklearn_tags__().requires_fit is False


def test_refiner_progress_bar_only_when_verbose(records, capsys):
    refiner = RandomWalkRefiner(t=4, device="cpu")
    assert refiner.get_params()["verbose"] == 0
    refiner.predict(records)
    refiner.transform(records)
    assert capsys.readouterr().err == ""
    masks = refiner.set_params(verbose=1).predict(records)
    assert "random walk" in capsys.readouterr().err
    for a, b in zip(masks, refiner.set_params(verbose=0).predict(records)):
        np.testing.assert_array_equal(a, b)
    refiner.set_params(verbose=2, t=0).transform(records)
    err = capsys.readouterr().err  # verbose=2 keeps the completed bar
    assert "CAM baseline (t=0): 100%" in err and f"{len(records)}/{len(records)}" in err


DATA_FREE_CHECKS = [
    "check_no_attributes_set_in_init",
    "check_parameters_default_constructible",
    "check_get_params_invariance",
    "check_set_params",
    "check_estimator_repr",
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_estimator_tags_renamed",
    "check_valid_tag_types",
    "check_mixin_order",
    "check_estimator_cloneable",
    "check_param_validation",
]


@pytest.mark.parametrize("check", DATA_FREE_CHECKS)
def test_sklearn_checks_that_apply(check):
    """scikit-learn's checks that need no data; the others feed 2-D arrays, not Records.

    ``parametrize_with_checks`` skips them itself (``input_tags.two_d_array`` is
    False): every other check calls ``fit``/``predict`` on arrays, which this step
    rejects by design, since its input is the records of the previous steps.
    """
    from sklearn.utils import estimator_checks

    getattr(estimator_checks, check)("RandomWalkRefiner", RandomWalkRefiner())


def test_flush_denormal_restores_the_callers_setting():
    from sklearn_psa._device import flush_denormal

    def flushing():
        return bool((torch.tensor([1e-39]) * 1.0).item() == 0.0)

    scores, affinity = np.ones((1, 3, 3), np.float32), np.ones((34, 3, 3), np.float32)
    try:
        for before in (False, True):
            torch.set_flush_denormal(before)
            with flush_denormal():
                assert flushing() or not torch.set_flush_denormal(True)
            assert flushing() == before
            random_walk(scores, affinity, t=4)  # flushes inside, restores after
            assert flushing() == before
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.parametrize("backend", ["torch", "scipy"])
def test_scores_near_the_float_range_walk_without_overflow(backend):
    affinity = np.ones((34, 4, 4), np.float32)
    for value in (2e38, -3e38, 1e300):
        dtype = np.float64 if abs(value) > 3.4e38 else np.float32
        scores = np.full((1, 4, 4), value, dtype)
        out = random_walk(scores, affinity, t=256, backend=backend)
        np.testing.assert_allclose(out, scores, rtol=1e-5)  # a constant map stays constant


# --------------------------------------------------------------------------- transition_matrix


@given(walk_inputs())
def test_transition_matrix_is_the_dense_formula_and_drives_the_walk(inputs):
    from sklearn_psa import transition_matrix

    scores, affinity, beta, t = inputs
    T = transition_matrix(affinity, beta=beta)
    assert isinstance(T, scipy.sparse.csr_array) and T.dtype == np.float32
    dense = dense_transition(affinity.astype(np.float64), beta)
    # weights below float32's smallest normal number are dropped, as the kernels do
    np.testing.assert_allclose(T.toarray(), np.where(dense < 1.2e-38, 0, dense),
                               rtol=1e-5, atol=1e-30)
    assert T.nnz <= T.shape[0] * (2 * affinity.shape[0] + 1)
    np.testing.assert_allclose(T.sum(axis=1), 1, rtol=1e-5)
    # one's own propagation with it is the walk
    C, h, w = scores.shape
    x = scores.reshape(C, -1).T.astype(np.float64)
    for _ in range(min(t, 20)):
        x = T @ x
    np.testing.assert_allclose(x.T.reshape(C, h, w),
                               random_walk(scores, affinity, beta=beta, t=min(t, 20)),
                               rtol=0, atol=f32_tol(scores, 20))


def test_transition_matrix_of_a_record_and_its_errors():
    from sklearn_psa import transition_matrix
    from sklearn_psa.records import Record

    rng = np.random.default_rng(0)
    affinity = rng.random((len(neighbor_offsets(3)), 3, 4))
    T = transition_matrix(affinity, beta=2)  # float64 in, float64 out
    assert T.dtype == np.float64 and T.shape == (12, 12)
    record = Record(np.zeros((24, 32, 3), np.uint8), [0], affinity=affinity, radius=3)
    np.testing.assert_allclose(record.transition_matrix(beta=2).toarray(),
                               transition_matrix(affinity.astype(np.float32), beta=2).toarray())
    with pytest.raises(ValueError, match="record has no affinity"):
        Record(np.zeros((24, 32, 3), np.uint8), [0]).transition_matrix()
    with pytest.raises(ValueError, match=r"record\[0\]: affinity has 12 channels, but radius 2"):
        Record(np.zeros((24, 32, 3), np.uint8), [0], affinity=affinity, radius=2).transition_matrix()
    with pytest.raises(ValueError, match="beta must be at least 0"):
        transition_matrix(affinity, beta=-1)
    bad = affinity.copy()
    bad[0, 1, 1] = -1
    with pytest.raises(ValueError, match=r"affinity\[0, 1, 1\] is -1.0: affinities must be >= 0"):
        transition_matrix(bad)
    with pytest.raises(ValueError, match="matches no neighbourhood"):
        transition_matrix(np.ones((5, 2, 2)))


# ----------------------------------------------------------------- the CRF on the walked scores


def crf_by_hand(record, scores, **options):
    """The dense CRF over one record's refined scores, written out: the scores as per-pixel
    distributions, the reference's kernels with the bilateral width scaled to the image."""
    from sklearn_psa import dense_crf

    probs = np.maximum(scores.astype(np.float64), 0)
    total = probs.sum(axis=0, keepdims=True)
    probs = np.where(total > 0, probs / np.where(total > 0, total, 1), 1 / len(probs))
    options.setdefault("bilateral_sxy", 80 * max(record.shape) / 500)
    return np.asarray(dense_crf(record.load_image(), probs.astype(np.float32), device="cpu", **options))


@pytest.mark.parametrize("t", [0, 16])
def test_crf_refines_the_walked_scores_as_the_dense_crf_does(records, t):
    plain = RandomWalkRefiner(alpha=4, beta=8, t=t, device="cpu")
    refined = clone(plain).set_params(crf=True)
    scores = refined.transform(records)
    masks = refined.predict(records)
    for record, walked, marginals, mask in zip(records.records, plain.transform(records), scores, masks):
        expected = crf_by_hand(record, walked)
        np.testing.assert_allclose(marginals, expected, atol=1e-5)
        np.testing.assert_allclose(marginals.sum(axis=0), 1, atol=1e-4)
        values = np.concatenate([[0], record.labels + 1])
        np.testing.assert_array_equal(mask, values[np.argmax(marginals, axis=0)])


def test_crf_dict_options_are_passed_and_its_width_not_scaled(records):
    record = records[[3]]
    options = {"bilateral_sxy": 40.0, "n_iter": 3}
    got = RandomWalkRefiner(alpha=4, t=16, device="cpu", crf=options).transform(record)[0]
    walked = RandomWalkRefiner(alpha=4, t=16, device="cpu").transform(record)[0]
    np.testing.assert_allclose(got, crf_by_hand(record.records[0], walked, **options), atol=1e-5)
    scaled = RandomWalkRefiner(alpha=4, t=16, device="cpu", crf={"n_iter": 3}).transform(record)[0]
    assert not np.allclose(got, scaled, rtol=1e-2, atol=0)


def test_crf_snaps_the_mask_to_the_object_edge():
    """A red square on grey whose CAM is a blur twice its size: the CAM alone spills over the
    grey; the CRF brings the mask back to the square's edge."""
    H = W = 64
    image = np.full((H, W, 3), 128, np.uint8)
    image[16:48, 16:48] = (220, 30, 30)
    yy, xx = np.mgrid[:H, :W]
    cam = np.exp(-((yy - 31.5) ** 2 + (xx - 31.5) ** 2) / (2 * 22.0 ** 2)).astype(np.float32)
    records = Records.from_arrays([image], labels=[[1]], cams=[cam[None]])
    truth = np.zeros((H, W), np.uint8)
    truth[16:48, 16:48] = 1
    spilled = RandomWalkRefiner(alpha=1, t=0).predict(records)[0]
    snapped = RandomWalkRefiner(alpha=1, t=0, crf=True).predict(records)[0]
    assert (spilled != truth).mean() > 0.1  # the CAM alone floods the grey around the square
    assert (snapped != truth).mean() < 0.01


def test_crf_workers_give_the_same_masks(records):
    one = RandomWalkRefiner(alpha=4, t=16, device="cpu", crf=True).predict(records)
    two = RandomWalkRefiner(alpha=4, t=16, device="cpu", crf=True, n_jobs=2).predict(records)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_crf_option_errors_name_the_parameter(records):
    with pytest.raises(InvalidParameterError, match="crf"):
        RandomWalkRefiner(crf="yes").predict(records)
    with pytest.raises(ValueError, match=r"crf: unknown dense_crf options \['sxy'\]"):
        RandomWalkRefiner(crf={"sxy": 3}).predict(records)
    with pytest.raises(ValueError, match="crf"):
        RandomWalkRefiner(crf={"bilateral_srgb": -1}).check_params()
