"""A claimed job: one head fitted, or one model fine-tuned, once whoever asks for it, here
or on the run's Dask cluster, and its card in the store the proof that it is done.

    result = claimed_job(config, key, busy=..., saved=..., reuse=..., run=lambda: ...)
    result = here_or_on_cluster(config, key, work, plan, *args)  # what ``run`` calls

The work saves the job's files with its card last (``store.cards.save_with_card``), so a
card found means the job is done: a rerun, or a second run at the same time, reuses it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol, Self, TypeVar

from transfer_pipe.config import TaskOptions
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.store import open_store
from transfer_pipe.store.claims import Claim, Holder, every

logger = logging.getLogger(__name__)

C = TypeVar("C")  # the job's card
R = TypeVar("R")  # the job's result


class Plan(Protocol):
    """A step's plan, which a Dask task carries without the rows it may have read."""

    def without_rows(self) -> Self: ...


def claimed_job(
    config: TaskOptions,
    key: str,
    *,
    busy: str,
    saved: Callable[[], C | None],
    reuse: Callable[[C], R],
    run: Callable[[], R],
    failed: Callable[[Exception], Exception] | None = None,
) -> R:
    """The job ``key`` (``head-<id>``, ``finetune-<run id>``) of a run on ``config``'s
    store: ``reuse(card)`` when ``saved()`` finds its card there, else ``run()`` under the
    store's claim on ``key`` (``store.claims``), so that two runs at once do it once: the
    later one waits (saying every 30 s that ``busy``, e.g. "head X is being fitted", and
    by whom), then reuses the card. ``failed`` turns an unexpected error of ``run`` (not a
    ``TransferPipeError``, which says what to fix) into the one to raise; returns the
    result."""
    card = saved()
    if card is not None:
        return reuse(card)
    claim = _claim(config, key, busy, saved)
    if claim is None:  # another run did the job while this one waited
        card = saved()
        assert card is not None, "a claim is given up only for a saved card"
        return reuse(card)
    try:
        return run()
    except TransferPipeError:
        raise
    except Exception as exc:
        if failed is None:
            raise
        raise failed(exc) from exc
    finally:
        claim.release()


def _claim(
    config: TaskOptions, key: str, busy: str, saved: Callable[[], object | None]
) -> Claim | None:
    """The store's claim on ``key``, or None when the job's card appeared while waiting."""

    def waiting(holder: Holder) -> None:
        logger.warning(
            "%s by another run (%s): waiting for it, to reuse it", busy, holder.describe()
        )

    store = open_store(config.store, config.storage_options)
    return store.claim(key, done=lambda: saved() is not None, waiting=every(30, waiting))


P = TypeVar("P", bound=Plan)


def here_or_on_cluster(
    config: TaskOptions,
    key: str,
    work: Callable[..., R],
    plan: P,
    *args: Any,
    on_event: Callable[[Any], None] | None = None,
) -> R:
    """``work(plan, *args)`` here or, given a Dask scheduler (``dask_address_of``) and not
    already in one of its workers, as the task ``key`` on one of them (a GPU worker when
    ``config.device`` asks for CUDA), with the plan without its rows (the worker reads them
    from the store by key) and ``args`` (keep them small). With ``on_event``, ``work`` gets
    one more argument, where it sends its progress: ``on_event`` itself here; on a worker
    ``send_to_driver``, whose messages reach ``on_event`` here while the task runs.
    Returns ``work``'s result."""
    from transfer_pipe.cluster import in_dask_worker, run_on_cluster, send_to_driver

    address = dask_address_of(config)
    progress = () if on_event is None else (on_event,)
    if address is None or in_dask_worker():
        return work(plan, *args, *progress)
    travelling = (plan.without_rows(), *args, *(send_to_driver for _ in progress))
    result = run_on_cluster(address, config.device, key, work, *travelling, on_event=on_event)
    logger.info("%s: done on the Dask cluster at %s", key, address)
    return result


def dask_address_of(config: TaskOptions) -> str | None:
    """The Dask scheduler a heads or fine-tuning run fits on: its ``--dask-address`` (a
    feature-set key's run as well as one that embeds first), else
    ``DASK_SCHEDULER_ADDRESS``; None (fit here) when neither is given."""
    from transfer_pipe.cluster import plan_cluster

    return plan_cluster(config.dask_address, None).address
