"""The shard tasks of a plan: per lineage shard still to write, its rows, what it copies
(from other lineages, or rows a repair kept) and what it embeds."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import numpy as np
import pandas as pd

from transfer_pipe.config import EmbedConfig
from transfer_pipe.data.manifest import Manifest
from transfer_pipe.features.tasks import EmbedderConfig, Reuse, ShardCopy, ShardTask
from transfer_pipe.schema import CONTENT_HASH, FAILURE, SAMPLE_ID, URI
from transfer_pipe.steps.embed.reuse import Donors, shard_digest
from transfer_pipe.store import FeatureSetSpec, FeatureStore
from transfer_pipe.store.layout import ROW, shareable


def shard_tasks(
    config: EmbedConfig,
    spec: FeatureSetSpec,
    store: FeatureStore,
    manifest: Manifest,
    pending: Sequence[int],
    donors: Donors,
    embedder: EmbedderConfig,
) -> list[ShardTask]:
    """One task per lineage shard still to write, the embed-heaviest first (copy-only
    shards then fill the gaps at the end). A shard whose images a shard of another lineage
    holds in the same order (``Donors.shards``) copies that shard's objects whole; others
    copy the rows other lineages hold by content hash, and embed the rest.

    A shard's rows are the version's rows that live in it. A shard a repair cleared may
    also hold rows only other versions of the lineage name: their images are read again
    from those versions' URIs, each checked against its content hash (a file changed or
    gone since, or a row no version names, is written as lost)."""
    run = uuid.uuid4().hex  # one store handle per run in each worker
    table = store.row_table(spec.key, columns=(SAMPLE_ID, URI))
    # The version's content is the manifest's (the same key): its hashes by sample id.
    content = manifest.table.set_index(SAMPLE_ID)[CONTENT_HASH].astype(str)
    table[CONTENT_HASH] = content.reindex(table[SAMPLE_ID]).to_numpy()
    table = table.drop_duplicates(ROW).set_index(ROW)  # shared contents: one row each
    table["foreign"] = False
    rewritten = [shard for shard in pending if not spec.shard_rows(shard)]
    written: pd.DataFrame = pd.DataFrame()
    if rewritten:  # cleared by a repair, or written with rows a repair lost
        table = _with_rows_of_other_versions(store, spec, table, set(rewritten))
        written = shareable(store.lineage_rows(spec.lineage))  # rows to keep as they are
    layer_dims = tuple((layer, spec.layer_dims[layer]) for layer in spec.layers)
    tasks = []
    for shard in pending:
        start = shard * spec.shard_size
        appended = spec.shard_rows(shard)
        if appended:
            used = len(appended)
        else:  # up to the last row any version names
            mine = table.index[(table.index >= start) & (table.index < start + spec.shard_size)]
            used = int(mine.max()) - start + 1
        rows = table.reindex(range(start, start + used))
        uris = tuple("" if isinstance(u, float) else str(u) for u in rows[URI].tolist())
        hashes = ["" if isinstance(h, float) else str(h) for h in rows[CONTENT_HASH].tolist()]
        foreign = tuple(f is True for f in rows["foreign"].tolist())
        # A written shard rewritten for rows a repair lost: the others keep their values.
        kept = {} if written.empty else _kept_rows(written, start, used)
        reuse = tuple(
            Reuse(offset, spec.lineage, kept[offset])
            if offset in kept
            else Reuse(offset, *donors[content])
            for offset, content in enumerate(hashes)
            if offset in kept or content in donors
        )
        aligned = donors.shards.get((spec.shard_size, shard_digest(hashes)))
        tasks.append(
            ShardTask(
                store=config.store,
                storage_options=config.storage_options,
                key=spec.key,
                shard=shard,
                uris=uris,
                hashes=tuple(hashes),
                reuse=reuse,
                embedder=embedder,
                layer_dims=layer_dims,
                batch_size=config.batch_size,
                decoders=config.decoders,
                copy=None if aligned is None else ShardCopy(*aligned),
                foreign=foreign,
                run=run,
            )
        )
    return sorted(tasks, key=lambda task: len(task.reuse))


def _with_rows_of_other_versions(
    store: FeatureStore, spec: FeatureSetSpec, table: pd.DataFrame, shards: set[int]
) -> pd.DataFrame:
    """``table`` (by lineage row: uri, content_hash) with the rows in ``shards`` that only
    other versions of the lineage name, with their URIs and content hashes."""
    found = [table]
    for key in store.list_keys():
        if key == spec.key or store.spec(key).lineage != spec.lineage:
            continue
        other = store.row_table(key, columns=(URI, CONTENT_HASH)).drop_duplicates(ROW)
        inside = np.isin(other[ROW].to_numpy() // spec.shard_size, list(shards))
        named = other.loc[inside & (other[CONTENT_HASH] != ""), [ROW, URI, CONTENT_HASH]]
        found.append(named.set_index(ROW).assign(foreign=True))
    merged = pd.concat(found)
    return merged[~merged.index.duplicated(keep="first")]


def _kept_rows(written: pd.DataFrame, start: int, used: int) -> dict[int, int]:
    """Offset -> lineage row of the good rows already written in the shard at ``start``:
    a rewrite copies them as they are."""
    rows = written.index[(written.index >= start) & (written.index < start + used)]
    good = written.loc[rows, FAILURE] == ""
    return {int(row) - start: int(row) for row in rows[good.to_numpy()]}
