"""Streaming over datasets larger than memory (issue 18, item 2): images, arrays and masks are
held a batch at a time, never all at once; a full disk is a clear error with nothing
half-written."""

import contextlib
import errno
import os
import weakref

import numpy as np
import pytest
from PIL import Image

import sklearn_psa._files
import sklearn_psa._model_file
import sklearn_psa._store
import sklearn_psa._training
import sklearn_psa._validation
import sklearn_psa.affinity
import sklearn_psa.cli
import sklearn_psa.records
from sklearn_psa import AffinityEstimator, CAMClassifier, PSASegmenter
from sklearn_psa.cli import main
from sklearn_psa.datasets import make_shapes
from sklearn_psa.io import load_mask, load_model, save_mask, save_model
from sklearn_psa.metrics import segmentation_report

N_IMAGES = 20
BATCH = 4


class LiveCount:
    """How many objects returned by a patched function are alive, now and at the most."""

    def __init__(self):
        self.live = self.peak = self.made = 0

    def track(self, obj):
        self.live += 1
        self.made += 1
        self.peak = max(self.peak, self.live)
        weakref.finalize(obj, self._dead)
        return obj

    def _dead(self):
        self.live -= 1

    def wrap(self, func):
        return lambda *args, **kwargs: self.track(func(*args, **kwargs))


def _count_decoded_images(monkeypatch):
    """Count the decoded images alive (``load_image`` is reached through both modules)."""
    count = LiveCount()
    loader = count.wrap(sklearn_psa._files.load_image)
    monkeypatch.setattr(sklearn_psa.records, "load_image", loader)
    monkeypatch.setattr(sklearn_psa._validation, "load_image", loader)
    return count


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """N_IMAGES images as PNG files, their labels and their true masks (files too)."""
    root = tmp_path_factory.mktemp("streaming")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    X, Y, M = make_shapes(N_IMAGES, image_size=32, random_state=0)
    paths = []
    for i, (x, m) in enumerate(zip(X, M)):
        paths.append(str(root / "images" / f"{i:03d}.png"))
        Image.fromarray(x).save(paths[-1])
        save_mask(root / "masks" / f"{i:03d}.png", m)
    return root, paths, Y, M


def _segmenter(store):
    return PSASegmenter(backbone="tiny", max_epochs=1, batch_size=BATCH, device="cpu",
                        random_state=0).set_params(
        cam__max_epochs=1, cam__scales=(1.0,), cam__batch_size=BATCH, cam__store=store,
        affinity__max_epochs=1, affinity__crf=False, affinity__crop_size=32,
        affinity__batch_size=BATCH, affinity__store=store)


def test_fit_and_predict_on_image_files_hold_a_batch_at_a_time(image_folder, tmp_path,
                                                               monkeypatch):
    _, paths, Y, _ = image_folder
    images = _count_decoded_images(monkeypatch)
    arrays = LiveCount()  # CAMs, affinities and pseudo-labels mapped from the store
    monkeypatch.setattr(sklearn_psa._store, "open_stored", arrays.wrap(sklearn_psa._store.open_stored))
    samples = LiveCount()  # AffinityNet's training samples

    class CountedSample(sklearn_psa.affinity._LazySample):
        def __init__(self, *args):
            super().__init__(*args)
            samples.track(self)

    monkeypatch.setattr(sklearn_psa.affinity, "_LazySample", CountedSample)
    seg = _segmenter(str(tmp_path / "store")).fit(paths, Y)
    # every stage read every image (several times: CAM training, CAMs, AffinityNet training,
    # affinities, segmentation training), but held at most two batches of them at once
    assert images.made >= 5 * N_IMAGES and 0 < images.peak <= 2 * BATCH
    assert arrays.made >= 2 * N_IMAGES and 0 < arrays.peak <= 2 * BATCH
    assert samples.made >= N_IMAGES and 0 < samples.peak <= BATCH
    # the model file holds the pseudo-labels' values, read from the store one at a time
    arrays.made = arrays.peak = 0
    model = save_model(seg, tmp_path / "seg.psa")
    assert arrays.made == N_IMAGES and arrays.peak == 1
    for a, b in zip(load_model(model).pseudo_labels_, seg.pseudo_labels_):
        np.testing.assert_array_equal(a, b)
    # predicting needs none of them: the command line does not read them
    read = LiveCount()
    monkeypatch.setattr(sklearn_psa._model_file._ZipArrays, "__getitem__",
                        read.wrap(sklearn_psa._model_file._ZipArrays.__getitem__))
    light = load_model(model, pseudo_labels=False)
    n_arrays = read.made  # the networks' and fitted arrays: no mask
    assert not hasattr(light, "pseudo_labels_")
    # by default the masks are read from the file one at a time, when indexed
    full = load_model(model)
    assert read.made == 2 * n_arrays and len(full.pseudo_labels_) == N_IMAGES
    np.testing.assert_array_equal(full.pseudo_labels_[3], seg.pseudo_labels_[3])
    assert read.made == 2 * n_arrays + 1
    # saving the loaded model again copies them one at a time, and they stay readable after
    # the file is replaced (the loaded model holds the file it was read from open)
    arrays_of = LiveCount()
    monkeypatch.setattr(sklearn_psa._model_file._ModelFileArray, "load",
                        arrays_of.wrap(sklearn_psa._model_file._ModelFileArray.load))
    assert load_model(save_model(full, model)).pseudo_labels_[3].shape == seg.pseudo_labels_[3].shape
    assert arrays_of.made == N_IMAGES and arrays_of.peak == 1
    np.testing.assert_array_equal(full.pseudo_labels_[-1], seg.pseudo_labels_[-1])
    read.made = 0
    out = tmp_path / "predicted"
    assert main(["predict", os.path.dirname(paths[0]), "--model", model, "--output", str(out),
                 "-q"]) == 0
    assert read.made == n_arrays and len(os.listdir(out)) == N_IMAGES
    for a, b in zip(full.predict(paths[:3]), light.predict(paths[:3])):
        np.testing.assert_array_equal(a, b)
    images.made = images.peak = 0
    masks = seg.predict(paths)
    assert len(masks) == N_IMAGES and images.made == N_IMAGES and images.peak <= 2 * BATCH


def test_pixel_supervision_reads_mask_files_as_training_samples_them(image_folder, monkeypatch):
    root, paths, _, M = image_folder
    mask_paths = [str(root / "masks" / os.path.basename(p)) for p in paths]
    masks = LiveCount()
    monkeypatch.setattr(sklearn_psa._validation, "load_mask",
                        masks.wrap(sklearn_psa._validation.load_mask))
    seg = PSASegmenter(supervision="pixel", backbone="tiny", max_epochs=2, batch_size=BATCH,
                       device="cpu", random_state=0).fit(paths, mask_paths)
    # read to derive the classes, then once per epoch: never all held
    assert masks.made == 3 * N_IMAGES and 0 < masks.peak <= 2 * BATCH
    reference = PSASegmenter(supervision="pixel", backbone="tiny", max_epochs=2,
                             batch_size=BATCH, device="cpu", random_state=0).fit(paths, M)
    assert seg.loss_curve_ == reference.loss_curve_


def test_affinity_samples_are_the_same_from_the_store_and_from_memory(image_folder, tmp_path):
    _, paths, Y, _ = image_folder
    cam = CAMClassifier(backbone="tiny", max_epochs=1, scales=(1.0,), batch_size=BATCH,
                        device="cpu", random_state=0)
    records = cam.fit_transform(paths[:6], Y[:6])
    fitted = []
    for store in (None, str(tmp_path / "store"), str(tmp_path / "store")):  # computed, found
        aff = AffinityEstimator(
            backbone="tiny", max_epochs=1, crf=False, crop_size=32, batch_size=BATCH,
            head_widths=(8, 8, 8), device="cpu", random_state=0, store=store).fit(records)
        fitted.append(aff)
    for aff in fitted[1:]:
        assert aff.label_stats_ == fitted[0].label_stats_
        assert aff.train_result_.history == fitted[0].train_result_.history


def test_evaluate_reads_a_pair_of_masks_at_a_time(image_folder, tmp_path, monkeypatch, capsys):
    root, _, _, M = image_folder
    rng = np.random.default_rng(0)
    pred = tmp_path / "pred"
    predicted = []
    for i, m in enumerate(M):
        predicted.append(np.where(rng.random(m.shape) < 0.2, rng.integers(0, 5, m.shape), m))
        save_mask(pred / f"{i:03d}.png", predicted[-1])
    masks = LiveCount()
    monkeypatch.setattr(sklearn_psa._validation, "load_mask",
                        masks.wrap(sklearn_psa._validation.load_mask))
    # one mask's pixels per bincount: a chunk is one pair, so at most two pairs are alive
    monkeypatch.setattr("sklearn_psa.metrics._CHUNK", M[0].size)
    assert main(["evaluate", str(pred), str(root / "masks"), "-q"]) == 0
    assert masks.made == 2 * N_IMAGES and masks.peak <= 4
    expected = segmentation_report(list(M), predicted)
    assert expected in capsys.readouterr().out


@pytest.fixture(scope="module")
def model_file(image_folder, tmp_path_factory):
    _, paths, _, M = image_folder
    seg = PSASegmenter(supervision="pixel", backbone="tiny", max_epochs=1, batch_size=BATCH,
                       device="cpu", random_state=0).fit(paths[:8], M[:8])
    return save_model(seg, tmp_path_factory.mktemp("model") / "seg.psa")


def test_predict_on_a_folder_holds_a_batch_and_counts_the_whole_dataset(
        image_folder, model_file, tmp_path, monkeypatch, capsys):
    root, paths, _, _ = image_folder
    out = tmp_path / "out"
    for i in range(3):  # done by an earlier run
        save_mask(out / f"{i:03d}.png", np.zeros((32, 32), np.uint8), output_of="predict")
    images = _count_decoded_images(monkeypatch)
    bars = []
    real_tqdm = __import__("tqdm.auto", fromlist=["tqdm"]).tqdm

    def tqdm(*args, **kwargs):
        bars.append(kwargs)
        return real_tqdm(*args, **kwargs)

    monkeypatch.setattr("tqdm.auto.tqdm", tqdm)
    assert main(["predict", str(root / "images"), "--model", model_file, "--output", str(out),
                 "--batch-size", str(BATCH), "-q"]) == 0
    assert images.made == N_IMAGES - 3 and images.peak <= 2 * BATCH
    bar, = [b for b in bars if b.get("desc") == "predict"]
    assert bar["total"] == N_IMAGES and bar["initial"] == 3
    assert len(list(out.glob("*.png"))) == N_IMAGES


@contextlib.contextmanager
def _disk_full_after(monkeypatch, n_files):
    """``atomic_write`` fills the disk in the middle of the file after ``n_files`` files."""
    real = sklearn_psa._files.atomic_write
    count = [0]

    @contextlib.contextmanager
    def atomic_write(path, mode="wb"):
        with real(path, mode) as f:
            count[0] += 1
            if count[0] > n_files:
                f.write(b"\x89PNG half a file" if "b" in mode else "half a file")
                raise OSError(errno.ENOSPC, "No space left on device")
            yield f

    with monkeypatch.context() as m:
        for module in (sklearn_psa._files, sklearn_psa.cli):  # masks; evaluate's report
            m.setattr(module, "atomic_write", atomic_write)
        yield


def test_predict_on_a_full_disk_says_so_keeps_whole_masks_and_resumes(
        image_folder, model_file, tmp_path, monkeypatch, capsys):
    root, _, _, _ = image_folder
    out = tmp_path / "out"
    argv = ["predict", str(root / "images"), "--model", model_file, "--output", str(out),
            "--batch-size", str(BATCH), "-q"]
    with _disk_full_after(monkeypatch, 5):
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no space left" in err and "005.png" in err and "5 masks written" in err
    assert "run the same command again" in err
    assert sorted(os.listdir(out)) == [f"{i:03d}.png" for i in range(5)]  # no temporary file
    for i in range(5):
        assert load_mask(out / f"{i:03d}.png").shape == (32, 32)
    assert main(argv) == 0
    assert "5 masks already in" in capsys.readouterr().err
    assert len(os.listdir(out)) == N_IMAGES


def test_a_full_disk_anywhere_else_is_a_clear_error_with_nothing_left(image_folder, tmp_path,
                                                                      monkeypatch, capsys):
    root, _, _, M = image_folder
    pred = tmp_path / "pred"
    for i, m in enumerate(M):
        save_mask(pred / f"{i:03d}.png", m)
    report = tmp_path / "report.txt"
    with _disk_full_after(monkeypatch, 0):
        assert main(["evaluate", str(pred), str(root / "masks"), "--output", str(report),
                     "-q"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "report.txt" in err
    assert "the disk is full" in err and "run the same command again" in err
    assert not report.exists() and sorted(os.listdir(tmp_path)) == ["pred"]


def test_predict_store_keeps_a_pipelines_arrays(image_folder, model_file, tmp_path, capsys):
    from sklearn.pipeline import Pipeline

    from sklearn_psa import RandomWalkRefiner

    root, paths, Y, _ = image_folder
    pipe = Pipeline([
        ("cam", CAMClassifier(backbone="tiny", max_epochs=1, scales=(1.0,), batch_size=BATCH,
                              device="cpu", random_state=0)),
        ("affinity", AffinityEstimator(backbone="tiny", max_epochs=1, crf=False, crop_size=32,
                                       head_widths=(8, 8, 8), batch_size=BATCH, device="cpu",
                                       random_state=0)),
        ("rw", RandomWalkRefiner(t=16, device="cpu")),
    ]).fit(paths[:8], Y[:8])
    path = save_model(pipe, tmp_path / "pipe.psa")
    store = tmp_path / "store"
    argv = ["predict", str(root / "images"), "--model", path, "--output", str(tmp_path / "out"),
            "--store", str(store), "--batch-size", str(BATCH), "-q"]
    assert main(argv) == 0
    for kind in ("cams", "affinity"):
        assert len(list((store / kind).glob("*.npy"))) == N_IMAGES, kind
    for p, mask in zip(paths, pipe.predict(paths)):
        np.testing.assert_array_equal(load_mask(tmp_path / "out" / os.path.basename(p)), mask)
    assert main(["predict", str(root / "images"), "--model", model_file, "--output",
                 str(tmp_path / "out2"), "--store", str(store), "-q"]) == 2
    assert "--store" in capsys.readouterr().err and not (tmp_path / "out2").exists()


def _random_walk_records(n, labels):
    """``n`` records of 16 x 16 black images with one random CAM (``labels``: the 0/1 row)
    and random radius-5 affinities."""
    from sklearn_psa import neighbor_offsets
    from sklearn_psa.records import Records

    rng = np.random.default_rng(0)
    K = len(neighbor_offsets(5))
    return Records.from_arrays(
        [np.zeros((16, 16, 3), np.uint8)] * n, labels=[labels] * n,
        cams=[rng.random((1, 16, 16), dtype=np.float32) for _ in range(n)],
        affinities=[rng.random((K, 2, 2), dtype=np.float32) for _ in range(n)], radius=5)


def test_progress_counts_the_masks_found_in_the_store(tmp_path, monkeypatch):
    from sklearn_psa import RandomWalkRefiner
    from sklearn_psa.walk import stored_masks

    n = 6
    records = _random_walk_records(n, [1, 0])
    bars, progress = [], sklearn_psa._training.progress

    def recording(*args, **kwargs):
        bars.append(kwargs)
        return progress(*args, **kwargs)

    monkeypatch.setattr(sklearn_psa._training, "progress", recording)
    refiner = RandomWalkRefiner(alpha=4, t=8, device="cpu")
    first = stored_masks(tmp_path, refiner, records[:2])
    both = stored_masks(tmp_path, refiner, records)
    assert [(b["total"], b["initial"]) for b in bars] == [(2, 0), (n, 2)]
    assert both.paths[:2] == first.paths
    for a, b in zip(refiner.predict(records), both):
        np.testing.assert_array_equal(a, b)


def test_the_pseudo_labels_store_takes_any_refiner_with_predict(tmp_path):
    # a refiner of one's own (fit and predict only) writes its masks to the store too
    from sklearn.base import BaseEstimator

    from sklearn_psa.walk import stored_masks

    class CAMArgmax(BaseEstimator):
        def __init__(self, floor=0.5):
            self.floor = floor

        def fit(self, X, y=None):
            return self

        def predict(self, X):
            return [np.where(r.cams.max(axis=0) > self.floor, r.labels[0] + 1, 0).astype(np.uint8)
                    for r in X]

    n = 3
    records = _random_walk_records(n, [0, 1])
    masks = stored_masks(tmp_path, CAMArgmax(), records)
    assert len(list((tmp_path / "pseudo-labels").glob("*.npy"))) == n
    for want, got in zip(CAMArgmax().predict(records), masks):
        np.testing.assert_array_equal(want, got)
    assert set(np.unique(masks[0])) <= {0, 2}
    assert stored_masks(tmp_path, CAMArgmax(floor=0.9), records).paths != masks.paths
