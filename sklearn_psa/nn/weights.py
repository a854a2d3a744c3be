"""Loading weight files into backbones, safely and with clear errors."""

import os

__all__ = ["load_state_dict_file", "load_weights"]


def load_state_dict_file(path):
    """Read a state dict from ``path`` with ``torch.load(weights_only=True)``.

    Accepts a bare state dict or a checkpoint dict holding one under
    ``"state_dict"`` or ``"model"``.
    """
    import torch

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable torch weights file ({exc})") from exc
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(hasattr(v, "shape") for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    return obj


def load_weights(module, weights, *, ignore=(), source=None):
    """Load a state dict (or a file holding one) into ``module``, strictly.

    Parameters
    ----------
    module : torch.nn.Module
    weights : dict or path
    ignore : iterable of str
        Prefixes of names in the file to skip (a classifier head such as ``"fc."``).
    source : str, optional
        Name of the weights used in error messages (defaults to the path).

    Raises
    ------
    ValueError
        Listing the missing, unexpected and mis-shaped tensors when the file does
        not match the module.
    """
    if not isinstance(weights, dict):
        source = source or os.fspath(weights)
        weights = load_state_dict_file(weights)
    source = source or "state dict"
    ignore = tuple(ignore)
    import torch

    # values may be numpy arrays (Records.source keeps state dicts as arrays)
    state = {k: torch.as_tensor(v) for k, v in weights.items() if not k.startswith(ignore)}
    own = module.state_dict()
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
        raise ValueError(
            f"{source} does not match {type(module).__name__}: " + "; ".join(parts)
        )
    module.load_state_dict(state, strict=True)
    return module
