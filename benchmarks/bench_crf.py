"""Dense CRF: sklearn-psa's torch implementation against pydensecrf2 on CPU.

For each label count, runs the reference code's CRF (pydensecrf2: unary
``-log(clip(probs, 1e-5))``, Gaussian sxy 3 compat 3, bilateral sxy 80 srgb 13
compat 10, 10 iterations) and ``sklearn_psa.dense_crf`` (backend "torch", at 1
thread and at torch's default thread count, the latter also with
``OMP_WAIT_POLICY=PASSIVE``, which stops idle OpenMP threads from spinning: on
a machine whose cores are all busy, spinning threads slow every parallel
region several-fold) on one 500 x 375 image with CAM-like unaries, and prints
a markdown table of:

- time: the fastest call (wall clock, after one warm-up call per process) over
  ``--rounds`` rounds that interleave the configurations (each round a fresh
  subprocess per configuration, timing ``--repeats`` calls), and its ratio to
  pydensecrf2's, measured in the same run. "DenseCRF, image
  reused" times a call on a ``DenseCRF`` that has already refined a map of the
  same image (its lattices built), as the affinity labels do for their two maps;
- CPU time: the same for the process's CPU time (for one thread, less
  sensitive than the wall clock to other processes on a shared machine);
- peak memory: the growth of the process's peak resident set size (VmHWM,
  reset just before the first call) over its resident size just before it,
  each configuration in a fresh subprocess, the largest over the rounds;
- agreement with pydensecrf2: the share of pixels with the same argmax label,
  and the largest absolute difference of the marginals.

The image is ``make_shapes`` (image_size=500, cropped to 375 rows) with
``n_labels - 1`` classes, or any photo given with ``--image`` (resized to
500 x 375). The unaries are the one-hot ground truth (or, for a photo, colour
clusters), shifted, blurred and perturbed with smooth noise: CAM-like maps that
are right in the middle of objects and wrong near their borders.

Usage::

    python benchmarks/bench_crf.py [--labels 21 3] [--rounds 3] [--repeats 2] [--image PATH]
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HEIGHT, WIDTH = 375, 500


def make_inputs(n_labels, image_path=None, seed=0):
    """(image (H, W, 3) uint8, CAM-like probs (n_labels, H, W) float32)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    if image_path is None:
        from sklearn_psa.datasets import make_shapes

        images, _, masks = make_shapes(1, n_classes=n_labels - 1, image_size=WIDTH, random_state=seed)
        image, mask = images[0, :HEIGHT], masks[0, :HEIGHT].astype(np.int64)
    else:
        from PIL import Image

        image = np.asarray(Image.open(image_path).convert("RGB").resize((WIDTH, HEIGHT), Image.BILINEAR))
        # No ground truth: label pixels by the nearest of n_labels random colours.
        centres = image.reshape(-1, 3)[rng.choice(HEIGHT * WIDTH, n_labels, replace=False)].astype(np.float32)
        distance = ((image.reshape(-1, 1, 3).astype(np.float32) - centres) ** 2).sum(-1)
        mask = distance.argmin(1).reshape(HEIGHT, WIDTH)
    onehot = (mask[None] == np.arange(n_labels)[:, None, None]).astype(np.float32)
    onehot = np.roll(onehot, shift=(9, -7), axis=(1, 2))  # misplaced, as CAMs are
    scores = ndimage.gaussian_filter(onehot, sigma=(0, 10, 10))
    noise = ndimage.gaussian_filter(rng.normal(size=onehot.shape).astype(np.float32), sigma=(0, 12, 12))
    logits = 4.0 * scores + 1.5 * noise / noise.std()
    logits -= logits.max(0, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(0, keepdims=True)
    return np.ascontiguousarray(image), probs.astype(np.float32)


def reference_crf(image, probs, n_iter=10):
    """The AffinityNet reference code's ``crf_inference`` (pydensecrf2)."""
    import pydensecrf.densecrf as dcrf

    n_labels, height, width = probs.shape
    crf = dcrf.DenseCRF2D(width, height, n_labels)
    unary = -np.log(np.clip(probs, 1e-5, 1.0)).reshape(n_labels, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=80, srgb=13, rgbim=np.ascontiguousarray(image), compat=10)
    return np.asarray(crf.inference(n_iter), dtype=np.float32).reshape(n_labels, height, width)


def _status_bytes(field):
    """VmRSS (resident now) or VmHWM (peak resident) of this process, from /proc."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak():
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0). Without it,
    # VmHWM still starts afresh in this process (unlike ru_maxrss, which a child process
    # inherits from its parent across fork and exec).
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def worker(backend, threads, repeats, inputs_path, out_path):
    """Runs in a fresh process: one configuration, prints a JSON line."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from sklearn_psa import dense_crf

    with np.load(inputs_path) as data:
        image, probs = data["image"], data["probs"]
    if backend == "pydensecrf2":
        import pydensecrf.densecrf  # noqa: F401  (import before measuring)

        def run():
            return reference_crf(image, probs)
    elif backend == "reuse":
        from sklearn_psa.crf import DenseCRF

        crf = DenseCRF(image, device="cpu")

        def run():  # the first call builds the lattices, the timed ones reuse them
            return crf(probs)
    else:

        def run():
            return dense_crf(image, probs, backend="torch", device="cpu")

    before = _status_bytes("VmRSS")
    _reset_peak()
    result = run()
    peak = _status_bytes("VmHWM")
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        run()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    np.save(out_path, result)
    print(
        json.dumps(
            {
                "time": min(times),
                "cpu_time": min(cpu_times),
                "peak_mb": max(0, peak - before) / 2**20,
                "threads": 1 if backend == "pydensecrf2" else torch.get_num_threads(),
            }
        )
    )


CONFIGS = [  # (backend, threads, OMP_WAIT_POLICY); threads 0: torch's default
    ("pydensecrf2", 1, None),
    ("torch", 1, None),
    ("torch", 0, None),
    ("torch", 0, "PASSIVE"),
    ("reuse", 1, None),
]
NAMES = {
    "pydensecrf2": "pydensecrf2 (reference code)",
    "torch": "sklearn_psa.dense_crf",
    "reuse": "sklearn_psa DenseCRF, image reused",
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--labels", type=int, nargs="+", default=[21, 3])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the configurations")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per round")
    parser.add_argument("--image", default=None, help="a photo to use instead of make_shapes")
    parser.add_argument("--worker", nargs=4, metavar=("BACKEND", "THREADS", "INPUTS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        backend, threads, inputs_path, out_path = args.worker
        worker(backend, int(threads), args.repeats, inputs_path, out_path)
        return

    import tempfile

    import torch

    source = args.image or "make_shapes"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"Dense CRF, 10 mean-field iterations, {WIDTH} x {HEIGHT} image ({source}), CPU, torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs (load average {load} at the start); best of {args.rounds} interleaved rounds "
        f"x {args.repeats} calls\n"
    )
    print(
        "| labels | implementation | threads | time (s) | time / pydensecrf2 | CPU time (s) | CPU time / pydensecrf2 "
        "| peak memory (MB) | argmax agreement | max abs diff of marginals |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for n_labels in args.labels:
            inputs_path = os.path.join(tmp, f"inputs-{n_labels}.npz")
            image, probs = make_inputs(n_labels, args.image)
            np.savez(inputs_path, image=image, probs=probs)
            stats = {}
            # Rounds interleave the configurations, so that load from other processes on a
            # shared machine hits all of them alike; each keeps its best time.
            for _ in range(args.rounds):
                for config in CONFIGS:
                    backend, threads, wait_policy = config
                    out = os.path.join(tmp, "{}-{}-{}.npy".format(*config))
                    command = [sys.executable, __file__, "--repeats", str(args.repeats),
                               "--worker", backend, str(threads), inputs_path, out]
                    env = dict(os.environ)
                    if wait_policy:
                        env["OMP_WAIT_POLICY"] = wait_policy
                    line = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
                    new = json.loads(line.strip().splitlines()[-1])
                    old = stats.setdefault(config, new)
                    for key in ("time", "cpu_time"):
                        old[key] = min(old[key], new[key])
                    old["peak_mb"] = max(old["peak_mb"], new["peak_mb"])
            reference = np.load(os.path.join(tmp, "pydensecrf2-1-None.npy"))
            reference_time = stats[CONFIGS[0]]["time"]
            reference_cpu = stats[CONFIGS[0]]["cpu_time"]
            for config in CONFIGS:
                backend, threads, wait_policy = config
                stat = stats[config]
                result = np.load(os.path.join(tmp, "{}-{}-{}.npy".format(*config)))
                agree = float((result.argmax(0) == reference.argmax(0)).mean())
                diff = float(np.abs(result - reference).max())
                name = NAMES[backend] + (f" (OMP_WAIT_POLICY={wait_policy})" if wait_policy else "")
                print(
                    f"| {n_labels} | {name} | {stat['threads']} | {stat['time']:.3f} "
                    f"| {stat['time'] / reference_time:.2f} | {stat['cpu_time']:.3f} "
                    f"| {stat['cpu_time'] / reference_cpu:.2f} | {stat['peak_mb']:.0f} "
                    f"| {100 * agree:.3f}% | {diff:.1e} |"
                )


if __name__ == "__main__":
    main()
