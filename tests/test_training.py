"""The shared training loop: schedule, parameter groups, augmentation, seeding, checkpoints."""

import os

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from sklearn_psa._training import (
    Augmentation,
    ImageSamples,
    Sample,
    TrainConfig,
    _batches,
    _collate,
    _color_jitter,
    _steps_per_epoch,
    load_checkpoint,
    poly_lr,
    progress,
    seeded,
    sgd_param_groups,
    train,
)


# ----------------------------------------------------------------------------- a small problem

class _Net(nn.Module):
    """Conv + BN + dropout + GAP classifier: exercises every random part of the loop."""

    def __init__(self, n_classes=2):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(8, n_classes)

    def forward(self, x):
        f = F.relu(self.bn(self.conv(x / 255.0)))
        return self.fc(self.drop(f.mean(dim=(2, 3))))


def _colour_samples(n=24, size=20, seed=0):
    """Class 0: a red square, class 1: a blue square (each present or not)."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n):
        image = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
        y = rng.integers(0, 2, 2).astype(np.float32)
        for c, channel in enumerate((0, 2)):
            if y[c]:
                r, q = rng.integers(0, size - 8, 2)
                image[r:r + 8, q:q + 8, channel] = 255
        samples.append(Sample(image, targets={"labels": y}))
    return samples


def _loss(net, batch):
    return F.multilabel_soft_margin_loss(net(batch["image"]), batch["labels"])


def _config(epochs=3, **kw):
    aug = kw.pop("augmentation", Augmentation(crop_size=16, color_jitter=0.2))
    return TrainConfig(max_epochs=epochs, batch_size=8, learning_rate=0.1, weight_decay=1e-4,
                       augmentation=aug, **kw)


def _fit(seed=0, epochs=3, checkpoint=None, fingerprint=None, samples=None, loss=_loss, net=None,
         fingerprint_params=None, **kw):
    if net is None:
        with seeded(seed):
            net = _Net()
    result = train(net, samples or _colour_samples(), loss, _config(epochs, **kw), seed=seed,
                   checkpoint=checkpoint, fingerprint=fingerprint, fingerprint_params=fingerprint_params)
    return net, result


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ----------------------------------------------------------------------------- schedule & groups


@given(st.floats(1e-4, 1.0), st.integers(0, 500), st.integers(1, 500), st.floats(0.1, 2.0))
def test_poly_lr_matches_the_formula(base, step, max_step, power):
    expected = base * (1 - min(step, max_step) / max_step) ** power
    assert poly_lr(base, step, max_step, power) == pytest.approx(expected)


def test_learning_rate_decays_polynomially_per_step(monkeypatch):
    optimizers = []

    class RecordingSGD(torch.optim.SGD):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            optimizers.append(self)

    monkeypatch.setattr(torch.optim, "SGD", RecordingSGD)
    seen = []

    def loss(net, batch):
        seen.append([g["lr"] for g in optimizers[0].param_groups])
        return _loss(net, batch)

    with seeded(0):
        net = _Net()
    train(net, _colour_samples(16), loss, _config(epochs=2),
          param_groups=[(net.conv.parameters(), 1.0), (net.fc.parameters(), 10.0)])
    max_step = 2 * 2  # 16 samples, batch 8, 2 epochs
    assert len(seen) == max_step
    for step, lrs in enumerate(seen):
        factor = (1 - step / max_step) ** 0.9
        # groups: conv weight (wd), conv bias (no wd), fc weight, fc bias; bn is in no group
        assert lrs == pytest.approx([0.1 * factor, 0.1 * factor, 1.0 * factor, 1.0 * factor])
    assert optimizers[0].defaults["momentum"] == 0.9


def test_sgd_param_groups_weight_decay_frozen_and_multipliers():
    net = _Net()
    net.conv.bias.requires_grad_(False)
    groups = sgd_param_groups([(net.conv.parameters(), 1.0), (net.fc.parameters(), 10.0),
                               (net.parameters(), 2.0)], 0.01, 5e-4)
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert id(net.conv.bias) not in by_id                       # frozen
    assert by_id[id(net.conv.weight)]["weight_decay"] == 5e-4    # a kernel
    assert by_id[id(net.fc.bias)]["weight_decay"] == 0.0         # a bias
    assert by_id[id(net.fc.weight)]["lr"] == pytest.approx(0.1)  # 10x
    assert by_id[id(net.bn.weight)]["lr"] == pytest.approx(0.02)  # only in the last entry
    assert by_id[id(net.bn.weight)]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len([p for p in net.parameters() if p.requires_grad])
    with pytest.raises(ValueError, match="no trainable parameters"):
        sgd_param_groups([([], 1.0)], 0.1, 0.0)


# ----------------------------------------------------------------------------- augmentation


def _coordinate_sample(h, w):
    """An image whose pixels encode their position, with maps holding the same codes."""
    yy, xx = np.mgrid[:h, :w]
    image = np.stack([yy % 251, xx % 251, (yy * 7 + xx) % 251], -1).astype(np.uint8)
    return Sample(image, maps={"yy": (yy % 251).astype(np.uint8), "xx": (xx % 251).astype(np.float32)})


@given(h=st.integers(3, 40), w=st.integers(3, 40), crop=st.integers(4, 32), flip=st.booleans(),
       seed=st.integers(0, 2**16))
def test_crop_and_flip_move_maps_with_the_image(h, w, crop, flip, seed):
    aug = Augmentation(crop_size=crop, flip=flip, pad_value=(1.5, 2.5, 3.5))
    image, maps = aug.geometric(_coordinate_sample(h, w), np.random.default_rng(seed))
    assert image.shape == (crop, crop, 3) and image.dtype == np.float32
    assert maps["yy"].shape == maps["xx"].shape == (crop, crop)
    inside = maps["yy"] != 255
    padded = ~inside
    # where the image is real, the maps agree with it pixel for pixel
    np.testing.assert_array_equal(image[..., 0][inside], maps["yy"][inside])
    np.testing.assert_array_equal(image[..., 1][inside], maps["xx"][inside])
    # padding: integer maps get 255 (ignore), float maps 0, the image pad_value
    np.testing.assert_array_equal(maps["xx"][padded], 0)
    assert np.all(image[padded] == np.array([1.5, 2.5, 3.5], np.float32))
    assert inside.sum() == min(h, crop) * min(w, crop)
    # the kept window is contiguous: neighbouring x codes differ by exactly 1 (or -1 when flipped)
    rows = np.flatnonzero(inside.any(1))
    cols = np.flatnonzero(inside.any(0))
    window = image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1, 1]
    if window.shape[1] > 1:
        steps = np.unique(np.diff(window, axis=1))
        assert len(steps) == 1 and abs(steps[0]) == 1
        if not flip:
            assert steps[0] == 1


def test_rescale_changes_the_size_and_keeps_maps_aligned():
    aug = Augmentation(crop_size=None, flip=False, scale_range=(2.0, 2.0))
    sample = _coordinate_sample(10, 12)
    image, maps = aug.geometric(sample, np.random.default_rng(0))
    assert image.shape == (20, 24, 3) and maps["yy"].shape == (20, 24)
    np.testing.assert_array_equal(maps["yy"][::2, 0], np.arange(10))  # nearest for maps


def test_collate_pads_to_the_largest():
    a = (np.ones((4, 5, 3), np.float32), {"m": np.ones((4, 5), np.uint8)})
    b = (np.ones((6, 3, 3), np.float32), {"m": np.ones((6, 3), np.uint8)})
    images, maps = _collate([a, b], (9.0, 9.0, 9.0))
    assert images.shape == (2, 6, 5, 3) and maps["m"].shape == (2, 6, 5)
    assert images[0, 5, 0, 0] == 9.0 and maps["m"][0, 5, 0] == 255 and maps["m"][1, 0, 4] == 255


def test_collate_pads_a_map_an_item_lacks_entirely():
    a = (np.ones((4, 5, 3), np.float32), {"s:0": np.full((4, 5), 0.5, np.float16)})
    b = (np.ones((6, 3, 3), np.float32), {"s:0": np.ones((6, 3), np.float16),
                                         "s:2": np.ones((6, 3), np.float16),
                                         "m": np.ones((6, 3), np.uint8)})
    _, maps = _collate([a, b], (0.0, 0.0, 0.0))
    assert list(maps) == ["s:0", "s:2", "m"] and maps["s:2"].dtype == np.float16
    assert (maps["s:2"][0] == 0).all() and (maps["m"][0] == 255).all()  # float 0, integer 255
    assert (maps["s:0"][0, :4, :5] == 0.5).all() and (maps["s:2"][1, :6, :3] == 1).all()


def test_boolean_maps_pad_with_false():
    a = (np.ones((4, 5, 3), np.float32), {"m": np.ones((4, 5), bool)})
    b = (np.ones((6, 3, 3), np.float32), {"m": np.ones((6, 3), bool)})
    _, maps = _collate([a, b], (0.0, 0.0, 0.0))
    assert maps["m"].dtype == bool and not maps["m"][0, 5, 0] and not maps["m"][1, 0, 4]
    assert maps["m"][0, :4, :5].all()


def test_color_jitter_leaves_the_padding_and_ignores_it_for_contrast():
    pad = (123.0, 117.0, 104.0)
    x = torch.full((2, 3, 6, 6), 0.0)
    x[:] = torch.tensor(pad).view(1, 3, 1, 1)
    x[0, :, :4, :4] = torch.rand(3, 4, 4) * 255  # image 0: a 4x4 image padded to 6x6
    x[1] = torch.rand(3, 6, 6) * 255
    valid = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
    valid[0, :, :4, :4] = True
    valid[1] = True
    f = torch.tensor([[1.2, 0.7, 1.3], [0.8, 1.3, 0.9]])
    out = _color_jitter(x, f, valid, pad)
    assert (out[0, :, 4:, :] == torch.tensor(pad).view(3, 1, 1)).all()  # padding untouched
    # the image's pixels jitter as they would on their own, unpadded
    torch.testing.assert_close(out[0, :, :4, :4], _color_jitter(x[:1, :, :4, :4], f[:1])[0])
    torch.testing.assert_close(out[1], _color_jitter(x[1:], f[1:])[0])


def test_training_batches_keep_padding_at_the_pad_value(monkeypatch):
    import sklearn_psa._training as training

    seen = []
    real = training._to_device_batch

    def spy(images, maps, *args, **kwargs):
        batch = real(images, maps, *args, **kwargs)
        seen.append(batch)
        return batch

    monkeypatch.setattr(training, "_to_device_batch", spy)
    pad = (120.0, 110.0, 100.0)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((8, 8), (12, 10))]
    masks = [np.ones(im.shape[:2], np.uint8) for im in images]
    net = torch.nn.Conv2d(3, 2, 1)
    config = TrainConfig(max_epochs=1, batch_size=2, learning_rate=0.01, weight_decay=0.0,
                         augmentation=Augmentation(crop_size=None, color_jitter=0.3, pad_value=pad))

    def loss_fn(net, batch):
        return net(batch["image"]).mean()

    train(net, ImageSamples(images, maps={"label": masks}), loss_fn, config)
    batch = seen[0]
    assert set(batch) == {"image", "label"}  # the internal map of valid pixels is gone
    padded = batch["label"][:, None].expand(-1, 3, -1, -1) == 255
    image = batch["image"]
    expected = torch.tensor(pad).view(1, 3, 1, 1).expand_as(image)
    assert padded.any() and (image[padded] == expected[padded]).all()
    assert not (image[~padded] == expected[~padded]).all()


def test_color_jitter_identity_brightness_and_range():
    x = torch.rand(3, 3, 8, 8) * 255
    torch.testing.assert_close(_color_jitter(x, torch.ones(3, 3)), x)
    f = torch.tensor([[0.5, 1.0, 1.0]] * 3)
    torch.testing.assert_close(_color_jitter(x, f), x * 0.5)
    grey = _color_jitter(x, torch.tensor([[1.0, 1.0, 0.0]] * 3))  # saturation 0 -> grey
    torch.testing.assert_close(grey[:, 0], grey[:, 1])
    big = _color_jitter(x, torch.tensor([[1.3, 1.3, 1.3]] * 3))
    assert big.min() >= 0 and big.max() <= 255


@given(n=st.integers(1, 60), bs=st.integers(1, 16), seed=st.integers(0, 100))
def test_batches_cover_every_sample_once_and_avoid_singletons(n, bs, seed):
    batches = _batches(n, bs, np.random.default_rng(seed))
    assert sorted(np.concatenate(batches).tolist()) == list(range(n))
    assert len(batches) == _steps_per_epoch(n, bs)
    if n > 1 and bs > 1:
        assert all(len(b) > 1 for b in batches)


def test_image_samples_view():
    images = [np.zeros((4, 4, 3), np.uint8), np.ones((5, 6, 3), np.uint8)]
    s = ImageSamples(images, maps={"m": [np.zeros((4, 4)), np.ones((5, 6))]}, targets={"labels": np.eye(2)})
    assert len(s) == 2 and s[1].image.shape == (5, 6, 3)
    np.testing.assert_array_equal(s[1].targets["labels"], [0, 1])
    with pytest.raises(ValueError, match="'labels' has 1 items but there are 2 images"):
        ImageSamples(images, targets={"labels": np.eye(2)[:1]})


# ----------------------------------------------------------------------------- the loop


def test_same_seed_same_weights_other_seed_other_weights():
    a, ra = _fit(seed=3)
    b, rb = _fit(seed=3)
    c, _ = _fit(seed=4)
    assert _same_weights(a, b)
    assert ra.history == rb.history
    assert not _same_weights(a, c)
    assert not a.training  # left in eval mode


def test_seeded_restores_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with seeded(7):
        torch.rand(5)
    torch.testing.assert_close(torch.rand(3), expected)


def test_training_learns_the_colour_problem():
    samples = _colour_samples(48, seed=1)
    net, result = _fit(seed=0, epochs=12, samples=samples)
    assert result.history[-1] < 0.6 * result.history[0]
    test = _colour_samples(40, seed=2)
    x = torch.stack([torch.from_numpy(s.image).permute(2, 0, 1).float() for s in test])
    y = np.stack([s.targets["labels"] for s in test])
    with torch.no_grad():
        pred = (net(x) > 0).numpy()
    assert (pred == y).mean() > 0.9


def test_resuming_from_a_checkpoint_gives_the_uninterrupted_weights(tmp_path):
    full, full_result = _fit(seed=5, epochs=3)

    path = tmp_path / "ckpt" / "cam.pt"
    calls = {"n": 0}

    def interrupted(net, batch):
        calls["n"] += 1
        if calls["n"] > 6:  # 24 samples / batch 8 = 3 steps per epoch: dies in epoch 3
            raise KeyboardInterrupt
        return _loss(net, batch)

    with pytest.raises(KeyboardInterrupt):
        _fit(seed=5, epochs=3, checkpoint=path, fingerprint="data-1", loss=interrupted)
    state = load_checkpoint(path)
    assert state["epoch"] == 2 and state["step"] == 6 and len(state["history"]) == 2
    assert [p for p in os.listdir(path.parent) if p != "cam.pt"] == []  # no temporary files left

    resumed, result = _fit(seed=5, epochs=3, checkpoint=path, fingerprint="data-1")
    assert result.start_epoch == 2 and len(result.epoch_seconds) == 1
    assert result.history == pytest.approx(full_result.history)
    assert _same_weights(resumed, full)
    assert load_checkpoint(path)["epoch"] == 3

    with pytest.raises(ValueError, match="fingerprint differs"):
        _fit(seed=5, epochs=3, checkpoint=path, fingerprint="data-2")


def test_a_refused_checkpoint_names_the_parameters_that_differ(tmp_path):
    path = tmp_path / "run.pt"
    params = {"max_epochs": 1, "scale_range": (0.9, 1.1), "backbone": "tiny", "random_state": None}
    _fit(epochs=1, samples=_colour_samples(8), checkpoint=path, fingerprint="run-1", fingerprint_params=params)
    state = load_checkpoint(path)  # weights_only=True reads the stored parameters
    assert state["fingerprint_params"] == {**params, "scale_range": [0.9, 1.1]}

    def refusal(fingerprint, **changes):
        with pytest.raises(ValueError, match="other data or parameters") as info:
            _fit(epochs=1, samples=_colour_samples(8), checkpoint=path, fingerprint=fingerprint,
                 fingerprint_params=None if changes.get("params") is None else {**params, **changes["params"]})
        return str(info.value)

    message = refusal("run-2", params={"max_epochs": 3, "warm_start_weights": "abc"})
    assert "max_epochs: 1 in the checkpoint, 3 now" in message
    assert "warm_start_weights: not set in the checkpoint, 'abc' now" in message
    assert "scale_range" not in message and "backbone" not in message
    assert "the parameters agree, so the training data differ" in refusal("run-3", params={})
    assert "(fingerprint differs)" in refusal("run-4")  # this run gives no parameters
    del state["fingerprint_params"]  # a checkpoint written before they were stored
    torch.save(state, path)
    assert "(fingerprint differs)" in refusal("run-5", params={"max_epochs": 3})
    assert load_checkpoint(path)["epoch"] == 1  # refused, not overwritten


def test_a_checkpoint_of_the_starting_weights_is_replaced_not_resumed(tmp_path):
    path = tmp_path / "run.pt"
    net, _ = _fit(epochs=1, samples=_colour_samples(8), checkpoint=path, fingerprint="first")
    fitted = {k: v.clone() for k, v in net.state_dict().items()}
    # a warm start from the weights the checkpoint holds: it trains, and its own checkpoint replaces the old
    _, result = _fit(epochs=2, samples=_colour_samples(8), checkpoint=path, fingerprint="warm", net=net)
    assert result.start_epoch == 0 and len(result.epoch_seconds) == 2 and len(result.history) == 2
    state = load_checkpoint(path)
    assert state["fingerprint"] == "warm" and state["epoch"] == 2
    assert not all(torch.equal(fitted[k], v) for k, v in state["model"].items())
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state["model"].items())
    # other starting weights: the checkpoint of another run is still refused
    with pytest.raises(ValueError, match="fingerprint differs"):
        _fit(epochs=2, samples=_colour_samples(8), checkpoint=path, fingerprint="other", seed=1)


def test_checkpoint_that_is_not_one_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable training checkpoint"):
        _fit(checkpoint=path)


def test_a_diverging_loss_is_reported():
    def nan_loss(net, batch):
        return _loss(net, batch) * float("nan")

    with pytest.raises(FloatingPointError, match="lower learning_rate"):
        _fit(loss=nan_loss, epochs=1)


def test_an_exploding_finite_loss_stops_the_training_naming_the_epoch():
    calls = []

    def exploding(net, batch):
        calls.append(1)
        return _loss(net, batch) * (1e13 if len(calls) > 4 else 1.0)

    # 24 samples in batches of 8: step 5 is the second of epoch 2
    with pytest.raises(ValueError, match=r"diverged at epoch 2, step 5: the loss became "
                                         r"\S+e\+12.*lower learning_rate \(it was 0.1; try 0.01\)"):
        _fit(loss=exploding, epochs=3)


def test_weights_that_turn_non_finite_in_the_last_step_are_reported():
    with seeded(0):
        net = _Net()
    first = next(net.parameters())
    first.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    with pytest.raises(ValueError, match="diverged at epoch 1: the network's weights are no "
                                         "longer finite"):
        _fit(net=net, epochs=1, samples=_colour_samples(8))


def test_a_diverging_estimator_fit_fails_with_the_epoch():
    from sklearn_psa import CAMClassifier
    from sklearn_psa.datasets import make_shapes

    X, Y, _ = make_shapes(8, image_size=32, random_state=0)
    cam = CAMClassifier(backbone="tiny", learning_rate=1e3, max_epochs=3, batch_size=4,
                        scales=(1.0,), random_state=0)
    with pytest.raises(ValueError, match=r"CAMClassifier diverged at epoch \d.*lower learning_rate"):
        cam.fit(X, Y)
    assert not hasattr(cam, "network_")


def test_batch_contents_maps_targets_and_channels_last():
    seen = {}

    def loss(net, batch):
        seen.update({k: v for k, v in batch.items()})
        return _loss(net, batch)

    samples = [Sample(s.image, maps={"label": np.full(s.image.shape[:2], 3, np.uint8)}, targets=s.targets)
               for s in _colour_samples(8)]
    _fit(samples=samples, loss=loss, epochs=1, augmentation=Augmentation(crop_size=24, color_jitter=0.0))
    assert seen["image"].shape == (8, 3, 24, 24) and seen["image"].dtype == torch.float32
    assert seen["image"].is_contiguous(memory_format=torch.channels_last)
    assert seen["label"].dtype == torch.int64 and set(seen["label"].unique().tolist()) == {3, 255}
    assert seen["labels"].shape == (8, 2)


def test_progress_bar_only_when_verbose(capsys):
    with seeded(0):
        net = _Net()
    train(net, _colour_samples(8), _loss, _config(1), verbose=0, desc="quiet-run")
    assert "quiet-run" not in capsys.readouterr().err
    train(net, _colour_samples(8), _loss, _config(1), verbose=2, desc="loud-run")
    assert "loud-run" in capsys.readouterr().err


@pytest.mark.parametrize("verbose", [0, 1, 2])
def test_progress_bar_is_off_erased_or_kept(capsys, verbose):
    for _ in progress(range(3), verbose=verbose, desc="some stage"):
        pass
    err = capsys.readouterr().err
    if verbose == 0:
        assert err == ""
    else:  # verbose 1 blanks the bar's line when done, verbose 2 leaves its final state
        assert "some stage" in err
        assert err.endswith("\n") == (verbose == 2)
        assert ("3/3" in err.split("\r")[-1]) == (verbose == 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mixed_precision_on_cuda():
    with seeded(0):
        net = _Net()
    result = train(net, _colour_samples(16), _loss, _config(2), device="cuda")
    assert next(net.parameters()).device.type == "cuda"
    assert next(net.parameters()).dtype == torch.float32  # autocast, master weights stay fp32
    assert np.isfinite(result.history).all()


def test_loader_workers_prepare_the_same_batches_in_the_same_order():
    """Crops, flips, rescales and jitter drawn in order by the training process, applied in
    DataLoader workers: the same weights as without workers, bit for bit."""
    config = _config(2, augmentation=Augmentation(crop_size=16, color_jitter=0.2,
                                                  scale_range=(0.7, 1.3)))
    states = []
    for workers in (0, 2):
        with seeded(0):
            net = _Net()
        result = train(net, _colour_samples(20), _loss, config, seed=3, num_workers=workers)
        states.append((net.state_dict(), result.history))
    (a, losses_a), (b, losses_b) = states
    assert losses_a == losses_b
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_num_workers_auto_leaves_the_cpu_to_the_network(monkeypatch):
    from sklearn_psa._training import auto_workers

    assert auto_workers("auto", "cpu") == 0 and auto_workers(3, "cpu") == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # 4 processes on the machine: 4 cores each
    assert auto_workers("auto", "cuda") == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert auto_workers("auto", "cuda:1") == 8
