"""Parallel AffinityEstimator sweep on a GPU machine (issue #6): CAM labels against true labels.

Fixed CAMs: ``CAMClassifier(backbone="tiny", max_epochs=30, random_state=0)`` on
``make_shapes(600, random_state=0)`` (the records of ``bench_affinity.py --n 600 --cam-epochs 30``),
carried to the GPU machine as float16 CAMs in ``cams600.pkl.gz`` next to this script (write it
with ``--export REC.pkl``, REC.pkl holding ``{"records", "masks"}``; the images are regenerated).
Each config trains AffinityEstimator on all 600 images and scores the walk (best of alpha 1-16,
beta 8-128, t = 256) on the first 100, against CAM alone (best alpha 0.5-8). Configs run in
parallel processes (``SWEEP_WORKERS``, default 8) sharing the GPU. The rows without an edge
threshold are the same estimator calls as ``bench_affinity.py --eval-first 100 --head-widths 64
128 256 --device cuda``; the ``edge`` rows patch the loss to drop positive pairs whose 8x8 cell
mean colours differ by more than the threshold (an experiment, not a library feature).

Used for docs/benchmarks.md, "AffinityEstimator: CAM labels against true labels (session 3)"::

    python benchmarks/sweep_affinity_gpu.py --export /path/rec600.pkl     # here, once
    python benchmarks/sweep_affinity_gpu.py [CONFIG ...]                   # on the GPU machine

``SWEEP_QUICK=1 SWEEP_DEVICE=cpu`` makes a smoke run of 24 images and one epoch.
"""
import gzip, json, os, pickle, sys, time
import multiprocessing as mp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CAMS = os.environ.get("SWEEP_CAMS", os.path.join(HERE, "cams600.pkl.gz"))
QUICK = os.environ.get("SWEEP_QUICK") == "1"
DEVICE = os.environ.get("SWEEP_DEVICE", "cuda")

CONFIGS = [  # name, label mode, edge threshold (None: off), params
    ("true_lite0s5_e10_s2", "true", None, {"backbone": "efficientnet_lite0", "pretrained": True, "backbone_options": {"stages": 5}, "input_scale": 2.0, "max_epochs": 10}),
    ("cam_lite0s5_e10_s2", "cam", None, {"backbone": "efficientnet_lite0", "pretrained": True, "backbone_options": {"stages": 5}, "input_scale": 2.0, "max_epochs": 10}),
    ("cam_lite0s5_e10_s2_edge25", "cam", 25.0, {"backbone": "efficientnet_lite0", "pretrained": True, "backbone_options": {"stages": 5}, "input_scale": 2.0, "max_epochs": 10}),
    ("true_e30_s2", "true", None, {"max_epochs": 30, "input_scale": 2.0}),
    ("cam_e30_s2", "cam", None, {"max_epochs": 30, "input_scale": 2.0}),
    ("cam_e30_s2_edge25", "cam", 25.0, {"max_epochs": 30, "input_scale": 2.0}),
    ("cam_e30_crf", "cam", None, {"max_epochs": 30, "crf": True}),
    ("true_e30_rf155", "true", None, {"max_epochs": 30, "backbone_options": {"depth": 4, "dilation": 2}}),
    ("cam_e30_rf155", "cam", None, {"max_epochs": 30, "backbone_options": {"depth": 4, "dilation": 2}}),
    ("true_e30", "true", None, {"max_epochs": 30}),
    ("cam_e30", "cam", None, {"max_epochs": 30}),
    ("cam_e30_edge15", "cam", 15.0, {"max_epochs": 30}),
    ("cam_e30_edge25", "cam", 25.0, {"max_epochs": 30}),
    ("cam_e30_edge40", "cam", 40.0, {"max_epochs": 30}),
    ("cam_e30_initcam", "cam", None, {"max_epochs": 30, "init": "cam"}),
    ("true_e8", "true", None, {"max_epochs": 8}),
    ("cam_e30_rf27", "cam", None, {"max_epochs": 30, "backbone_options": {"depth": 0}}),
    ("true_e30_rf27", "true", None, {"max_epochs": 30, "backbone_options": {"depth": 0}}),
    ("cam_e30_mae", "cam", "mae", {"max_epochs": 30}),
    ("true_e30_mae", "true", "mae", {"max_epochs": 30}),
    ("cam_e30_gate15_10", "cam", (15.0, 10.0), {"max_epochs": 30}),
    ("cam_e30_gate15_20", "cam", (15.0, 20.0), {"max_epochs": 30}),
]


def load():
    from sklearn_psa.datasets import make_shapes
    from sklearn_psa.records import Record, Records
    d = pickle.load(gzip.open(CAMS, "rb"))
    n = 24 if QUICK else 600
    X, Y, masks = make_shapes(n, random_state=0)
    recs = [Record(x, l, c.astype(np.float32), shape=x.shape[:2]) for x, l, c in zip(X, d["labels"], d["cams"])]
    return Records(recs, d["n_classes"], d["source"]), masks


def install_edge_filter(threshold):
    """Drop positive pairs whose 8x8 cell mean colours differ by more than threshold (0..255);
    with a pair ``(pos, neg)``, also negative pairs whose colours differ by less than ``neg``."""
    pos_t, neg_t = threshold if isinstance(threshold, (tuple, list)) else (threshold, None)
    import torch
    import torch.nn.functional as F
    from sklearn_psa.nn import affinity_head as ah
    from sklearn_psa._grid import shift_slices
    last = {}
    forward = ah.AffinityNet.forward

    def fwd(self, x, *a, **k):
        last["x"] = x
        return forward(self, x, *a, **k)

    loss = ah.affinity_loss

    def filtered(aff, bg_pos, fg_pos, neg):
        x = last["x"].float()
        N, K, h, w = aff.shape
        col = F.adaptive_avg_pool2d(x, (h, w))
        offs = OFFSETS
        dist = torch.full_like(aff, -1.0)
        for k, (dy, dx) in enumerate(offs):
            (sy, sx), (ty, tx) = shift_slices(int(dy), int(dx), h, w)
            dist[:, k, sy, sx] = (col[:, :, sy, sx] - col[:, :, ty, tx]).abs().mean(1)
        far = dist > pos_t
        STATS[0] += float((bg_pos.bool() & far).sum()); STATS[1] += float(bg_pos.bool().sum())
        neg = neg.bool()
        if neg_t is not None:
            STATS[2] += float((neg & (dist < neg_t)).sum()); STATS[3] += float(neg.sum())
            neg = neg & ~(dist < neg_t)
        return loss(aff, bg_pos.bool() & ~far, fg_pos.bool() & ~far, neg)

    ah.AffinityNet.forward = fwd
    ah.affinity_loss = filtered


def install_mae_loss():
    """Bounded loss (1 - W for positive pairs, W for negative ones) instead of -log: robust to
    label noise, since a wrong pair costs at most 1."""
    from sklearn_psa.nn import affinity_head as ah

    def mae(aff, bg_pos, fg_pos, neg):
        def term(values, mask):
            mask = mask.to(values.dtype)
            return (values * mask).sum() / (mask.sum() + 1e-5)
        bg, fg, ng = term(1 - aff, bg_pos), term(1 - aff, fg_pos), term(aff, neg)
        return bg / 4 + fg / 4 + ng / 2, {"bg": bg.detach(), "fg": fg.detach(), "neg": ng.detach()}

    ah.affinity_loss = mae


OFFSETS = None
STATS = [0.0, 0.0, 0.0, 0.0]


def job(cfg):
    import torch
    torch.set_num_threads(int(os.environ.get("SWEEP_THREADS", "2")))
    global OFFSETS
    name, mode, edge, params = cfg
    sys.path.insert(0, HERE)
    from bench_affinity import _true_label_records, _pair_auc, _walk_grid
    from sklearn_psa import AffinityEstimator, RandomWalkRefiner, neighbor_offsets
    from sklearn_psa.metrics import mean_iou
    rec, masks = load()
    n_ev = 8 if QUICK else 100
    params = dict(params)
    params.setdefault("crf", False); params.setdefault("backbone", "tiny")
    if QUICK:
        params["max_epochs"] = 1
    OFFSETS = neighbor_offsets(5)
    if edge == "mae":
        install_mae_loss()
    elif edge is not None:
        install_edge_filter(edge)
    train = _true_label_records(rec, masks) if mode == "true" else rec
    n_train = int(os.environ.get("SWEEP_NTRAIN", "0"))
    if n_train:
        train = train[:n_train]
    ev = rec[:n_ev]
    t = time.time()
    aff = AffinityEstimator(random_state=0, device=DEVICE, **params).fit(train)
    ft = time.time() - t
    er = aff.transform(ev)
    auc = _pair_auc(er, masks[:n_ev], aff.radius)
    grid = _walk_grid(er, masks[:n_ev], [1, 2, 4, 8, 16], [8, 16, 32, 64, 128], DEVICE)
    cams = {a: mean_iou(masks[:n_ev], RandomWalkRefiner(alpha=a, t=0, device=DEVICE).predict(ev)) for a in [0.5, 1, 2, 4, 8]}
    best = max(grid, key=grid.get); cam0 = max(cams.values())
    h = aff.loss_curve_
    drop = f" edge-dropped {STATS[0] / max(STATS[1], 1):.2f} of bg pairs" if STATS[1] else ""
    if STATS[3]:
        drop += f", {STATS[2] / STATS[3]:.2f} of negative pairs"
    return (f"{name:28s} {mode:4s} fit {ft:5.0f}s auc {auc:.3f} cam {cam0:.3f} walk {grid[best]:.3f} "
            f"{best} gain {grid[best] - cam0:+.3f} loss {h[0]:.3f}->{h[-1]:.3f}{drop}\n   grid "
            + json.dumps({f"{a},{b}": round(v, 3) for (a, b), v in grid.items()}))


def export(path):
    """Write the compact CAM file from a records pickle (the images are regenerated there)."""
    with open(path, "rb") as f:
        d = pickle.load(f)
    rec = d["records"]
    src = {k: ({n: np.asarray(v) for n, v in s.items()} if k == "state_dict" else s)
           for k, s in (rec.source or {}).items()}
    out = {"cams": [r.cams.astype(np.float16) for r in rec.records], "labels": [r.labels for r in rec.records],
           "source": src, "n_classes": rec.n_classes}
    with gzip.open(CAMS, "wb") as f:
        pickle.dump(out, f)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--export"]:
        export(sys.argv[2])
        sys.exit()
    names = sys.argv[1:]
    cfgs = [c for c in CONFIGS if not names or c[0] in names]
    workers = int(os.environ.get("SWEEP_WORKERS", "8"))
    ctx = mp.get_context("spawn")
    t0 = time.time()
    with ctx.Pool(workers, maxtasksperchild=1) as pool:
        for line in pool.imap_unordered(job, cfgs):
            print(f"[{time.time() - t0:5.0f}s] {line}", flush=True)
