"""Device selection and CPU numerics helpers shared by all torch code."""

import contextlib
import threading

#: Below this many multiply-adds per kernel call (a sparse product, a filter pass, an
#: interpolation), per-image CPU kernels run on one torch thread: each call is too short to pay
#: for waking and synchronising torch's worker threads, which on a shared, loaded machine cost
#: tens of milliseconds per call (measured: the walk on a 63 x 47 grid took 2.8 s instead of
#: 0.08 s, the CRF on a 500 x 375 image 3-5x its one-thread time; docs/benchmarks.md).
SERIAL_WORK = 1 << 24

#: The same for the dense CRF, whose work is counted as the multiply-adds of its splat
#: (``6 N C`` for N pixels and C labels with the bilateral kernel). Its calls are many short
#: ones (gathers, element-wise steps) around that product, and measured on the busy 2-core
#: machine two threads were 43x slower than one at 320 x 240 with 3 labels, 7.8x at
#: 500 x 375 with 21 labels and still 2.7x at 1000 x 750 with 21 labels (94 M): below about
#: two megapixels with 21 labels it runs on one thread (benchmarks/bench_threads.py).
CRF_SERIAL_WORK = 1 << 28

# single_thread() may be entered from several Python threads at once (joblib's threading
# backend) and nested: the first to enter sets one thread, the last to leave restores.
_threads_lock = threading.Lock()
_threads_state = {"depth": 0, "saved": None}


def resolve_device(device="auto"):
    """Return a ``torch.device`` for ``device``.

    ``"auto"`` (or None) means CUDA when available, else CPU. Any string or
    ``torch.device`` torch accepts is passed through; asking for CUDA on a
    machine without it is a clear ``ValueError``.
    """
    import torch

    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a device torch knows ('auto', 'cpu', 'cuda', 'cuda:0', ...)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asks for CUDA, but torch sees no CUDA device here; use 'auto' or 'cpu'")
    return dev


def autocast(device, enabled=True):
    """Mixed precision on CUDA (bfloat16 where the GPU has it, else float16); off elsewhere."""
    import torch

    device = torch.device(device)
    on = bool(enabled) and device.type == "cuda"
    return torch.autocast(device.type, dtype=cuda_amp_dtype() if on else None, enabled=on)


def cuda_amp_dtype():
    """bfloat16 where the current CUDA device supports it (Ampere and later), else float16."""
    import torch

    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def flush_denormal():
    """Flush denormal floats to zero on the CPU inside the block.

    Powers such as ``W ** beta`` and long products underflow into denormals,
    which are tens of times slower on CPUs. The previous setting is restored.
    """
    import torch

    # torch offers no getter: a denormal times one is zero exactly when flushing is on
    was_on = bool((torch.tensor([1e-39]) * 1.0).item() == 0.0)
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported and not was_on:
            torch.set_flush_denormal(False)


@contextlib.contextmanager
def single_thread():
    """Run torch's CPU kernels on one thread inside the block.

    Re-entrant and safe to enter from several Python threads: torch's thread
    count is process-wide, so it is set to 1 by the first block entered and
    restored to the caller's setting when the last one is left.
    """
    import torch

    with _threads_lock:
        state = _threads_state
        if state["depth"] == 0:
            state["saved"] = torch.get_num_threads()
            if state["saved"] != 1:
                torch.set_num_threads(1)
        state["depth"] += 1
    try:
        yield
    finally:
        with _threads_lock:
            state["depth"] -= 1
            if state["depth"] == 0 and state["saved"] not in (None, 1):
                torch.set_num_threads(state["saved"])


def cpu_threads(work, threshold=None):
    """One torch thread inside the block when ``work < threshold``, else torch's setting.

    ``work`` is the number of multiply-adds of the kernel's largest single call
    (threads can only split one call); ``threshold`` defaults to
    :data:`SERIAL_WORK` (read at each call). Below it the threads cost more
    than they bring, and several times more on a busy machine.
    """
    threshold = SERIAL_WORK if threshold is None else threshold
    return single_thread() if work < threshold else contextlib.nullcontext()
