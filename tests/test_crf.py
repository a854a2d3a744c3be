"""Tests of the dense CRF (sklearn_psa.crf) and its permutohedral lattice."""

import doctest

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from sklearn_psa import dense_crf
from sklearn_psa.crf import DenseCRF
from sklearn_psa._permutohedral import LatticeFilter, PermutohedralLattice

# (gaussian_sxy, gaussian_compat, bilateral_sxy, bilateral_srgb, bilateral_compat)
DEFAULTS = dict(gaussian_sxy=3, gaussian_compat=3, bilateral_sxy=80, bilateral_srgb=13, bilateral_compat=10)
LOCAL = dict(gaussian_sxy=1.5, gaussian_compat=5, bilateral_sxy=5, bilateral_srgb=20, bilateral_compat=4)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The images here are tiny: extra threads only add synchronisation, and on a machine whose
    # cores are busy, idle OpenMP threads spin and slow every call several-fold.
    # (test_same_result_on_more_threads checks that threads do not change the result.)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def cam_like(mask, n_labels, rng, shift=(3, -2), blur=3.0, noise=1.5):
    """Label probabilities like normalised CAMs: misplaced, blurred and noisy."""
    onehot = (mask[None] == np.arange(n_labels)[:, None, None]).astype(np.float32)
    scores = ndimage.gaussian_filter(np.roll(onehot, shift, axis=(1, 2)), sigma=(0, blur, blur))
    smooth = ndimage.gaussian_filter(rng.normal(size=onehot.shape).astype(np.float32), sigma=(0, 4, 4))
    logits = 4.0 * scores + noise * smooth / smooth.std()
    probs = np.exp(logits - logits.max(0))
    return (probs / probs.sum(0)).astype(np.float32)


@pytest.fixture(scope="module")
def shapes():
    from sklearn_psa.datasets import make_shapes

    X, _, masks = make_shapes(4, n_classes=3, image_size=64, random_state=0)
    return X, masks


def exact_mean_field(image, probs, n_iter, gaussian_sxy, gaussian_compat, bilateral_sxy, bilateral_srgb, bilateral_compat):
    """The dense CRF's mean-field with explicit n x n Gaussian kernels, in float64."""
    n_labels, height, width = probs.shape
    ys, xs = np.mgrid[:height, :width]
    position = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
    colour = image.reshape(-1, 3).astype(np.float64)
    pairwise = gaussian_compat * _normalised_kernel(position / gaussian_sxy) + bilateral_compat * _normalised_kernel(
        np.concatenate([position / bilateral_sxy, colour / bilateral_srgb], 1)
    )
    log_probs = np.log(np.clip(probs.reshape(n_labels, -1).astype(np.float64), 1e-5, 1)).T
    marginals = _softmax(log_probs)
    for _ in range(n_iter):
        marginals = _softmax(log_probs + pairwise @ marginals)
    return marginals.T.reshape(n_labels, height, width)


def _normalised_kernel(features):
    kernel = np.exp(-((features[:, None] - features[None]) ** 2).sum(-1) / 2)
    norm = 1 / np.sqrt(kernel.sum(1))
    return norm[:, None] * kernel * norm[None]


def _softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def two_region_image(rng, height=12, width=10, noise=6.0):
    image = np.empty((height, width, 3))
    image[:] = rng.integers(0, 256, 3)
    image[height // 3 :, width // 2 :] = rng.integers(0, 256, 3)
    return np.clip(image + rng.normal(0, noise, image.shape), 0, 255).astype(np.uint8)


def random_probs(rng, shape, scale=1.0):
    logits = rng.normal(size=shape) * scale
    probs = np.exp(logits - logits.max(0))
    return (probs / probs.sum(0)).astype(np.float32)


# --- agreement with pydensecrf2 -------------------------------------------------------------


@pytest.mark.parametrize("params", [DEFAULTS, LOCAL], ids=["defaults", "local"])
@pytest.mark.parametrize("labels", ["present", "all"])
def test_agrees_with_pydensecrf2(shapes, params, labels):
    pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 (extra 'crf') is not installed")
    X, masks = shapes
    rng = np.random.default_rng(1)
    for image, mask in zip(X, masks):
        if labels == "present":  # background and the classes present, as the reference code does
            present = np.unique(mask)
            mask = np.searchsorted(present, mask)
            n_labels = len(present)
        else:
            n_labels = 4
        probs = cam_like(mask, n_labels, rng)
        ours = dense_crf(image, probs, **params)
        reference = dense_crf(image, probs, backend="pydensecrf2", **params)
        # Same lattice and arithmetic in float32: measured agreement 100%, max diff ~1e-6.
        assert (ours.argmax(0) == reference.argmax(0)).mean() >= 0.99
        assert np.abs(ours - reference).max() < 1e-3
        assert np.abs(ours - reference).mean() < 1e-5


def test_pydensecrf2_backend_matches_direct_use(shapes):
    dcrf = pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 (extra 'crf') is not installed")
    image, mask = shapes[0][1], shapes[1][1]
    probs = cam_like(mask, 4, np.random.default_rng(0))
    crf = dcrf.DenseCRF2D(64, 64, 4)
    crf.setUnaryEnergy(np.ascontiguousarray(-np.log(np.clip(probs, 1e-5, 1)).reshape(4, -1)))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=80, srgb=13, rgbim=np.ascontiguousarray(image), compat=10)
    direct = np.asarray(crf.inference(5)).reshape(4, 64, 64)
    np.testing.assert_allclose(dense_crf(image, probs, n_iter=5, backend="pydensecrf2"), direct, atol=1e-7)


def test_crf_improves_cam_like_probabilities(shapes):
    # Not a check of the arithmetic but of the model: edges in the image pull labels into place.
    X, masks = shapes
    rng = np.random.default_rng(2)
    before = after = 0.0
    for image, mask in zip(X, masks):
        probs = cam_like(mask, 4, rng)
        before += (probs.argmax(0) == mask).mean()
        after += (dense_crf(image, probs).argmax(0) == mask).mean()
    assert after > before + 0.02


# --- against the exact dense CRF ------------------------------------------------------------


@pytest.mark.parametrize("params", [DEFAULTS, LOCAL], ids=["defaults", "local"])
def test_close_to_exact_mean_field(params):
    # The lattice approximates each Gaussian kernel: its normalised messages differ from the
    # exact ones by 3-9% of their size on such images (test_normalised_filter_close_to_exact),
    # so one mean-field step differs by up to ~0.05 (measured on these seeds: <= 0.055).
    rng = np.random.default_rng(0)
    for _ in range(3):
        image = two_region_image(rng)
        probs = random_probs(rng, (3, 12, 10))
        one = dense_crf(image, probs, n_iter=1, **params)
        np.testing.assert_allclose(one, exact_mean_field(image, probs, 1, **params), atol=0.1)
        if params is DEFAULTS:
            # With the defaults, 10 steps saturate the marginals and the differences shrink
            # (measured: mean <= 3e-5, argmax identical). With strong local kernels ("local")
            # mean-field is near a bifurcation on these noisy images, and the small per-step
            # differences can tip a few pixels (measured up to 7%), so only the step is compared.
            ten = dense_crf(image, probs, n_iter=10, **params)
            exact = exact_mean_field(image, probs, 10, **params)
            assert np.abs(ten - exact).mean() < 1e-3
            assert (ten.argmax(0) == exact.argmax(0)).mean() >= 0.95


def test_exact_comparison_discriminates():
    # The tolerance above is not loose: a kernel 1.5x too wide leaves it far behind.
    rng = np.random.default_rng(0)
    image, probs = two_region_image(rng), random_probs(rng, (3, 12, 10))
    wide = {**LOCAL, "gaussian_sxy": 1.5 * LOCAL["gaussian_sxy"], "bilateral_sxy": 1.5 * LOCAL["bilateral_sxy"]}
    one = exact_mean_field(image, probs, 1, **LOCAL)
    assert np.abs(exact_mean_field(image, probs, 1, **wide) - one).max() > 0.1
    assert np.abs(dense_crf(image, probs, n_iter=1, **LOCAL) - one).max() < 0.1


@pytest.mark.parametrize("kind", ["gaussian", "bilateral"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normalised_filter_close_to_exact(kind, dtype):
    rng = np.random.default_rng(3)
    image = two_region_image(rng)
    ys, xs = np.mgrid[:12, :10]
    position = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
    if kind == "gaussian":
        features = position / 3
    else:
        features = np.concatenate([position / 80, image.reshape(-1, 3) / 13.0], 1)
    values = rng.random((120, 4))
    exact = _normalised_kernel(features) @ values
    lattice = PermutohedralLattice(torch.from_numpy(features).to(dtype))
    ours = LatticeFilter([lattice], normalize=True, dtype=dtype)(torch.from_numpy(values).to(dtype))
    error = np.abs(ours.double().numpy() - exact).max() / np.abs(exact).max()
    assert error < 0.12  # measured 0.03-0.05 (Gaussian), 0.05-0.09 (bilateral)


# --- the lattice itself -----------------------------------------------------------------------


@given(
    features=arrays(np.float64, st.tuples(st.integers(1, 30), st.integers(1, 5)), elements=st.floats(-20, 20)),
)
def test_lattice_barycentric_weights(features):
    lattice = PermutohedralLattice(torch.from_numpy(features))
    weights = lattice.weights.numpy()
    assert weights.shape == (features.shape[0], features.shape[1] + 1)
    assert (weights >= -1e-9).all() and (weights <= 1 + 1e-9).all()
    np.testing.assert_allclose(weights.sum(1), 1, atol=1e-9)
    # Each point's corners are distinct vertices, and every vertex is someone's corner.
    offsets = lattice.offsets.numpy()
    assert all(len(set(row)) == len(row) for row in offsets)
    assert set(offsets.ravel()) == set(range(lattice.n_vertices))


@given(
    features=arrays(np.float32, st.tuples(st.integers(1, 40), st.integers(1, 5)), elements=st.floats(-10, 10, width=32)),
    n_values=st.integers(1, 4),
)
def test_sparse_filter_matches_direct_filter(features, n_values):
    # LatticeFilter's sparse-matrix path against PermutohedralLattice.filter's index path.
    lattice = PermutohedralLattice(torch.from_numpy(features))
    values = torch.from_numpy(np.random.default_rng(0).random((features.shape[0], n_values), dtype=np.float32))
    direct = lattice.filter(values)
    np.testing.assert_allclose(LatticeFilter([lattice])(values).numpy(), direct.numpy(), rtol=1e-5, atol=1e-6)
    # The filter is symmetric and positive: x . K x > 0, and K 1 >= the self weight.
    assert (lattice.filter(torch.ones(features.shape[0], 1)) > 0).all()


def test_lattice_filter_weights_and_normalisation():
    rng = np.random.default_rng(0)
    a = PermutohedralLattice(torch.from_numpy(rng.random((300, 5), dtype=np.float32) * 4))
    b = PermutohedralLattice(torch.from_numpy(rng.random((300, 2), dtype=np.float32) * 3))
    x = torch.from_numpy(rng.random((300, 3), dtype=np.float32))
    add = torch.from_numpy(rng.random((300, 3), dtype=np.float32))
    na = a.filter(torch.ones(300, 1)).rsqrt()
    nb = b.filter(torch.ones(300, 1)).rsqrt()
    expected = add + 2 * na * a.filter(na * x) + 3 * nb * b.filter(nb * x)
    out = LatticeFilter([a, b], [2, 3], normalize=True)(x, add=add)
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="same points"):
        LatticeFilter([a, PermutohedralLattice(torch.zeros(5, 2))])
    with pytest.raises(ValueError, match="values must have shape"):
        LatticeFilter([a])(torch.zeros(7, 1))


def test_lattice_of_a_single_point_and_of_coincident_points():
    one = PermutohedralLattice(torch.zeros(1, 5))
    assert one.n_vertices == 6
    # Coincident points are fully coupled: filtering gives each the same value.
    same = PermutohedralLattice(torch.full((4, 3), 1.7))
    out = same.filter(torch.tensor([[1.0], [2.0], [3.0], [4.0]]))
    np.testing.assert_allclose(out.numpy(), out[0].item(), rtol=1e-6)


def test_lattice_without_simplex_grouping(monkeypatch):
    # Where simplex keys would not fit in int64, points are not grouped by simplex first:
    # the same lattice, built with more work.
    import sklearn_psa._permutohedral as permutohedral

    features = torch.from_numpy(np.random.default_rng(0).uniform(0, 100, (300, 5)).astype(np.float32))
    values = torch.from_numpy(np.random.default_rng(1).random((300, 2), dtype=np.float32))
    calls = []
    real_group = permutohedral._group
    monkeypatch.setattr(permutohedral, "_group", lambda keys: calls.append(keys.numel()) or real_group(keys))
    grouped = PermutohedralLattice(features)
    assert calls[0] == 300 and len(calls) == 2  # points by simplex, then corners by vertex
    calls.clear()
    monkeypatch.setattr(permutohedral, "_MAX_KEY_BITS", 55)  # the corner keys need ~47 bits, simplex keys ~60
    ungrouped = PermutohedralLattice(features)
    assert calls == [1800]  # only corners by vertex
    assert ungrouped.n_vertices == grouped.n_vertices
    np.testing.assert_array_equal(ungrouped.offsets.numpy(), grouped.offsets.numpy())
    np.testing.assert_allclose(LatticeFilter([ungrouped])(values), LatticeFilter([grouped])(values), rtol=1e-6)


def test_lattice_rejects_bad_features():
    with pytest.raises(ValueError, match="non-empty"):
        PermutohedralLattice(torch.zeros(0, 2))
    with pytest.raises(TypeError, match="floating"):
        PermutohedralLattice(torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="bits, more than the 62 that fit in int64"):
        PermutohedralLattice(torch.tensor([[0.0] * 5, [1e9] * 5], dtype=torch.float64))


# --- properties ---------------------------------------------------------------------------------


@st.composite
def crf_inputs(draw):
    height, width = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    n_labels = draw(st.integers(1, 4))
    image = draw(arrays(np.uint8, (height, width, 3)))
    scores = draw(arrays(np.float32, (n_labels, height, width), elements=st.floats(0, 1, width=32)))
    probs = scores + np.float32(1e-3)
    return image, (probs / probs.sum(0)).astype(np.float32)


@settings(max_examples=25)
@given(inputs=crf_inputs(), n_iter=st.integers(0, 4), compat=st.sampled_from([0.0, 3.0, 10.0]))
def test_output_is_a_distribution_per_pixel(inputs, n_iter, compat):
    image, probs = inputs
    out = dense_crf(image, probs, n_iter=n_iter, bilateral_compat=compat, bilateral_sxy=5)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == probs.shape
    assert np.isfinite(out).all() and (out >= 0).all()
    np.testing.assert_allclose(out.sum(0), 1, atol=1e-5)


@settings(max_examples=20)
@given(inputs=crf_inputs(), data=st.data())
def test_label_permutation_equivariance(inputs, data):
    image, probs = inputs
    order = np.array(data.draw(st.permutations(range(probs.shape[0]))))
    out = dense_crf(image, probs, n_iter=3, bilateral_sxy=5)
    np.testing.assert_allclose(dense_crf(image, probs[order], n_iter=3, bilateral_sxy=5), out[order], atol=1e-6)


@settings(max_examples=20)
@given(inputs=crf_inputs())
def test_no_iterations_returns_clipped_probabilities(inputs):
    image, probs = inputs
    clipped = np.clip(probs, 1e-5, 1)
    np.testing.assert_allclose(dense_crf(image, probs, n_iter=0), clipped / clipped.sum(0), rtol=1e-5, atol=1e-7)
    # Without pairwise terms, iterating changes nothing.
    no_pairwise = dict(gaussian_compat=0, bilateral_compat=0)
    np.testing.assert_allclose(dense_crf(image, probs, n_iter=5, **no_pairwise), clipped / clipped.sum(0), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("n_labels", [1, 2, 5])
def test_uniform_image_and_unary_is_a_fixed_point(n_labels):
    image = np.full((20, 30, 3), 77, dtype=np.uint8)
    probs = np.full((n_labels, 20, 30), 1 / n_labels, dtype=np.float32)
    np.testing.assert_allclose(dense_crf(image, probs), probs, atol=1e-6)


def test_smooths_towards_the_confident_region():
    # The docstring's example, as a test: confident evidence spreads over its flat region only.
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    image[:, 35:] = 200
    probs = np.full((2, 40, 60), 0.5, dtype=np.float32)
    probs[0, :, :20], probs[1, :, :20] = 0.9, 0.1
    probs[0, :, 40:], probs[1, :, 40:] = 0.2, 0.8
    labels = dense_crf(image, probs).argmax(0)
    assert (labels[:, :35] == 0).all() and (labels[:, 35:] == 1).all()
    # Without the bilateral term the boundary ignores the edge (it falls mid-way, at 30).
    labels = dense_crf(image, probs, bilateral_compat=0).argmax(0)
    assert (labels[:, :30] == 0).all() and (labels[:, 30:] == 1).all()


def test_docstring_example():
    import sklearn_psa.crf

    result = doctest.testmod(sklearn_psa.crf, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_same_result_on_more_threads(shapes):
    X, masks = shapes
    probs = cam_like(masks[2], 4, np.random.default_rng(5))
    single = dense_crf(X[2], probs)
    torch.set_num_threads(2)
    try:
        np.testing.assert_allclose(dense_crf(X[2], probs), single, atol=1e-6)
    finally:
        torch.set_num_threads(1)


def test_torch_inputs_give_torch_outputs():
    rng = np.random.default_rng(0)
    image, probs = two_region_image(rng), random_probs(rng, (3, 12, 10))
    out = dense_crf(torch.from_numpy(image), torch.from_numpy(probs).double())
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.device.type == "cpu"
    np.testing.assert_allclose(out.numpy(), dense_crf(image, probs), atol=1e-6)
    # NumPy inputs run on device "auto": the CPU here (bit for bit), CUDA where there is one
    # (the same numbers up to float32 rounding: checked on an H200)
    on_cuda = torch.cuda.is_available()
    np.testing.assert_allclose(dense_crf(image, probs, device="cpu"), dense_crf(image, probs),
                               rtol=1e-4 if on_cuda else 0, atol=1e-6 if on_cuda else 0)


def test_dense_crf_object_reuses_the_image(shapes):
    X, masks = shapes
    rng = np.random.default_rng(4)
    crf = DenseCRF(X[0], device="cpu")
    for n_labels in (4, 2, 4):  # any label count, any number of calls
        probs = cam_like(np.minimum(masks[0], n_labels - 1), n_labels, rng)
        np.testing.assert_array_equal(crf(probs, n_iter=3), dense_crf(X[0], probs, n_iter=3, device="cpu"))
    assert crf.shape == (64, 64) and crf.device.type == "cpu"
    assert DenseCRF(torch.from_numpy(X[0])).device.type == "cpu"  # None: the image's device
    with pytest.raises(ValueError, match=r"probs has shape \(2, 32, 32\).*64 x 64"):
        crf(np.full((2, 32, 32), 0.5, dtype=np.float32))
    with pytest.raises(ValueError, match="gaussian_sxy"):
        DenseCRF(X[0], gaussian_sxy=-1)
    with pytest.raises(TypeError, match="image must be"):
        DenseCRF(X[0].astype(np.float32))


# --- errors -------------------------------------------------------------------------------------


@pytest.fixture
def valid():
    rng = np.random.default_rng(0)
    return two_region_image(rng), random_probs(rng, (3, 12, 10))


def test_rejects_bad_images(valid):
    image, probs = valid
    with pytest.raises(TypeError, match=r"\(H, W, 3\) uint8.*float64"):
        dense_crf(image.astype(np.float64), probs)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8.*\(12, 10\)"):
        dense_crf(image[..., 0], probs)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8.*\(12, 10, 4\)"):
        dense_crf(np.concatenate([image, image[..., :1]], 2), probs)
    with pytest.raises(TypeError, match="image must be"):
        dense_crf(image.tolist(), probs)


def test_rejects_shape_mismatches(valid):
    image, probs = valid
    with pytest.raises(ValueError, match=r"probs has shape \(3, 10, 12\).*12 x 10.*\(C, 12, 10\)"):
        dense_crf(image, probs.transpose(0, 2, 1))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        dense_crf(image, probs[0])
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        dense_crf(image, probs[:0])
    with pytest.raises(TypeError, match="float"):
        dense_crf(image, (probs > 0.5).astype(np.int64))


@pytest.mark.parametrize("bad, match", [(np.nan, "NaN or infinite.*label 1, pixel \\(2, 3\\)"), (np.inf, "NaN or infinite")])
def test_rejects_non_finite_probabilities(valid, bad, match):
    image, probs = valid
    probs = probs.copy()
    probs[1, 2, 3] = bad
    with pytest.raises(ValueError, match=match):
        dense_crf(image, probs)


def test_rejects_probabilities_that_are_not_distributions(valid):
    image, probs = valid
    with pytest.raises(ValueError, match=r"sum to 1.*pixel \(4, 5\) sums to 1.5"):
        bad = probs.copy()
        bad[:, 4, 5] *= 1.5
        dense_crf(image, bad)
    with pytest.raises(ValueError, match=r">= 0.*-0.5 at label 0, pixel \(1, 1\)"):
        bad = probs.copy()
        bad[0, 1, 1] = -0.5
        bad[1, 1, 1] += 0.5 + probs[0, 1, 1]
        dense_crf(image, bad)
    # Within the tolerance is fine.
    dense_crf(image, probs * np.float32(1.0005))
    # bfloat16 holds 8 mantissa bits: its softmax sums to 1 only within ~4e-3, which passes;
    # the same error in float32 does not
    soft = torch.softmax(torch.randn(3, *probs.shape[1:], generator=torch.Generator().manual_seed(0)), 0)
    low = soft.bfloat16()
    assert float((low.float().sum(0) - 1).abs().max()) > 1e-3
    dense_crf(image, low)
    with pytest.raises(ValueError, match=r"tolerance 0.001"):
        dense_crf(image, low.float())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(n_iter=-1), ValueError, "n_iter"),
        (dict(n_iter=2.5), ValueError, "n_iter"),
        (dict(gaussian_sxy=0), ValueError, "gaussian_sxy must be a positive"),
        (dict(bilateral_sxy=-3), ValueError, "bilateral_sxy"),
        (dict(bilateral_srgb=float("nan")), ValueError, "bilateral_srgb"),
        (dict(gaussian_compat="3"), ValueError, "gaussian_compat must be a finite"),
        (dict(bilateral_compat=float("inf")), ValueError, "bilateral_compat"),
        (dict(backend="cuda"), ValueError, "backend must be one of"),
        (dict(device="tpu"), ValueError, "device='tpu'"),
    ],
)
def test_rejects_bad_parameters(valid, kwargs, error, match):
    image, probs = valid
    with pytest.raises(error, match=match):
        dense_crf(image, probs, **kwargs)


def test_pydensecrf2_backend_is_cpu_only(valid):
    image, probs = valid
    with pytest.raises(ValueError, match="CPU only"):
        dense_crf(image, probs, backend="pydensecrf2", device="cuda" if torch.cuda.is_available() else "meta")


def test_pydensecrf2_backend_missing_package_is_a_clear_error(valid, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pydensecrf(name, *args, **kwargs):
        if name.startswith("pydensecrf"):
            raise ImportError("No module named 'pydensecrf'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pydensecrf)
    with pytest.raises(ImportError, match=r"sklearn-psa\[crf\]"):
        dense_crf(*valid, backend="pydensecrf2")


def test_check_crf_options_of_the_estimators():
    from sklearn_psa.crf import check_crf_options

    assert check_crf_options(False) is None and check_crf_options(True) == {}
    options = {"n_iter": 3, "bilateral_sxy": 20}
    assert check_crf_options(options) == options and check_crf_options(options) is not options
    with pytest.raises(ValueError, match=r"affinity__crf: unknown dense_crf options \['n_iters'\]; "
                                         r"expected some of \['n_iter', "):
        check_crf_options({"n_iters": 3}, name="affinity__crf")
    with pytest.raises(TypeError, match="crf must be True, False or a dict"):
        check_crf_options("yes")


def test_scaled_crf_options_scale_the_bilateral_width_with_the_longer_side():
    from sklearn_psa.crf import scaled_crf_options

    assert scaled_crf_options({}, (500, 375)) == {"bilateral_sxy": 80.0}
    assert scaled_crf_options({"n_iter": 3}, (96, 128, 3)) == {"n_iter": 3, "bilateral_sxy": 20.48}
    given_width = {"bilateral_sxy": 7}
    assert scaled_crf_options(given_width, (1000, 1000)) == given_width
    assert given_width == {"bilateral_sxy": 7}  # not changed in place


def test_reversed_and_read_only_arrays_are_accepted(rng):
    # negative strides (probs[::-1]) crashed in torch.as_tensor; read-only arrays (memory maps)
    # made torch warn about non-writable memory
    import warnings

    image = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    probs = rng.dirichlet(np.ones(3), size=(12, 16)).transpose(2, 0, 1).astype(np.float32)
    expected = dense_crf(image, np.ascontiguousarray(probs[::-1]), n_iter=3, device="cpu")
    frozen_image, frozen_probs = image.copy(), probs[::-1].copy()
    frozen_image.flags.writeable = frozen_probs.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(dense_crf(image, probs[::-1], n_iter=3, device="cpu"), expected)
        np.testing.assert_array_equal(dense_crf(frozen_image, frozen_probs, n_iter=3, device="cpu"),
                                      expected)
        np.testing.assert_array_equal(DenseCRF(image[:, ::-1][:, ::-1], device="cpu")(probs[::-1], 3),
                                      expected)


@pytest.mark.parametrize("name", ["bilateral_srgb", "bilateral_sxy", "gaussian_sxy"])
def test_widths_too_small_for_the_image_name_the_parameter(name):
    image = np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    probs = np.full((2, 20, 20), 0.5, np.float32)
    with pytest.raises(ValueError, match=rf"{name}=1e-30 is too small for .* at least"):
        dense_crf(image, probs, **{name: 1e-30})
    # a kernel switched off (compat 0) needs no width check
    compat = "gaussian_compat" if name == "gaussian_sxy" else "bilateral_compat"
    assert dense_crf(image, probs, **{name: 1e-30, compat: 0}).shape == (2, 20, 20)


def test_lattice_coordinates_beyond_exact_floats_are_refused():
    features = torch.tensor([[0.0, 0.0], [1e30, 1e30]])
    with pytest.raises(ValueError, match="beyond 2\\*\\*52"):
        PermutohedralLattice(features)


@pytest.mark.parametrize("options, match", [
    ({"n_iter": -5}, "crf: n_iter must be a non-negative integer"),
    ({"bilateral_srgb": 0}, "crf: bilateral_srgb must be a positive number"),
    ({"gaussian_compat": float("nan")}, "crf: gaussian_compat must be a finite number"),
    ({"backend": "opencv"}, "crf: backend must be one of"),
])
def test_crf_option_values_are_checked_up_front(options, match):
    from sklearn_psa.crf import check_crf_options

    with pytest.raises(ValueError, match=match):
        check_crf_options(options)
    assert check_crf_options({"n_iter": 3, "bilateral_srgb": 5.0}) == {"n_iter": 3,
                                                                        "bilateral_srgb": 5.0}
