"""Data-parallel training (torch.distributed, gloo on CPU) against single-process training.

The ranks are 2 processes spawned here, in a process group they initialise
themselves (as a user's script would); the CLI test launches ``torchrun``.
What would make the two runs differ is left out of the comparison of
weights: the CAM classifier's tiny backbone there has its BatchNorm layers
replaced by identities (on CPU torch has no SyncBatchNorm, so BatchNorm would
normalise each rank's share alone; on CUDA the loop swaps it for
SyncBatchNorm), it has no dropout, and the CAM loss is a mean over images, so
the ranks' share-weighted gradients average to the global batch's.
"""

import datetime
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from sklearn_psa import AffinityEstimator, CAMClassifier, PSASegmenter
from sklearn_psa._distributed import launched, process_group, set_batchnorm_sync
from sklearn_psa.callbacks import Callback
from sklearn_psa.datasets import make_shapes

TINY = dict(backbone="tiny", backbone_options={"width": 4, "depth": 1}, device="cpu", random_state=0)
N_IMAGES = 12


def _without_batchnorm():
    """The tiny backbone (the same weights at every call) with identities for BatchNorm."""
    from sklearn_psa.nn.tiny import TinyBackbone

    def strip(module):
        for name, child in module.named_children():
            if isinstance(child, torch.nn.BatchNorm2d):
                setattr(module, name, torch.nn.Identity())
            else:
                strip(child)

    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = TinyBackbone(width=4, depth=1)
    strip(net)
    return net


def _cam(**params):
    """The compared CAM classifier: batches of 5, 5 and 2 images, so shares of 3 and 2,
    and of 1 and 1, on 2 ranks."""
    return CAMClassifier(**{**TINY, "backbone": _without_batchnorm(), "backbone_options": None,
                            "max_epochs": 1, "batch_size": 5, "scales": (1.0,), "crop_size": 24,
                            **params})


def _data():
    return make_shapes(N_IMAGES, image_size=32, random_state=0)


def _state(est):
    return {k: v.detach().cpu().clone() for k, v in est.network_.state_dict().items()}


class StopInParallel(Callback):
    """Interrupts a data-parallel fit at its second epoch (after rank 0 wrote the first
    epoch's checkpoint); does nothing in a single process, which then resumes."""

    def on_epoch_begin(self, trainer, epoch):
        if epoch == 1 and trainer.world_size > 1:
            raise KeyboardInterrupt("stopped to resume in one process")


class BatchSizes(Callback):
    """The images of each batch this rank computed."""

    def on_train_begin(self, trainer):
        self.sizes_ = []

    def on_batch_begin(self, trainer, batch):
        self.sizes_.append(int(batch["image"].shape[0]))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _image_records(X):
    """Records of the images ``X`` (one class, CAMs of ones): all FeatureAffinity.fit reads."""
    from sklearn_psa.records import Records

    return Records.from_arrays(list(X), np.ones((len(X), 1), np.uint8),
                               [np.ones((1,) + x.shape[:2], np.float32) for x in X])


def _feature_statistics(records, group=None):
    """``FeatureAffinity``'s statistics of ``records`` (split over ``group`` when given, as
    inside a data-parallel ``PSASegmenter.fit``) and the images its backbone saw here."""
    from sklearn_psa import FeatureAffinity
    from sklearn_psa._distributed import split_work
    from sklearn_psa.nn import make_backbone

    torch.manual_seed(0)
    est = FeatureAffinity(backbone=make_backbone("tiny", width=4, depth=1).eval(), device="cpu",
                          batch_size=2)
    seen = []
    grid_features = est._grid_features

    def counted(records, device, batches=None):
        for idx, feats in grid_features(records, device, batches):
            seen.extend(idx)
            yield idx, feats

    est._grid_features = counted
    with split_work(group):
        est.fit(records)
    return {"mean": torch.from_numpy(est.mean_), "scale": torch.from_numpy(est.scale_),
            "distance_scale": est.distance_scale_, "seen": len(seen)}


def _count_inference(seen):
    """Count in ``seen`` the images whose CAMs and affinities this process's networks infer."""
    from sklearn_psa.affinity import AffinityTransformerMixin

    run, iterate = CAMClassifier._run, AffinityTransformerMixin._iter_affinities

    def counted_run(self, images, *args, **kwargs):
        if kwargs.get("cams", True):
            seen["cams"] += len(images)
        return run(self, images, *args, **kwargs)

    def counted_iterate(self, records, *args, **kwargs):
        seen["affinities"] += len(records)
        return iterate(self, records, *args, **kwargs)

    CAMClassifier._run, AffinityTransformerMixin._iter_affinities = counted_run, counted_iterate


def _arrays(records):
    """What the tests compare of records: each image's classes, CAMs and (where set) affinity."""
    return [{"labels": torch.from_numpy(r.labels), "cams": torch.from_numpy(np.array(r.cams)),
             **({} if r.affinity is None else {"affinity": torch.from_numpy(np.array(r.affinity))})}
            for r in records.records]


def _rank(rank, world_size, port, out):
    """One rank: the fits whose results the tests compare, written to ``out``."""
    import joblib
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=60))
    try:
        X, Y, masks = _data()
        results = {}
        seen = {"cams": 0, "affinities": 0}
        _count_inference(seen)
        sizes = BatchSizes()
        cam = _cam(callbacks=[sizes])
        records = cam.fit_transform(X, Y)  # the CAMs gathered from the ranks
        results["cam"] = (_state(cam), cam.history_)
        results["batch_sizes"] = sizes.sizes_
        try:
            _cam(max_epochs=2, callbacks=[StopInParallel()],
                 checkpoint=os.path.join(out, "cam.ckpt")).fit(X, Y)
        except KeyboardInterrupt:
            pass
        aff = AffinityEstimator(**TINY, max_epochs=1, batch_size=4, crf=False, crop_size=24,
                                store=os.path.join(out, "store"))
        records = aff.fit_transform(records)  # the affinities: each rank writes its share
        results["records"] = _arrays(records)
        results["seen_by_steps"] = dict(seen)
        results["label_walk"] = aff._label_affinity() is not None  # "auto": ImageNet features
        seg = PSASegmenter(**TINY, max_epochs=1, batch_size=4, supervision="pixel",
                           init="scratch").fit(X, masks)
        results["aff"], results["seg"] = _state(aff), _state(seg)
        results["feature_stats"] = _feature_statistics(_image_records(X), process_group(torch.device("cpu")))
        from sklearn_psa import walk

        walked, refine = [], walk._refine  # the random walk of one image
        walk._refine = lambda *args: walked.append(1) or refine(*args)
        seen.update(cams=0, affinities=0)
        kept = {}
        pseudo_labels = PSASegmenter._pseudo_labels

        def keep(self, walked_records):  # the records the walk starts from
            kept["records"] = walked_records
            return pseudo_labels(self, walked_records)

        PSASegmenter._pseudo_labels = keep
        from sklearn_psa import _store

        written, save = [], _store.ArrayStore.save  # the pseudo-labels this rank writes

        def counted_save(self, kind, *args):
            written.append(kind)
            return save(self, kind, *args)

        _store.ArrayStore.save = counted_save
        psa = PSASegmenter(**TINY, max_epochs=1, batch_size=4, cam__max_epochs=1,
                           cam__scales=(1.0,), cam__store=os.path.join(out, "psa-store"),
                           affinity__max_epochs=1, affinity__crf=False, affinity__crop_size=24,
                           affinity__store=os.path.join(out, "psa-store")).fit(X, Y)
        walk._refine, _store.ArrayStore.save = refine, save
        results["walked"], results["seen"] = len(walked), seen
        results["pseudo_labels_written"] = written.count("pseudo-labels")
        results["psa_records"] = _arrays(kept["records"])
        results["pseudo_labels"] = torch.from_numpy(np.stack(psa.pseudo_labels_))
        results["psa"] = _state(psa)
        if rank == 0:  # the fitted steps, for the one-process inference
            joblib.dump({"aff": aff, "psa": psa}, os.path.join(out, "fitted.joblib"))
        # a backbone with parameters that take no gradient (its ImageNet classifier)
        lite = CAMClassifier(**dict(TINY, backbone="efficientnet_lite0", backbone_options=None),
                             max_epochs=1, batch_size=4, scales=(1.0,), crop_size=32).fit(X, Y)
        results["lite"] = _state(lite)
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What 2 gloo ranks fitted: ``(out folder, [rank 0's results, rank 1's])``."""
    out = tmp_path_factory.mktemp("ddp")
    torch.multiprocessing.spawn(_rank, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return out, [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def _assert_same_weights(a, b, **tol):
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=f"{k} differs", **tol)


def test_one_epoch_data_parallel_equals_one_process_over_the_same_global_batches(ranks):
    _, (rank0, _) = ranks
    X, Y, _ = _data()
    single = _cam().fit(X, Y)
    state, history = rank0["cam"]
    _assert_same_weights(state, _state(single), rtol=1e-5, atol=1e-6)
    assert history[0]["loss"] == pytest.approx(single.history_[0]["loss"], rel=1e-5)
    # and training moved the weights: the comparison is not of two untouched networks
    untouched = _cam(max_epochs=0).fit(X, Y)
    assert not all(torch.allclose(v, _state(untouched)[k]) for k, v in state.items())


def test_each_rank_computes_its_share_of_every_global_batch(ranks):
    _, (rank0, rank1) = ranks
    assert rank0["batch_sizes"] == [3, 3, 1] and rank1["batch_sizes"] == [2, 2, 1]


def test_each_rank_walks_its_share_of_the_images_and_all_get_every_mask(ranks):
    _, (rank0, rank1) = ranks
    assert rank0["walked"] == rank1["walked"] == N_IMAGES // 2
    # with a store each rank writes the masks of its share only
    assert rank0["pseudo_labels_written"] == rank1["pseudo_labels_written"] == N_IMAGES // 2
    assert rank0["pseudo_labels"].shape == (N_IMAGES, 32, 32)
    assert torch.equal(rank0["pseudo_labels"], rank1["pseudo_labels"])


def _assert_same_records(a, b, **tol):
    assert len(a) == len(b) == N_IMAGES
    for i, (x, y) in enumerate(zip(a, b)):
        assert set(x) == set(y) and torch.equal(x["labels"], y["labels"]), f"record {i}"
        for name in set(x) - {"labels"}:
            torch.testing.assert_close(x[name], y[name], msg=f"{name} of record {i} differs", **tol)


def test_records_of_a_data_parallel_fit_are_those_of_one_process(ranks):
    import joblib

    out, (rank0, rank1) = ranks
    X, Y, _ = _data()
    fitted = joblib.load(out / "fitted.joblib")
    aff = fitted["aff"].set_params(store=None)  # computed here, not read from the ranks' store
    single = aff.transform(_cam().fit_transform(X, Y))  # one-process CAMs, fitted weights alike
    for rank in (rank0, rank1):
        _assert_same_records(rank["records"], _arrays(single), rtol=1e-4, atol=1e-5)
    # inside PSASegmenter.fit: CAMs from a store (each rank wrote its share), affinities gathered
    psa = fitted["psa"]
    cams = psa.cam_.set_params(store=None).compute_cams(X, Y)  # fit_transform's CAMs, in one process
    single = _arrays(psa.affinity_.transform(cams))
    assert all("affinity" in r for r in single)
    for rank in (rank0, rank1):
        _assert_same_records(rank["psa_records"], single, rtol=1e-5, atol=1e-6)


def test_each_rank_infers_the_cams_and_affinities_of_its_share_of_the_images(ranks):
    _, (rank0, rank1) = ranks
    # the affinities once for the walk, and once more for AffinityNet's labels where its
    # label_affinity ("auto") walks the CAMs over FeatureAffinity first: each its share
    passes = 2 if rank0["label_walk"] else 1
    half = {"cams": N_IMAGES // 2, "affinities": passes * N_IMAGES // 2}
    assert rank0["seen_by_steps"] == rank1["seen_by_steps"] == half  # fit_transform of each step
    assert rank0["seen"] == rank1["seen"] == half  # inside PSASegmenter.fit


def test_feature_affinity_statistics_are_summed_over_the_ranks_shares(ranks):
    _, (rank0, rank1) = ranks
    single = _feature_statistics(_image_records(_data()[0]))
    assert single["seen"] == N_IMAGES and rank0["feature_stats"]["seen"] == rank1["feature_stats"]["seen"] == N_IMAGES // 2
    for rank in (rank0, rank1):
        for key in ("mean", "scale", "distance_scale"):
            np.testing.assert_allclose(rank["feature_stats"][key], single[key], rtol=1e-6, err_msg=key)


def test_share_work_takes_rank_0s_items_and_gives_everyone_all_results_in_order():
    from sklearn_psa._distributed import share_work, split_work, work_group

    class SecondOfThree:  # rank 1 of 3, whose list of work differs from rank 0's
        rank, world_size, barriers = 1, 3, 0
        share = staticmethod(lambda items: items[1::3])
        broadcast_object = staticmethod(lambda items: [0, 2, 3, 5, 7])  # rank 0's

        @staticmethod
        def all_gather(mine):
            return [[k * 10 for k in [0, 2, 3, 5, 7][r::3]] if r != 1 else mine for r in range(3)]

        @classmethod
        def barrier(cls):
            cls.barriers += 1

    called, groups = [], []

    def times_ten(items):
        called.append(items)
        groups.append(work_group())  # its share is not split again
        return [k * 10 for k in items]

    with split_work(SecondOfThree()):
        assert share_work(times_ten, [2, 3, 5]) == [0, 20, 30, 50, 70]
        assert share_work(times_ten, [2, 3], gather=False) is None  # written somewhere: a barrier
    assert called == [[2, 7], [2, 7]] and SecondOfThree.barriers == 1
    assert groups == [None, None]
    assert share_work(times_ten, [4, 1]) == [40, 10] and called[-1] == [4, 1]  # outside: here
    assert share_work(times_ten, []) == [] and len(called) == 3  # nothing to do: not called


def test_every_rank_returns_the_same_fitted_networks(ranks):
    _, (rank0, rank1) = ranks
    for name in ("aff", "seg", "psa", "lite"):  # the segmentation head's BatchNorm statistics included
        _assert_same_weights(rank0[name], rank1[name], rtol=0, atol=0)
    _assert_same_weights(rank0["cam"][0], rank1["cam"][0], rtol=0, atol=0)
    assert rank0["cam"][1] == rank1["cam"][1]  # history_, seconds and all


def test_a_checkpoint_of_rank_0_resumes_in_one_process(ranks):
    out, _ = ranks
    X, Y, _ = _data()
    resumed = _cam(max_epochs=2, callbacks=[StopInParallel()], checkpoint=out / "cam.ckpt").fit(X, Y)
    assert len(resumed.epoch_seconds_) == 1  # the second epoch only: the first came from the ranks
    straight = _cam(max_epochs=2).fit(X, Y)
    _assert_same_weights(_state(resumed), _state(straight), rtol=1e-5, atol=1e-6)
    assert resumed.loss_curve_ == pytest.approx(straight.loss_curve_, rel=1e-5)


def test_split_work_gives_each_rank_its_share_and_everyone_all_results_in_order():
    from sklearn_psa._distributed import split_work
    from sklearn_psa._parallel import map_images

    class SecondOfThree:  # rank 1 of 3; the others computed theirs as it does
        rank, world_size = 1, 3

        @staticmethod
        def all_gather(mine):
            return [[10 * k for k in range(r, 8, 3)] if r != 1 else mine for r in range(3)]

    called = []

    def times_ten(k):
        called.append(k)
        return 10 * k

    with split_work(SecondOfThree()):
        out = list(map_images(times_ten, ((k,) for k in range(8)), total=8))
    assert called == [1, 4, 7] and out == [10 * k for k in range(8)]
    assert list(map_images(times_ten, [(2,)])) == [20]  # outside the block: everything here


def test_a_store_the_ranks_do_not_share_is_a_clear_error(tmp_path):
    from sklearn_psa._distributed import split_work
    from sklearn_psa._store import ArrayStore

    class SecondOfTwo:  # rank 1 of 2, on a machine where rank 0's files never arrive
        rank, world_size = 1, 2
        share = staticmethod(lambda items: items[1::2])
        broadcast_object = staticmethod(lambda items: items)
        barrier = staticmethod(lambda: None)

    store = ArrayStore(tmp_path)
    store.save("cams", "a", np.zeros(2))  # there before: not computed again
    written, keys = [], ["a", "b", "c", "d", "b"]

    def compute(positions):
        for i in positions:
            written.append(keys[i])
            store.save("cams", keys[i], np.ones(2))

    with split_work(SecondOfTwo()), pytest.raises(FileNotFoundError, match="file system the machines share"):
        store.fill("cams", keys, compute)
    assert written == ["c"]  # its share of b, c, d
    written.clear()
    store.fill("cams", keys, compute)  # one process: the rest, here (b once)
    assert written == ["b", "d"]


def test_batchnorm_syncs_where_it_trains_and_stays_frozen_where_frozen():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4),
                              torch.nn.Sequential(torch.nn.BatchNorm2d(4)))
    frozen = net[2][0]
    frozen.weight.requires_grad_(False)
    frozen.bias.requires_grad_(False)
    frozen.eval()
    weight, stats = net[1].weight, net[1].running_mean
    assert set_batchnorm_sync(net, True) == 1
    assert isinstance(net[1], torch.nn.SyncBatchNorm) and net[2][0] is frozen
    assert net[1].weight is weight and net[1].running_mean is stats
    assert set_batchnorm_sync(net, False) == 1
    assert type(net[1]) is torch.nn.BatchNorm2d and net[1].weight is weight
    assert list(net.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                      "1.running_var", "1.num_batches_tracked", "2.0.weight",
                                      "2.0.bias", "2.0.running_mean", "2.0.running_var",
                                      "2.0.num_batches_tracked"]


def test_a_single_process_is_not_data_parallel(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    assert not launched() and process_group(torch.device("cpu")) is None
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert not launched()  # a world of one
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("SKLEARN_PSA_RANK_PID", str(os.getpid()))
    assert launched()
    monkeypatch.setenv("SKLEARN_PSA_RANK_PID", str(os.getpid() + 1))
    assert not launched()  # a worker process that a rank started


def test_the_demo_refuses_to_run_in_every_process_of_a_launcher(monkeypatch, tmp_path, capsys):
    from sklearn_psa import cli

    for name, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"),
                        ("SKLEARN_PSA_RANK_PID", str(os.getpid()))):
        monkeypatch.setenv(name, value)
    assert cli.main(["demo", "--output", str(tmp_path / "demo"), "--quick"]) == 2
    assert "demo runs in one process: start it without torchrun" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


# ----------------------------------------------------------------------------- the CLI under torchrun


#: How a rank ended when gloo's C++ threads were torn down badly at the end of a run (seen a few
#: times in session 9 on a loaded machine, after the work was done and written; the cause,
#: inside torch, is not known): the run is tried once more, and any other failure fails.
_TEARDOWN_ABORT = "terminate called without an active exception"


def _torchrun(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", "sklearn_psa", *args]
    run = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if run.returncode != 0 and _TEARDOWN_ABORT in run.stderr:
        run = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return run


def test_the_cli_under_torchrun_writes_one_model_whose_masks_it_predicts(tmp_path):
    from PIL import Image

    from sklearn_psa.io import load_mask, load_model

    images = tmp_path / "images"
    images.mkdir()
    X, Y, _ = make_shapes(6, image_size=32, random_state=3)
    rows = ["filename,disc,square,triangle,cross"]
    for i, (x, y) in enumerate(zip(X, Y)):
        Image.fromarray(x).save(images / f"img{i}.png")
        rows.append(f"img{i}.png," + ",".join(str(int(v)) for v in y))
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    models = tmp_path / "models"
    models.mkdir()
    fit = _torchrun("fit", "images", "--labels", "labels.csv", "--model", "models/m.psa",
                    "--device", "cpu", "-q", "--backbone", "tiny", "--max-epochs", "1",
                    "--set", "cam__max_epochs=1", "--set", "cam__scales=(1.0,)",
                    "--set", "batch_size=4", "--set", "affinity__max_epochs=1",
                    "--set", "affinity__crf=False", "--set", "affinity__crop_size=32", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr
    said = [line for line in fit.stderr.splitlines() if "sklearn" in line or "data-parallel" in line
            or "fitting" in line]
    assert said[0] == "data-parallel over 2 processes (gloo)", fit.stderr
    assert fit.stderr.count("data-parallel over") == 1 and fit.stderr.count("fitting on 6") == 1
    assert fit.stdout.count("model written to models/m.psa") == 1
    assert sorted(p.name for p in models.iterdir()) == ["m.psa"]  # one model, nothing left over
    model = load_model(models / "m.psa")
    assert [model.cam_.n_iter_, model.affinity_.n_iter_, model.n_iter_] == [1, 1, 1]

    class SecondOfTwo:  # what rank 1 of 2 sees of its process group
        rank, world_size = 1, 2
        share = staticmethod(lambda items: items[1::2])
        broadcast_object = staticmethod(lambda obj: obj)
        sum = staticmethod(lambda values: values)
        all_gather = staticmethod(lambda obj: [obj])
        barrier = staticmethod(lambda: None)

    from sklearn_psa import cli

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "_data_parallel", lambda args: SecondOfTwo())
        assert cli.main(["predict", str(images), "--model", str(models / "m.psa"),
                         "--output", str(tmp_path / "rank1"), "--device", "cpu", "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "rank1").iterdir()) == ["img1.png", "img3.png", "img5.png"]

    predict = _torchrun("predict", "images", "--model", "models/m.psa", "--output", "masks",
                        "--device", "cpu", "-q", "--overwrite", cwd=tmp_path)  # (the same if tried again)
    assert predict.returncode == 0, predict.stderr
    assert predict.stdout.count("6 masks written to masks") == 1  # the ranks' counts, said once
    expected = model.predict([str(images / f"img{i}.png") for i in range(6)])
    for i in range(6):
        np.testing.assert_array_equal(load_mask(tmp_path / "masks" / f"img{i}.png"), expected[i])
