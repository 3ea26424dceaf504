"""Raw calls to a Prefect server's REST API, for tests that check what the server holds
(runs, events, automations) exactly as its API reports it."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from prefect.client.schemas.objects import TERMINAL_STATES


def api(method: str, url: str, body: dict[str, Any] | list[Any] | None = None) -> Any:
    """One call to Prefect's REST API; the decoded JSON answer. A 503 is retried, as
    Prefect's own client does: the server answers it while SQLite is busy."""
    data = None if body is None else json.dumps(body).encode()
    for attempt in range(5):
        request = urllib.request.Request(
            url, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read().decode() or "null")
        except urllib.error.HTTPError as error:
            if error.code != 503 or attempt == 4:
                raise
            time.sleep(2 * (attempt + 1))


def final_run(
    api_url: str, run_id: str, timeout_s: float, poll_s: float = 1.0
) -> dict[str, Any] | None:
    """Flow run ``run_id`` once it reached a final state, or None after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run: dict[str, Any] = api("GET", f"{api_url}/flow_runs/{run_id}")
        if run["state_type"] in TERMINAL_STATES:  # StateType is a str enum
            return run
        time.sleep(poll_s)
    return None
