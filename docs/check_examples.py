"""Run the gallery's examples with ``--quick`` and check the figures they write.

Usage::

    python docs/check_examples.py                 # every example, figures to a temporary folder
    python docs/check_examples.py --output gallery plot_pipeline

Each example in :data:`EXAMPLES` runs in its own process (``MPLBACKEND=Agg``) with
``--quick`` (small data, few epochs: meant to take under a minute on two CPU cores) and must
exit with 0 and write every figure listed for it. The full settings are each example's
default (``python examples/<name>.py``). Examples that need data or weights from outside
(:data:`NEEDS_DATA`) are only checked to import and parse their options (``--help``).
Prints one line per example with its time; exits with 1 when any check fails.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = ROOT / "examples"

#: example -> the figures it writes to ``--output``.
EXAMPLES = {
    "plot_pipeline": ["cams.png", "figure5.png", "walk_steps.png", "predictions.png"],
    "plot_grid_search": ["figure8.png"],
}
#: examples that need a dataset or weights files: checked with ``--help`` only.
NEEDS_DATA = {"voc2012_recipe": "needs the VOC2012 devkit, ImageNet weights and a GPU"}
#: what ``--quick`` should stay under (reported, not enforced: shared machines vary 2x).
QUICK_SECONDS = 60


def run(name, args, timeout):
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(EXAMPLES_DIR / f"{name}.py"), *args],
                            capture_output=True, text=True, timeout=timeout, env=env)
    return result, time.perf_counter() - start


def check(name, output, timeout):
    """Problems of example ``name`` (empty when it passed) and its time."""
    if name in NEEDS_DATA:
        result, seconds = run(name, ["--help"], timeout)
        problems = [] if result.returncode == 0 else [result.stderr.strip()[-2000:]]
        return problems, seconds, f"--help only ({NEEDS_DATA[name]})"
    folder = Path(output) / name
    result, seconds = run(name, ["--quick", "--output", str(folder)], timeout)
    problems = []
    if result.returncode != 0:
        problems.append(f"exit status {result.returncode}:\n{result.stderr.strip()[-2000:]}")
    missing = [f for f in EXAMPLES[name] if not (folder / f).is_file()]
    if missing:
        problems.append(f"did not write {', '.join(missing)} to {folder}")
    written = len(EXAMPLES[name]) - len(missing)
    note = f"{written} figure{'' if written == 1 else 's'}"
    if seconds > QUICK_SECONDS:
        note += f" (over the {QUICK_SECONDS} s aimed at)"
    return problems, seconds, note


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="examples to run (default: all)")
    parser.add_argument("--output", help="folder for the figures (default: a temporary one)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per example")
    args = parser.parse_args(argv)
    names = args.names or sorted(EXAMPLES) + sorted(NEEDS_DATA)
    unknown = [n for n in names if n not in EXAMPLES and n not in NEEDS_DATA]
    if unknown:
        parser.error(f"unknown examples {unknown}; known: {sorted(EXAMPLES) + sorted(NEEDS_DATA)}")
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            problems, seconds, note = check(name, args.output or tmp, args.timeout)
            status = "FAILED" if problems else "ok"
            print(f"{name:20s} {status:6s} {seconds:6.1f} s  {note}", flush=True)
            for problem in problems:
                print("    " + problem.replace("\n", "\n    "))
            failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
