"""Where the work runs: an existing Dask scheduler (``--dask-address`` or
``DASK_SCHEDULER_ADDRESS``), or a LocalCluster in this process for the shards.

On an existing cluster, device tasks (embedding shards, head fits, fine-tuning) ask for
the ``GPU`` resource that GPU workers advertise when they run on CUDA, and a run checks
that some worker offers it before it submits anything (a task asking for a resource no
worker has would wait forever). Planning imports neither torch nor Dask (seconds each): a
run with nothing to compute never pays for them."""

from __future__ import annotations

import logging
import os
import queue
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from transfer_pipe.errors import TransferPipeError

if TYPE_CHECKING:
    import torch
    from distributed import Client

T = TypeVar("T")
GPU = "GPU"  # the resource a GPU worker advertises: `dask worker ... --resources GPU=1`
WORKERS_WAIT_S = 30.0  # how long a run waits for the first worker of an external cluster


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


def task_resources(device: str, offered: Collection[str] = ()) -> dict[str, float]:
    """The Dask resources one device task (an embedding shard, a head fit) asks for: one
    ``GPU`` when it runs on CUDA (``cuda``, ``cuda:1``; ``auto`` when some worker of the
    cluster, whose resources are ``offered``, advertises one), else none (any worker)."""
    kind = device.split(":", 1)[0]
    if kind == "cuda" or (kind == "auto" and GPU in offered):
        return {GPU: 1}
    return {}


def offered_resources(client: Client) -> dict[str, float]:
    """The most of each resource any one worker of the cluster advertises."""
    offered: dict[str, float] = {}
    for worker in client.scheduler_info(n_workers=-1)["workers"].values():
        for name, amount in (worker.get("resources") or {}).items():
            offered[name] = max(offered.get(name, 0.0), float(amount))
    return offered


def check_resources(
    needed: Mapping[str, float], offered: Mapping[str, float], address: str
) -> None:
    """Fail now, not after waiting forever, when no worker offers what the tasks need."""
    for name, amount in needed.items():
        if offered.get(name, 0.0) < amount:
            raise TransferPipeError(
                f"no worker of the Dask cluster at {address} offers the {name} resource "
                f"({amount:g} per task; the cluster offers {dict(offered) or 'none'}); start "
                f"workers with `dask worker {address} --resources {name}=1`, or pass "
                "--device cpu"
            )


def cluster_resources(client: Client, plan: ClusterPlan, device: str) -> dict[str, float]:
    """The resources each device task of a run on ``device`` asks of the cluster, checked
    against what its workers offer. A LocalCluster's worker runs on this machine's devices:
    its tasks ask for nothing."""
    if not plan.address:
        return {}
    offered = offered_resources(client)
    needed = task_resources(device, offered)
    check_resources(needed, offered, plan.address)
    return needed


def in_dask_worker() -> bool:
    """True inside a task of a Dask worker (where a step must run, not submit itself)."""
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return False
    return True


def lost_scheduler(exc: BaseException) -> bool:
    """True when ``exc`` is a task's future cancelled because the client lost the
    scheduler (killed, restarted, unreachable): the run cannot go on."""
    return "scheduler-connection-lost" in str(exc)


def run_on_cluster(
    address: str,
    device: str,
    key: str,
    fn: Callable[..., T],
    *args: Any,
    on_event: Callable[[Any], None] | None = None,
) -> T:
    """``fn(*args)`` run as one task, named ``key``, on a worker of the Dask cluster at
    ``address`` (one that offers a GPU when ``device`` asks for CUDA: checked first), and
    its result. ``args`` travel to the worker: keep them small (configs, URLs, keys).
    ``on_event`` is called here, in this thread, with each message the task passes to
    ``send_to_driver`` while it runs (progress), in the order sent (the scheduler adds
    the sending worker's address to a dict message, as ``worker``)."""
    plan = plan_cluster(address, None)
    with dask_client(plan) as client:
        resources = cluster_resources(client, plan, device)
        inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        if on_event is not None:
            # The task's events reach the client's event loop thread; the callback (a
            # Prefect progress artifact, a print) runs in this one, which owns the run.
            client.subscribe_topic(key, lambda event: inbox.put(event[1]))
        future = client.submit(fn, *args, key=key, resources=resources or None, pure=False)
        try:
            result: T = _result_passing_events(future, inbox, on_event)
        except Exception as exc:
            if lost_scheduler(exc):  # not transient: no retry can reach the lost scheduler
                raise TransferPipeError(
                    f"lost the Dask scheduler at {address} while task {key} ran; restart the "
                    "scheduler and its workers and run again"
                ) from exc
            raise
        finally:
            if on_event is not None:
                client.unsubscribe_topic(key)
    return result


def _result_passing_events(
    future: Any, inbox: queue.SimpleQueue[Any], on_event: Callable[[Any], None] | None
) -> Any:
    """``future``'s result; until it is done, each message in ``inbox`` to ``on_event``."""
    while on_event is not None:
        try:
            message = inbox.get(timeout=0.2)
        except queue.Empty:
            if future.done():
                break
            continue
        on_event(message)
    result = future.result()
    while on_event is not None and not inbox.empty():
        on_event(inbox.get_nowait())
    return result


def send_to_driver(message: Any) -> None:
    """From inside a task that ``run_on_cluster`` started: pass ``message`` (msgpack-able:
    dicts of numbers and strings) to that call's ``on_event``, now, as a worker event on
    the task's own key."""
    from distributed import get_worker

    worker = get_worker()
    try:
        worker.log_event(str(worker.get_current_task()), message)
    except TypeError as err:  # not msgpack-able: progress must never fail the task
        logging.getLogger(__name__).warning("a progress message was not sent: %s", err)


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
        with _external_client(plan.address) as client:
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


@contextmanager
def _external_client(address: str) -> Iterator[Client]:
    """A client of the scheduler at ``address`` with at least one worker, or an error that
    says what to start (a missing scheduler fails after Dask's connect timeout, 30 s by
    default; a scheduler without workers after ``WORKERS_WAIT_S``)."""
    from distributed import Client

    try:
        client = Client(address)
    except OSError as exc:
        raise TransferPipeError(
            f"cannot reach the Dask scheduler at {address} (--dask-address or "
            f"DASK_SCHEDULER_ADDRESS): {exc}. Start it (`dask scheduler`), or unset both to "
            "run on a local cluster."
        ) from exc
    with client:
        try:
            client.wait_for_workers(1, timeout=WORKERS_WAIT_S)
        except TimeoutError as exc:
            raise TransferPipeError(
                f"the Dask cluster at {address} has no worker (waited {WORKERS_WAIT_S:g} s); "
                f"start some with `dask worker {address}`"
            ) from exc
        yield client
