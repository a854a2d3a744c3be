"""Data-parallel training with ``torch.distributed``: the process group and its ranks.

A fit runs data-parallel when the process belongs to a process group of more
than one process: one the user initialised, or the default group that
:func:`process_group` initialises itself when a launcher (``torchrun``, or any
that sets ``RANK``, ``WORLD_SIZE`` and ``MASTER_ADDR``) started the process.
The backend is ``nccl`` on CUDA and ``gloo`` on CPU; each rank trains on the
CUDA device of its ``LOCAL_RANK`` (one process per device).

:class:`ProcessGroup` is what the training loop needs of the group: the rank's
share of a batch, sums of numbers over the ranks, and broadcasts from rank 0
(objects, a network's weights). Within :func:`split_work` (the per-image stages
of a data-parallel fit, which every rank runs at the same point),
:func:`sklearn_psa._parallel.map_images` (the CPU stages: labels, random walk)
and :func:`share_work` (the networks' inference over the training images: CAMs,
affinities) give each rank its share of the images and gather the results.
"""

import contextlib
import os

__all__ = ["ProcessGroup", "in_order", "is_main_process", "launched", "process_group", "set_batchnorm_sync",
           "share_work", "split_work", "work_group"]

#: The variables a launcher sets (``torchrun`` sets these and more).
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR")

#: The process a launcher started: the first to import this module with its variables set.
#: Processes it starts (joblib workers of a ``GridSearchCV(n_jobs=2)``) inherit the
#: variables, and this one, and are not ranks.
_RANK_PID = "SKLEARN_PSA_RANK_PID"
if os.environ.get("RANK"):
    os.environ.setdefault(_RANK_PID, str(os.getpid()))


def launched():
    """Whether a launcher started this process as one of several (``WORLD_SIZE > 1``),
    not a process that one of those started."""
    if not all(os.environ.get(k) for k in LAUNCH_VARIABLES):
        return False
    if os.environ.get(_RANK_PID, str(os.getpid())) != str(os.getpid()):
        return False
    try:
        return int(os.environ["WORLD_SIZE"]) > 1
    except ValueError:
        return False


def is_main_process():
    """False in the processes of a process group other than rank 0 (which say nothing:
    no progress bars, no plans)."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _local_rank():
    return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))


class ProcessGroup:
    """The ranks of a data-parallel fit.

    Parameters
    ----------
    device : torch.device
        The device this rank trains on (``cuda:LOCAL_RANK`` on CUDA).

    Attributes
    ----------
    rank, world_size : int
    backend : str
        ``"gloo"`` or ``"nccl"``.
    """

    def __init__(self, device):
        import torch.distributed as dist

        self.device = device
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.backend = str(dist.get_backend())
        # where collective tensors live: nccl reduces CUDA tensors only
        self._comm_device = device if self.backend == "nccl" else "cpu"

    def __repr__(self):
        return f"data-parallel over {self.world_size} processes ({self.backend})"

    def share(self, indices):
        """This rank's items of ``indices`` (every ``world_size``-th, from its rank)."""
        return indices[self.rank::self.world_size]

    def sum(self, values):
        """The sums over the ranks of the numbers ``values`` (list of float)."""
        import torch
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t)
        return [float(v) for v in t.cpu()]

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` (picklable) on every rank."""
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._comm_device if self.backend == "nccl" else None)
        return box[0]

    def all_gather(self, obj):
        """The ``obj`` (picklable) of every rank, in rank order."""
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_module(self, module):
        """Copy rank 0's parameters and buffers of ``module`` to every rank, in place."""
        import torch
        import torch.distributed as dist

        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, src=0)

    def barrier(self):
        import torch.distributed as dist

        dist.barrier()


def process_group(device):
    """The :class:`ProcessGroup` of a data-parallel fit on ``device``, else None.

    Initialises the default process group from the launcher's variables when
    the process was launched as one of several and none exists yet (``nccl``
    on CUDA, ``gloo`` otherwise). A group of one process is no data
    parallelism: None.

    Parameters
    ----------
    device : torch.device
        The device the estimator resolved; on CUDA without an index, this
        rank's ``cuda:LOCAL_RANK``.

    Returns
    -------
    group : ProcessGroup or None
        ``group.device`` is the device this rank trains on.
    """
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        return None
    if not dist.is_initialized():
        if not launched():
            return None
        if device.type == "cuda":
            torch.cuda.set_device(_local_rank() % torch.cuda.device_count())
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.get_world_size() < 2:
        return None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", _local_rank() % torch.cuda.device_count())
    return ProcessGroup(device)


_WORK_GROUPS = []


@contextlib.contextmanager
def split_work(group):
    """Within the block, per-image work (:func:`~sklearn_psa._parallel.map_images`) is split
    over ``group``'s ranks (nothing changes where ``group`` is None). Only for code that
    every rank runs at the same point, as a data-parallel fit: each call is a collective."""
    _WORK_GROUPS.append(group)
    try:
        yield group
    finally:
        _WORK_GROUPS.pop()


def work_group():
    """The group of the innermost :func:`split_work` block, else None."""
    return _WORK_GROUPS[-1] if _WORK_GROUPS else None


def in_order(shares):
    """The results of all ranks in the order of their items.

    Parameters
    ----------
    shares : list of list
        ``shares[r]``: rank ``r``'s results, of every ``len(shares)``-th item
        from the ``r``-th (:meth:`ProcessGroup.share`).

    Returns
    -------
    results : list
    """
    world_size = len(shares)
    return [shares[i % world_size][i // world_size] for i in range(sum(len(s) for s in shares))]


def share_work(compute, items, *, gather=True):
    """``compute`` over ``items``: split over the ranks within :func:`split_work`, else here.

    Within a :func:`split_work` block of a group, each rank calls ``compute``
    on its share of ``items`` (every ``world_size``-th, from its rank; none:
    not called), in their order, and the results are gathered on every rank
    in the order of ``items``, as one process gives them. ``compute`` runs
    outside the block (its share is not split again, e.g. by
    :func:`~sklearn_psa._parallel.map_images`). ``items`` are rank
    0's: a list that each rank makes from a shared ``store`` (what is not
    there yet) is the same on all of them, even when another rank has begun
    to write. Every rank must call it at the same point (it is a collective).

    Parameters
    ----------
    compute : callable
        ``compute(some_items)`` returns a list of one result per item (with
        ``gather=False``: anything, e.g. None, having written its results
        where every rank reads them, a shared ``store``).
    items : list
        What to compute (indices of images, keys, ...); picklable.
    gather : bool, default=True
        False: nothing is sent between the ranks but the ``items`` and a
        barrier, after which every rank's writes are done.

    Returns
    -------
    results : list or None
        One per item, in their order (None with ``gather=False``).
    """
    group = work_group()
    items = list(items)
    if group is None:
        results = compute(items) if items else []
        return list(results) if gather else None
    items = group.broadcast_object(items)
    mine = group.share(items)
    with split_work(None):  # this rank's share: computed here
        results = compute(mine) if mine else []
        results = list(results) if gather else None
    if not gather:
        group.barrier()
        return None
    if len(results) != len(mine):
        raise RuntimeError(f"share_work: compute returned {len(results)} results for {len(mine)} items")
    return in_order(group.all_gather(results))


def _trains_statistics(bn):
    """Whether BatchNorm ``bn`` learns (not frozen: its affine weights take gradients)."""
    return bn.track_running_stats and (bn.weight is None or bn.weight.requires_grad)


def set_batchnorm_sync(module, sync):
    """Swap ``module``'s trained BatchNorm2d layers to SyncBatchNorm (``sync=True``) or back.

    The layers keep their parameters and buffers (the same tensors) and their
    mode; frozen ones (affine weights without gradients) are left as they are,
    so a backbone that keeps them in eval mode still does.

    Parameters
    ----------
    module : torch.nn.Module
        Changed in place.
    sync : bool

    Returns
    -------
    n : int
        The layers swapped.
    """
    from torch import nn

    n = 0
    for name, child in module.named_children():
        if sync and type(child) is nn.BatchNorm2d and _trains_statistics(child):
            new = nn.SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats)
        elif not sync and isinstance(child, nn.SyncBatchNorm):
            new = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                 child.track_running_stats)
        else:
            n += set_batchnorm_sync(child, sync)
            continue
        new.weight, new.bias = child.weight, child.bias
        new.running_mean, new.running_var = child.running_mean, child.running_var
        new.num_batches_tracked = child.num_batches_tracked
        new.train(child.training)
        setattr(module, name, new)
        n += 1
    return n
