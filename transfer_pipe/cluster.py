"""Where the shards run: an existing Dask scheduler, or a LocalCluster of processes."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from distributed import Client, LocalCluster


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
    # One single-threaded process per core: the GIL-bound decode runs in parallel, and
    # torch gets the cores without two thread pools fighting over them.
    n = workers or min(cores, 4)
    return ClusterPlan(address=None, workers=n, torch_threads=max(1, cores // n))


@contextmanager
def dask_client(plan: ClusterPlan) -> Iterator[Client]:
    """A connected client; a LocalCluster it started is shut down on exit."""
    if plan.address:
        with Client(plan.address) as client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=plan.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.WARNING,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client
