"""``transfer-pipe serve``: a Prefect server, work pools, deployments and a worker that stay up,
and a Dask cluster (a scheduler and one worker) that keeps the model loaded between runs.

The server, ``prefect deploy`` and the worker are ``prefect`` CLI subprocesses; the work
pools and the crash automation are set up through Prefect's own client. Where it runs is
recorded in ``<home>/server.json`` (home: ``$TRANSFER_PIPE_HOME``, default
``~/.transfer-pipe``), so every other ``transfer-pipe`` command finds it
(``use_running_server``) instead of starting Prefect's temporary server (15-40 s, and its
history thrown away), and its Dask cluster: a night with a few new images then pays neither
for torch's import nor for building the model (seconds each; the run's own process imports
neither).

One module per concern: ``record`` (where a serve runs, read by every command),
``prefect_setup`` (pools, crash automation, deployments), ``processes`` (children, their
trees and the stop signals) and ``stack`` (the command itself, in order).
"""

from transfer_pipe.app.serve.prefect_setup import (
    CRASH_AUTOMATION,
    MISSED_HEARTBEATS,
    WORK_POOLS,
    deployable,
    ensure_crash_automation,
    heartbeat_seconds,
)
from transfer_pipe.app.serve.record import (
    HEARTBEAT_ENV,
    RECORD_NAME,
    ServerRecord,
    read_record,
    use_running_server,
)
from transfer_pipe.app.serve.stack import ROOT_ENV, STORE_ENV, ServeOptions, serve

__all__ = [
    "CRASH_AUTOMATION",
    "HEARTBEAT_ENV",
    "MISSED_HEARTBEATS",
    "RECORD_NAME",
    "ROOT_ENV",
    "STORE_ENV",
    "WORK_POOLS",
    "ServeOptions",
    "ServerRecord",
    "deployable",
    "ensure_crash_automation",
    "heartbeat_seconds",
    "read_record",
    "serve",
    "use_running_server",
]
