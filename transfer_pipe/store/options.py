"""What a store URL needs besides itself: its fsspec storage options, with the defaults
that make object storage safe to share.

Credentials and the endpoint come from the standard environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_DEFAULT_REGION``,
``AWS_ENDPOINT_URL``, ``AWS_PROFILE``), which botocore reads; storage options given
explicitly win over these defaults, key by key.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import fsspec
from fsspec.utils import get_protocol

from transfer_pipe.errors import TransferPipeError
from transfer_pipe.files import is_local, parse_storage_options

# Per protocol, what a store gets unless its storage options say otherwise.
# - retries: botocore retries 5xx, throttling and connection errors itself, with jittered
#   exponential backoff (up to 20 s a wait); ten retries (botocore's ``max_attempts``
#   counts retries after the first try) ride out a brief outage, where botocore's default
#   ("legacy", 4 retries) gives up sooner. s3fs retries timeouts and "SlowDown" (5 tries)
#   on top of that. A write is a whole-object PUT, so repeating one never
#   leaves half an object. ("adaptive" mode was measured twice as slow here under
#   injected 503s: its client-side rate limiter stays throttled after the errors stop.)
# - use_listings_cache: off, because other processes (workers, another run) write the
#   store: a cached listing would hide their feature sets from this one.
STORE_DEFAULTS: dict[str, dict[str, Any]] = {
    "s3": {
        "config_kwargs": {"retries": {"max_attempts": 10, "mode": "standard"}},
        "use_listings_cache": False,
    },
}
STORE_DEFAULTS["s3a"] = STORE_DEFAULTS["s3"]


def store_options(
    url: str, storage_options: str | Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The storage options the store at ``url`` is opened with: the protocol's defaults
    (``STORE_DEFAULTS``) under the given ones (a JSON object or a mapping); nested dicts
    such as ``config_kwargs`` are merged, so passing a timeout keeps the retries."""
    given = parse_storage_options(storage_options)
    defaults = STORE_DEFAULTS.get(get_protocol(url), {})
    return _merged(copy.deepcopy(defaults), given)


def options_token(storage_options: str | Mapping[str, Any] | None) -> str:
    """A canonical text of the options (a cache key: equal options, equal token)."""
    return json.dumps(parse_storage_options(storage_options), sort_keys=True, default=str)


def check_protocol(url: str) -> None:
    """Fail with what to install or fix when fsspec cannot open ``url``'s protocol."""
    if is_local(url):
        return
    protocol = get_protocol(url)
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as err:
        raise TransferPipeError(
            f"the store {url} needs an fsspec driver that is not installed ({err})"
        ) from err
    except ValueError as err:
        raise TransferPipeError(
            f"the store {url} has a protocol fsspec does not know ({protocol!r}); "
            "use a folder, memory://, s3://, gs:// or another fsspec URL."
        ) from err


def _merged(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    for name, value in top.items():
        if isinstance(value, Mapping) and isinstance(base.get(name), dict):
            base[name] = _merged(base[name], value)
        else:
            base[name] = value
    return base
