"""Where the shards run: an existing Dask scheduler, or a LocalCluster of processes.

Planning imports neither torch nor Dask (seconds each): a run with nothing to compute
never pays for them."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from distributed import Client


@dataclass(frozen=True)
class ClusterPlan:
    address: str | None  # None: start a LocalCluster
    workers: int
    torch_threads: int | None  # per worker; None: let each worker split its own cores


def plan_cluster(address: str | None, workers: int | None) -> ClusterPlan:
    """Decide the cluster without starting it; ``DASK_SCHEDULER_ADDRESS`` counts as given."""
    address = address or os.environ.get("DASK_SCHEDULER_ADDRESS") or None
    if address:
        return ClusterPlan(address=address, workers=0, torch_threads=None)
    cores = os.cpu_count() or 1
    n = workers or min(cores, 4)
    return ClusterPlan(address=None, workers=n, torch_threads=max(1, cores // n))


def resolve_device(device: str) -> torch.device:
    """``"auto"`` means CUDA when present, else CPU; anything else is passed to torch."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def threads_per_task() -> int:
    """Cores one compute-heavy task may use (torch intra-op, BLAS, OpenMP): all of them,
    or, inside a Dask worker, its share, so that concurrent tasks do not oversubscribe."""
    try:
        from distributed import get_worker

        nthreads = get_worker().state.nthreads
    except ValueError:  # not running inside a Dask worker
        nthreads = 1
    return max(1, (os.cpu_count() or 1) // nthreads)


@contextmanager
def dask_client(plan: ClusterPlan) -> Iterator[Client]:
    """A connected client; a LocalCluster it started is shut down on exit.

    The local cluster is one in-process worker with ``plan.workers`` threads: the forward
    pass and the image decoders release the GIL, the model and the already imported
    libraries are shared, and no worker process has to start (measured here: the same
    steady throughput as one process per core, and 6 s less start-up per run).
    """
    from distributed import Client, LocalCluster

    if plan.address:
        with Client(plan.address) as client:
            yield client
        return
    # The scheduler's per-worker INFO lines would bury the progress bar and the summary.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=plan.workers,
            processes=False,
            dashboard_address=None,
            silence_logs=logging.WARNING,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client
