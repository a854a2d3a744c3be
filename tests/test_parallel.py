"""Threads of the per-image kernels, and n_jobs over joblib (threads, processes, dask)."""

import threading

import joblib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sklearn_psa import AffinityEstimator, PSASegmenter, RandomWalkRefiner, neighbor_offsets
from sklearn_psa import _device
from sklearn_psa._parallel import check_n_jobs, map_images
from sklearn_psa.crf import DenseCRF, dense_crf
from sklearn_psa.datasets import make_shapes
from sklearn_psa.records import Records


@pytest.fixture
def two_threads():
    """torch on 2 threads for the test (the suite runs on 1), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- threads (issue 18, item 4)


def test_single_thread_nests_and_restores(two_threads):
    with _device.single_thread():
        assert torch.get_num_threads() == 1
        with _device.single_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1  # the outer block still holds
    assert torch.get_num_threads() == 2


def test_single_thread_from_several_python_threads_restores_once(two_threads):
    # joblib's threading backend enters it from several threads whose blocks overlap
    barrier, seen = threading.Barrier(3), []

    def work():
        with _device.single_thread():
            barrier.wait()  # all three inside at once
            seen.append(torch.get_num_threads())
            barrier.wait()

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.get_num_threads() == 2
    assert len(seen) == 3


def test_single_thread_restores_after_an_error(two_threads):
    with pytest.raises(RuntimeError), _device.single_thread():
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2


def test_cpu_threads_follows_the_threshold(two_threads, monkeypatch):
    monkeypatch.setattr(_device, "SERIAL_WORK", 100)
    with _device.cpu_threads(99):
        assert torch.get_num_threads() == 1
    with _device.cpu_threads(100):
        assert torch.get_num_threads() == 2
    with _device.cpu_threads(10**6, threshold=10**7):
        assert torch.get_num_threads() == 1


def _threads_during_crf(monkeypatch, image, probs):
    seen = []
    infer = DenseCRF._infer

    def spy(self, *args):
        seen.append(torch.get_num_threads())
        return infer(self, *args)

    monkeypatch.setattr(DenseCRF, "_infer", spy)
    out = dense_crf(image, probs, n_iter=2, device="cpu")
    return seen, out


def test_crf_runs_small_images_on_one_thread(two_threads, monkeypatch, rng):
    image = rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)
    probs = rng.dirichlet(np.ones(3), size=(24, 30)).transpose(2, 0, 1).astype(np.float32)
    seen, out = _threads_during_crf(monkeypatch, image, probs)
    assert seen == [1] and torch.get_num_threads() == 2
    # past the threshold (lowered here) it keeps torch's setting; the result is the same
    monkeypatch.setattr(_device, "CRF_SERIAL_WORK", 24 * 30 * 3 * 6)
    seen, out_threads = _threads_during_crf(monkeypatch, image, probs)
    assert seen == [2]
    np.testing.assert_allclose(out_threads, out, atol=1e-6)


def test_crf_work_counts_the_splat():
    image = np.zeros((10, 20, 3), np.uint8)
    assert DenseCRF(image, device="cpu")._work(4) == 10 * 20 * 4 * 6
    assert DenseCRF(image, bilateral_compat=0, device="cpu")._work(4) == 10 * 20 * 4 * 3


def test_walk_upsampling_runs_on_one_thread(two_threads, monkeypatch):
    from sklearn_psa import _walk_kernels

    seen = []
    interpolate = torch.nn.functional.interpolate

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return interpolate(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "interpolate", spy)
    _walk_kernels.upsample_grid(np.ones((2, 3, 4), np.float32), (20, 30), 8)
    assert seen == [1] and torch.get_num_threads() == 2


# ---------------------------------------------------------------- map_images (item 3)


@pytest.mark.parametrize("bad", [0, 1.5, "2", True])
def test_n_jobs_must_be_a_non_zero_integer(bad):
    with pytest.raises(ValueError, match="n_jobs must be None or a non-zero integer"):
        check_n_jobs(bad)
    with pytest.raises(ValueError, match="n_jobs"):
        list(map_images(abs, [(1,)], n_jobs=bad))


@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_map_images_keeps_the_order_and_gives_workers_one_thread(backend):
    with joblib.parallel_backend(backend):
        assert list(map_images(abs, [(-i,) for i in range(7)], n_jobs=2)) == list(range(7))
        # torch.get_num_threads is picklable by reference: run in the workers themselves
        threads = list(map_images(torch.get_num_threads, [()] * 4, n_jobs=2))
    assert threads == [1, 1, 1, 1]


def test_map_images_in_parent_never_uses_joblib(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("joblib.Parallel used for work that must stay in this process")

    monkeypatch.setattr(joblib, "Parallel", refuse)
    assert list(map_images(abs, [(-1,), (-2,)], n_jobs=2, in_parent=True)) == [1, 2]
    assert list(map_images(abs, [(-1,)], n_jobs=None)) == [1]  # None: sequential by default


def test_map_images_consumes_tasks_lazily():
    consumed = []

    def tasks():
        for i in range(100):
            consumed.append(i)
            yield (i,)

    results = map_images(abs, tasks(), n_jobs=None)
    assert next(results) == 0 and len(consumed) == 1


# ---------------------------------------------------------------- estimators: same outputs


def _walk_records(rng, n, sizes):
    images, cams, affinities, labels = [], [], [], []
    K = len(neighbor_offsets(3))
    for i in range(n):
        H, W = sizes[i % len(sizes)]
        L = 1 + i % 2
        images.append(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        cams.append(rng.random((L, H, W), dtype=np.float32))
        affinities.append(rng.random((K, -(-H // 8), -(-W // 8)), dtype=np.float32))
        labels.append([1] * L + [0] * (3 - L))
    return Records.from_arrays(images, labels, cams, affinities, radius=3)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 5), t=st.sampled_from([0, 1, 16, 256]),
       sizes=st.lists(st.tuples(st.integers(1, 40), st.integers(1, 40)), min_size=1, max_size=3))
def test_refiner_n_jobs_gives_the_outputs_of_one_job(seed, n, t, sizes):
    records = _walk_records(np.random.default_rng(seed), n, sizes)
    one = RandomWalkRefiner(alpha=4, beta=4, t=t, device="cpu")
    two = RandomWalkRefiner(alpha=4, beta=4, t=t, device="cpu", n_jobs=2)
    with joblib.parallel_backend("threading"):
        masks, scores = two.predict(records), two.transform(records)
    for a, b in zip(one.predict(records), masks):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(one.transform(records), scores):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def cam_records():
    from sklearn_psa import CAMClassifier

    X, Y, masks = make_shapes(6, image_size=32, random_state=0)
    cam = CAMClassifier(backbone="tiny", max_epochs=1, scales=(1.0,), device="cpu", random_state=0)
    return X, Y, masks, cam.fit_transform(X, Y)


def _affinity(n_jobs):
    return AffinityEstimator(backbone="tiny", max_epochs=1, crop_size=32, head_widths=(8, 8, 8),
                             crf={"n_iter": 3}, device="cpu", random_state=0, n_jobs=n_jobs)


@pytest.mark.parametrize("label_pooling", ["vote", "mean"])
def test_affinity_labels_with_processes_give_the_fit_of_one_job(cam_records, label_pooling):
    _, _, _, records = cam_records
    one = _affinity(None).set_params(label_pooling=label_pooling).fit(records)
    two = _affinity(2).set_params(label_pooling=label_pooling).fit(records)  # loky: workers
    assert one.label_stats_ == two.label_stats_
    for a, b in zip(one.predict_affinity(records), two.predict_affinity(records)):
        np.testing.assert_array_equal(a, b)  # same labels, same seed: the same network


def test_segmenter_crf_at_prediction_with_n_jobs(cam_records):
    X, _, masks, _ = cam_records
    seg = PSASegmenter(supervision="pixel", init="scratch", backbone="tiny", max_epochs=1,
                       batch_size=4, crf={"n_iter": 3}, device="cpu", random_state=0)
    seg.set_params(cam__backbone="tiny", affinity__backbone="tiny").fit(X, masks)
    expected = seg.predict_proba(X)
    seg.set_params(n_jobs=2)
    with joblib.parallel_backend("threading"):
        got = seg.predict_proba(X)
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a, b)
    assert seg.get_params()["refiner__n_jobs"] == 2  # default-made steps follow it


def test_n_jobs_is_validated_by_the_estimators(cam_records):
    _, _, _, records = cam_records
    with pytest.raises(ValueError, match="n_jobs"):
        RandomWalkRefiner(n_jobs=0).fit(records)
    with pytest.raises(ValueError, match="n_jobs"):
        _affinity(1.5).fit(records)


def test_dask_cluster_of_two_processes_gives_the_outputs_of_one_job(cam_records):
    distributed = pytest.importorskip("distributed")
    _, _, _, records = cam_records
    affinity = _affinity(None).fit(records)
    walked = affinity.transform(records)
    refiner = RandomWalkRefiner(alpha=4, t=64, device="cpu")
    expected = refiner.predict(walked)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client, joblib.parallel_backend("dask"):
        assert len(client.scheduler_info()["workers"]) == 2
        masks = refiner.predict(walked)  # n_jobs=None: the backend's workers
        spread = _affinity(None).fit(records)
    for a, b in zip(expected, masks):
        np.testing.assert_array_equal(a, b)
    assert spread.label_stats_ == affinity.label_stats_
    for a, b in zip(affinity.predict_affinity(records), spread.predict_affinity(records)):
        np.testing.assert_array_equal(a, b)


def test_iter_predict_yields_the_masks_of_predict_one_by_one(rng):
    records = _walk_records(rng, 4, [(17, 23), (9, 30)])
    refiner = RandomWalkRefiner(alpha=4, t=32, device="cpu", n_jobs=2)
    masks = refiner.iter_predict(records)
    first = next(masks)
    assert first.shape == (17, 23) and first.dtype == np.uint8
    with joblib.parallel_backend("threading"):
        rest = list(masks)
    for a, b in zip(RandomWalkRefiner(alpha=4, t=32, device="cpu").predict(records), [first] + rest):
        np.testing.assert_array_equal(a, b)


def test_progress_counts_the_images_done_before(capsys):
    out = list(map_images(abs, [(-1,), (-2,), (-3,)], verbose=2, desc="walk", total=5, done=2))
    assert out == [1, 2, 3]
    err = capsys.readouterr().err
    assert "walk: 100%" in err and "5/5" in err and "2/5" in err  # started at 2 of 5


def test_image_crf_builds_each_image_once_with_the_same_result(monkeypatch, rng):
    import pickle

    from sklearn_psa._affinity_labels import confident_regions
    from sklearn_psa.crf import ImageCRF

    builds, build = [], DenseCRF._build
    monkeypatch.setattr(DenseCRF, "_build", lambda self: (builds.append(1), build(self))[1])
    crf = pickle.loads(pickle.dumps(ImageCRF(n_iter=3, device="cpu")))
    for _ in range(2):
        image = rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)
        cams = rng.random((2, 20, 28), dtype=np.float32)
        plain = confident_regions(cams, 4, 32, image=image,
                                  crf=lambda im, p: dense_crf(im, p, n_iter=3, device="cpu"))
        n = len(builds)
        shared = confident_regions(cams, 4, 32, image=image, crf=crf)
        assert len(builds) - n == 1  # two maps, one lattice
        for a, b in zip(plain, shared):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="backend must be one of"):
        ImageCRF(backend="nope")(image, np.full((2, 20, 28), 0.5, np.float32))


def test_segmenter_n_jobs_is_shared_like_its_other_parameters():
    from sklearn_psa import FeatureAffinity, PSASegmenter

    seg = PSASegmenter(n_jobs=2, backbone="tiny")
    params = seg.get_params()
    assert params["affinity__n_jobs"] == 2 and params["refiner__n_jobs"] == 2
    assert "cam__n_jobs" not in params  # CAMClassifier has none
    seg.set_params(refiner__beta=4)  # held for the default refiner, which fit makes
    seg.set_params(n_jobs=3)  # and which follows the segmenter
    assert seg.refiner is None and seg.get_params()["refiner__n_jobs"] == 3
    assert seg.get_params()["affinity__n_jobs"] == 3
    seg.set_params(refiner__n_jobs=1, n_jobs=4)  # a step given its own keeps it
    assert seg.get_params()["refiner__n_jobs"] == 1
    mine = RandomWalkRefiner()
    assert PSASegmenter(refiner=mine, n_jobs=2).get_params()["refiner__n_jobs"] == 2
    assert mine.n_jobs is None  # passed on to the clone fit fits, not to the step given
    seg = PSASegmenter(affinity=FeatureAffinity(device="cpu"), n_jobs=2)
    assert "affinity__n_jobs" not in seg.get_params()
