"""Backbones published by fine-tuning: ids ``finetuned/<run_id>``, registered in the store.

A published backbone is its base architecture and stages, the fine-tuned weights, and the
preprocessing it was fine-tuned with. Both live in the store that holds the run::

    <store>/finetune/<run_id>/published/weights-<sha256[:16]>.safetensors   a state dict of
                                                                           the base architecture
    <store>/finetune/<run_id>/published/backbone.json                     the record, last

so any process that knows the store's URL resolves the id: a Dask worker on another
machine, with no home folder shared with the driver. A lookup is given the stores to
search (``get_backbone(id, stores=...)``: an embed run's and its shard tasks' store,
fine-tuning's own, a head's for predict). The record names the weights file and its
sha256, which is the backbone's weights digest (known without downloading the weights)
and is checked when they load; weights are safetensors, so loading them runs no code.

Publishing also notes in ``$TRANSFER_PIPE_HOME/backbones.json`` (default
``~/.transfer-pipe``) which store holds the id, so that on the machine that published, a
new process (``transfer-pipe embed --backbone finetuned/<run>``) resolves it without being
told the store. That file is a pointer only: record and weights are in the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fsspec.core import url_to_fs

from transfer_pipe.backbones.registry import (
    BackboneEntry,
    Stores,
    lookup,
    register_namespace,
)
from transfer_pipe.backbones.weights import DEFAULT_SEED, Architecture, load_strict, seeded
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.files import write_text_atomic, write_url_atomic
from transfer_pipe.preprocessing import Preprocessing
from transfer_pipe.records import Record, known_fields

if TYPE_CHECKING:
    import torch
    from torch import nn

PREFIX = "finetuned/"
HOME_ENV = "TRANSFER_PIPE_HOME"
RUNS_FOLDER = "finetune"  # <store>/finetune/<run_id>/: the fine-tuning runs' folder
RECORD = "backbone.json"
_PUBLISHED = "published"


@dataclass(frozen=True)
class PublishedBackbone(Record):
    """``backbone.json``: what a published id is (its base, the weights file and its
    sha256, the preprocessing it was fine-tuned with) and the run and feature set it was
    fine-tuned from."""

    id: str
    base: str
    weights_file: str  # a file name in the record's folder, never a path out of it
    weights_sha256: str
    preprocessing: Preprocessing
    run: str | None = None
    feature_set: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PublishedBackbone:
        fields = known_fields(cls, data, "a published backbone's record")
        return cls(**{**fields, "preprocessing": Preprocessing.from_dict(fields["preprocessing"])})


def published_folder(store: str, name: str) -> str:
    """``<store>/finetune/<name>/published``: where backbone ``finetuned/<name>`` lives."""
    return posixpath.join(store.rstrip("/"), RUNS_FOLDER, name, _PUBLISHED)


def registry_path() -> Path:
    """The home file that says which store holds each id published from this machine."""
    return Path(os.environ.get(HOME_ENV) or "~/.transfer-pipe").expanduser() / "backbones.json"


def _home_pointers() -> dict[str, str]:
    """Published id -> the store URL it was published to, as this machine noted it."""
    path = registry_path()
    if not path.exists():
        return {}
    records = json.loads(path.read_text())
    return {k: v["store"] for k, v in records.items() if isinstance(v, dict) and "store" in v}


def publish_backbone(
    store: str,
    name: str,
    base: str,
    state: Mapping[str, torch.Tensor],
    preprocessing: Preprocessing,
    storage_options: Mapping[str, Any] | None = None,
    *,
    run: str | None = None,
    feature_set: str | None = None,
) -> str:
    """Record ``finetuned/<name>`` in ``store``: ``base``'s architecture with the weights
    ``state`` (a state dict of ``base``), fine-tuned by ``run`` on ``feature_set``; returns
    the id. The weights are written first and the record last, so a reader finds the old
    backbone or the new one whole. Publishing a name again replaces its record."""
    from safetensors.torch import save

    backbone_id = PREFIX + name
    data = save({k: v.detach().cpu().contiguous() for k, v in state.items()})
    sha256 = hashlib.sha256(data).hexdigest()
    folder = published_folder(store, name)
    weights = f"weights-{sha256[:16]}.safetensors"  # by content: a reader never sees a mix
    write_url_atomic(posixpath.join(folder, weights), data, storage_options)
    record = PublishedBackbone(backbone_id, base, weights, sha256, preprocessing, run, feature_set)
    record_url = posixpath.join(folder, RECORD)
    write_url_atomic(record_url, json.dumps(record.to_dict(), indent=2).encode(), storage_options)
    _remove_other_weights(folder, weights, storage_options)
    _note_at_home(backbone_id, store)
    return backbone_id


def _remove_other_weights(
    folder: str, keep: str, storage_options: Mapping[str, Any] | None
) -> None:
    """Delete weights files an earlier publish of the name left (no record names them)."""
    fs, path = url_to_fs(folder, **dict(storage_options or {}))
    for found in fs.glob(posixpath.join(path, "weights-*.safetensors")):
        if posixpath.basename(found) != keep:
            fs.rm_file(found)


def _note_at_home(backbone_id: str, store: str) -> None:
    """Note which store holds ``backbone_id`` (readers never see half the file)."""
    path = registry_path()
    records = json.loads(path.read_text()) if path.exists() else {}
    records[backbone_id] = {"store": store}
    write_text_atomic(path, json.dumps(records, indent=2))


@dataclass(frozen=True)
class StoreWeights:
    """Weights in a safetensors file in a store; their digest is the sha256 the record
    names, checked against the bytes when they load."""

    url: str
    sha256: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    def digest(self) -> str:
        """The sha256 hex of the weights file, as the record names it."""
        return self.sha256

    def materialize(self, architecture: Architecture, backbone: str) -> nn.Module:
        """Build the architecture (seeded) and load the weights into it strictly."""
        from safetensors.torch import load

        fs, path = url_to_fs(self.url, **dict(self.storage_options))
        try:
            data = fs.cat_file(path)
        except FileNotFoundError as exc:
            raise TransferPipeError(
                f"the weights of {backbone} at {self.url} are missing; publish the "
                "fine-tuning run again (finetune ... --publish)."
            ) from exc
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise TransferPipeError(
                f"the weights of {backbone} at {self.url} are not the ones its record names "
                f"(sha256 {self.sha256[:12]}…): the file was changed after it was "
                "published. Publish the fine-tuning run again (finetune ... --publish)."
            )
        with seeded(DEFAULT_SEED):
            model = architecture()
        load_strict(model, load(data), source=self.url, backbone=backbone)
        return model

    def describe(self) -> str:
        """E.g. ``store file s3://bucket/store/finetune/<run>/published/weights-....``."""
        return f"store file {self.url}"


def _candidate_stores(backbone_id: str, stores: Stores) -> list[tuple[str, dict[str, Any]]]:
    """The stores to search for ``backbone_id``: those the lookup was given, in order,
    then the one this machine noted when it published the id."""
    found = {store.url: store.options() for store in stores}
    noted = _home_pointers().get(backbone_id)
    if noted is not None and noted not in found:
        found[noted] = {}
    return list(found.items())


def _read_record(
    store: str, name: str, storage_options: Mapping[str, Any]
) -> PublishedBackbone | None:
    """The record of ``finetuned/<name>`` in ``store``; None when it has none."""
    fs, path = url_to_fs(posixpath.join(published_folder(store, name), RECORD),
                         **dict(storage_options))  # fmt: skip
    try:
        data = fs.cat_file(path)
    except FileNotFoundError:
        return None
    try:
        return PublishedBackbone.from_dict(json.loads(data))
    except (TransferPipeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise TransferPipeError(
            f"the record of {PREFIX + name} in {published_folder(store, name)} is not "
            f"valid ({exc}); publish the fine-tuning run again "
            "(transfer-pipe finetune ... --publish)."
        ) from exc


def _resolve(backbone_id: str, given: Stores) -> BackboneEntry | None:
    name = backbone_id.removeprefix(PREFIX)
    stores = _candidate_stores(backbone_id, given)
    for store, options in stores:
        record = _read_record(store, name, options)
        if record is not None:
            return _entry(backbone_id, store, record, options, given)
    searched = ", ".join(url for url, _ in stores) or "none"
    raise TransferPipeError(
        f"backbone {backbone_id} is not published in any store this process knows "
        f"(searched: {searched}). Pass the store of the fine-tuning run that published it "
        "(--store), or publish the run (transfer-pipe finetune ... --publish)."
    )


def _entry(
    backbone_id: str,
    store: str,
    record: PublishedBackbone,
    options: Mapping[str, Any],
    stores: Stores,
) -> BackboneEntry:
    """The registry entry of ``backbone_id``, whose record was found in ``store`` (the
    id is the folder's, whatever a copied record says)."""
    base = lookup(record.base, stores)
    weights_url = posixpath.join(published_folder(store, backbone_id.removeprefix(PREFIX)),
                                 posixpath.basename(record.weights_file))  # fmt: skip
    metadata = {
        **{k: v for k, v in base.metadata.items() if k != "imagenet_top1"},
        "base": record.base,
        "store": store,
        "weights_sha256": record.weights_sha256,
        "source": f"fine-tuned from {record.base} ({record.run or backbone_id})",
    }
    return BackboneEntry(
        id=backbone_id,
        architecture=base.architecture,
        weights=StoreWeights(weights_url, record.weights_sha256, options),
        preprocessing=record.preprocessing,
        metadata=metadata,
        stages=base.stages,
        adapt_state_dict=dict,  # the file is written in our own key format
    )


def _list_ids(stores: Stores) -> list[str]:
    """The ids published in ``stores`` and noted in this machine's home."""
    ids = set(_home_pointers())
    for store in stores:
        options = store.options()
        fs, path = url_to_fs(posixpath.join(store.url.rstrip("/"), RUNS_FOLDER), **options)
        pattern = posixpath.join(path, "*", _PUBLISHED, RECORD)
        ids.update(PREFIX + found.split("/")[-3] for found in fs.glob(pattern))
    return sorted(ids)


register_namespace(PREFIX, _resolve, _list_ids)
