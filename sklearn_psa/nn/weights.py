"""Loading weight files into backbones, safely and with clear errors."""

import os
import re

__all__ = ["load_state_dict_file", "load_weights"]

_EXPECTED = "expected a torch state dict file saved with torch.save(module.state_dict())"


def _unreadable(path, exc):
    """The one-line error for a file ``torch.load(weights_only=True)`` refuses."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch's message holds ANSI escapes
    pickled = re.search(r"Unsupported (?:global: GLOBAL|class) ([\w.]+)", text)
    if pickled:
        return ValueError(
            f"{path}: holds pickled Python objects ({pickled.group(1)}; e.g. a whole module "
            "saved with torch.save(module)) rather than a state dict of tensors, which cannot "
            "be loaded safely: save module.state_dict() instead"
        )
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        reason = "the file is empty"
    elif not head.startswith((b"PK\x03\x04", b"\x80")):
        reason = f"it starts with {head!r}, neither torch.save's zip format nor a pickle"
    else:  # torch's own words, without its advice on weights_only=False
        lines = text.split("WeightsUnpickler error:")[-1].strip().splitlines()
        detail = lines[0].split(". ")[0] if lines else type(exc).__name__
        kind = "zip archive" if head.startswith(b"PK") else "pickle"
        reason = f"a {kind} torch cannot read: {detail}"
    return ValueError(f"{path}: not a readable torch weights file ({reason}); {_EXPECTED}")


def load_state_dict_file(path):
    """Read a state dict from ``path`` with ``torch.load(weights_only=True)``.

    Accepts a bare state dict or a checkpoint dict holding one under
    ``"state_dict"`` or ``"model"``.

    Parameters
    ----------
    path : str or path-like
        The weights file.

    Returns
    -------
    state : dict
        Tensor names to tensors.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist or is a folder.
    ValueError
        If the file is not a torch file, holds pickled Python objects (a whole
        module saved with ``torch.save(module)``) or holds no state dict.
    """
    import torch

    path = os.fspath(path)
    if os.path.isdir(path):
        raise FileNotFoundError(f"{path}: is a folder; {_EXPECTED}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _unreadable(path, exc) from exc
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(hasattr(v, "shape") for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    return obj


def _extra_prefix(names, own):
    """A first name component (``"module"``) whose removal gives every missing name of ``own``."""
    missing = {k for k in own if k not in names}
    for prefix in sorted({k.split(".", 1)[0] + "." for k in names if k not in own and "." in k}):
        if missing and missing <= {k[len(prefix):] for k in names if k.startswith(prefix)}:
            return prefix
    return None


def load_weights(module, weights, *, ignore=(), source=None):
    """Load a state dict (or a file holding one) into ``module``, strictly.

    A state dict saved from a ``torch.nn.DataParallel`` wrapper, whose names
    all start with ``"module."``, is loaded without that prefix.

    Parameters
    ----------
    module : torch.nn.Module
    weights : dict or path
    ignore : iterable of str
        Prefixes of names in the file to skip (a classifier head such as ``"fc."``).
    source : str, optional
        Name of the weights used in error messages (defaults to the path).

    Returns
    -------
    module : torch.nn.Module
        ``module``, with the weights loaded.

    Raises
    ------
    ValueError
        Listing the missing, unexpected and mis-shaped tensors when the file does
        not match the module; when the names carry one extra leading component
        (a whole network's ``"backbone."``), the message says how to select the
        part that matches.
    """
    if not isinstance(weights, dict):
        source = source or os.fspath(weights)
        weights = load_state_dict_file(weights)
    source = source or "state dict"
    ignore = tuple(ignore)
    import torch

    own = module.state_dict()
    prefix = _extra_prefix(weights, own)
    if prefix == "module." and all(k.startswith(prefix) for k in weights):
        weights = {k[len(prefix):]: v for k, v in weights.items()}  # saved from DataParallel
        prefix = None
    # values may be numpy arrays (Records.source keeps state dicts as arrays)
    state = {k: torch.as_tensor(v) for k, v in weights.items() if not k.startswith(ignore)}
    for k, v in own.items():  # BatchNorm's counters, which files saved before torch 0.4.1 lack
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = v
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or mismatched:
        def head(items):
            return ", ".join(items[:8]) + (f" ... ({len(items)} in all)" if len(items) > 8 else "")

        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {head(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {head(unexpected)}")
        if mismatched:
            parts.append(f"wrong shape {len(mismatched)}: {head(mismatched)}")
        if prefix:
            parts.append(
                f"the names in {source} start with {prefix!r}: it looks like a whole network; "
                f"pass the state dict of its {prefix[:-1]!r} part, e.g. {{k[len({prefix!r}):]: v "
                f"for k, v in sd.items() if k.startswith({prefix!r})}}"
            )
        raise ValueError(
            f"{source} does not match {type(module).__name__}: " + "; ".join(parts)
        )
    module.load_state_dict(state, strict=True)
    return module
