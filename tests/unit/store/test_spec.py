"""A feature set's spec as the store holds it (the version's ``spec`` attribute and the
lineage's ``lineage`` attribute): read back from what an earlier release wrote, its
preprocessing as a record, and written again with the same keys and values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transfer_pipe.preprocessing import Preprocessing
from transfer_pipe.store import FeatureSetSpec, embedding_key
from transfer_pipe.store.base import LineageSpec

# A layout-2 feature set written by an earlier release (tests/fixtures/README.md).
WRITTEN = Path(__file__).parents[2] / "fixtures/store_v2/feature_sets/070cbe269ed83751/zarr.json"


def _written_spec() -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(WRITTEN.read_text())["attributes"]["spec"]
    return spec


def test_a_stored_spec_reads_its_preprocessing_as_a_record_and_writes_back_as_it_was() -> None:
    # Mutations seen failing: the spec writing the record's own fields (``asdict``), and
    # ``Preprocessing.to_dict`` without "interpolation".
    written = _written_spec()
    spec = FeatureSetSpec.from_dict(written)
    assert spec.preprocessing == Preprocessing(32, (0.5,) * 3, (0.25,) * 3, resize="squash")
    again = json.loads(json.dumps(spec.to_dict()))  # as the store's attribute holds it
    assert {name: again[name] for name in written} == written


def test_a_stored_specs_embedding_key_is_recomputed_from_its_record() -> None:
    """The key an earlier release hashed from the preprocessing dict is the key of the
    record read back: its rows stay reusable. Mutation seen failing: ``embedding_key``
    hashing the record's fields instead of ``to_dict``."""
    spec = FeatureSetSpec.from_dict(_written_spec())
    recomputed = embedding_key(
        spec.backbone, spec.weights_digest, spec.preprocessing, spec.dtype, spec.autocast
    )
    assert recomputed == spec.embedding_key


def test_a_lineage_spec_keeps_the_versions_preprocessing_and_round_trips() -> None:
    spec = FeatureSetSpec.from_dict(_written_spec())
    lineage = spec.lineage_spec()
    assert lineage.preprocessing == spec.preprocessing
    assert lineage.to_dict()["preprocessing"] == _written_spec()["preprocessing"]
    assert LineageSpec.from_dict(lineage.to_dict()) == lineage
