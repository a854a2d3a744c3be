"""Device selection and CPU numerics helpers shared by all torch code."""

import contextlib


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
