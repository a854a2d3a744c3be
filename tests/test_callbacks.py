"""Callbacks, the optimizer and schedule parameters, and the base every trained estimator shares."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.utils._param_validation import InvalidParameterError
from torch.nn import functional as F

from sklearn_psa import AffinityEstimator, CAMClassifier, PSASegmenter
from sklearn_psa._training import Augmentation, TrainConfig, seeded, train
from sklearn_psa.callbacks import Callback, EarlyStopping, TensorBoard
from sklearn_psa.datasets import make_shapes

from test_training import _colour_samples, _loss, _Net, _same_weights

TINY = dict(backbone="tiny", backbone_options={"width": 4, "depth": 1}, device="cpu", random_state=0)
CAM = dict(TINY, max_epochs=2, batch_size=4, scales=(1.0,), crop_size=24)


@pytest.fixture(scope="module")
def shapes():
    X, Y, masks = make_shapes(12, image_size=32, random_state=0)
    return X, Y, masks


@pytest.fixture(scope="module")
def records(shapes):
    X, Y, _ = shapes
    return CAMClassifier(**CAM).fit_transform(X, Y)


def _train(callbacks=(), epochs=3, net=None, **config):
    if net is None:
        with seeded(0):
            net = _Net()
    cfg = TrainConfig(max_epochs=epochs, batch_size=8, learning_rate=0.1, weight_decay=1e-4,
                      augmentation=Augmentation(crop_size=16, color_jitter=0.2), **config)
    return net, train(net, _colour_samples(), _loss, cfg, seed=0, callbacks=callbacks)


class Events(Callback):
    """Records every event it sees."""

    def on_train_begin(self, trainer):
        self.events_ = ["train_begin"]

    def on_epoch_begin(self, trainer, epoch):
        self.events_.append(f"epoch_begin {epoch}")

    def on_batch_begin(self, trainer, batch):
        self.events_.append(f"batch_begin {trainer.step}")

    def on_batch_end(self, trainer, batch, loss):
        assert isinstance(loss, float) and set(batch) == {"image", "labels"}
        self.events_.append(f"batch_end {trainer.step}")

    def on_epoch_end(self, trainer, epoch, record):
        self.events_.append(f"epoch_end {epoch} {record['epoch']}")

    def on_train_end(self, trainer):
        self.events_.append("train_end")


class Optimizers(Callback):
    """Keeps the optimizer of each training."""

    def on_train_begin(self, trainer):
        self.optimizer_ = trainer.optimizer
        self.lrs_ = []

    def on_batch_end(self, trainer, batch, loss):
        self.lrs_.append(trainer.optimizer.param_groups[0]["lr"])


# ----------------------------------------------------------------------------- the loop's events


def test_a_callback_sees_the_events_in_order():
    events = Events()
    _train([events], epochs=2)  # 24 samples in batches of 8: 3 steps per epoch
    expected = ["train_begin"]
    for epoch in range(2):
        expected.append(f"epoch_begin {epoch}")
        for step in range(3 * epoch, 3 * epoch + 3):
            expected += [f"batch_begin {step}", f"batch_end {step + 1}"]
        expected.append(f"epoch_end {epoch} {epoch + 1}")
    assert events.events_ == expected + ["train_end"]


def test_train_end_is_called_when_training_fails():
    events = Events()

    def failing(net, batch):
        raise RuntimeError("boom")

    with seeded(0):
        net = _Net()
    cfg = TrainConfig(max_epochs=1, batch_size=8, learning_rate=0.1, weight_decay=0.0)
    with pytest.raises(RuntimeError, match="boom"):
        train(net, _colour_samples(8), failing, cfg, callbacks=[events])
    assert events.events_ == ["train_begin", "epoch_begin 0", "batch_begin 0", "train_end"]


def test_a_callback_may_stop_training_and_add_to_the_history():
    class StopAfterTwo(Callback):
        def on_epoch_end(self, trainer, epoch, record):
            record["twice"] = 2.0 * record["loss"]
            trainer.stop = record["epoch"] == 2

    _, result = _train([StopAfterTwo()], epochs=5)
    assert [r["epoch"] for r in result.records] == [1, 2]
    assert all(r["twice"] == 2 * r["loss"] for r in result.records)


def test_no_callbacks_and_idle_callbacks_train_the_same_weights():
    a, ra = _train([])
    b, rb = _train([Callback(), Events(), Optimizers()])
    assert _same_weights(a, b) and ra.history == rb.history


# ----------------------------------------------------------------------------- early stopping


def test_early_stopping_stops_and_restores_the_best_weights():
    scripted = iter([3.0, 1.0, 2.0, 2.5, 4.0, 0.5, 0.1])
    snapshots = {}

    class Scripted(Callback):  # before EarlyStopping: sets the loss it monitors
        def on_epoch_end(self, trainer, epoch, record):
            record["valid_loss"] = next(scripted)
            snapshots[record["epoch"]] = {k: v.clone() for k, v in trainer.net.state_dict().items()}

    stop = EarlyStopping(patience=2)
    net, result = _train([Scripted(), stop], epochs=7)
    assert [r["epoch"] for r in result.records] == [1, 2, 3, 4]  # 2 epochs without improving on 1.0
    assert stop.best_epoch_ == 2 and stop.best_score_ == 1.0 and stop.stopped_epoch_ == 4
    state = net.state_dict()
    assert all(torch.equal(state[k], v) for k, v in snapshots[2].items())
    assert not all(torch.equal(state[k], v) for k, v in snapshots[4].items())


def test_early_stopping_holds_out_a_validation_split():
    class BatchSizes(Callback):
        def on_train_begin(self, trainer):
            self.sizes_ = []

        def on_batch_end(self, trainer, batch, loss):
            self.sizes_.append(batch["image"].shape[0])

    sizes, stop = BatchSizes(), EarlyStopping(patience=50, validation_fraction=0.25)
    _, result = _train([stop, sizes], epochs=3)
    assert all(np.isfinite(r["valid_loss"]) for r in result.records)
    assert sum(sizes.sizes_) == 3 * 18  # 6 of the 24 samples held out
    assert stop.stopped_epoch_ is None  # ran to max_epochs
    best = min(range(3), key=lambda i: result.records[i]["valid_loss"])
    assert stop.best_epoch_ == best + 1
    _, again = _train([EarlyStopping(patience=50, validation_fraction=0.25)], epochs=3)
    assert [r["valid_loss"] for r in again.records] == [r["valid_loss"] for r in result.records]


def test_early_stopping_on_an_estimator_with_a_checkpoint(shapes, tmp_path):
    X, Y, _ = shapes
    path = tmp_path / "cam.ckpt"
    kw = dict(CAM, max_epochs=12, checkpoint=str(path))
    a = CAMClassifier(**kw, callbacks=[EarlyStopping(patience=1, tol=10.0)]).fit(X, Y)
    assert a.n_iter_ == 2 and "valid_loss" in a.history_[0]  # nothing improves by 10
    assert a.callbacks[0].best_epoch_ == 1
    # the checkpoint says the training stopped: resuming it trains nothing, with the same weights
    b = CAMClassifier(**kw, callbacks=[EarlyStopping(patience=1, tol=10.0)]).fit(X, Y)
    assert b.epoch_seconds_ == [] and b.n_iter_ == 2
    assert _same_weights(a.network_, b.network_)


# ----------------------------------------------------------------------------- optimizer, schedule


def test_an_optimizer_class_and_its_options_are_used(shapes):
    X, Y, _ = shapes
    spy = Optimizers()
    CAMClassifier(**CAM, optimizer=torch.optim.Adam, optimizer_options={"betas": (0.5, 0.9)},
                  callbacks=[spy]).fit(X, Y)
    assert type(spy.optimizer_) is torch.optim.Adam
    assert spy.optimizer_.defaults["betas"] == (0.5, 0.9)
    # the parameter groups: learning rate per group, weight decay on weights only
    assert {g["weight_decay"] for g in spy.optimizer_.param_groups} == {CAM.get("weight_decay", 1e-4), 0.0}


def test_sgd_momentum_is_an_option(shapes):
    X, Y, _ = shapes
    spies = {m: Optimizers() for m in (None, 0.0)}
    for momentum, spy in spies.items():
        options = None if momentum is None else {"momentum": momentum}
        CAMClassifier(**CAM, optimizer_options=options, callbacks=[spy]).fit(X, Y)
    assert type(spies[None].optimizer_) is torch.optim.SGD
    assert spies[None].optimizer_.defaults["momentum"] == 0.9  # today's default
    assert spies[0.0].optimizer_.defaults["momentum"] == 0.0


def test_an_optimizer_by_name_or_callable():
    spy = Optimizers()
    _train([spy], epochs=1, optimizer="adamw")
    assert type(spy.optimizer_) is torch.optim.AdamW
    made = []

    def factory(groups, nesterov=False):
        made.append(nesterov)
        return torch.optim.SGD(groups, lr=0.1, momentum=0.5, nesterov=nesterov)

    _train([spy], epochs=1, optimizer=factory, optimizer_options={"nesterov": True})
    assert made == [True] and spy.optimizer_.defaults["nesterov"]
    with pytest.raises(TypeError, match="not a torch.optim.Optimizer"):
        _train(epochs=1, optimizer=lambda groups: None)


def test_learning_rate_schedules():
    constant, custom = Optimizers(), Optimizers()
    _train([constant], epochs=2, lr_schedule="constant")
    assert constant.lrs_ == [pytest.approx(0.1)] * 6
    _train([custom], epochs=2, lr_schedule=lambda step, max_step: 1.0 / (1 + step))
    assert custom.lrs_ == pytest.approx([0.1 / (1 + s) for s in range(6)])


@pytest.mark.parametrize("params, match", [
    ({"optimizer": "nesterov"}, "optimizer"),
    ({"optimizer_options": [0.9]}, "optimizer_options"),
    ({"lr_schedule": "cosine"}, "lr_schedule"),
    ({"callbacks": EarlyStopping()}, "callbacks"),
    ({"warm_start": "yes"}, "warm_start"),
])
def test_training_parameters_are_validated(shapes, params, match):
    X, Y, _ = shapes
    for est in (CAMClassifier(**CAM), AffinityEstimator(**TINY), PSASegmenter(**TINY)):
        with pytest.raises(InvalidParameterError, match=match):
            est.set_params(**params).fit(X, Y)


def test_a_callback_without_the_events_is_refused(shapes):
    X, Y, _ = shapes
    with pytest.raises(TypeError, match=r"callbacks\[1\] = .* has no on_train_begin method"):
        CAMClassifier(**CAM, callbacks=[Callback(), object()]).fit(X, Y)


# ----------------------------------------------------------------------------- the estimators


def test_the_same_seed_gives_the_weights_it_gave_before_callbacks(shapes, records):
    """Loss curves of the version before the base and the callbacks (same seed, same data)."""
    X, Y, masks = shapes
    cam = CAMClassifier(**CAM, callbacks=[]).fit(X, Y)
    assert cam.loss_curve_ == pytest.approx([0.684296707312266, 0.667916496594747], rel=1e-5)
    aff = AffinityEstimator(**TINY, label_affinity=None, max_epochs=2, batch_size=4, crf=False, crop_size=24).fit(records)
    assert aff.loss_curve_ == pytest.approx([0.7510673403739929, 0.6394917865594228], rel=1e-5)
    seg = PSASegmenter(**TINY, max_epochs=2, batch_size=4, supervision="pixel",
                       init="scratch").fit(X, masks)
    assert seg.loss_curve_ == pytest.approx([1.143876592318217, 0.6547652284304301], rel=1e-5)


def test_every_trained_estimator_has_the_same_history(shapes, records):
    X, Y, masks = shapes
    fitted = [
        CAMClassifier(**dict(CAM, max_epochs=1), warm_start=True).fit(X, Y),
        AffinityEstimator(**TINY, max_epochs=1, crf=False, crop_size=24, warm_start=True).fit(records),
        PSASegmenter(**TINY, max_epochs=1, supervision="pixel", init="scratch",
                     warm_start=True).fit(X, masks),
    ]
    for est in fitted:
        first = est.network_
        assert [sorted(r) for r in est.history_] == [["epoch", "loss", "seconds"]]
        est.fit(records if isinstance(est, AffinityEstimator) else X,
                masks if isinstance(est, PSASegmenter) else Y)  # warm start: one more epoch
        assert est.n_iter_ == 2 and len(est.loss_curve_) == 2 and len(est.epoch_seconds_) == 1
        assert est.network_ is not first
        assert est.loss_curve_ == [r["loss"] for r in est.history_]


def test_affinity_estimator_checkpoint_resumes(records, tmp_path):
    path = tmp_path / "aff.ckpt"
    kw = dict(TINY, max_epochs=2, crf=False, crop_size=24, checkpoint=str(path))
    a = AffinityEstimator(**kw).fit(records)
    b = AffinityEstimator(**kw).fit(records)
    assert b.epoch_seconds_ == [] and b.loss_curve_ == a.loss_curve_
    assert _same_weights(a.network_, b.network_)
    with pytest.raises(ValueError, match=r"radius: 5 in the checkpoint, 4 now"):
        AffinityEstimator(**dict(kw, radius=4)).fit(records)


def test_train_result_is_a_deprecated_view_of_the_history(records):
    aff = AffinityEstimator(**TINY, max_epochs=1, crf=False, crop_size=24).fit(records)
    with pytest.warns(FutureWarning, match="history_"):
        assert aff.train_result_.history == aff.loss_curve_


def test_a_custom_loss_through_the_hook(shapes):
    X, Y, _ = shapes
    calls = []

    class BCECAM(CAMClassifier):
        def get_loss(self, net, batch):
            calls.append(1)
            smooth = batch["labels"] * 0.8 + 0.1  # label smoothing
            return F.binary_cross_entropy_with_logits(net(batch["image"]).float(), smooth)

    est = BCECAM(**CAM).fit(X, Y)
    assert len(calls) == 6  # 12 images, batches of 4, 2 epochs
    assert est.loss_curve_ != pytest.approx(CAMClassifier(**CAM).fit(X, Y).loss_curve_)


def test_callbacks_clone_and_pickle(shapes):
    X, Y, _ = shapes
    stop = EarlyStopping(patience=3)
    est = CAMClassifier(**CAM, callbacks=[stop])
    copy = clone(est)
    assert copy.callbacks[0] is not stop and copy.callbacks[0].get_params() == stop.get_params()
    est.set_params(callbacks=[EarlyStopping(patience=7)])
    assert est.get_params()["callbacks"][0].patience == 7
    est.fit(X, Y)
    again = pickle.loads(pickle.dumps(est))
    assert again.callbacks[0].best_epoch_ == est.callbacks[0].best_epoch_


# ----------------------------------------------------------------------------- TensorBoard


class _FakeWriter:
    def __init__(self):
        self.scalars, self.closed = [], False

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def close(self):
        self.closed = True


def test_tensorboard_logs_steps_and_epochs(monkeypatch):
    writer = _FakeWriter()
    monkeypatch.setattr(TensorBoard, "_make_writer", lambda self: writer)
    board = TensorBoard()
    _train([EarlyStopping(patience=9), board], epochs=2)
    tags = [t for t, _, _ in writer.scalars]
    assert tags.count("train/loss") == tags.count("train/lr") == 6
    assert [s for t, _, s in writer.scalars if t == "epoch/valid_loss"] == [1, 2]
    assert "epoch/loss" in tags and "epoch/seconds" in tags
    assert writer.closed and not hasattr(board, "_writer")
    pickle.dumps(board)


def test_tensorboard_writes_event_files(tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    _train([TensorBoard(log_dir=tmp_path / "run")], epochs=1)
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "run").iterdir())


def test_an_estimator_of_the_earlier_version_unpickles_with_a_history(shapes, records):
    from sklearn_psa._training import TrainResult

    X, Y, _ = shapes
    cam = CAMClassifier(**CAM).fit(X, Y)
    state = cam.__getstate__()
    for key in ("history_", "_epochs_run"):
        del state[key]
    old = CAMClassifier.__new__(CAMClassifier)
    old.__setstate__({**state, "loss_curve_": [0.5, 0.25], "epoch_seconds_": [1.5], "n_iter_": 2})
    assert old.history_ == [{"epoch": 1, "loss": 0.5, "seconds": None},
                            {"epoch": 2, "loss": 0.25, "seconds": 1.5}]
    assert old.n_iter_ == 2 and old.epoch_seconds_ == [1.5]
    aff = AffinityEstimator.__new__(AffinityEstimator)
    aff.__setstate__({"train_result_": TrainResult(history=[0.7], epoch_seconds=[2.0])})
    assert aff.loss_curve_ == [0.7] and aff.epoch_seconds_ == [2.0]


def test_a_model_file_holds_the_callbacks_and_the_history(shapes, tmp_path):
    from sklearn_psa.io import load_model, save_model

    X, Y, _ = shapes
    cam = CAMClassifier(**CAM, callbacks=[EarlyStopping(patience=4)]).fit(X, Y)
    save_model(cam, tmp_path / "cam.psa")
    loaded = load_model(tmp_path / "cam.psa")
    assert loaded.history_ == cam.history_ and loaded.epoch_seconds_ == cam.epoch_seconds_
    assert loaded.callbacks[0].get_params() == cam.callbacks[0].get_params()
    assert loaded.callbacks[0].best_epoch_ == cam.callbacks[0].best_epoch_


def test_a_bad_callback_of_the_segmenter_fails_before_the_steps_train(shapes, monkeypatch):
    X, Y, _ = shapes

    def never(*args, **kwargs):
        raise AssertionError("a step trained")

    monkeypatch.setattr(CAMClassifier, "_fit_network", never)
    with pytest.raises(TypeError, match=r"callbacks\[0\]"):
        PSASegmenter(**TINY, callbacks=[object()]).fit(X, Y)


def test_callback_parameters_are_validated_when_training_begins():
    with pytest.raises(InvalidParameterError, match="patience"):
        _train([EarlyStopping(patience=0)], epochs=1)
    with pytest.raises(InvalidParameterError, match="monitor"):
        _train([EarlyStopping(monitor="accuracy")], epochs=1)
