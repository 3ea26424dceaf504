"""A heads or fine-tuning run given a feature-set key takes the run's own options, those
that do not choose what to embed: the store's storage options and the Dask cluster."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.support.stores import fill, make_rows, make_spec
from transfer_pipe.config import FinetuneConfig, TrainConfig, run_values
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.steps.jobs import dask_address_of
from transfer_pipe.steps.target import run_config
from transfer_pipe.store import open_store

ADDRESS = "tcp://127.0.0.1:8786"


@pytest.fixture
def key_in_store() -> tuple[str, str]:
    """(store URL, key) of a complete feature set in a fresh in-memory store."""
    url, spec = f"memory://run-config-{uuid.uuid4().hex[:8]}", make_spec()
    store = open_store(url)
    store.create(spec, make_rows())
    fill(store, spec)
    store.mark_complete(spec.key, {})
    return url, spec.key


@pytest.mark.parametrize("config_class", [TrainConfig, FinetuneConfig])
def test_a_key_runs_with_its_storage_options_and_on_its_dask_cluster(
    config_class: type[TrainConfig | FinetuneConfig],
    key_in_store: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Mutations seen failing: run_config refusing the shared options beside a key (the
    # old ("store", "device", "layers") exemption): "--storage-options, --dask-address
    # choose what to embed"; dask_address_of reading only the embed run's address: None.
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    url, key = key_in_store
    options = json.dumps({"skip_instance_cache": True})
    values = {"source": key, "store": url, "storage_options": options, "dask_address": ADDRESS}
    config = run_config(config_class, values)
    assert (config.feature_set, config.embed) == (key, None)
    assert config.storage_options == options
    assert dask_address_of(config) == ADDRESS
    # The flow's parameters carry both (run_values is what a flow is called with).
    assert run_config(config_class, run_values(config)) == config
    # An option that chooses what to embed is still refused: the key fixes it.
    with pytest.raises(TransferPipeError, match="--backbone choose what to embed"):
        run_config(config_class, {**values, "backbone": "random/tiny_test"})
