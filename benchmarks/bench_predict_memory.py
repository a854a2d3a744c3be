"""Peak memory of ``PSASegmenter.predict`` on one large image, with and without the CRF.

What ``sklearn_psa.io.MAX_PIXELS`` (the largest image file read, 40 million pixels by default)
protects against: prediction memory grows with the pixels. For each size, a fresh subprocess
loads a tiny segmenter (fitted once on ``make_shapes``, 4 classes, saved with ``save_model``),
resets its peak resident set size (VmHWM, Linux) and predicts one ``W x W`` image given as a
PNG path; the table gives the growth of the peak over the resident size before the call, and
the time. The tiny backbone is the cheapest network: others add their own activations.

Usage::

    python benchmarks/bench_predict_memory.py [--sizes 500 1000 2000] [--crf-sizes 500 1000]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def _vm(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0  # MB
    raise RuntimeError(f"{key} not in /proc/self/status")


def _child(model_path, size, crf):
    import numpy as np
    from PIL import Image

    from sklearn_psa.io import load_model

    model = load_model(model_path).set_params(crf=crf, device="cpu")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)
    path = os.path.join(tempfile.mkdtemp(), "big.png")
    Image.fromarray(image).resize((size, size)).save(path)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident size
    before = _vm("VmRSS")
    start = time.perf_counter()
    mask = model.predict([path])[0]
    seconds = time.perf_counter() - start
    assert mask.shape == (size, size)
    print(json.dumps({"peak_mb": _vm("VmHWM") - before, "seconds": seconds}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000])
    parser.add_argument("--crf-sizes", type=int, nargs="+", default=[500, 1000])
    args = parser.parse_args()

    from sklearn_psa import PSASegmenter
    from sklearn_psa.datasets import make_shapes
    from sklearn_psa.io import save_model

    X, Y, _ = make_shapes(16, image_size=64, random_state=0)
    seg = PSASegmenter(backbone="tiny", max_epochs=1, random_state=0, device="cpu").set_params(
        cam__backbone="tiny", cam__max_epochs=1, cam__scales=(1.0,), affinity__backbone="tiny",
        affinity__max_epochs=1, affinity__crf=False, affinity__crop_size=64)
    model = save_model(seg.fit(X, Y), os.path.join(tempfile.mkdtemp(), "seg.psa"))
    print("| image | pixels | crf | peak memory added (MB) | MB per million pixels | time (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    runs = [(s, False) for s in args.sizes] + [(s, True) for s in args.crf_sizes]
    for size, crf in runs:
        out = subprocess.run([sys.executable, __file__, "--child", model, str(size), str(int(crf))],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        mp = size * size / 1e6
        print(f"| {size} x {size} | {mp:.2f} M | {'yes' if crf else 'no'} | {r['peak_mb']:.0f} "
              f"| {r['peak_mb'] / mp:.0f} | {r['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]), bool(int(sys.argv[4])))
    else:
        main()
