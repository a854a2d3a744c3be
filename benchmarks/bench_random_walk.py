"""Random walk: the dense way of the reference code against the sparse kernels.

For each grid size, each method runs in its own subprocess (so that its peak
memory can be read from ``getrusage``), ``--repeats`` times; the table gives the
median time, the peak resident memory the method added to its process, the
speed-up over the dense way and the largest difference from a float64
reference (``t`` plain sparse products in float64), relative to ``max|scores|``.

Methods
-------
dense          the reference code's way: dense float32 ``n x n`` W, ``W ** beta``,
               ``D^-1``, ``log2(t)`` squarings (torch matmul), then one product.
               Skipped where three ``n x n`` matrices do not fit in memory; above
               ``--dense-estimate-above`` cells one squaring is timed and the
               time extrapolated (marked ``~``).
torch          ``random_walk(..., backend="torch")`` as shipped: the Chebyshev
               expansion, the CSR or the stencil kernel by grid size
               (``STENCIL_MIN_CELLS``), one thread below ``SERIAL_WORK``.
torch-csr      the same, always the CSR product (torch's MKL / cuSPARSE).
torch-stencil  the same, always the stencil: ``2K + 1`` shifted multiply-adds.
torch-power    the same kernel choice with ``t`` products instead of the expansion.
torch-threads  the same with torch's threads at every size (no one-thread rule).
scipy          ``random_walk(..., backend="scipy")``: scipy CSR, one thread.

Usage::

    python benchmarks/bench_random_walk.py                     # the table of docs/benchmarks.md
    python benchmarks/bench_random_walk.py --sizes 32x32 --repeats 1   # quick look
    python benchmarks/bench_random_walk.py --device cuda       # torch methods on a GPU

Inputs are synthetic but shaped like AffinityNet output: the grid is split into
random regions; affinities are near 1 inside a region and small across, with
noise; ``C`` score channels (default 3: background and two classes).
"""

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

try:
    import sklearn_psa  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

METHODS = ["dense", "torch", "torch-csr", "torch-stencil", "torch-power", "torch-threads", "scipy"]
DEFAULT_SIZES = ["32x32", "63x47", "128x128", "256x256"]


def make_inputs(h, w, channels, radius=5, seed=0):
    from sklearn_psa import neighbor_offsets

    rng = np.random.default_rng(seed)
    n_regions = max(2, (h * w) // 150)
    cy, cx = rng.random(n_regions) * h, rng.random(n_regions) * w
    yy, xx = np.mgrid[0:h, 0:w]
    region, nearest = np.zeros((h, w), np.int64), np.full((h, w), np.inf)
    for i in range(n_regions):  # nearest centre (a Voronoi partition), without an (h, w, n) array
        dist = (yy - cy[i]) ** 2 + (xx - cx[i]) ** 2
        region[dist < nearest] = i
        nearest = np.minimum(nearest, dist)
    offsets = neighbor_offsets(radius)
    affinity = np.empty((len(offsets), h, w), np.float32)
    for k, (dy, dx) in enumerate(offsets):
        other = np.full((h, w), -1)
        ys, xs = slice(0, max(0, h - dy)), slice(max(0, -dx), max(0, w - dx))
        yt, xt = slice(dy, h), slice(max(0, dx), w + min(0, dx))
        other[ys, xs] = region[yt, xt]
        same = other == region
        affinity[k] = np.where(same, rng.uniform(0.85, 1.0, (h, w)), rng.uniform(0.0, 0.4, (h, w)))
    scores = rng.random((channels, h, w)).astype(np.float32)
    return scores, affinity, offsets


# ----------------------------------------------------------------------------- methods


def dense_walk(scores, affinity, offsets, beta, t, squarings=None, timing=None):
    """The reference code's way, with full borders: dense W, W ** beta, D^-1, squarings.

    With ``squarings``, only that many squarings are done (the result is then
    not the walk) and ``timing["squaring"]`` receives the seconds of each.
    """
    import torch

    C, h, w = scores.shape
    n = h * w
    steps = int(math.log2(t))
    if 2**steps != t:
        raise ValueError(f"the dense way needs t a power of two, got {t}")
    cell = torch.arange(n).reshape(h, w)
    aff = torch.from_numpy(affinity)
    W = torch.eye(n, dtype=torch.float32)
    for k, (dy, dx) in enumerate(offsets.tolist()):
        ys, xs = slice(0, max(0, h - dy)), slice(max(0, -dx), max(0, w - dx))
        yt, xt = slice(dy, h), slice(max(0, dx), w + min(0, dx))
        p, q, v = cell[ys, xs].reshape(-1), cell[yt, xt].reshape(-1), aff[k, ys, xs].reshape(-1)
        W[p, q] = v
        W[q, p] = v
    W = W**beta
    T = W / W.sum(dim=1, keepdim=True)
    del W
    for _ in range(steps if squarings is None else squarings):
        start = time.perf_counter()
        T = T @ T
        if timing is not None:
            timing.setdefault("squaring", []).append(time.perf_counter() - start)
    return (T @ torch.from_numpy(scores).reshape(C, n).T).T.reshape(C, h, w).numpy()


def reference_walk(scores, affinity, offsets, beta, t):
    """float64, t plain products (the definition; checked against dense float64 in the tests)."""
    import torch

    from sklearn_psa._walk_kernels import scipy_walk

    out = scipy_walk(torch.from_numpy(scores.astype(np.float64)), torch.from_numpy(affinity),
                     offsets, beta, t, chebyshev=False)
    return out.numpy()


def run_method(method, scores, affinity, offsets, beta, t, device, squarings=None, timing=None):
    import torch

    from sklearn_psa import _device, _walk_kernels, random_walk
    from sklearn_psa._device import flush_denormal

    if method == "dense":
        return dense_walk(scores, affinity, offsets, beta, t, squarings, timing)
    if method == "reference":
        return reference_walk(scores, affinity, offsets, beta, t)
    if method == "scipy":
        return random_walk(scores, affinity, beta=beta, t=t, backend="scipy")
    if method == "torch":  # the public function, validation included
        return random_walk(scores, affinity, beta=beta, t=t, backend="torch", device=device)
    # the torch variants: random_walk's own path, with one choice overridden
    options = {"kernel": "auto", "chebyshev": True}
    if method in ("torch-csr", "torch-stencil"):
        options["kernel"] = method.split("-")[1]
    elif method == "torch-power":
        options["chebyshev"] = False
    elif method == "torch-threads":
        _device.SERIAL_WORK = 0
    S = torch.from_numpy(scores).to(device)
    A = torch.from_numpy(affinity).to(device)
    work = scores.size * (2 * len(offsets) + 1)
    with torch.no_grad(), flush_denormal(), _walk_kernels.cpu_threads(work):
        out = _walk_kernels.torch_walk(S, A, offsets, beta, t, **options)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out.cpu().numpy()


# ----------------------------------------------------------------------------- one measurement


def child(args):
    import torch

    h, w = (int(v) for v in args.child_size.split("x"))
    scores, affinity, offsets = make_inputs(h, w, args.channels)
    method = args.child_method
    squarings = 1 if method == "dense-estimate" else None
    method = "dense" if method == "dense-estimate" else method
    device = args.device
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    run_method(method, scores[:, :2, :2], affinity[:, :2, :2], offsets, args.beta, 4, device)  # warm up
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, out, timing = [], None, {}
    repeats = 1 if method == "reference" or squarings else args.repeats
    for _ in range(repeats):
        start = time.perf_counter()
        out = run_method(method, scores, affinity, offsets, args.beta, args.t, device, squarings, timing)
        times.append(time.perf_counter() - start)
    if squarings:  # extrapolate: the remaining squarings cost what the timed one did
        remaining = int(math.log2(args.t)) - squarings
        times = [times[0] + remaining * float(np.mean(timing["squaring"]))]
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {
        "times": times,
        "peak_added_mb": (peak_kb - base) / 1024,
        "peak_total_mb": peak_kb / 1024,
        "gpu_peak_mb": (torch.cuda.max_memory_allocated() / 2**20) if device.startswith("cuda") else None,
    }
    np.save(args.child_out, np.asarray(out, dtype=np.float64))
    print(json.dumps(result))


def measure(method, size, args, out_path):
    cmd = [sys.executable, os.path.abspath(__file__), "--child-method", method, "--child-size", size,
           "--child-out", out_path, "--channels", str(args.channels), "--t", str(args.t),
           "--beta", str(args.beta), "--repeats", str(args.repeats), "--device", args.device]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
    if proc.returncode != 0:
        raise RuntimeError(f"{method} {size} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def available_memory_bytes():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def machine_note(args):
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "none used"
    return (f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, GPU: {gpu}; load average {load[0]:.1f} at start")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(DEFAULT_SIZES), help="comma-separated HxW grids")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--t", type=int, default=256)
    parser.add_argument("--beta", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="device of the torch methods")
    parser.add_argument("--dense-estimate-above", type=int, default=4096,
                        help="above this many cells, time one squaring of the dense way and extrapolate")
    parser.add_argument("--child-method", help=argparse.SUPPRESS)
    parser.add_argument("--child-size", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_method:
        return child(args)

    methods = args.methods.split(",")
    print(f"Machine: {machine_note(args)}")
    print(f"Walk: C = {args.channels} channels, radius 5 (K = 34), beta = {args.beta:g}, "
          f"t = {args.t}; median of {args.repeats}; memory: peak RSS the method added to its "
          "own process (getrusage ru_maxrss), GPU: torch's peak allocation\n", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            h, w = (int(v) for v in size.split("x"))
            n = h * w
            ref_path = os.path.join(tmp, f"ref-{size}.npy")
            measure("reference", size, args, ref_path)
            reference = np.load(ref_path)
            scale = np.abs(reference).max()
            dense_time = None
            for method in methods:
                row = {"size": size, "n": n, "method": method, "time": None, "memory": None,
                       "total": None, "error": None, "note": ""}
                rows.append(row)
                run_as = method
                if method == "dense":
                    need = 3 * 4 * n * n
                    if need > 0.8 * available_memory_bytes():
                        row["note"] = f"skipped: three n x n float32 matrices need {need / 2**30:.0f} GiB"
                        print(f"  {size:>8} {method:<14} {row['note']}", flush=True)
                        continue
                    if n > args.dense_estimate_above:
                        run_as = "dense-estimate"
                        row["note"] = (f"estimate: 1 of {int(math.log2(args.t))} squarings timed, "
                                       "the others assumed equal")
                out_path = os.path.join(tmp, f"{method}-{size}.npy")
                r = measure(run_as, size, args, out_path)
                row["time"] = float(np.median(r["times"]))
                gpu = r["gpu_peak_mb"] is not None and method not in ("dense", "scipy")
                row["memory"] = r["gpu_peak_mb"] if gpu else r["peak_added_mb"]
                row["total"] = r["peak_total_mb"]
                if run_as != "dense-estimate":
                    row["error"] = float(np.abs(np.load(out_path) - reference).max() / scale)
                if method == "dense":
                    dense_time = row["time"]
                print(f"  {size:>8} {method:<14} {row['time']:9.4f} s {row['memory']:8.1f} MB "
                      f"error {row['error'] if row['error'] is not None else float('nan'):.1e}",
                      flush=True)
            for row in rows:
                if row["size"] == size and dense_time and row["time"]:
                    row["speedup"] = dense_time / row["time"]

    def fmt(value, spec, suffix=""):
        return "" if value is None else format(value, spec) + suffix

    print()
    print("| grid | cells | method | median time (s) | speed-up vs dense | peak memory added (MB) "
          "| process peak RSS (MB) | max error / max score | note |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---|")
    for row in rows:
        approx = "~" if row["note"].startswith("estimate") else ""
        print(f"| {row['size']} | {row['n']} | {row['method']} | {approx}{fmt(row['time'], '.3g')} "
              f"| {approx}{fmt(row.get('speedup'), '.0f', 'x')} | {fmt(row['memory'], '.0f')} "
              f"| {fmt(row['total'], '.0f')} | {fmt(row['error'], '.1e')} | {row['note']} |")
    print(f"\nLoad average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
