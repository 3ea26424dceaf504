"""Whole-shard copies between feature sets: the objects, not the rows.

When shard ``s`` of a donor feature set holds exactly the images (by content hash, in the
same order) of shard ``t`` of a new one, with the same shard size, dtype and array layout,
shard ``t``'s Zarr shard of each layer is byte for byte the donor's: its inner chunks,
their crc32c checksums and its index describe only the shard's own rows, never where the
shard sits in the array. So the object is copied (a server-side copy on S3), and the
shard record written last, as ``write_shard`` does. Nothing is decompressed or encoded
again beyond one decode of the donor shard, which checks its checksums before they are
trusted in a second place.
"""

from __future__ import annotations

import json
import logging
import time
import uuid

import numpy as np
import zarr

from transfer_pipe.files import is_local
from transfer_pipe.store.layout import FEATURES, RECORDS
from transfer_pipe.store.zarr_store import ZarrFeatureStore

logger = logging.getLogger(__name__)


def copy_shard(store: ZarrFeatureStore, key: str, shard: int, donor: str, donor_shard: int) -> bool:
    """Copy shard ``donor_shard`` of feature set ``donor`` as shard ``shard`` of ``key``
    (every layer of ``key``, then its record: ``embedded`` 0, ``reused`` all its rows,
    ``copied_from``). Returns False, having written no record, when the two do not line
    up (row count, shard size, array layout), the donor shard is not written or has
    failed rows, or its objects are missing or damaged: the caller copies rows instead."""
    started = time.perf_counter()
    spec, donor_spec = store.spec(key), store.spec(donor)
    rows = spec.shard_rows(shard)
    if (
        donor_spec.shard_size != spec.shard_size
        or len(donor_spec.shard_rows(donor_shard)) != len(rows)
        or not set(spec.layers) <= set(donor_spec.layers)
    ):
        return False
    record = _record(store, donor, donor_shard)
    if record is None or record.get("failures"):
        return False
    for layer in spec.layers:
        if not _copy_layer(store, key, shard, donor, donor_shard, f"{FEATURES}/{layer}"):
            return False
    copied = {
        "embedded": 0,
        "reused": len(rows),
        "seconds": time.perf_counter() - started,
        "failures": {},
        "copied_from": {"feature_set": donor, "shard": donor_shard},
    }
    store._array(key, RECORDS, writable=True)[shard] = json.dumps(copied)  # last: done
    return True


def _record(store: ZarrFeatureStore, key: str, shard: int) -> dict[str, object] | None:
    """Shard ``shard``'s record (one object read), None when unwritten or unreadable."""
    try:
        text = str(np.asarray(store._array(key, RECORDS)[shard]))
        return json.loads(text) if text else None
    except Exception:
        return None


def _copy_layer(
    store: ZarrFeatureStore, key: str, shard: int, donor: str, donor_shard: int, name: str
) -> bool:
    """Copy the one object of array ``name`` that holds the donor's shard; False when the
    arrays' layouts differ or the donor's object is missing or fails its checksums."""
    source = store._array(donor, name)
    target = store._array(key, name, writable=True)
    if _layout(source) != _layout(target):
        return False
    donor_rows = store.spec(donor).shard_rows(donor_shard)
    try:  # decodes every inner chunk: the checksums are verified before the copy
        values = np.asarray(source[donor_rows.start : donor_rows.stop])
    except Exception as err:
        logger.warning(
            "shard %d of %s (%s) does not read (%s): rows copied instead",
            donor_shard,
            donor,
            name,
            err,
        )
        return False
    if np.isnan(values).any():  # a lost inner chunk reads as NaN: not a good donor
        return False
    src = f"{store.folder(donor)}/{name}/{source.metadata.encode_chunk_key((donor_shard, 0))}"
    dst = f"{store.folder(key)}/{name}/{target.metadata.encode_chunk_key((shard, 0))}"
    fs = store.fs
    try:
        if is_local(store.url):  # copied aside, renamed whole (what ``recover`` cleans)
            partial = f"{dst}.{uuid.uuid4().hex}.partial"
            fs.makedirs(dst.rsplit("/", 1)[0], exist_ok=True)
            fs.cp_file(src, partial)
            fs.mv(partial, dst)
        else:  # one server-side copy: the object appears whole or not at all
            fs.copy(src, dst)
    except FileNotFoundError:
        return False
    return True


def _layout(array: zarr.Array) -> dict[str, object]:
    """An array's metadata but its shape: equal layouts encode a shard the same way."""
    metadata: dict[str, object] = dict(array.metadata.to_dict())
    metadata.pop("shape", None)
    return metadata
