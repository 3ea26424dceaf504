"""Backbone ids -> specs: one frozen record per id, in the style of timm's registry.

A ``BackboneEntry`` is the registered record (architecture, weights source, default
preprocessing, metadata, stages). ``get_backbone(id)`` turns an id, plus an optional
local weights file, into a ``BackboneSpec``: a small picklable value that names the
backbone, can build it, and says what its weights digest is. Specs hold no callables,
so they travel to Dask workers as plain data and look their entry up again there.

Nothing here imports torch: a spec, its weights digest and its layer names are known
without it, so a run whose features the store already holds never pays for it.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from transfer_pipe.backbones.weights import (
    Architecture,
    StateDictAdapter,
    WeightsFile,
    WeightsSource,
)
from transfer_pipe.config import TOP
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.files import parse_storage_options
from transfer_pipe.preprocessing import Preprocessing

if TYPE_CHECKING:
    from torch import nn

PENULTIMATE = "penultimate"  # the input of the classifier: what a fixed feature extractor keeps
STAGES = "stages"  # every stage of the backbone, shallow to deep
# ``TOP`` (config): the top of the network, the penultimate layer and the last TOP_STAGES
# stages, deep to shallow (what ``train --layer auto`` weighs; one forward pass taps them).
TOP_STAGES = 3


@dataclass(frozen=True)
class StoreLocation:
    """A store that may hold published backbones (``finetuned/<run>``, see ``published``):
    its URL and fsspec options as JSON text, as configs carry them (hashable: a worker's
    model cache is keyed by what names the backbone)."""

    url: str
    storage_options: str | None = None

    @classmethod
    def of(cls, url: str, storage_options: str | Mapping[str, Any] | None) -> StoreLocation:
        """The location of the store at ``url`` opened with ``storage_options`` (a JSON
        object's text, a mapping, or None)."""
        options = parse_storage_options(storage_options)
        return cls(url, json.dumps(options, sort_keys=True) if options else None)

    def options(self) -> dict[str, Any]:
        """fsspec's options for the store, as a dict."""
        return parse_storage_options(self.storage_options)


Stores = Sequence[StoreLocation]
"""The stores a lookup searches for published ids, first match wins."""


@dataclass(frozen=True)
class BackboneEntry:
    """The registered record of one backbone id.

    ``architecture`` builds the network without weights; ``weights`` fills it;
    ``adapt_state_dict`` renames keys of foreign-format weight files (identity by
    default); ``stages`` returns the module names of the network's stages.
    ``metadata`` is JSON-able: num_params, feature_dim, imagenet_top1 (where known),
    license, source.
    """

    id: str
    architecture: Architecture
    weights: WeightsSource
    preprocessing: Preprocessing
    metadata: Mapping[str, Any]
    stages: Callable[[], list[str]]
    adapt_state_dict: StateDictAdapter = dict


@dataclass(frozen=True)
class _Namespace:
    """A family of ids resolved on demand (e.g. every ``torchvision/<name>[:<ENUM>]``)."""

    resolve: Callable[[str, Stores], BackboneEntry | None]  # None: not an id of this family
    list_ids: Callable[[Stores], list[str]]


_ENTRIES: dict[str, BackboneEntry] = {}
_NAMESPACES: dict[str, _Namespace] = {}


def register(entry: BackboneEntry) -> BackboneEntry:
    """Add an entry; an id that is already registered raises (no silent overrides)."""
    if entry.id in _ENTRIES or any(entry.id.startswith(p) for p in _NAMESPACES):
        raise TransferPipeError(f"backbone id {entry.id!r} is already registered; pick another id")
    _ENTRIES[entry.id] = entry
    return entry


def register_namespace(
    prefix: str,
    resolve: Callable[[str, Stores], BackboneEntry | None],
    list_ids: Callable[[Stores], list[str]],
) -> None:
    """Register a family of ids sharing ``prefix``, resolved lazily by ``resolve`` (given
    the stores the lookup searches for published ids)."""
    if prefix in _NAMESPACES or any(i.startswith(prefix) for i in _ENTRIES):
        raise TransferPipeError(f"backbone namespace {prefix!r} is already registered")
    _NAMESPACES[prefix] = _Namespace(resolve, list_ids)


def registered_ids() -> list[str]:
    """The ids registered one by one (not the families of ``register_namespace``)."""
    return sorted(_ENTRIES)


def list_backbones(stores: Stores = ()) -> list[str]:
    """Every registered id, plus one id per family member (enum variants not listed), the
    ids published in ``stores`` included."""
    ids = sorted(_ENTRIES)
    for ns in _NAMESPACES.values():
        ids.extend(ns.list_ids(stores))
    return ids


def lookup(backbone_id: str, stores: Stores = ()) -> BackboneEntry:
    """The entry for an id (a published one searched in ``stores``); unknown ids raise
    TransferPipeError with close matches."""
    if backbone_id in _ENTRIES:
        return _ENTRIES[backbone_id]
    for prefix, ns in _NAMESPACES.items():
        if backbone_id.startswith(prefix):
            entry = ns.resolve(backbone_id, stores)
            if entry is not None:
                return entry
    raise TransferPipeError(_unknown_id_message(backbone_id, stores))


def _unknown_id_message(backbone_id: str, stores: Stores) -> str:
    known = list_backbones(stores)
    query = backbone_id.lower()
    # A bare torchvision name ("resnet18") scores low on similarity against
    # "torchvision/resnet18", so containment comes first.
    close = [k for k in known if k.lower().endswith("/" + query.split(":")[0])]
    close += difflib.get_close_matches(backbone_id, known, n=5, cutoff=0.6)
    close = list(dict.fromkeys(close))[:5]
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return (
        f"unknown backbone {backbone_id!r}.{hint} "
        "Run `transfer-pipe backbones` to list all backbone ids."
    )


def _weights_source(entry: BackboneEntry, weights_file: str | None) -> WeightsSource:
    if weights_file is None:
        return entry.weights
    return WeightsFile(path=functools.partial(str, weights_file), adapt=entry.adapt_state_dict)


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone as a value: id, optional local weights, default preprocessing, metadata.

    ``str(spec) == spec.id`` and ``get_backbone(spec.id, spec.weights_file) == spec``.
    Equality and hashing use id, weights_file and preprocessing: metadata is derived
    from them (and holds machine-specific paths), so it does not take part, nor do the
    stores its entry is looked up in again (where a published id was found).
    """

    id: str
    weights_file: str | None
    preprocessing: Preprocessing
    metadata: Mapping[str, Any] = field(compare=False, hash=False)
    stores: tuple[StoreLocation, ...] = field(default=(), compare=False, hash=False)

    def __str__(self) -> str:
        return self.id

    def weights_source(self) -> WeightsSource:
        """The local weights file if one was given, else the id's default weights."""
        return _weights_source(lookup(self.id, self.stores), self.weights_file)

    def weights_digest(self) -> str:
        """sha256 hex of the weights file (downloading torchvision weights if needed),
        or ``random-init:seed=<n>:torch=<version>...`` for random weights."""
        return self.weights_source().digest()

    def build(self) -> nn.Module:
        """The model with its weights loaded, in eval mode, with gradients off."""
        entry = lookup(self.id, self.stores)  # once: a published id reads its record per lookup
        model = _weights_source(entry, self.weights_file).materialize(entry.architecture, self.id)
        model.eval()
        model.requires_grad_(False)
        return model

    def stage_layers(self) -> list[str]:
        """Module names of the backbone's stages, shallow to deep."""
        return list(lookup(self.id, self.stores).stages())

    def layer_names(self, requested: Sequence[str] | str | None) -> list[str]:
        """The layer names a request stands for, without building the model: None or []
        mean ``TOP``, which expands to the penultimate layer and the last ``TOP_STAGES``
        stages (the penultimate layer alone for a backbone whose stages are unknown);
        ``STAGES`` expands to the stages; duplicates are dropped, order kept.
        (``taps.resolve_layers`` also checks them against the model.)"""
        if isinstance(requested, str):
            requested = [requested]
        names: list[str] = []
        for name in [n.strip() for n in requested or ()] or [TOP]:
            if name == STAGES:
                names.extend(self.stage_layers())
            elif name == TOP:
                names.extend([PENULTIMATE, *self._top_stages()])
            else:
                names.append(name)
        return list(dict.fromkeys(names))

    def _top_stages(self) -> list[str]:
        try:
            stages = self.stage_layers()
        except TransferPipeError:
            return []
        return stages[::-1][:TOP_STAGES]


def get_backbone(
    backbone_id: str, weights_file: str | None = None, stores: Stores = ()
) -> BackboneSpec:
    """The spec for ``backbone_id``, optionally with weights from a local state-dict file;
    a published id (``finetuned/<run>``) is searched in ``stores``, then in the store this
    machine noted when it published the id.

    Raises TransferPipeError for an unknown id or an unreadable weights file.
    """
    entry = lookup(backbone_id.strip(), stores)
    metadata = dict(entry.metadata)
    if weights_file is not None:
        # Absolute, so the spec means the same file in a worker with another cwd.
        weights_file = os.path.abspath(os.path.expanduser(weights_file))
        # Scores measured for the default weights say nothing about other weights.
        metadata.pop("imagenet_top1", None)
    source = _weights_source(entry, weights_file)
    metadata["weights"] = source.describe()
    if isinstance(source, WeightsFile):
        metadata["weights_sha256"] = source.digest()
    return BackboneSpec(
        id=entry.id,
        weights_file=weights_file,
        preprocessing=entry.preprocessing,
        metadata=metadata,
        stores=tuple(stores),
    )
