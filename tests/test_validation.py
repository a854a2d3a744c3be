"""Tests of the shared validation layer (sklearn_psa._validation)."""

import os
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from PIL import Image

from sklearn_psa._grid import IGNORE_INDEX
from sklearn_psa._validation import (
    ImageSet,
    Targets,
    check_image_labels,
    check_images,
    check_masks,
    check_random_state_seed,
    check_scalar_in,
    check_targets,
    format_masks,
    labels_from_masks,
)
from sklearn_psa.io import save_mask
from sklearn_psa.records import Record, Records


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3)).astype(np.uint8)


def _save(path, array, **kwargs):
    Image.fromarray(array).save(path, **kwargs)
    return str(path)


# =========================================================================== check_images


class TestCheckImagesArrays:
    def test_list_of_different_sizes(self):
        X = [_rgb(5, 7, 0), _rgb(9, 4, 1), _rgb(1, 1, 2)]
        images = check_images(X)
        assert isinstance(images, ImageSet)
        assert len(images) == 3 and not images.from_array
        assert images.shapes == [(5, 7), (9, 4), (1, 1)]
        for i in range(3):
            np.testing.assert_array_equal(images[i], X[i])
            assert images[i].dtype == np.uint8
            assert images.shape(i) == X[i].shape[:2]

    def test_tuple_and_object_array(self):
        X = (_rgb(5, 7), _rgb(3, 3))
        assert check_images(X).shapes == [(5, 7), (3, 3)]
        obj = np.empty(2, dtype=object)
        obj[0], obj[1] = X
        images = check_images(obj)
        assert images.shapes == [(5, 7), (3, 3)] and not images.from_array

    def test_4d_array(self):
        X = np.stack([_rgb(6, 8, s) for s in range(3)])
        images = check_images(X)
        assert images.from_array and len(images) == 3
        assert images.shapes == [(6, 8)] * 3
        for i in range(3):
            np.testing.assert_array_equal(images[i], X[i])

    @pytest.mark.parametrize("channels", [1, 4])
    def test_4d_array_gray_and_rgba_become_rgb(self, channels):
        X = np.random.default_rng(0).integers(0, 256, size=(2, 4, 5, channels)).astype(np.uint8)
        images = check_images(X)
        assert images.from_array
        for i in range(2):
            assert images[i].shape == (4, 5, 3)
            np.testing.assert_array_equal(images[i], np.broadcast_to(X[i, :, :, :3], (4, 5, 3))
                                          if channels == 1 else X[i, :, :, :3])

    def test_grayscale_and_rgba_items_become_rgb(self):
        gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
        gray1 = gray[:, :, None]
        rgba = np.random.default_rng(0).integers(0, 256, size=(3, 4, 4)).astype(np.uint8)
        images = check_images([gray, gray1, rgba])
        for i in (0, 1):
            assert images[i].shape == (3, 4, 3)
            for c in range(3):
                np.testing.assert_array_equal(images[i][:, :, c], gray)
        np.testing.assert_array_equal(images[2], rgba[:, :, :3])  # alpha dropped

    def test_pil_images(self):
        rgb = _rgb(4, 6)
        gray = np.arange(24, dtype=np.uint8).reshape(4, 6)
        rgba = np.dstack([rgb, np.full((4, 6), 7, np.uint8)])
        pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
        pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
        images = check_images([Image.fromarray(rgb), Image.fromarray(gray),
                               Image.fromarray(rgba), pal])
        np.testing.assert_array_equal(images[0], rgb)
        np.testing.assert_array_equal(images[1], np.dstack([gray] * 3))
        np.testing.assert_array_equal(images[2], rgb)
        np.testing.assert_array_equal(images[3][0, 0], [10, 20, 30])
        np.testing.assert_array_equal(images[3][0, 1], [200, 100, 50])
        assert all(isinstance(images.sources[i], np.ndarray) for i in range(4))
        # float pixels (mode "F") would turn black in the conversion: refused
        with pytest.raises(TypeError, match=r"X\[1\]: .* mode 'F'"):
            check_images([Image.fromarray(rgb), Image.fromarray(np.ones((4, 6), np.float32))])

    def test_passthrough_and_records(self):
        images = check_images([_rgb(3, 3)])
        assert check_images(images) is images
        recs = Records([Record(_rgb(4, 5), [0], np.zeros((1, 4, 5)))], n_classes=1)
        got = check_images(recs)
        assert isinstance(got, ImageSet) and got.shapes == [(4, 5)]

    def test_slicing_and_take(self):
        X = np.stack([_rgb(3, 3, s) for s in range(4)])
        images = check_images(X)
        part = images[1:3]
        assert isinstance(part, ImageSet) and part.from_array and len(part) == 2
        np.testing.assert_array_equal(part[0], X[1])
        taken = images.take([3, 0])
        assert taken.from_array
        np.testing.assert_array_equal(taken[0], X[3])
        np.testing.assert_array_equal(taken[1], X[0])

    def test_name_in_messages(self):
        with pytest.raises(TypeError, match=r"images\[0\]"):
            check_images([np.zeros((2, 2, 3))], name="images")


class TestCheckImagesFiles:
    def test_paths_are_loaded_lazily(self, tmp_path):
        a, b = _rgb(5, 7, 0), _rgb(8, 3, 1)
        pa = _save(tmp_path / "a.png", a)
        pb = tmp_path / "b.png"  # a pathlib.Path
        _save(pb, b)
        images = check_images([pa, pb])
        assert images.sources == [pa, str(pb)]  # stored as paths, not pixels
        assert images.shapes == [(5, 7), (8, 3)]
        # lazily: the pixels are read at access time, so a rewritten file shows its new content
        c = _rgb(5, 7, 2)
        _save(tmp_path / "a.png", c)
        np.testing.assert_array_equal(images[0], c)
        np.testing.assert_array_equal(images[1], b)

    def test_jpeg_and_mixed_sources(self, tmp_path):
        flat = np.full((16, 16, 3), (200, 40, 90), np.uint8)
        pj = _save(tmp_path / "x.jpg", flat, quality=95)
        images = check_images([pj, _rgb(2, 2)])
        loaded = images[0]
        assert loaded.shape == (16, 16, 3) and loaded.dtype == np.uint8
        assert np.abs(loaded.astype(int) - flat).max() <= 3  # lossy, but the same colour
        assert isinstance(images.sources[0], str) and isinstance(images.sources[1], np.ndarray)

    @pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA"])
    def test_files_convert_to_rgb(self, tmp_path, mode):
        rgb = _rgb(6, 5)
        img = Image.fromarray(rgb).convert(mode)
        path = str(tmp_path / f"img_{mode}.png")
        img.save(path)
        got = check_images([path])[0]
        assert got.shape == (6, 5, 3) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, np.asarray(img.convert("RGB")))

    def test_missing_file(self, tmp_path):
        good = _save(tmp_path / "a.png", _rgb(2, 2))
        missing = str(tmp_path / "missing.png")
        with pytest.raises(FileNotFoundError, match=r"X\[1\]: no such image file: .*missing\.png"):
            check_images([good, missing])

    def test_corrupt_file(self, tmp_path):
        good = _save(tmp_path / "a.png", _rgb(2, 2))
        bad = tmp_path / "garbage.png"
        bad.write_bytes(b"this is not a png at all" * 10)
        with pytest.raises(ValueError, match=r"X\[1\]: .*garbage\.png: not a readable image"):
            check_images([good, str(bad)])

    def test_truncated_file_fails_when_loaded(self, tmp_path):
        path = _save(tmp_path / "t.png", _rgb(32, 32))
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])
        images = check_images([path])  # the header is intact: only loading can tell
        assert images.shape(0) == (32, 32)
        with pytest.raises(ValueError, match=r"t\.png: corrupt or truncated"):
            images[0]

    def test_single_path_is_rejected(self, tmp_path):
        path = _save(tmp_path / "a.png", _rgb(2, 2))
        with pytest.raises(TypeError, match=r"single path .*a\.png.*wrap it in a list"):
            check_images(path)
        with pytest.raises(TypeError, match="single path"):
            check_images(Path(path))


class TestCheckImagesErrors:
    @pytest.mark.parametrize("X", [[], np.zeros((0, 4, 4, 3), np.uint8)])
    def test_empty(self, X):
        with pytest.raises(ValueError, match="X is empty: expected at least one image"):
            check_images(X)

    def test_none_and_not_a_sequence(self):
        with pytest.raises(TypeError, match="X is None"):
            check_images(None)
        with pytest.raises(TypeError, match="expected a sequence of images, got int"):
            check_images(5)

    @pytest.mark.parametrize(
        "item, exc, match",
        [
            (np.zeros((4, 4, 3), np.float64), TypeError, r"X\[2\]: .*uint8.*dtype float64"),
            (np.zeros((4, 4, 3), np.int64), TypeError, r"X\[2\]: .*dtype int64"),
            (np.zeros((4, 4, 3), bool), TypeError, r"X\[2\]: .*dtype bool"),
            (np.zeros((4,), np.uint8), ValueError, r"X\[2\]: expected an \(H, W, 3\).*shape \(4,\)"),
            (np.zeros((2, 4, 4, 3), np.uint8), ValueError, r"X\[2\]: .*shape \(2, 4, 4, 3\)"),
            (np.zeros((4, 4, 2), np.uint8), ValueError, r"X\[2\]: .*shape \(4, 4, 2\)"),
            (np.zeros((0, 4, 3), np.uint8), ValueError, r"X\[2\]: image is empty"),
            (None, TypeError, r"X\[2\]: expected an \(H, W, 3\).*got NoneType"),
            ({"a": 1}, TypeError, r"X\[2\]: .*got dict"),
        ],
    )
    def test_bad_item_is_named(self, item, exc, match):
        with pytest.raises(exc, match=match):
            check_images([_rgb(4, 4), _rgb(3, 3), item])

    def test_bad_4d_arrays(self):
        with pytest.raises(TypeError, match=r"X: expected an \(n, H, W, 3\) uint8 array.*float32"):
            check_images(np.zeros((2, 4, 4, 3), np.float32))
        with pytest.raises(ValueError, match=r"X: expected an \(n, H, W, 3\).*\(2, 4, 4, 5\)"):
            check_images(np.zeros((2, 4, 4, 5), np.uint8))
        with pytest.raises(ValueError, match="images are empty"):
            check_images(np.zeros((2, 0, 4, 3), np.uint8))

    @pytest.mark.parametrize("shape", [(4, 4, 3), (4, 4), (3,)])
    def test_other_arrays_rejected(self, shape):
        # a single image is not a set of images
        with pytest.raises(ValueError, match=r"X: expected an \(n, H, W, 3\) uint8 array or a "
                                             r"sequence of images"):
            check_images(np.zeros(shape, np.uint8))


# =========================================================================== check_image_labels


class TestCheckImageLabels:
    @pytest.mark.parametrize("dtype", [np.int64, np.float32, bool, np.uint8])
    def test_valid(self, dtype):
        y = np.array([[0, 1, 1], [1, 0, 0]], dtype=dtype)
        out = check_image_labels(y, 2)
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, [[0, 1, 1], [1, 0, 0]])

    def test_list_and_sparse(self):
        np.testing.assert_array_equal(check_image_labels([[0, 1], [1, 1]]), [[0, 1], [1, 1]])
        out = check_image_labels(sp.csr_matrix(np.array([[0, 1], [1, 0]])), 2, n_classes=2)
        np.testing.assert_array_equal(out, [[0, 1], [1, 0]])

    def test_background_only_rows_allowed(self):
        np.testing.assert_array_equal(check_image_labels([[0, 0], [0, 1]]), [[0, 0], [0, 1]])

    def test_nan_and_inf(self):
        with pytest.raises(ValueError, match=r"y\[1, 0\] is nan: expected 0 or 1"):
            check_image_labels([[0.0, 1.0], [np.nan, 0.0]])
        with pytest.raises(ValueError, match=r"y\[0, 1\] is inf"):
            check_image_labels([[0.0, np.inf]])

    @pytest.mark.parametrize("bad, where", [([[0, 2], [1, 0]], r"y\[0, 1\] is 2"),
                                            ([[0, 1], [-1, 0]], r"y\[1, 0\] is -1"),
                                            ([[0.5, 1.0]], r"y\[0, 0\] is 0\.5")])
    def test_labels_other_than_0_1(self, bad, where):
        with pytest.raises(ValueError, match=where + ": image-level labels must be 0 or 1"):
            check_image_labels(bad)

    def test_shape_errors(self):
        with pytest.raises(ValueError, match="rows of equal length"):
            check_image_labels([[0, 1], [1]])
        with pytest.raises(ValueError, match=r"indicator matrix, got array of shape \(3,\)"):
            check_image_labels([0, 1, 1])
        with pytest.raises(ValueError, match="y is empty"):
            check_image_labels(np.zeros((0, 3)))
        with pytest.raises(ValueError, match="at least one class column"):
            check_image_labels(np.zeros((2, 0)))

    def test_type_errors(self):
        with pytest.raises(TypeError, match="y is None"):
            check_image_labels(None)
        with pytest.raises(TypeError, match="numeric 0/1 labels, got dtype <U1"):
            check_image_labels([["a", "b"]])

    def test_length_and_class_mismatch(self):
        with pytest.raises(ValueError, match="Y has 2 rows but X has 3 images"):
            check_image_labels([[0, 1], [1, 0]], 3, name="Y")
        with pytest.raises(ValueError, match="y has 2 class columns, expected 4"):
            check_image_labels([[0, 1], [1, 0]], 2, n_classes=4)


# =========================================================================== check_masks


class TestCheckMasks:
    def test_list_of_different_sizes(self):
        masks = [np.array([[0, 1], [255, 2]]), np.zeros((3, 5), np.int32), np.ones((1, 1), bool)]
        out = check_masks(masks, 3)
        assert all(m.dtype == np.uint8 for m in out)
        assert [m.shape for m in out] == [(2, 2), (3, 5), (1, 1)]
        np.testing.assert_array_equal(out[0], [[0, 1], [255, 2]])
        np.testing.assert_array_equal(out[2], [[1]])

    def test_3d_array_and_integral_floats(self):
        arr = np.array([[[0.0, 1.0], [2.0, 255.0]]] * 2)
        out = check_masks(arr)
        assert len(out) == 2 and out[0].dtype == np.uint8
        np.testing.assert_array_equal(out[1], [[0, 1], [2, 255]])

    def test_paths(self, tmp_path):
        m = np.array([[0, 1, 255], [3, 2, 0]], np.uint8)
        p1 = tmp_path / "m1.png"
        save_mask(p1, m)
        gray = tmp_path / "m2.png"
        Image.fromarray(m, mode="L").save(gray)
        out = check_masks([p1, str(gray)], n_classes=3, shapes=[(2, 3), (2, 3)])
        for got in out:
            np.testing.assert_array_equal(got, m)

    def test_none_and_bad_containers(self, tmp_path):
        with pytest.raises(TypeError, match="y is None"):
            check_masks(None)
        with pytest.raises(TypeError, match="single path"):
            check_masks(str(tmp_path / "m.png"))
        with pytest.raises(TypeError, match="expected a sequence of masks, got int"):
            check_masks(3)
        with pytest.raises(ValueError, match="y is empty"):
            check_masks([])

    def test_single_2d_mask_is_explained(self):
        # a lone (H, W) mask is not a set of masks: the error must say so, not blame "y[0]"
        with pytest.raises(ValueError, match=r"single \(H, W\) mask.*wrap it in a list"):
            check_masks(np.zeros((4, 5), np.uint8))

    def test_length_mismatches(self):
        with pytest.raises(ValueError, match="y has 2 masks but X has 3 images"):
            check_masks([np.zeros((2, 2))] * 2, 3)
        with pytest.raises(ValueError, match="y has 2 masks but there are 1 images"):
            check_masks([np.zeros((2, 2))] * 2, shapes=[(2, 2)])

    def test_shape_mismatch_names_the_item(self):
        with pytest.raises(ValueError, match=r"y\[1\]: mask has shape \(3, 2\) but its image is "
                                             r"\(2, 3\)"):
            check_masks([np.zeros((2, 2)), np.zeros((3, 2))], shapes=[(2, 2), (2, 3)])

    @pytest.mark.parametrize(
        "item, exc, match",
        [
            (np.array([[0.0, np.nan]]), ValueError, r"y\[1\]: mask contains NaN or infinite"),
            (np.array([[0.0, np.inf]]), ValueError, r"y\[1\]: mask contains NaN or infinite"),
            (np.array([[0.0, 1.5]]), ValueError, r"y\[1\]: mask values must be integers"),
            (np.array([[0, -1]]), ValueError, r"y\[1\]: mask values must be 0 .* got values in "
                                              r"\[-1, 0\]"),
            (np.array([[0, 256]]), ValueError, r"y\[1\]: .*got values in \[0, 256\]"),
            (np.zeros((2, 2, 1)), ValueError, r"y\[1\]: expected an \(H, W\) integer mask, got "
                                              r"array of shape \(2, 2, 1\)"),
            (np.array([["a", "b"]]), TypeError, r"y\[1\]: expected an \(H, W\) integer mask"),
            (np.array([[None, 1]]), TypeError, r"y\[1\]: .*dtype object"),
        ],
    )
    def test_bad_item_is_named(self, item, exc, match):
        with pytest.raises(exc, match=match):
            check_masks([np.zeros((1, 2)), item])

    def test_values_beyond_the_classes(self):
        ok = check_masks([np.array([[0, 2, 255]])], n_classes=2)
        np.testing.assert_array_equal(ok[0], [[0, 2, 255]])
        with pytest.raises(ValueError, match=r"masks\[1\]: mask value 3 is beyond the 2 classes "
                                             r"\(expected 0\.\.2 or 255\)"):
            check_masks([np.array([[0, 1]]), np.array([[3, 255]])], n_classes=2, name="masks")

    def test_missing_and_corrupt_mask_files(self, tmp_path):
        missing = tmp_path / "nope.png"
        with pytest.raises(FileNotFoundError, match=r"y\[0\]: no such mask file: .*nope\.png"):
            check_masks([missing])
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"\x00garbage" * 20)
        with pytest.raises(ValueError, match=r"y\[0\]: .*bad\.png: not a readable image"):
            check_masks([bad])
        rgb = _save(tmp_path / "rgb.png", _rgb(2, 2))
        with pytest.raises(ValueError, match=r"y\[0\]: .*rgb\.png: expected a palette or "
                                             r"grayscale mask PNG, got mode 'RGB'"):
            check_masks([rgb])

    def test_mask_file_beyond_classes(self, tmp_path):
        path = tmp_path / "m.png"
        save_mask(path, np.array([[0, 5]], np.uint8))
        with pytest.raises(ValueError, match=r"y\[0\]: mask value 5 is beyond the 4 classes"):
            check_masks([path], n_classes=4)
        with pytest.raises(ValueError, match=r"y\[0\]: mask has shape \(1, 2\)"):
            check_masks([path], shapes=[(2, 1)])


# =========================================================================== labels and targets


def test_labels_from_masks():
    masks = [np.array([[0, 2], [255, 2]]), np.zeros((3, 3)), np.array([[4, 1]]),
             np.full((2, 2), 255)]
    Y = labels_from_masks(masks)
    assert Y.dtype == np.uint8 and Y.shape == (4, 4)  # n_classes = the largest value, 4
    np.testing.assert_array_equal(Y, [[0, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(labels_from_masks(masks, n_classes=6)[2], [1, 0, 0, 1, 0, 0])
    # background only (or only ignored pixels): one empty class column
    np.testing.assert_array_equal(labels_from_masks([np.zeros((2, 2)), np.full((1, 1), 255)]),
                                  [[0], [0]])


class TestCheckTargets:
    def test_indicator(self):
        t = check_targets([[0, 1], [1, 1]], 2)
        assert isinstance(t, Targets) and t.kind == "image" and t.masks is None
        np.testing.assert_array_equal(t.labels, [[0, 1], [1, 1]])

    def test_masks_give_labels(self):
        masks = [np.array([[0, 3], [255, 3]]), np.array([[1, 1, 0]])]
        t = check_targets(masks, 2, n_classes=3, shapes=[(2, 2), (1, 3)])
        assert t.kind == "pixel" and len(t.masks) == 2
        np.testing.assert_array_equal(t.labels, [[0, 0, 1], [1, 0, 0]])

    def test_3d_array_and_paths(self, tmp_path):
        arr = np.zeros((2, 3, 3), np.uint8)
        arr[1, 0, 0] = 2
        t = check_targets(arr)
        assert t.kind == "pixel"
        np.testing.assert_array_equal(t.labels, [[0, 0], [0, 1]])
        paths = []
        for i, m in enumerate(arr):
            paths.append(str(tmp_path / f"{i}.png"))
            save_mask(paths[-1], m)
        t2 = check_targets(paths, 2)
        assert t2.kind == "pixel"
        np.testing.assert_array_equal(t2.labels, t.labels)

    def test_errors_name_the_item(self):
        with pytest.raises(TypeError, match="y is None"):
            check_targets(None)
        with pytest.raises(ValueError, match=r"y\[1\]: mask value 4 is beyond the 3 classes"):
            check_targets([np.zeros((2, 2)), np.full((2, 2), 4)], n_classes=3)
        with pytest.raises(ValueError, match=r"y\[1, 1\] is 2"):
            check_targets([[0, 1], [0, 2]])
        with pytest.raises(ValueError, match="y has 2 masks but X has 3 images"):
            check_targets([np.zeros((2, 2))] * 2, 3)


def test_format_masks():
    masks = [np.zeros((2, 3), np.int64), np.ones((2, 3), np.int64)]
    from_array = check_images(np.zeros((2, 2, 3, 3), np.uint8))
    out = format_masks(masks, from_array)
    assert isinstance(out, np.ndarray) and out.shape == (2, 2, 3) and out.dtype == np.uint8
    out = format_masks(masks, check_images([np.zeros((2, 3, 3), np.uint8)] * 2))
    assert isinstance(out, list) and all(m.dtype == np.uint8 for m in out)


# =========================================================================== small helpers


def test_check_random_state_seed():
    assert check_random_state_seed(3) == check_random_state_seed(3)
    assert check_random_state_seed(3) != check_random_state_seed(4)
    rs = np.random.RandomState(0)
    a, b = check_random_state_seed(rs), check_random_state_seed(rs)
    assert a != b and isinstance(a, int)  # a RandomState advances
    assert 0 <= check_random_state_seed(None) < np.iinfo(np.int32).max


def test_check_scalar_in():
    assert check_scalar_in(3, "t", 1, 10, integer=True) == 3
    assert check_scalar_in(0.5, "beta", 0, 1) == 0.5
    with pytest.raises(TypeError, match="t must be an integer, got 2.0"):
        check_scalar_in(2.0, "t", integer=True)
    with pytest.raises(TypeError, match="beta must be a number, got True"):
        check_scalar_in(True, "beta")
    with pytest.raises(ValueError, match=r"beta must lie in \[0, 1\], got 2"):
        check_scalar_in(2, "beta", 0, 1)
    with pytest.raises(ValueError, match="t must be at least 1, got 0"):
        check_scalar_in(0, "t", low=1)
    with pytest.raises(ValueError, match="t must be at most 1, got 2"):
        check_scalar_in(2, "t", high=1)


def test_ignore_index():
    assert IGNORE_INDEX == 255


def test_paths_are_not_opened_on_disk_twice(tmp_path, monkeypatch):
    # check_images reads headers only; the pixels are decoded on access
    path = _save(tmp_path / "a.png", _rgb(4, 4))
    import sklearn_psa.io as io_mod

    calls = []
    real = io_mod.load_image
    monkeypatch.setattr(io_mod, "load_image", lambda p: calls.append(p) or real(p))
    import sklearn_psa._validation as val

    monkeypatch.setattr(val, "load_image", io_mod.load_image)
    images = check_images([path])
    assert calls == []
    images[0]
    assert calls == [path]
    assert os.path.exists(path)


def test_check_score_masks_refuses_image_level_labels_in_every_form():
    from sklearn_psa._validation import check_score_masks
    from sklearn_psa.exceptions import MasksRequiredError

    Y = np.array([[1, 0], [0, 1], [1, 1]])
    for y in (Y, Y.tolist(), sp.csr_matrix(Y), Y.astype(bool)):
        with pytest.raises(MasksRequiredError, match=r"y has shape \(3, 2\), image-level labels"):
            check_score_masks(y, 3, scorer="X.score")
    assert not issubclass(MasksRequiredError, Exception)  # GridSearchCV would make it NaN
    # masks pass, checked as check_masks does
    masks = [np.zeros((4, 5), np.uint8)] * 3
    assert len(check_score_masks(masks, 3, shapes=[(4, 5)] * 3)) == 3
    assert len(check_score_masks(np.zeros((3, 4, 5), np.uint8), 3)) == 3
    # one image and one bare mask of its size: the mask error ("wrap it in a list")
    with pytest.raises(ValueError, match="wrap it in a list"):
        check_score_masks(np.zeros((3, 2), np.uint8), 1, shapes=[(3, 2)])
    with pytest.raises(ValueError, match="masks but X has 2 images"):
        check_score_masks(masks, 2)


def test_class_names_come_from_classes_a_dataframe_or_the_mask_values():
    from sklearn_psa._validation import check_classes, class_names_of

    assert list(class_names_of(None, 3)) == ["class 1", "class 2", "class 3"]
    assert list(class_names_of(("cat", "dog"), 2)) == ["cat", "dog"]


    class Frame:  # what is read of a pandas DataFrame of labels (pandas is not a dependency)
        columns = ["cat", "dog"]

    Y = Frame()
    assert list(class_names_of(None, 2, Y)) == ["cat", "dog"]
    assert list(class_names_of(["a", "b"], 2, Y)) == ["a", "b"]  # the parameter wins
    with pytest.raises(ValueError, match="classes has 2 names but y has 3 classes"):
        class_names_of(["a", "b"], 3)
    with pytest.raises(TypeError, match="sequence of class names"):
        check_classes("cat")
    with pytest.raises(ValueError, match="'dog' is repeated"):
        check_classes(["dog", "cat", "dog"])
    with pytest.raises(ValueError, match=r"classes\[1\] is 'background', a name the reports use"):
        check_classes(["cat", "background"])
    with pytest.raises(ValueError, match="empty"):
        check_classes([])
