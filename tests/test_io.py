"""Tests of sklearn_psa.io: palette, mask files, atomic writes, image loading."""

import os
import stat
import sys

import numpy as np
import pytest
from PIL import Image

from sklearn_psa.io import (
    atomic_write,
    image_size,
    load_image,
    load_mask,
    save_mask,
    to_rgb,
    voc_palette,
)


# --------------------------------------------------------------------------- palette


def test_voc_palette_known_colours():
    pal = voc_palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    known = {
        0: (0, 0, 0),          # background
        1: (128, 0, 0),        # aeroplane
        2: (0, 128, 0),        # bicycle
        3: (128, 128, 0),      # bird
        7: (128, 128, 128),    # car
        15: (192, 128, 128),   # person
        20: (0, 64, 128),      # tvmonitor
        255: (224, 224, 192),  # ignore (object boundaries)
    }
    for value, colour in known.items():
        assert tuple(pal[value]) == colour, value
    # colours of the 21 VOC labels are distinct
    assert len({tuple(c) for c in pal[:21]}) == 21
    np.testing.assert_array_equal(voc_palette(21), pal[:21])


# --------------------------------------------------------------------------- masks


def test_save_load_mask_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 21, size=(13, 17)).astype(np.uint8)
    mask[0, :] = 255
    mask[5, 5] = 254
    path = tmp_path / "sub" / "m.png"  # the folder is created
    save_mask(path, mask)
    got = load_mask(path)
    assert got.dtype == np.uint8 and got.shape == (13, 17)
    np.testing.assert_array_equal(got, mask)
    # it is a palette PNG coloured with the VOC palette (viewers show VOC colours)
    with Image.open(path) as img:
        assert img.mode == "P" and img.format == "PNG"
        np.testing.assert_array_equal(
            np.asarray(img.getpalette(), np.uint8).reshape(-1, 3)[:256], voc_palette()
        )
        np.testing.assert_array_equal(np.asarray(img.convert("RGB"))[0, 0], (224, 224, 192))


@pytest.mark.parametrize("dtype", [np.int64, np.uint16, bool, np.float64])
def test_save_mask_dtypes(tmp_path, dtype):
    mask = np.array([[0, 1], [1, 0]]).astype(dtype)
    save_mask(tmp_path / "m.png", mask)
    np.testing.assert_array_equal(load_mask(tmp_path / "m.png"), mask.astype(np.uint8))


def test_save_mask_errors(tmp_path):
    with pytest.raises(ValueError, match=r"m\.png: expected an \(H, W\) mask, got shape "
                                         r"\(2, 2, 3\)"):
        save_mask(tmp_path / "m.png", np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="values must lie in 0..255"):
        save_mask(tmp_path / "m.png", np.array([[0, 256]]))
    with pytest.raises(ValueError, match="values must lie in 0..255"):
        save_mask(tmp_path / "m.png", np.array([[-1, 0]]))
    for bad in (1.5, np.nan):
        with pytest.raises(ValueError, match="expected integer mask values, got dtype float64"):
            save_mask(tmp_path / "m.png", np.full((2, 2), bad))
    assert not (tmp_path / "m.png").exists()


def test_load_mask_grayscale_and_16_bit(tmp_path):
    m = np.array([[0, 3], [255, 1]], np.uint8)
    Image.fromarray(m, mode="L").save(tmp_path / "l.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "l.png"), m)
    Image.fromarray(m.astype(np.uint16)).save(tmp_path / "i16.png")
    got = load_mask(tmp_path / "i16.png")
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, m)
    Image.fromarray(np.array([[0, 300]], np.uint16)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match=r"big\.png: mask values must lie in 0\.\.255"):
        load_mask(tmp_path / "big.png")


def test_load_mask_errors(tmp_path):
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match=r"rgb\.png: expected a palette or grayscale mask PNG, "
                                         r"got mode 'RGB'"):
        load_mask(tmp_path / "rgb.png")
    with pytest.raises(FileNotFoundError, match=r"none\.png"):
        load_mask(tmp_path / "none.png")
    (tmp_path / "bad.png").write_bytes(b"garbage" * 30)
    with pytest.raises(ValueError, match=r"bad\.png: not a readable image file"):
        load_mask(tmp_path / "bad.png")


# --------------------------------------------------------------------------- atomic writes


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_success_leaves_no_temp_files(tmp_path):
    target = tmp_path / "out.bin"
    with atomic_write(target) as f:
        f.write(b"abc")
        # while writing, the target does not exist yet: readers never see a partial file
        assert not target.exists()
        assert len(_leftovers(tmp_path)) == 1
    assert target.read_bytes() == b"abc"
    assert _leftovers(tmp_path) == []
    with atomic_write(target, "w") as f:  # text mode, replacing an existing file
        f.write("new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_atomic_write_exception_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target, "w") as f:
            f.write("half-written")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []
    # and with no previous file, none appears
    fresh = tmp_path / "fresh.txt"
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(fresh, "w") as f:
            f.write("x")
            raise KeyboardInterrupt
    assert not fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_save_mask_failure_keeps_the_old_mask(tmp_path, monkeypatch):
    path = tmp_path / "m.png"
    save_mask(path, np.ones((3, 3), np.uint8))
    import PIL.Image

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(PIL.Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_mask(path, np.zeros((3, 3), np.uint8))
    monkeypatch.undo()
    np.testing.assert_array_equal(load_mask(path), np.ones((3, 3)))
    assert _leftovers(tmp_path) == []


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_atomic_write_gives_files_the_usual_permissions(tmp_path):
    # a file written atomically must be readable like one written with open() (umask
    # applied), not private to its owner as the temporary file from mkstemp is
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    with atomic_write(tmp_path / "atomic.txt", "w") as f:
        f.write("x")
    save_mask(tmp_path / "mask.png", np.zeros((2, 2), np.uint8))
    expected = stat.S_IMODE(os.stat(plain).st_mode)
    assert stat.S_IMODE(os.stat(tmp_path / "atomic.txt").st_mode) == expected
    assert stat.S_IMODE(os.stat(tmp_path / "mask.png").st_mode) == expected


# --------------------------------------------------------------------------- images


def test_load_image_rgb_png_and_size(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, size=(7, 11, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    got = load_image(tmp_path / "a.png")
    assert got.dtype == np.uint8 and got.flags.writeable
    np.testing.assert_array_equal(got, rgb)
    assert image_size(tmp_path / "a.png") == (7, 11)
    assert image_size(str(tmp_path / "a.png")) == (7, 11)


def test_load_image_grayscale(tmp_path):
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5) * 10
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    got = load_image(tmp_path / "g.png")
    assert got.shape == (4, 5, 3)
    for c in range(3):
        np.testing.assert_array_equal(got[:, :, c], gray)


def test_load_image_palette(tmp_path):
    img = Image.fromarray(np.array([[0, 1, 15], [255, 1, 0]], np.uint8), mode="P")
    img.putpalette(voc_palette().ravel().tolist())
    img.save(tmp_path / "p.png")
    got = load_image(tmp_path / "p.png")
    np.testing.assert_array_equal(got[0], [(0, 0, 0), (128, 0, 0), (192, 128, 128)])
    np.testing.assert_array_equal(got[1, 0], (224, 224, 192))


def test_load_image_rgba_drops_alpha(tmp_path):
    rgba = np.random.default_rng(1).integers(0, 256, size=(3, 4, 4)).astype(np.uint8)
    rgba[0, 0, 3] = 0  # fully transparent pixel keeps its colour values
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    got = load_image(tmp_path / "a.png")
    np.testing.assert_array_equal(got, rgba[:, :, :3])


def test_load_image_jpeg(tmp_path):
    flat = np.full((8, 8, 3), (30, 160, 220), np.uint8)
    Image.fromarray(flat).save(tmp_path / "a.jpg", quality=95)
    got = load_image(tmp_path / "a.jpg")
    assert got.shape == (8, 8, 3)
    assert np.abs(got.astype(int) - flat).max() <= 3


def test_load_image_16_bit_grayscale_is_not_saturated(tmp_path):
    # 16-bit grayscale PNGs must keep their contrast (scaled to 8 bits) or be refused
    # clearly; clipping every value above 255 to white silently destroys the image
    ramp = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    try:
        got = load_image(tmp_path / "g16.png")
    except ValueError as exc:
        assert "16" in str(exc) and "g16.png" in str(exc)
    else:
        np.testing.assert_array_equal(got[:, :, 0], (ramp >> 8).astype(np.uint8))


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_load_image_applies_the_exif_orientation(tmp_path, fmt):
    stored = np.zeros((16, 24, 3), np.uint8)
    stored[:8, :8] = (255, 0, 0)  # red top-left corner as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers turn the photo a quarter clockwise
    Image.fromarray(stored).save(tmp_path / f"o6.{fmt}", exif=exif, quality=95)
    got = load_image(tmp_path / f"o6.{fmt}")
    assert got.shape == (24, 16, 3)
    assert image_size(tmp_path / f"o6.{fmt}") == got.shape[:2]
    assert got[:8, -8:, 0].mean() > 200 and got[:8, :8, 0].mean() < 50  # red now top-right
    # A mask is never turned: PNG masks have no orientation.
    mask = np.zeros((16, 24), np.uint8)
    Image.fromarray(mask, mode="L").save(tmp_path / "m.png", exif=exif)
    assert load_mask(tmp_path / "m.png").shape == (16, 24)


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.png: no such image file"):
        load_image(tmp_path / "nothing.png")
    (tmp_path / "bad.png").write_bytes(os.urandom(64))
    with pytest.raises(ValueError, match=r"bad\.png: not a readable image file"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"bad\.png: not a readable image file"):
        image_size(tmp_path / "bad.png")
    with pytest.raises(ValueError, match="not a readable image file"):
        load_image(tmp_path)  # a folder


def test_to_rgb():
    gray = np.arange(6, dtype=np.uint8).reshape(2, 3)
    np.testing.assert_array_equal(to_rgb(gray), np.dstack([gray] * 3))
    np.testing.assert_array_equal(to_rgb(gray[:, :, None]), np.dstack([gray] * 3))
    rgba = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    out = to_rgb(rgba)
    np.testing.assert_array_equal(out, rgba[:, :, :3])
    assert out.flags.c_contiguous
    rgb = rgba[:, :, :3].copy()
    assert to_rgb(rgb) is rgb
    pil = to_rgb(Image.fromarray(gray, mode="L"))
    np.testing.assert_array_equal(pil, np.dstack([gray] * 3))
    assert pil.flags.writeable


def test_dump_model_round_trips_and_leaves_no_temporary_file(tmp_path):
    import joblib

    from sklearn_psa.io import dump_model

    path = tmp_path / "sub" / "model.joblib"
    dump_model({"weights": np.arange(5)}, path)
    assert np.array_equal(joblib.load(path)["weights"], np.arange(5))
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.joblib"]


def test_a_killed_save_leaves_temporaries_that_the_next_save_removes(tmp_path):
    from sklearn_psa.io import atomic_write, remove_stale_temporaries

    path = tmp_path / "model.psa"
    old = tmp_path / ".model.psa.abcd1234.tmp"  # what a save killed by SIGKILL leaves
    young = tmp_path / ".model.psa.efgh5678.tmp"  # a save in progress elsewhere
    other = tmp_path / ".other.png.abcd1234.tmp"  # another file's, left as long ago
    user = tmp_path / ".model.psa.notes.tmp"  # not a name atomic_write makes
    for p in (old, young, other, user):
        p.write_bytes(b"x")
    long_ago = 1_000_000_000  # 2001: a fixed time far in the past, without reading the clock
    for p in (old, other, user):
        os.utime(p, (long_ago, long_ago))
    with atomic_write(path) as f:
        f.write(b"done")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, young.name, user.name])
    # the folder is scanned once per process; a later scan is explicit
    os.utime(young, (long_ago, long_ago))
    with atomic_write(tmp_path / "again") as f:
        f.write(b"done")
    assert young.exists()
    assert remove_stale_temporaries(tmp_path, "model.psa") == [str(young)]
    assert user.exists()


def test_check_writable_probes_and_leaves_nothing(tmp_path):
    from sklearn_psa.io import check_writable

    check_writable(tmp_path / "a" / "b")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError) as info:
        check_writable(tmp_path / "file" / "sub")
    assert str(tmp_path / "file") in str(info.value.filename)
    with pytest.raises(OSError) as info:
        check_writable("/proc/sklearn-psa-probe")
    assert info.value.filename.startswith("/proc")
    assert (tmp_path / "file").read_text() == "x"


def test_output_masks_are_marked(tmp_path):
    from sklearn_psa.io import output_mark

    save_mask(tmp_path / "a.png", np.ones((3, 3), np.uint8), output_of="predict")
    save_mask(tmp_path / "b.png", np.ones((3, 3), np.uint8))
    Image.fromarray(np.ones((3, 3), np.uint8)).save(tmp_path / "c.png")
    (tmp_path / "d.png").write_bytes(b"not a png")
    assert [output_mark(tmp_path / f"{n}.png") for n in "abcd"] == ["predict", None, None, None]
    np.testing.assert_array_equal(load_mask(tmp_path / "a.png"), np.ones((3, 3)))


def test_a_failed_write_names_its_file_and_leaves_nothing(tmp_path):
    from sklearn_psa.cli import _one_line
    from sklearn_psa.io import atomic_write

    path = tmp_path / "model.psa"
    with pytest.raises(OSError) as info:
        with atomic_write(path) as f:
            f.write(b"half")
            raise OSError(28, "No space left on device")
    assert info.value.filename == str(path)
    assert _one_line(info.value) == f"{path}: No space left on device"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("array, match", [
    (np.full((6, 7), 0.5, np.float32), "float pixels"),
    ((np.arange(42).reshape(6, 7) * 100000).astype(np.int32), "32-bit integer pixels"),
])
def test_images_of_unknown_scale_are_refused_by_name(tmp_path, array, match):
    from sklearn_psa.io import image_size

    path = tmp_path / "scan.tif"
    Image.fromarray(array).save(path)
    for read in (load_image, image_size):
        with pytest.raises(ValueError, match=rf"scan.tif: {match}"):
            read(path)
    # 16-bit images keep converting (their 8 most significant bits)
    Image.fromarray((np.arange(42).reshape(6, 7) * 1000).astype(np.uint16)).save(path)
    assert load_image(path).shape == (6, 7, 3)


def test_max_pixels_refuses_large_files_before_decoding(tmp_path, monkeypatch):
    import sklearn_psa.io as sio

    path = tmp_path / "wide.png"
    Image.new("L", (300, 200)).save(path)
    with pytest.raises(ValueError, match=r"wide.png: 300 x 200 = 60000 pixels, more than the "
                                         r"limit of 59999"):
        load_image(path, max_pixels=59999)
    assert load_image(path, max_pixels=60000).shape == (200, 300, 3)
    monkeypatch.setattr(sio, "MAX_PIXELS", 1000)
    with pytest.raises(ValueError, match="more than the limit of 1000"):
        sio.image_size(path)
    monkeypatch.setattr(sio, "MAX_PIXELS", None)  # no limit
    assert sio.image_size(path) == (200, 300)


def test_a_16_bit_png_opened_as_mode_i_keeps_converting(tmp_path):
    # older Pillows open 16-bit grayscale PNGs as mode "I" (32-bit integers)
    values = (np.arange(42).reshape(6, 7) * 1500).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        as_i = im.convert("I")
    as_i.format = "PNG"
    np.testing.assert_array_equal(to_rgb(as_i)[..., 0], (values >> 8).astype(np.uint8))
    as_i.format = None  # a 32-bit image made in memory: its range is unknown
    with pytest.raises(ValueError, match="32-bit integer pixels"):
        to_rgb(as_i)


def test_list_images_takes_the_command_s_rule(tmp_path):
    from sklearn_psa.io import list_images

    pixels = np.zeros((3, 3, 3), np.uint8)
    for name in ("b.png", "a.JPG", "c.tiff", ".hidden.png", "notes.txt", "z.png.bak"):
        Image.fromarray(pixels).save(tmp_path / name, format="PNG")
    (tmp_path / "sub.png").mkdir()  # a folder named like an image
    Image.fromarray(pixels).save(tmp_path / "sub.png" / "inner.png")
    assert list_images(tmp_path) == [str(tmp_path / n) for n in ("a.JPG", "b.png", "c.tiff")]
    assert list_images(tmp_path / "sub.png") == [str(tmp_path / "sub.png" / "inner.png")]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert list_images(empty) == []
    with pytest.raises(FileNotFoundError, match="no such folder"):
        list_images(tmp_path / "missing")
    with pytest.raises(NotADirectoryError, match="expected a folder of images"):
        list_images(tmp_path / "b.png")


def test_a_folder_given_as_images_points_to_list_images(tmp_path):
    from sklearn_psa._validation import check_images
    from sklearn_psa.io import list_images

    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(TypeError, match=r"X is a folder .*sklearn_psa\.io\.list_images\("):
        check_images(str(tmp_path))
    with pytest.raises(IsADirectoryError, match=r"X\[1\] is a folder .*list_images\("):
        check_images([str(tmp_path / "a.png"), tmp_path])
    assert len(check_images(list_images(tmp_path))) == 1  # the fix works
