"""Per-image CPU work spread over processes (or a cluster) through joblib.

The per-image stages that run on the CPU (the affinity labels with the dense
CRF, the random walk, the CRF at prediction) hand each image to
:func:`map_images`, which runs them through :class:`joblib.Parallel`: with
``n_jobs=None`` (the default) in this process unless a
``joblib.parallel_backend(...)`` context says otherwise, so a user's
``with joblib.parallel_backend("dask"):`` spreads them over a
``dask.distributed`` cluster (or ``"ray"`` over a Ray cluster) with no code of
ours for it. Workers run torch on one thread each (the parallelism is over
images, and torch's own threads would compete with the other workers). Work on
a CUDA device stays in this process (``in_parent=True``).
"""

import numbers

from sklearn.utils._param_validation import Interval

from ._device import single_thread

__all__ = ["map_images", "check_n_jobs", "N_JOBS_CONSTRAINT"]

#: ``_parameter_constraints`` entry of ``n_jobs``: None or a non-zero integer.
N_JOBS_CONSTRAINT = [
    None,
    Interval(numbers.Integral, None, -1, closed="right"),
    Interval(numbers.Integral, 1, None, closed="left"),
]


def check_n_jobs(n_jobs, name="n_jobs"):
    """``n_jobs`` as joblib takes it: None or a non-zero integer (clear error otherwise)."""
    if n_jobs is None:
        return None
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, numbers.Integral) or n_jobs == 0:
        raise ValueError(
            f"{name} must be None or a non-zero integer (-1: all cores), got {n_jobs!r}"
        )
    return int(n_jobs)


def _one_thread_call(func, args):
    """``func(*args)`` with torch on one thread (restored afterwards: dask workers live on)."""
    with single_thread():
        return func(*args)


def map_images(func, tasks, *, n_jobs=None, in_parent=False, verbose=0, desc=None, total=None,
               done=0):
    """Yield ``func(*args)`` for each ``args`` of ``tasks``, in order, as they are done.

    Parameters
    ----------
    func : callable
        A module-level function (picklable), called once per image.
    tasks : iterable of tuple
        Its arguments per image; consumed lazily (joblib dispatches a few
        ahead of the results taken), so a generator keeps memory flat.
    n_jobs : int or None, default=None
        As in scikit-learn: None means 1 unless in a
        :func:`joblib.parallel_backend` context, -1 all cores.
    in_parent : bool, default=False
        Run every task in this process, one after another (work on CUDA).
    verbose : int, default=0
        A progress bar over the images (see ``_training.progress``).
    desc : str, optional
        The bar's label.
    total : int, optional
        Number of images, for the bar.
    done : int, default=0
        Images done earlier (found in a store), counted in the bar from the start.

    Within :func:`sklearn_psa._distributed.split_work` (a data-parallel fit),
    each rank runs every ``world_size``-th task and the results of all are
    gathered (in order) on every rank.

    Yields
    ------
    result
        ``func(*args)``, in the order of ``tasks``.
    """
    from ._distributed import in_order, work_group

    group = work_group()
    if group is not None:  # a data-parallel fit: this rank's share, then everyone's results
        mine = (args for k, args in enumerate(tasks) if k % group.world_size == group.rank)
        share = None if total is None else len(range(group.rank, total - done, group.world_size))
        results = list(_map_here(func, mine, n_jobs, in_parent, verbose if group.rank == 0 else 0,
                                 desc, share, 0))
        yield from in_order(group.all_gather(results))
        return
    yield from _map_here(func, tasks, n_jobs, in_parent, verbose, desc, total, done)


def _map_here(func, tasks, n_jobs, in_parent, verbose, desc, total, done):
    """:func:`map_images` in this process (and its joblib workers)."""
    import joblib

    from ._training import progress

    n_jobs = check_n_jobs(n_jobs)
    if in_parent or joblib.effective_n_jobs(n_jobs) == 1:
        results = (func(*args) for args in tasks)
    else:
        parallel = joblib.Parallel(n_jobs=n_jobs, return_as="generator")
        results = parallel(joblib.delayed(_one_thread_call)(func, args) for args in tasks)
    yield from progress(results, verbose=verbose, desc=desc, total=total, initial=done)
