"""Storage options: the protocol's safe defaults under what the user gives, key by key."""

from __future__ import annotations

import pytest

from transfer_pipe.errors import TransferPipeError
from transfer_pipe.store import open_store, shared_store
from transfer_pipe.store.options import store_options


def test_given_options_merge_over_the_s3_defaults() -> None:
    # Mutation seen failing: a plain dict update in _merged (the user's config_kwargs
    # replaced the default retries).
    options = store_options("s3://bucket/store", '{"config_kwargs": {"read_timeout": 60}}')
    assert options["config_kwargs"] == {
        "read_timeout": 60,
        "retries": {"max_attempts": 10, "mode": "standard"},
    }
    assert options["use_listings_cache"] is False
    mine = store_options("s3://b/s", {"config_kwargs": {"retries": {"max_attempts": 2}}})
    assert mine["config_kwargs"]["retries"] == {"max_attempts": 2, "mode": "standard"}


def test_local_and_memory_stores_get_no_object_storage_defaults() -> None:
    assert store_options("/data/store") == {}
    assert store_options("memory://scratch") == {}
    assert store_options("file:///data/store", '{"auto_mkdir": true}') == {"auto_mkdir": True}


def test_a_bad_url_or_option_says_what_to_fix() -> None:
    with pytest.raises(TransferPipeError, match="JSON object"):
        open_store("s3://bucket/store", "endpoint_url=http://x")
    with pytest.raises(TransferPipeError, match="protocol fsspec does not know"):
        open_store("nosuchscheme://bucket/store")


def test_shared_store_is_one_handle_per_url_and_options() -> None:
    url = "memory://shared-store-test"
    assert shared_store(url) is shared_store(url, {})
    assert shared_store(url, '{"a": 1}') is shared_store(url, {"a": 1})
    assert shared_store(url) is not shared_store(url, {"a": 1})
