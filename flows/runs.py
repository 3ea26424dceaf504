"""How the runs look and behave in Prefect: names, tags, artifact keys, the library's logs,
retries. Formatting and wiring only; what a run does lives in ``transfer_pipe``.

- Names and tags say what a run works on (dataset, backbone, image size, feature set, head),
  so the runs list reads without opening each run.
- Artifact keys are stable per dataset (and task): the UI's artifact page keeps one history
  per dataset instead of one mixing them all.
- The library logs through standard ``logging`` (``transfer_pipe.*``); ``capture_library_logs``
  sends those records to the run's logs, in any process that imports a flow (the CLI, a
  worker running a deployment), as ``PREFECT_LOGGING_EXTRA_LOGGERS=transfer_pipe`` does.
- Tasks that touch the store or a device retry transient errors (``transient_error``).
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import TaskRun
from prefect.context import FlowRunContext
from prefect.exceptions import MissingContextError
from prefect.logging.handlers import APILogHandler
from prefect.states import State
from prefect.tasks import Task

from transfer_pipe.steps.failures import is_transient

LIBRARY_LOGGER = "transfer_pipe"

# Storage and devices fail transiently (a network store, a busy GPU): try again after a pause.
RETRIES = 2
RETRY_DELAY_SECONDS = [5, 30]


def transient_error(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect's ``retry_condition_fn``: retry an I/O error or a timeout, never a user's
    mistake (``TransferPipeError``: retrying cannot fix it)."""
    error = state.data if isinstance(state.data, BaseException) else None
    if error is None:
        error = state.result(raise_on_failure=False)
    return is_transient(error if isinstance(error, BaseException) else None)


# Retry options for the tasks that touch the store or a device: transient errors (I/O,
# timeouts) are retried; each retry redoes only what the store lacks (training resumes from
# its last checkpoint); a user's mistake is never retried.
RETRY: dict[str, Any] = {
    "retries": RETRIES,
    "retry_delay_seconds": RETRY_DELAY_SECONDS,
    "retry_condition_fn": transient_error,
}


def slug(text: str, limit: int = 40) -> str:
    """A Prefect artifact key part: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "x"


def dataset_name(source: str) -> str:
    """What a person calls a source: its last path segment (``/data/photos/`` ->
    ``photos``, ``s3://bucket/set/manifest.csv`` -> ``manifest.csv``)."""
    return PurePosixPath(str(source).rstrip("/")).name or str(source)


def artifact_key(kind: str, source: str, *parts: str) -> str:
    """``<kind>-<dataset>-<hash of the full source>[-<part>...]``: one key per dataset
    (two folders of the same name differ by the hash), e.g.
    ``heads-metrics-photos-3fa2c1-source``."""
    digest = hashlib.sha256(str(source).encode()).hexdigest()[:6]
    return "-".join([kind, slug(dataset_name(source)), digest, *(slug(p) for p in parts)])


def _parameters() -> Mapping[str, Any]:
    context = FlowRunContext.get()
    return (context.parameters or {}) if context is not None else {}


def _is_feature_set_key(source: str) -> bool:
    return re.fullmatch(r"[0-9a-f]{16}", source) is not None


def run_name(*fields: str) -> Any:
    """A ``flow_run_name`` callable: the dataset, then each of ``fields`` of the run's
    parameters that is set, then when the run began (UTC), e.g.
    ``photos-efficientnet_lite0.in1k-224px-20261207-020000``. A source that is a feature-set
    key names the feature set; its backbone and image size are fixed by it. Prefect calls
    it as the run starts, whatever started it (the CLI, a schedule, a parent flow), so a
    flow's runs are named alike on every route, and two runs of one dataset apart."""

    def name() -> str:
        values = _parameters()
        source = str(values.get("source", ""))
        began = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        if _is_feature_set_key(source):
            words = [f"feature-set-{source}"]
            words += [str(values[f]) for f in fields if f not in _EMBED_FIELDS and values.get(f)]
            return "-".join([*words, began])
        words = [dataset_name(source)]
        for field in fields:
            value = values.get(field)
            if value:
                words.append(f"{value}px" if field == "image_size" else str(value))
        return "-".join([*words, began])

    return name


_EMBED_FIELDS = ("backbone", "image_size")


PROJECT_TAG = "transfer-pipe"  # every run, as the deployments' own tags say


def run_tags() -> list[str]:
    """Tags of the current run, the same whatever started it: ``transfer-pipe``, its
    flow's name, and from its parameters ``dataset:<name>``, ``backbone:<id>`` (or
    ``feature-set:<key>``), ``task:<task>`` where it has one."""
    values = _parameters()
    source = str(values.get("source", ""))
    context = FlowRunContext.get()
    found = [PROJECT_TAG]
    if context is not None and context.flow is not None:
        found.append(context.flow.name)
    if _is_feature_set_key(source):
        found.append(f"feature-set:{source}")
    else:
        found += [f"dataset:{dataset_name(source)}", f"backbone:{values.get('backbone')}"]
    if values.get("task"):
        found.append(f"task:{values['task']}")
    return found


# The tags of the flow runs around the current one: a subflow shows what its parent works on.
_PARENT_TAGS: ContextVar[tuple[str, ...]] = ContextVar("transfer_pipe_parent_tags", default=())


@contextmanager
def tagged(*extra: str) -> Iterator[None]:
    """Tag the current flow run with ``run_tags``, ``extra`` and the tags of the flow runs
    it runs inside (subflows started in the block get them). ``@flow`` takes no tags, and
    a deployment's tags are the deployment's; so the run adds its own.

    Task runs are not tagged: Prefect checks a tag's concurrency limit for every tagged
    task run, one API call each (about a second per rerun of the pipeline); a task run's
    name says what it works on."""
    found = sorted({*_PARENT_TAGS.get(), *run_tags(), *extra})
    context = FlowRunContext.get()
    if context is not None and context.flow_run is not None:
        merged = sorted(set(context.flow_run.tags) | set(found))
        with get_client(sync_client=True) as client:
            client.update_flow_run(context.flow_run.id, tags=merged)
    token = _PARENT_TAGS.set(tuple(found))
    try:
        yield
    finally:
        _PARENT_TAGS.reset(token)


class _RunLogHandler(APILogHandler):
    """Prefect's handler for run logs, quiet about records logged outside any run (a
    notebook, a Dask worker thread): those have no run to go to, and standard logging
    still shows them on the console."""

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], MissingContextError):
            return
        super().handleError(record)


def capture_library_logs() -> None:
    """Send the library's log records (``transfer_pipe.*``) to the current run's logs.

    What ``PREFECT_LOGGING_EXTRA_LOGGERS=transfer_pipe`` does when it is set before Prefect
    starts (then this adds nothing); done here as well because a flow module is imported
    after Prefect has read its settings, e.g. by a worker running a deployment. The level
    follows Prefect's (``PREFECT_LOGGING_LEVEL``, INFO by default) unless one is set."""
    logger = logging.getLogger(LIBRARY_LOGGER)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.getLogger("prefect.extra").getEffectiveLevel())
    if not any(isinstance(h, APILogHandler) for h in logger.handlers):
        logger.addHandler(_RunLogHandler())
