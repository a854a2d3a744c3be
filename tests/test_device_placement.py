"""``device="cpu"`` keeps all work on the CPU, also where torch sees a CUDA device.

The machine here may have no GPU: torch is told that CUDA is available, and
every device the package resolves is recorded, a CUDA one being an error
raised where it is asked for. The dense CRF is where an estimator's device was
once lost: it resolved its own ``"auto"``.
"""

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sklearn_psa import AffinityEstimator, PSASegmenter  # noqa: E402
from sklearn_psa.datasets import make_shapes  # noqa: E402
from sklearn_psa.records import Records  # noqa: E402


@pytest.fixture
def cuda_seen(monkeypatch):
    """Pretend CUDA is available; return the devices resolved, refusing CUDA ones."""
    import sklearn_psa._device as device_module
    import sklearn_psa.crf as crf_module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real = device_module.resolve_device
    resolved = []

    def cpu_only(device="auto"):
        dev = real(device)
        resolved.append(dev)
        if dev.type != "cpu":
            raise AssertionError(f"resolve_device({device!r}) gave {dev}: work would leave the CPU")
        return dev

    assert real("auto").type == "cuda"  # the pretence works: "auto" would mean CUDA
    # every module's own name for it (``from ._device import resolve_device``)
    for name, module in list(sys.modules.items()):
        if name.startswith("sklearn_psa") and getattr(module, "resolve_device", None) is real:
            monkeypatch.setattr(module, "resolve_device", cpu_only)
    assert crf_module.resolve_device is cpu_only
    return resolved


def _square_records(n=4, size=32):
    rng = np.random.default_rng(0)
    images, cams = [], []
    for _ in range(n):
        mask = np.zeros((size, size), np.float32)
        y, x = rng.integers(0, size - 12, size=2)
        mask[y:y + 12, x:x + 12] = 1
        image = rng.integers(60, 120, (size, size, 3)).astype(np.uint8)
        image[mask > 0] = (200, 60, 40)
        images.append(image)
        cams.append(mask[None])
    return Records.from_arrays(images, np.ones((n, 1), np.uint8), cams)


def test_affinity_labels_crf_follows_the_estimators_cpu_device(cuda_seen):
    records = _square_records()
    est = AffinityEstimator(backbone="tiny", backbone_options={"width": 4, "depth": 1},
                            head_widths=(8, 8, 8), crop_size=32, batch_size=4, max_epochs=1,
                            crf=True, device="cpu", random_state=0)
    est.fit(records)
    est.transform(records)
    assert cuda_seen and {d.type for d in cuda_seen} == {"cpu"}
    assert {p.device.type for p in est.network_.parameters()} == {"cpu"}


def test_the_crf_runs_on_the_estimators_device_unless_its_options_name_one(monkeypatch):
    from sklearn_psa.crf import placed_crf_options

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert placed_crf_options({}, cpu) == ({"device": "cpu"}, False)
    assert placed_crf_options({"n_iter": 2}, cuda) == ({"n_iter": 2, "device": "cuda"}, True)
    assert placed_crf_options({"device": "cpu"}, cuda) == ({"device": "cpu"}, False)
    assert placed_crf_options({"device": "auto"}, cpu) == ({"device": "cuda"}, True)
    options = {"backend": "pydensecrf2"}
    assert placed_crf_options(options, cuda) == (options, False)


def test_segmenter_on_the_cpu_fits_and_predicts_there_with_the_crf(cuda_seen):
    X, Y, _ = make_shapes(4, image_size=32, random_state=0)
    seg = PSASegmenter(backbone="tiny", max_epochs=1, batch_size=4, crf=True, device="cpu",
                       random_state=0)
    seg.set_params(cam__scales=(1.0,), cam__crop_size=None, affinity__crf={"n_iter": 2},
                   affinity__crop_size=32, affinity__head_widths=(8, 8, 8))
    seg.fit(X, Y)
    fitted = len(cuda_seen)
    proba = seg.predict_proba(X[:2])
    assert len(cuda_seen) > fitted  # predict resolved its device too
    assert {d.type for d in cuda_seen} == {"cpu"}
    assert all(isinstance(p, np.ndarray) for p in proba)
    for step in (seg.cam_, seg.affinity_):
        assert {p.device.type for p in step.network_.parameters()} == {"cpu"}
    assert {p.device.type for p in seg.network_.parameters()} == {"cpu"}



@pytest.mark.parametrize("store", [False, True])
def test_cam_transforms_resolve_the_device_once_per_call(cuda_seen, tmp_path, store):
    # the network, the store's key and the records' source all use the one device
    from torch import nn

    from sklearn_psa import CAMClassifier, ClassifierCAM

    X, Y, _ = make_shapes(3, image_size=32, random_state=0)
    cam = CAMClassifier(backbone="tiny", backbone_options={"width": 4, "depth": 1}, scales=(1.0,),
                        crop_size=None, batch_size=4, max_epochs=1, device="cpu", random_state=0,
                        store=str(tmp_path / "cams") if store else None).fit(X, Y)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, Y.shape[1])

        def forward(self, x):
            return self.fc(self.body(x).mean(dim=(2, 3)))

    hooked = ClassifierCAM(Net(), "body", "fc", scales=(1.0,), device="cpu",
                           store=str(tmp_path / "hooked") if store else None).fit(X, Y)
    for call in (lambda: cam.transform(X), lambda: cam.compute_cams(X, Y),
                 lambda: hooked.transform(X)):
        for _ in range(2):  # computed, then (with a store) read back
            del cuda_seen[:]
            assert len(call()) == 3
            assert [d.type for d in cuda_seen] == ["cpu"]
