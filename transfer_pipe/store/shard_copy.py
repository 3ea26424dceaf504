"""Whole-shard copies between lineages: the objects, not the rows.

When shard ``s`` of a donor lineage holds exactly the images (by content hash, in the
same order) that a new version appends as shard ``t`` of its own lineage, with the same
shard size, dtype and array layout, shard ``t``'s objects are byte for byte the donor's:
a Zarr shard's inner chunks, their crc32c checksums and its index describe only the
shard's own rows, never where the shard sits in the array. So the objects are copied (a
server-side copy on S3), and the shard record written last, as ``write_shard`` does.
Nothing is decompressed or encoded again beyond one decode of the donor's feature
shards, which checks their checksums before they are trusted in a second place.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import TYPE_CHECKING

import numpy as np
import zarr

from transfer_pipe.files import is_local
from transfer_pipe.schema import CONTENT_HASH, FAILURE
from transfer_pipe.store.layout import FEATURES, RECORDS

if TYPE_CHECKING:
    from transfer_pipe.store.zarr_store import ZarrFeatureStore

logger = logging.getLogger(__name__)


def copy_shard(store: ZarrFeatureStore, key: str, shard: int, donor: str, donor_shard: int) -> bool:
    """Copy shard ``donor_shard`` of lineage ``donor`` as shard ``shard`` of version
    ``key``'s lineage (every layer, the content hashes and failures, then its record:
    ``embedded`` 0, ``reused`` all its rows, ``copied_from``). Returns False, having
    written no record, when the two do not line up (row count, shard size, array
    layout), the donor shard is not written or has failed rows, or its objects are
    missing or damaged: the caller copies rows instead."""
    started = time.perf_counter()
    spec, donor_spec = store.spec(key), store.lineage_spec(donor)
    rows = spec.shard_rows(shard)
    if donor_spec.shard_size != spec.shard_size or not set(spec.layers) <= set(donor_spec.layers):
        return False
    record = store.records(donor, [donor_shard]).get(donor_shard)
    if record is None or record.get("failures") or int(record.get("rows", -1)) != len(rows):
        return False
    names = [f"{FEATURES}/{layer}" for layer in spec.layers] + [CONTENT_HASH, FAILURE]
    for name in names:
        if not _copy_object(store, spec.lineage, shard, donor, donor_shard, name, len(rows)):
            return False
    copied = {
        "rows": len(rows),
        "embedded": 0,
        "reused": len(rows),
        "seconds": time.perf_counter() - started,
        "failures": {},
        "version": key,
        "copied_from": {"lineage": donor, "shard": donor_shard},
    }
    records = store.array(spec.lineage, RECORDS, writable=True, rows=shard + 1)
    records[shard] = json.dumps(copied)  # last: done
    return True


def _copy_object(
    store: ZarrFeatureStore,
    lineage: str,
    shard: int,
    donor: str,
    donor_shard: int,
    name: str,
    used: int,
) -> bool:
    """Copy the one object of array ``name`` that holds the donor's shard; False when the
    arrays' layouts differ or the donor's object is missing or fails its checksums."""
    source = store.array(donor, name)
    target = store.array(lineage, name, writable=True)
    if _layout(source) != _layout(target):
        return False
    size = store.lineage_spec(donor).shard_size
    try:  # decodes every inner chunk: the checksums are verified before the copy
        values = np.asarray(source[donor_shard * size : (donor_shard + 1) * size])
    except Exception as err:
        logger.warning(
            "shard %d of lineage %s (%s) does not read (%s): rows copied instead",
            donor_shard,
            donor,
            name,
            err,
        )
        return False
    if name.startswith(FEATURES) and np.isnan(values[:used]).any():  # a lost object: NaN
        return False
    if name == FAILURE and not any(str(value) for value in np.asarray(values).tolist()):
        return True  # no failure: Zarr stores no object for a chunk of fill values only
    chunk = (donor_shard, 0) if name.startswith(FEATURES) else (donor_shard,)
    into = (shard, 0) if name.startswith(FEATURES) else (shard,)
    src = f"{store.lineage_folder(donor)}/{name}/{source.metadata.encode_chunk_key(chunk)}"
    dst = f"{store.lineage_folder(lineage)}/{name}/{target.metadata.encode_chunk_key(into)}"
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
