"""Where the shards run: an existing Dask scheduler, or a LocalCluster of processes."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import dask
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


def worker_environment() -> dict[str, object]:
    """Dask's worker environment without MALLOC_TRIM_THRESHOLD_.

    Setting that variable at all turns off glibc's dynamic mmap threshold, so every large
    torch buffer is mmapped and unmapped per forward pass: measured here, a worker spent
    half its time in the kernel and ran the backbone ~1.6x slower than a plain process.
    Start external workers without it too.
    """
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    return environ


@contextmanager
def dask_client(plan: ClusterPlan) -> Iterator[Client]:
    """A connected client; a LocalCluster it started is shut down on exit."""
    if plan.address:
        with Client(plan.address) as client:
            yield client
        return
    # The scheduler's per-worker INFO lines would bury the progress bar and the summary.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    with (
        dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environment()}),
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
